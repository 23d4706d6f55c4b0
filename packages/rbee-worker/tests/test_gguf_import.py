"""``python -m rbee_worker.gguf_import``: GGUF files into Hugging Face model directories.

Refusals are tested on small synthetic GGUF files (``gguf.GGUFWriter``, or bytes packed here):
they must come from the header alone, before the tokenizer or any tensor is read, and leave
nothing behind. The conversion itself is tested on the real SmolLM2-135M-Instruct: the float32
directory of the ``smollm2_model`` fixture (converted once per cache by this same command), and
one bfloat16 conversion run here to watch its events.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rbee_worker import gguf_import
from rbee_worker.gguf_import import (
    ConversionError,
    _Header,
    _removed_on_failure,
    model_type_of,
    read_architecture,
    write_safetensors,
)

EXIT_ERROR = 3


def run_converter(src: Path, dest: Path, *args: str, timeout: float = 60) -> tuple[int, list[Any]]:
    """The converter's exit status and its stdout, each line parsed as JSON (so a line that is
    not JSON fails the test)."""
    done = subprocess.run(
        [sys.executable, "-m", "rbee_worker.gguf_import", str(src), str(dest), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode not in (0, EXIT_ERROR):
        pytest.fail(f"the converter crashed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def synthetic_gguf(path: Path, architecture: str, big_endian: bool = False) -> Path:
    """A tiny GGUF file (synthetic: one 2x2 tensor, a name) of ``architecture``."""
    import gguf
    import numpy as np

    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, architecture, endianess=endian)
    writer.add_name("synthetic")
    writer.add_tensor("token_embd.weight", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def packed_gguf(*pairs: bytes, version: int = 3) -> bytes:
    """A GGUF header packed by hand (ggml's docs/gguf.md): key/value ``pairs``, no tensors."""
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(pairs)) + b"".join(pairs)


# A string array, a u32 and a nested array before general.architecture: what a writer may put
# first; the header reader must step over each.
TOKENS = _string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3)
TOKENS += _string("<s>") + _string("</s>") + _string("hello")
COUNT = _string("synthetic.block_count") + struct.pack("<II", 4, 30)
NESTED = _string("synthetic.nested") + struct.pack("<IIQ", 9, 9, 2)
NESTED += struct.pack("<IQ", 6, 2) + struct.pack("<ff", 1, 2)
NESTED += struct.pack("<IQ", 8, 1) + _string("x")
ARCHITECTURE = _string("general.architecture") + struct.pack("<I", 8) + _string("llama")


# --- the header ---------------------------------------------------------------------------------


def test_the_architecture_is_read_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(packed_gguf(TOKENS, COUNT, NESTED, ARCHITECTURE))
    assert read_architecture(path) == "llama"
    # gguf's own reader agrees with the file packed here
    import gguf

    field = gguf.GGUFReader(path).fields["general.architecture"]
    assert field.contents() == "llama"


def test_big_endian_files_are_read(tmp_path: Path) -> None:
    path = synthetic_gguf(tmp_path / "be.gguf", "qwen2", big_endian=True)
    assert read_architecture(path) == "qwen2"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"GGU",
        b"not a GGUF file at all\n",
        packed_gguf(ARCHITECTURE, version=1),
        packed_gguf(TOKENS, COUNT),  # no general.architecture
        packed_gguf(TOKENS, ARCHITECTURE)[:-3],  # truncated in the architecture's value
        packed_gguf(TOKENS)[:40],  # truncated in an array
        # an array that claims more strings than the file could hold
        packed_gguf(_string("k") + struct.pack("<IIQ", 9, 8, 1 << 60)),
        # a string longer than the file
        packed_gguf(_string("general.architecture") + struct.pack("<IQ", 8, 1 << 40)),
        packed_gguf(_string("k") + struct.pack("<I", 99)),  # no such value type
    ],
    ids=[
        "empty",
        "short",
        "text",
        "version-1",
        "no-architecture",
        "truncated-value",
        "truncated-array",
        "huge-array",
        "huge-string",
        "unknown-type",
    ],
)
def test_what_is_no_gguf_header_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ConversionError) as caught:
        read_architecture(path)
    assert caught.value.code == "not_gguf"


class _CountingFile(io.BytesIO):
    """A file in memory that counts the reads and seeks asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.calls = 0

    def read(self, n: int | None = -1, /) -> bytes:
        self.calls += 1
        return super().read(n)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self.calls += 1
        return super().seek(offset, whence)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_the_converter_exits_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    # The source is a FIFO nobody writes: the converter blocks opening it, as a long
    # conversion would keep it busy. Its parent, a stand-in for the hive, is then SIGKILLed.
    src = tmp_path / "never.gguf"
    os.mkfifo(src)
    starter = (
        "import subprocess, sys\n"
        "argv = [sys.executable, '-m', 'rbee_worker.gguf_import', *sys.argv[1:]]\n"
        "child = subprocess.Popen(argv)\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, str(src), str(tmp_path / "dest")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        converter = int(parent.stdout.readline())
        # Its first event (on the same pipe): it runs, and watches its parent.
        assert json.loads(parent.stdout.readline())["step"] == "read"
        assert _running(converter)
        parent.kill()
        parent.wait()
        deadline = (
            time.monotonic() + 30
        )  # a wait's limit, generous: the converter polls each second
        while _running(converter) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(converter)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group: the converter too, if left
            os.killpg(parent.pid, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.parametrize("element", [8, 9], ids=["strings", "arrays"])
def test_a_hostile_array_is_refused_from_its_count_before_any_element(element: int) -> None:
    # An array that claims 2**40 elements, then a thousand empty strings (or empty arrays'
    # first bytes): refused from the count, not after stepping through what is there.
    data = struct.pack("<IQ", element, 1 << 40) + bytes(8 * 1000)
    f = _CountingFile(data)
    with pytest.raises(ConversionError) as caught:
        _Header(f, len(data), "<").skip_value(9)
    assert caught.value.code == "not_gguf" and f.calls <= 4


def test_the_array_elements_a_header_may_make_it_step_through_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_import, "_MAX_ITEMS", 100)
    strings = _string("k") + struct.pack("<IIQ", 9, 8, 60) + _string("t") * 60
    path = tmp_path / "many.gguf"
    path.write_bytes(packed_gguf(strings, strings, ARCHITECTURE))
    with pytest.raises(ConversionError) as caught:
        read_architecture(path)
    assert caught.value.code == "not_gguf" and "more than 100 elements" in caught.value.message
    # ... and a header within the bound is read.
    path.write_bytes(packed_gguf(strings, ARCHITECTURE))
    assert read_architecture(path) == "llama"


def test_supported_architectures_are_transformers_causal_lms() -> None:
    assert model_type_of("llama") == "llama"
    assert model_type_of("qwen2moe") == "qwen2_moe"  # transformers' rename of the GGUF name
    assert model_type_of("gemma3") == "gemma3_text"
    for architecture in ("bert", "t5", "t5encoder", "general", "tokenizer", "clip", ""):
        with pytest.raises(ConversionError) as caught:
            model_type_of(architecture)
        assert caught.value.code == "unsupported_architecture"


# --- refusals by the command ------------------------------------------------------------------


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    src.write_text("this is no GGUF file\n")
    status, events = run_converter(src, tmp_path / "out")
    assert status == EXIT_ERROR
    assert events[-1]["event"] == "error"
    assert events[-1]["code"] == "not_gguf"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("architecture", "why"),
    [("bert", "cannot read"), ("t5", "no causal language model")],
)
def test_an_unsupported_architecture_is_refused_from_the_header(
    tmp_path: Path, architecture: str, why: str
) -> None:
    src = synthetic_gguf(tmp_path / "model.gguf", architecture)
    dest = tmp_path / "out"
    started = time.monotonic()
    status, events = run_converter(src, dest)
    print(f"{architecture}: refused in {time.monotonic() - started:.1f} s")
    assert status == EXIT_ERROR
    # the header step, then the refusal: no tokenizer, no weights read
    assert [e["event"] for e in events] == ["step", "error"]
    assert events[0]["step"] == "read"
    assert events[1]["code"] == "unsupported_architecture"
    assert architecture in events[1]["message"] and why in events[1]["message"]
    assert not dest.exists()


def test_a_destination_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    src = synthetic_gguf(tmp_path / "model.gguf", "llama")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    status, events = run_converter(src, dest)
    assert status == EXIT_ERROR
    assert events == [
        {"event": "error", "code": "conversion_failed", "message": f"{dest} is not empty"}
    ]
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


@pytest.mark.timeout(180)
def test_a_file_transformers_fails_on_leaves_no_directory(tmp_path: Path) -> None:
    """A header that passes (llama) on a file transformers cannot load (synthetic: no tokenizer,
    no hyperparameters): a conversion_failed event, and no DEST."""
    src = synthetic_gguf(tmp_path / "model.gguf", "llama")
    status, events = run_converter(src, tmp_path / "out", timeout=150)
    assert status == EXIT_ERROR
    assert events[0] == {
        "event": "step",
        "step": "read",
        "message": f"reading the GGUF header of {src}",
    }
    assert events[-1]["event"] == "error"
    assert events[-1]["code"] == "conversion_failed"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_write_removes_what_it_wrote(tmp_path: Path, existed: bool) -> None:
    dest = tmp_path / "out"
    if existed:
        dest.mkdir()
    with pytest.raises(ConversionError), _removed_on_failure(dest):
        (dest / "model.safetensors").write_bytes(b"half")
        (dest / "sub").mkdir()
        (dest / "sub" / "file").write_text("x")
        raise ConversionError("conversion_failed", "synthetic failure")
    assert dest.exists() is existed
    assert not existed or not any(dest.iterdir())
    with _removed_on_failure(dest):  # success keeps what was written
        (dest / "config.json").write_text("{}")
    assert [p.name for p in dest.iterdir()] == ["config.json"]


# --- safetensors ------------------------------------------------------------------------------


def test_safetensors_written_here_read_back_equal(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=generator),
        "b.bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2, generator=generator).to(torch.float16),
        "d.transposed": torch.randn(4, 3, generator=generator).t(),  # not contiguous
        "e.int": torch.arange(5),
        "f.scalar": torch.tensor(1.5),
        "g.empty": torch.zeros(0, 4),
    }
    reports: list[tuple[int, int]] = []
    size = write_safetensors(
        tmp_path / "m.safetensors", tensors, lambda d, t: reports.append((d, t))
    )
    assert size == (tmp_path / "m.safetensors").stat().st_size
    back = load_file(tmp_path / "m.safetensors")
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype
        assert torch.equal(back[name], tensor), name
    assert len(reports) == len(tensors)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert (
        reports[-1][0]
        == reports[-1][1]
        == sum(t.numel() * t.element_size() for t in tensors.values())
    )


# --- the real model ---------------------------------------------------------------------------

SMOLLM2_CLASS = "LlamaForCausalLM"


@pytest.fixture(scope="module")
def bf16_conversion(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Any], float]:
    """SmolLM2 converted to bfloat16 here: the directory, the events, the seconds it took."""
    dest = tmp_path_factory.mktemp("smollm2") / "bfloat16"
    started = time.monotonic()
    status, events = run_converter(smollm2_gguf, dest, "--dtype", "bfloat16", timeout=600)
    seconds = time.monotonic() - started
    assert status == 0, events[-1]
    print(f"SmolLM2 converted to bfloat16 in {seconds:.1f} s: {events[-1]}")
    return dest, events, seconds


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_conversion_narrates_its_steps(bf16_conversion: tuple[Path, list[Any], float]) -> None:
    dest, events, _ = bf16_conversion
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == ["read", "tokenizer", "weights", "write"]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["step"] == "write" and e["unit"] == "B" for e in progress)
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert progress[-1]["done"] == progress[-1]["total"]
    done = events[-1]
    assert done["event"] == "done"
    assert done["architecture"] == "llama"
    assert done["dtype"] == "bfloat16"
    assert done["bytes"] == sum(p.stat().st_size for p in dest.iterdir())
    assert 130e6 < done["parameters"] < 140e6  # "135M"
    assert done["seconds"] > 0
    config = json.loads((dest / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bfloat16_weights_are_the_float32_ones_rounded(
    bf16_conversion: tuple[Path, list[Any], float], smollm2_model: Path
) -> None:
    import torch
    from safetensors import safe_open

    dest, events, _ = bf16_conversion
    with (
        safe_open(dest / "model.safetensors", "pt") as bf16,
        safe_open(smollm2_model / "model.safetensors", "pt") as f32,
    ):
        assert set(bf16.keys()) == set(f32.keys())
        parameters = 0
        for name in f32.keys():  # noqa: SIM118 (safe_open is no mapping: no __iter__)
            wide, narrow = f32.get_tensor(name), bf16.get_tensor(name)
            assert wide.dtype == torch.float32 and narrow.dtype == torch.bfloat16
            assert torch.equal(wide.to(torch.bfloat16), narrow), name
            parameters += wide.numel()
    assert events[-1]["parameters"] == parameters


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_converted_model_loads_and_answers(smollm2_model: Path) -> None:
    """Without the GGUF file or the gguf package's help: a plain float32 Llama with its lm_head
    tied to the input embedding (stored once), which knows the capital of France."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((smollm2_model / "config.json").read_text())
    assert config["architectures"] == [SMOLLM2_CLASS]
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    assert not list(smollm2_model.glob("*.gguf"))
    with safe_open(smollm2_model / "model.safetensors", "pt") as weights:
        names = set(weights.keys())  # safe_open is no mapping
    assert "lm_head.weight" not in names
    assert "model.embed_tokens.weight" in names

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(smollm2_model, local_files_only=True)
    print(f"the converted SmolLM2 loaded in {time.monotonic() - started:.1f} s")
    assert type(model).__name__ == SMOLLM2_CLASS
    assert model.dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_chat_template_survives(smollm2_model: Path, smollm2_gguf: Path) -> None:
    from transformers import AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from_gguf = load_gguf_checkpoint(str(smollm2_gguf))["tokenizer_config"]["chat_template"]
    assert "<|im_start|>" in from_gguf
    tokenizer = AutoTokenizer.from_pretrained(smollm2_model, local_files_only=True)
    assert tokenizer.chat_template == from_gguf
