"""What a GGUF file says it is: its header and the few metadata values the hive needs.

The hive reads this before it converts anything (``ModelCatalog.import_gguf``): a file that is
not GGUF, or holds an architecture the conversion cannot handle, is refused at once, without
starting the converter or loading a tensor. No ``gguf`` package: the hive must not need one, and
it reads only the start of the file.

The layout (ggml's docs/gguf.md, versions 2 and 3; version 1 used 32-bit counts and is refused)::

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64 | kv_count x key/value
    key/value:  key (string) | value_type u32 | value
    string:     length u64 | UTF-8 bytes (no NUL terminator)
    array:      element_type u32 | count u64 | count x element

All little-endian (a big-endian file, which ggml also defines, is refused with a message that
says so). The tensor infos and data follow the key/values and are never read.

A hostile file must not make the hive allocate or loop much: every count and length is bounded
(``MAX_*``) and checked against the file's size before anything is read; values the hive does
not keep are skipped with a seek, never read into memory; fixed-size arrays are skipped in one
seek, arrays of strings one element at a time within ``MAX_ITEMS`` elements across the whole
header; arrays nest at most ``MAX_DEPTH`` deep. Reading stops once the keys wanted are known.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import BinaryIO, Final

import attrs

__all__ = [
    "MAX_ITEMS",
    "MAX_KEY_BYTES",
    "MAX_KV",
    "MAX_TENSORS",
    "MAX_VALUE_BYTES",
    "GGUFError",
    "GGUFHeader",
    "parse_header_start",
    "read_header",
]

MAGIC: Final = b"GGUF"
VERSIONS: Final = (2, 3)
#: the most key/value pairs a header may declare (real models have a few dozen)
MAX_KV: Final = 1 << 16
#: the most tensors a header may declare (the largest models have a few thousand)
MAX_TENSORS: Final = 1 << 20
#: the longest key (ggml's spec: at most 65535 bytes)
MAX_KEY_BYTES: Final = 65535
#: the longest string value the hive keeps (the architecture, the model's name)
MAX_VALUE_BYTES: Final = 4096
#: array elements looked at in one header, all arrays together (a tokenizer's vocabulary and
#: merges, skipped element by element, are a few hundred thousand in the largest models)
MAX_ITEMS: Final = 1 << 22
#: arrays of arrays, at most this deep
MAX_DEPTH: Final = 2

# value types (ggml's gguf_type): the fixed sizes; 8 is a string, 9 an array
_FIXED: Final = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING: Final = 8
_ARRAY: Final = 9
_INTS: Final = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


class GGUFError(ValueError):
    """The file is not a GGUF file the hive can read; ``code`` is the catalog's error code:
    ``not_gguf`` (no GGUF magic), ``unsupported_gguf_version`` or ``invalid_gguf`` (truncated,
    past a bound, or without ``general.architecture``)."""

    def __init__(self, code: str, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: the data ended before what it declares (a whole file: invalid; the start of one
        #: that ``parse_header_start`` was given: nothing is known yet)
        self.truncated = truncated


@attrs.frozen
class GGUFHeader:
    """What the hive knows of a GGUF file before converting it."""

    version: int
    tensor_count: int
    kv_count: int
    #: ``general.architecture`` (``llama``, ``qwen2``, ...)
    architecture: str
    #: ``general.name``, when the file has one
    name: str | None = None
    #: ``{architecture}.block_count`` (the number of layers), when the file has one
    block_count: int | None = None


class _Reader:
    """Bounded reads from a binary file of known size."""

    def __init__(self, f: BinaryIO, size: int, path: Path | str) -> None:
        self.f = f
        self.size = size
        self.path = path
        self.items = 0

    def invalid(self, what: str) -> GGUFError:
        return GGUFError("invalid_gguf", f"{self.path} is not a valid GGUF file: {what}")

    def past_end(self, what: str) -> GGUFError:
        message = f"{self.path} is not a valid GGUF file: {what} runs past the end of the file"
        return GGUFError("invalid_gguf", message, truncated=True)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            raise self.past_end(what)

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise self.past_end(what)
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.f.seek(n, os.SEEK_CUR)

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.read(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack("<Q", self.read(8, what))[0]
        return value

    def string(self, what: str, limit: int) -> str:
        n = self.u64(f"the length of {what}")
        if n > limit:
            raise self.invalid(f"{what} is {n} bytes long (at most {limit} are read)")
        try:
            return self.read(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.invalid(f"{what} is not UTF-8") from None

    def skip_value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in _FIXED:
            self.skip(_FIXED[kind], what)
        elif kind == _STRING:
            self.skip(self.u64(f"the length of {what}"), what)
        elif kind == _ARRAY:
            if depth >= MAX_DEPTH:
                raise self.invalid(f"{what} nests arrays more than {MAX_DEPTH} deep")
            element = self.u32(f"the element type of {what}")
            count = self.u64(f"the length of {what}")
            if element in _FIXED:
                # within the file, or need() refuses: no count makes this loop or allocate
                self.skip(count * _FIXED[element], what)
                return
            if element not in (_STRING, _ARRAY):
                raise self.invalid(f"{what} has elements of unknown type {element}")
            # Each element at least 8 bytes (a length): a count the file cannot hold is refused
            # before the loop.
            self.need(count * 8, what)
            self.items += count
            if self.items > MAX_ITEMS:
                raise self.invalid(f"its arrays hold more than {MAX_ITEMS} elements")
            for _ in range(count):
                self.skip_value(element, what, depth + 1)
        else:
            raise self.invalid(f"{what} has unknown value type {kind}")

    def value(self, kind: int, what: str) -> str | int | None:
        """A string or integer value, read; anything else skipped (None)."""
        if kind == _STRING:
            return self.string(what, MAX_VALUE_BYTES)
        if kind in _INTS:
            fmt = _INTS[kind]
            number: int = struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]
            return number
        self.skip_value(kind, what)
        return None


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at ``path``; ``GGUFError`` when it is none, ``OSError`` when
    it cannot be read."""
    path = Path(path)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _parse(_Reader(f, size, path))


def parse_header_start(data: bytes, where: str) -> GGUFHeader | None:
    """The header in ``data``, the first bytes of a GGUF file (``where`` names it in errors):
    what is known once ``general.architecture`` has been read, None when ``data`` ends before
    it. ``GGUFError`` when the bytes read show it is no GGUF file the hive can read. The hive
    judges a file in a model repository by its first bytes before downloading all of it."""
    try:
        return _parse(_Reader(io.BytesIO(data), len(data), where), partial=True)
    except GGUFError as exc:
        if exc.truncated:
            return None
        raise


def _parse(r: _Reader, partial: bool = False) -> GGUFHeader:
    magic = r.f.read(4)
    if len(magic) < 4 and partial and MAGIC.startswith(magic):
        raise r.past_end("the magic")
    if magic != MAGIC:
        raise GGUFError("not_gguf", f"{r.path} is not a GGUF file (it does not start with GGUF)")
    raw = r.read(4, "the version")
    version = struct.unpack("<I", raw)[0]
    if version not in VERSIONS:
        if struct.unpack(">I", raw)[0] in VERSIONS:
            message = f"{r.path} is a big-endian GGUF file; only little-endian ones are read"
        else:
            message = f"{r.path} is GGUF version {version}; versions 2 and 3 are read"
        raise GGUFError("unsupported_gguf_version", message)
    tensors = r.u64("the tensor count")
    kv_count = r.u64("the key/value count")
    if tensors > MAX_TENSORS:
        raise r.invalid(f"it declares {tensors} tensors (at most {MAX_TENSORS})")
    if kv_count > MAX_KV:
        raise r.invalid(f"it declares {kv_count} key/value pairs (at most {MAX_KV})")
    found: dict[str, str | int] = {}
    wanted = {"general.architecture", "general.name"}
    try:
        for index in range(kv_count):
            key = r.string(f"key {index}", MAX_KEY_BYTES)
            kind = r.u32(f"the type of {key}")
            if key in wanted or (key.endswith(".block_count") and key.count(".") == 1):
                value = r.value(kind, key)
                if value is not None:
                    found[key] = value
            else:
                r.skip_value(kind, key)
            arch = found.get("general.architecture")
            if isinstance(arch, str) and wanted | {f"{arch}.block_count"} <= found.keys():
                break  # all that is needed: the rest (the tokenizer, mostly) is never read
    except GGUFError as exc:
        # The start of a file, cut inside its key/values: what was read before the cut is
        # what is known (the architecture comes first in the files llama.cpp writes).
        if not (partial and exc.truncated and isinstance(found.get("general.architecture"), str)):
            raise
    arch = found.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise r.invalid("it has no general.architecture")
    name = found.get("general.name")
    blocks = found.get(f"{arch}.block_count")
    return GGUFHeader(
        version=version,
        tensor_count=tensors,
        kv_count=kv_count,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        block_count=blocks if isinstance(blocks, int) else None,
    )
