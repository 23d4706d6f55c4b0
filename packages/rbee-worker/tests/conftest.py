"""Fixtures of the worker tests: one tiny model per session, built locally (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama of ``rbee_worker.tiny_model``, built once per session."""
    from rbee_worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def reference(tiny_model: Path) -> tuple[Any, Any]:
    """The same model and tokenizer loaded by transformers itself: the yardstick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    return model, AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
