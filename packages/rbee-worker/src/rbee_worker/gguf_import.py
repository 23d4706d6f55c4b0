"""Convert a GGUF model file into a Hugging Face model directory both engines load.

    python -m rbee_worker.gguf_import SRC.gguf DEST_DIR [--dtype float32|bfloat16|float16]

Theory of operation
-------------------
GGUF is what llama.cpp, Ollama and LM Studio users hold; vLLM and our transformers engine want a
Hugging Face directory (``config.json``, safetensors weights, tokenizer files). transformers reads
GGUF itself (``from_pretrained(..., gguf_file=...)``: it dequantizes every tensor, which needs the
``gguf`` and ``accelerate`` packages, the worker's ``gguf`` extra), but ``save_pretrained``
refuses a model loaded that way, so this module writes the directory itself:

1. ``read``: the header only, by ``read_architecture`` (a few hundred bytes for a real file: it
   stops at ``general.architecture``). Not a GGUF file, or an architecture transformers cannot
   read from GGUF or that is no causal language model: refused before any tensor is touched.
2. ``tokenizer``: transformers builds the tokenizer, chat template included, from the metadata.
3. ``weights``: transformers dequantizes the tensors into the model, in ``--dtype``.
4. ``write``: ``model.safetensors`` (the state dict, each tensor contiguous, a tied output
   embedding stored once: transformers ties it again on load), the tokenizer files,
   ``generation_config.json``, and ``config.json`` last, under a temporary name renamed into
   place: a directory without ``config.json`` is no model to either engine, so a converter that
   died midway never leaves one that looks complete. Before ``config.json`` is written, the
   tokenizer is read back from DEST and its chat template compared with the GGUF's. A failed
   conversion removes what it wrote.

stdout carries JSON lines only, one event each (the hive reads them)::

    {"event": "step", "step": "read"|"tokenizer"|"weights"|"write", "message": "..."}
    {"event": "progress", "step": "write", "done": N, "total": M, "unit": "B"}
    {"event": "done", "architecture": "llama", "parameters": N, "bytes": N,
     "dtype": "float32", "seconds": S}
    {"event": "error", "code": "unsupported_architecture"|"not_gguf"|"conversion_failed",
     "message": "..."}

Exit status 0 after ``done``, 3 after ``error``; anything else is a crash and stderr tells why.
The converter exits (status 4) within a second of the process that started it going away
(``exit_with_parent``): a hive killed with SIGKILL leaves no converter running.
Whatever transformers, tqdm or a C library prints goes to stderr: file descriptor 1 is pointed
at stderr for the whole run, and the events go to a private duplicate of the original stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "EXIT_ERROR",
    "EXIT_ORPHANED",
    "ConversionError",
    "convert",
    "exit_with_parent",
    "main",
    "model_type_of",
    "read_architecture",
]

DTYPES: Final = ("float32", "bfloat16", "float16")
#: exit status after an ``error`` event
EXIT_ERROR: Final = 3
#: exit status when the process that started the converter is gone (a crash, to anyone left)
EXIT_ORPHANED: Final = 4
#: how often the converter looks whether the process that started it is still there
PARENT_POLL_SECONDS: Final = 1.0

Emit = Callable[[dict[str, Any]], None]


class ConversionError(Exception):
    """A refusal or failure the converter reports as an ``error`` event; ``code`` is one of
    ``not_gguf``, ``unsupported_architecture``, ``conversion_failed``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- the header -------------------------------------------------------------------------------

# ggml's docs/gguf.md: magic "GGUF", version u32, tensor_count u64, kv_count u64, then the
# key/values (key: u64 length + UTF-8; value_type u32; value). Versions 2 and 3 (1 had 32-bit
# counts, and transformers' reader refuses it too). Either byte order: ggml defines big-endian
# files, told apart by the version read the wrong way round.
_MAGIC: Final = b"GGUF"
_VERSIONS: Final = (2, 3)
# value types (ggml's gguf_type) of a fixed size; 8 is a string, 9 an array
_FIXED: Final = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING: Final = 8
_ARRAY: Final = 9
#: the longest key or architecture name read (ggml caps keys at 65535 bytes)
_MAX_KEY: Final = 65535
#: the most string or array elements stepped over one by one in a header (the hive's bound,
#: ``rbee_hive.gguf_header.MAX_ITEMS``: far above a real tokenizer's vocabulary and merges)
_MAX_ITEMS: Final = 1 << 22


class _Header:
    """Reads a GGUF header's values in order, each length checked against the file's size, so a
    truncated or hostile file is refused instead of read past its end."""

    def __init__(self, f: BinaryIO, size: int, order: str) -> None:
        self._f = f
        self._size = size
        self._order = order
        #: string and array elements stepped over one by one so far
        self._items = 0

    def _need(self, n: int) -> None:
        """Refuse a length that runs past the end of the file, before anything is read."""
        if self._f.tell() + n > self._size:
            raise ConversionError("not_gguf", "the GGUF header is truncated")

    def _read(self, n: int) -> bytes:
        self._need(n)
        data = self._f.read(n)
        if len(data) != n:
            raise ConversionError("not_gguf", "the GGUF header is truncated")
        return data

    def _skip(self, n: int) -> None:
        self._need(n)
        self._f.seek(n, os.SEEK_CUR)

    def u32(self) -> int:
        (value,) = struct.unpack(self._order + "I", self._read(4))
        return int(value)

    def u64(self) -> int:
        (value,) = struct.unpack(self._order + "Q", self._read(8))
        return int(value)

    def string(self, limit: int) -> bytes:
        length = self.u64()
        if length > limit:
            raise ConversionError("not_gguf", f"a GGUF header string of {length} bytes")
        return self._read(length)

    def skip_value(self, value_type: int, depth: int = 0) -> None:
        if value_type in _FIXED:
            self._skip(_FIXED[value_type])
        elif value_type == _STRING:
            self._skip(self.u64())
        elif value_type == _ARRAY and depth < 2:
            item_type, count = self.u32(), self.u64()
            if item_type in _FIXED:
                self._skip(count * _FIXED[item_type])
            else:
                # Each element is at least 8 bytes (a length): a count the file cannot hold is
                # refused before the loop, and so are more elements than any header has.
                self._need(count * 8)
                self._items += count
                if self._items > _MAX_ITEMS:
                    raise ConversionError(
                        "not_gguf", f"the GGUF header's arrays hold more than {_MAX_ITEMS} elements"
                    )
                for _ in range(count):
                    self.skip_value(item_type, depth + 1)
        else:
            raise ConversionError("not_gguf", f"a GGUF header value of unknown type {value_type}")


def read_architecture(path: Path) -> str:
    """``general.architecture`` of the GGUF file at ``path``, read from its header alone.

    Raises ``ConversionError("not_gguf")`` for a file that is not GGUF (version 2 or 3), is
    truncated, or names no architecture."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConversionError("conversion_failed", f"cannot read {path}: {exc}") from exc
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8 or head[:4] != _MAGIC:
            raise ConversionError("not_gguf", f"{path} is not a GGUF file (no GGUF magic)")
        for order in "<>":
            (version,) = struct.unpack(order + "I", head[4:])
            if version in _VERSIONS:
                break
        else:
            raise ConversionError("not_gguf", f"{path}: unsupported GGUF version")
        header = _Header(f, size, order)
        header.u64()  # tensor_count
        for _ in range(header.u64()):  # kv_count: each pair is at least 12 bytes
            key = header.string(_MAX_KEY)
            value_type = header.u32()
            if key == b"general.architecture" and value_type == _STRING:
                return header.string(_MAX_KEY).decode("utf-8", errors="replace")
            header.skip_value(value_type)
    raise ConversionError("not_gguf", f"{path} names no general.architecture")


# transformers' own renames of GGUF architecture names (modeling_gguf_pytorch_utils.
# load_gguf_checkpoint): the model_type its config gets
_RENAMED: Final = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "gemma3": "gemma3_text",
    "gemma4": "gemma4_text",
}
# keys of transformers' GGUF config table that are metadata prefixes, not architectures
_NOT_ARCHITECTURES: Final = frozenset({"general", "tokenizer"})


def model_type_of(architecture: str) -> str:
    """The transformers ``model_type`` a GGUF file of ``architecture`` converts to.

    Raises ``ConversionError("unsupported_architecture")`` unless transformers reads that
    architecture from GGUF (``transformers.integrations.ggml.GGUF_CONFIG_MAPPING``, the table
    behind ``GGUF_SUPPORTED_ARCHITECTURES``) and it is a causal language model (T5's encoder-
    decoder, for one, is not)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    known = set(GGUF_CONFIG_MAPPING) - _NOT_ARCHITECTURES
    model_type = _RENAMED.get(architecture, architecture)
    # transformers accepts the file's name or its own for it (qwen2moe is known as qwen2_moe)
    if architecture not in known and model_type not in known:
        raise ConversionError(
            "unsupported_architecture",
            f"transformers cannot read a GGUF model of architecture {architecture!r}"
            f" (it reads {', '.join(sorted(known))})",
        )
    # Imported only here: it loads torch, which a refusal of an unknown architecture never needs.
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConversionError(
            "unsupported_architecture",
            f"a GGUF model of architecture {architecture!r} is no causal language model"
            " (rbee serves text generation only)",
        )
    return model_type


# --- writing ----------------------------------------------------------------------------------

# safetensors' dtype names (https://github.com/huggingface/safetensors, "Format")
_SAFETENSORS_DTYPES: Final = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _untied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict with each shared tensor kept once, under its first name, and the names
    dropped (a tied ``lm_head.weight`` is ``model.embed_tokens.weight``)."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    dropped = []
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            dropped.append(name)
            continue
        seen.add(key)
        kept[name] = tensor
    return kept, dropped


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], progress: Callable[[int, int], None]
) -> int:
    """Write ``tensors`` as one safetensors file, reporting bytes written; returns its size.

    The format (an 8-byte little-endian header length, a JSON header of names, dtypes, shapes
    and offsets, padded with spaces to a multiple of 8, then the raw little-endian data) is
    written here rather than by ``safetensors.torch.save_file`` so each tensor's bytes can be
    reported as they go out, and no second copy of the weights is built in memory."""
    import torch

    if sys.byteorder != "little":  # safetensors data is little-endian; so is every CPU we run
        raise ConversionError("conversion_failed", "a big-endian machine cannot write safetensors")
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConversionError("conversion_failed", f"{name} has dtype {dtype}")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    done = 0
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for tensor in tensors.values():
            flat = tensor.detach().contiguous().reshape(-1)
            if flat.numel():
                f.write(flat.view(torch.uint8).numpy().data)
            done += flat.numel() * flat.element_size()
            progress(done, offset)
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(encoded) + offset


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _empty_dest(dest: Path) -> None:
    if dest.is_dir():
        if any(dest.iterdir()):
            raise ConversionError("conversion_failed", f"{dest} is not empty")
    elif dest.exists():
        raise ConversionError("conversion_failed", f"{dest} exists and is not a directory")


@contextmanager
def _removed_on_failure(dest: Path) -> Iterator[None]:
    """Create ``dest`` (checked empty before); if the body fails, remove what went into it, and
    ``dest`` itself when it was created here."""
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if created:
            dest.rmdir()
        raise


def convert(src: Path, dest: Path, dtype: str, emit: Emit) -> dict[str, Any]:
    """Convert the GGUF file ``src`` into the empty (or missing) directory ``dest``; ``emit``
    receives each event; returns the ``done`` event (also emitted). Raises
    ``ConversionError`` for whatever it refuses or fails at."""
    started = time.monotonic()
    if dtype not in DTYPES:
        raise ConversionError("conversion_failed", f"dtype {dtype!r} is not one of {DTYPES}")
    _empty_dest(dest)

    def step(name: str, message: str) -> None:
        emit({"event": "step", "step": name, "message": message})

    step("read", f"reading the GGUF header of {src}")
    architecture = read_architecture(src)
    model_type = model_type_of(architecture)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step("tokenizer", f"reading the tokenizer and chat template ({architecture})")
    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    step("weights", f"dequantizing the weights of a {model_type} model to {dtype}")
    model = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=getattr(torch, dtype)
    )
    parameters = sum(p.numel() for p in model.parameters())  # a tied tensor counts once

    with _removed_on_failure(dest):
        tensors, dropped = _untied(model.state_dict())
        config = model.config
        if dropped and not config.get_text_config().tie_word_embeddings:
            raise ConversionError("conversion_failed", f"shared tensors not tied: {dropped}")
        tied = f"; {', '.join(dropped)} tied to its input embedding" if dropped else ""
        step("write", f"writing {len(tensors)} tensors ({parameters:,} parameters) to {dest}{tied}")
        write_safetensors(
            dest / "model.safetensors",
            tensors,
            lambda done, total: emit(
                {"event": "progress", "step": "write", "done": done, "total": total, "unit": "B"}
            ),
        )
        del tensors
        tokenizer.save_pretrained(str(dest))
        _check_tokenizer(dest, tokenizer)
        model.generation_config.to_json_file(str(dest / "generation_config.json"))
        # A plain model now: transformers marks a GGUF-loaded config as quantized, which would
        # send a loader of DEST looking for the GGUF file.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # the GGUF's general.name, which transformers keeps as a config key of no use to anyone
        config.__dict__.pop("_model_name_or_path", None)
        config.architectures = [type(model).__name__]
        config.dtype = getattr(torch, dtype)
        partial = dest / "config.json.partial"
        config.to_json_file(str(partial))
        os.replace(partial, dest / "config.json")

    done = {
        "event": "done",
        "architecture": architecture,
        "parameters": parameters,
        "bytes": _dir_bytes(dest),
        "dtype": dtype,
        "seconds": round(time.monotonic() - started, 2),
    }
    emit(done)
    return done


def _check_tokenizer(dest: Path, tokenizer: Any) -> None:
    """The tokenizer read back from DEST (without the GGUF) has the GGUF's chat template and
    vocabulary."""
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(dest), local_files_only=True)
    if again.chat_template != tokenizer.chat_template:
        raise ConversionError("conversion_failed", "the chat template did not survive the write")
    if len(again) != len(tokenizer):
        raise ConversionError(
            "conversion_failed",
            f"the tokenizer read back has {len(again)} tokens, not {len(tokenizer)}",
        )


# --- the command ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rbee_worker.gguf_import",
        description="Convert a GGUF model file into a Hugging Face model directory "
        "(safetensors, config, tokenizer with its chat template). Events go to stdout as JSON "
        "lines; exit status 3 after an error event.",
    )
    parser.add_argument("src", type=Path, metavar="SRC.gguf", help="the GGUF file")
    parser.add_argument("dest", type=Path, metavar="DEST_DIR", help="missing or empty directory")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="default: float32")
    return parser


@contextmanager
def _events_stream() -> Iterator[IO[str]]:
    """A private copy of stdout for the events; fd 1 itself goes to stderr meanwhile, so nothing
    else (a library's print, tqdm, a C extension) can ever write a line of the events."""
    sys.stdout.flush()
    private = os.dup(1)
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(private, "w", encoding="utf-8") as stream:
            yield stream
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def exit_with_parent(poll: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Exit (``EXIT_ORPHANED``) within ``poll`` seconds of the process that started this one
    going away: a hive killed with SIGKILL cannot kill its converter, and nobody would read
    what it writes. Its parent's pid is taken now; once this process is an orphan, it is
    another's (init's, or a subreaper's). What it wrote is left to the one that made DEST
    (the hive removes its leftover import directories when it starts)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    exit_with_parent()
    # The converter reads local files only; a hub lookup would be a bug (and hang offline).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _events_stream() as stream:

        def emit(event: dict[str, Any]) -> None:
            stream.write(json.dumps(event) + "\n")
            stream.flush()

        try:
            convert(args.src, args.dest, args.dtype, emit)
        except ConversionError as exc:
            emit({"event": "error", "code": exc.code, "message": exc.message})
            return EXIT_ERROR
        except Exception as exc:
            traceback.print_exc()
            emit(
                {
                    "event": "error",
                    "code": "conversion_failed",
                    "message": f"{type(exc).__name__}: {exc}",
                }
            )
            return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
