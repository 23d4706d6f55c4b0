"""GGUF models on the hive: the header reader (``gguf_header``), and ``model_import`` /
``model_download`` of one GGUF file driven through a hive with a FAKE converter
(``fake_converter.py``: the converter's process contract without a model).

The GGUF files here are SYNTHETIC: headers this module writes as bytes (``gguf_bytes``), with no
tensors after them; the hive reads nothing else before it converts, and the fake converter reads
only their size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import filelock
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from jobproto import JobEvent, Narration
from jobproto.client import RemoteJobFailed
from rbee_hive import gguf_header
from rbee_hive.app import _parser
from rbee_hive.conversion import SUPPORTED_ARCHITECTURES
from rbee_hive.errors import ModelError
from rbee_hive.gguf_header import GGUFError, parse_header_start, read_header
from rbee_hive.imports import PROBE_BYTES
from rbee_hive.models import gguf_model_name
from rbee_hive.settings import DEFAULT_CONVERT_COMMAND, HiveSettings

Settings = Callable[..., HiveSettings]

FAKE_CONVERTER = Path(__file__).with_name("fake_converter.py")


def fake_converter(*flags: str) -> tuple[str, ...]:
    return (sys.executable, str(FAKE_CONVERTER), *flags)


# -- writing GGUF headers (SYNTHETIC files) --------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f"}
_FMT.update({BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"})


def gstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def gvalue(kind: int, value: Any) -> bytes:
    if kind == STR:
        return gstr(value)
    if kind == ARR:
        element, items = value
        return struct.pack("<IQ", element, len(items)) + b"".join(
            gvalue(element, item) for item in items
        )
    return struct.pack(_FMT[kind], value)


def gguf_bytes(
    kvs: list[tuple[str, int, Any]] | None = None,
    *,
    arch: str | None = "llama",
    version: int = 3,
    tensors: int = 0,
    kv_count: int | None = None,
) -> bytes:
    """A GGUF header: ``general.architecture`` (unless None) first, then ``kvs``."""
    pairs = list(kvs or [])
    if arch is not None:
        pairs.insert(0, ("general.architecture", STR, arch))
    body = b"".join(gstr(key) + struct.pack("<I", kind) + gvalue(kind, v) for key, kind, v in pairs)
    count = len(pairs) if kv_count is None else kv_count
    return b"GGUF" + struct.pack("<IQQ", version, tensors, count) + body


#: what a real model's header holds, in a real model's order (SmolLM2's, shortened)
LLAMA_KVS: list[tuple[str, int, Any]] = [
    ("general.type", STR, "model"),
    ("general.name", STR, "Synthetic Llama"),
    ("general.languages", ARR, (STR, ["en"])),
    ("llama.block_count", U32, 2),
    ("llama.context_length", U32, 256),
    ("llama.rope.freq_base", F32, 10000.0),
    ("general.file_type", U32, 3),
    ("tokenizer.ggml.add_bos_token", BOOL, False),
    ("tokenizer.ggml.tokens", ARR, (STR, ["<s>", "</s>", "a", "b"])),
    ("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 1, 1])),
    ("tokenizer.chat_template", STR, "{% for m in messages %}{{ m.content }}{% endfor %}"),
]


def write_gguf(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gguf_bytes(LLAMA_KVS) if data is None else data)
    return path


# -- the header reader -----------------------------------------------------------------------------


def test_the_header_names_the_architecture_the_model_and_its_layers(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    header = read_header(path)
    assert (header.version, header.tensor_count, header.kv_count) == (3, 0, len(LLAMA_KVS) + 1)
    assert (header.architecture, header.name, header.block_count) == (
        "llama",
        "Synthetic Llama",
        2,
    )


def test_every_value_type_is_read_past_in_any_order(tmp_path: Path) -> None:
    kvs: list[tuple[str, int, Any]] = [
        ("a.u8", U8, 255),
        ("a.i8", I8, -1),
        ("a.u16", U16, 65535),
        ("a.i16", I16, -2),
        ("a.f32", F32, 1.5),
        ("a.bool", BOOL, True),
        ("a.u64", U64, 2**64 - 1),
        ("a.i64", I64, -(2**63)),
        ("a.f64", F64, 2.5),
        ("a.empty", ARR, (STR, [])),
        ("a.nested", ARR, (ARR, [(U8, [1, 2]), (STR, ["x", "yz"])])),
        ("a.floats", ARR, (F64, [0.5] * 10)),
        ("qwen2.block_count", U64, 24),
        ("general.architecture", STR, "qwen2"),
    ]
    path = write_gguf(tmp_path / "m.gguf", gguf_bytes(kvs, arch=None, version=2))
    header = read_header(path)
    assert (header.version, header.architecture, header.block_count, header.name) == (
        2,
        "qwen2",
        24,
        None,
    )


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "not_gguf", "does not start with GGUF"),
        (b"PK\x03\x04" + b"\0" * 100, "not_gguf", "does not start with GGUF"),
        (gguf_bytes(version=1), "unsupported_gguf_version", "version 1"),
        (b"GGUF" + struct.pack(">I", 3) + b"\0" * 16, "unsupported_gguf_version", "big-endian"),
        (gguf_bytes(arch=None), "invalid_gguf", "no general.architecture"),
        (gguf_bytes(LLAMA_KVS)[:60], "invalid_gguf", "past the end of the file"),
        (gguf_bytes(arch="llama", kv_count=5), "invalid_gguf", "past the end of the file"),
        (gguf_bytes(arch="llama")[:-3], "invalid_gguf", "past the end of the file"),
    ],
)
def test_what_is_not_a_readable_gguf_file_is_refused_with_a_code(
    tmp_path: Path, data: bytes, code: str, words: str
) -> None:
    path = write_gguf(tmp_path / "x.gguf", data)
    with pytest.raises(GGUFError) as exc:
        read_header(path)
    assert exc.value.code == code and words in exc.value.message
    assert isinstance(exc.value, ValueError)


def _raw_kv(key: str, kind: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", kind) + payload


def _header_with(*raw_kvs: bytes, kv_count: int | None = None) -> bytes:
    count = len(raw_kvs) if kv_count is None else kv_count
    return b"GGUF" + struct.pack("<IQQ", 3, 0, count) + b"".join(raw_kvs)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        # counts and lengths far beyond the file: refused from the numbers, nothing allocated
        (_header_with(kv_count=2**63), "key/value pairs"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1), "tensors"),
        (_header_with(struct.pack("<Q", 2**62) + b"k"), "key 0 is"),
        (_header_with(_raw_kv("general.architecture", STR, struct.pack("<Q", 2**60))), "bytes"),
        (_header_with(_raw_kv("general.name", STR, struct.pack("<Q", 10**6) + b"x" * 10)), "bytes"),
        (_header_with(_raw_kv("skipped", STR, struct.pack("<Q", 2**63))), "past the end"),
        (_header_with(_raw_kv("tok", ARR, struct.pack("<IQ", STR, 2**61))), "past the end"),
        (_header_with(_raw_kv("f", ARR, struct.pack("<IQ", F64, 2**61))), "past the end"),
        (_header_with(_raw_kv("t", 13, b"")), "unknown value type"),
        (_header_with(_raw_kv("t", ARR, struct.pack("<IQ", 77, 1))), "unknown type"),
        (
            _header_with(
                _raw_kv("deep", ARR, struct.pack("<IQIQIQ", ARR, 1, ARR, 1, STR, 1) + gstr("x"))
            ),
            "nests arrays",
        ),
        (
            _header_with(_raw_kv("general.architecture", STR, gstr(b"\xff\xfe"))),
            "not UTF-8",
        ),
    ],
)
def test_a_hostile_header_is_refused_without_reading_or_allocating_much(
    tmp_path: Path, data: bytes, words: str
) -> None:
    path = write_gguf(tmp_path / "evil.gguf", data)
    with pytest.raises(GGUFError) as exc:
        read_header(path)
    assert exc.value.code == "invalid_gguf" and words in exc.value.message
    # What the reader asks of the file, counted: never more bytes than the file holds (a read
    # of a declared length allocates that much), never a seek past its end, a few calls.
    f = _CountingFile(data)
    with pytest.raises(GGUFError):
        gguf_header._parse(gguf_header._Reader(f, len(data), path))
    assert f.asked <= len(data) and f.furthest <= len(data) and f.calls <= 64


class _CountingFile(io.BytesIO):
    """A file in memory that counts what is asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        #: bytes asked for by read(), calls of read() and seek(), the furthest position sought
        self.asked = self.calls = self.furthest = 0

    def read(self, n: int | None = -1, /) -> bytes:
        self.calls += 1
        self.asked += self.size if n is None or n < 0 else n
        return super().read(n)

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        self.calls += 1
        position = super().seek(offset, whence)
        self.furthest = max(self.furthest, position)
        return position


def test_the_array_elements_one_header_may_make_it_step_through_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_header, "MAX_ITEMS", 100)
    many = [("tokens", ARR, (STR, ["t"] * 60)), ("merges", ARR, (STR, ["m"] * 60))]
    path = write_gguf(tmp_path / "many.gguf", gguf_bytes(many))
    with pytest.raises(GGUFError) as exc:
        read_header(path)
    assert "more than 100 elements" in exc.value.message
    # ... and a file within the bound is read whole.
    path.write_bytes(gguf_bytes(many[:1]))
    assert read_header(path).architecture == "llama"


def test_reading_stops_once_what_is_wanted_is_known(tmp_path: Path) -> None:
    # What follows the wanted keys is garbage the reader never reaches.
    data = gguf_bytes(LLAMA_KVS[:4], kv_count=10**4) + b"\xff" * 64
    header = read_header(write_gguf(tmp_path / "m.gguf", data))
    assert (header.name, header.block_count) == ("Synthetic Llama", 2)


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.integers(0, 400), st.data())
def test_any_bytes_give_a_header_or_a_gguf_error(
    tmp_path: Path, tail: bytes, cut: int, data: st.DataObject
) -> None:
    base = gguf_bytes(LLAMA_KVS)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255))))
    mutated = bytearray(base[:cut] + tail if cut < len(base) else base + tail)
    for index, value in flips:
        if index < len(mutated):
            mutated[index] = value
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(mutated))
    try:
        header = read_header(path)
    except GGUFError as exc:
        assert exc.code in ("not_gguf", "unsupported_gguf_version", "invalid_gguf")
    else:
        assert header.architecture and len(header.architecture.encode()) <= 4096


def test_the_start_of_a_file_tells_its_architecture_or_nothing_yet(tmp_path: Path) -> None:
    data = gguf_bytes(LLAMA_KVS)
    cut = len(gguf_bytes(LLAMA_KVS[:1])) + 5  # inside the second key/value
    header = parse_header_start(data[:cut], "org/repo:m.gguf")
    assert header is not None and (header.architecture, header.name) == ("llama", None)
    # The whole header: what reading the file gives.
    assert parse_header_start(data, "w") == read_header(write_gguf(tmp_path / "m.gguf", data))
    for short in (b"", b"GG", b"GGUF\x03\0", data[:30]):  # before the architecture is known
        assert parse_header_start(short, "w") is None
    with pytest.raises(GGUFError) as exc:
        parse_header_start(b"<html>", "org/repo:m.gguf")
    assert exc.value.code == "not_gguf" and "org/repo:m.gguf" in exc.value.message


def test_default_names_of_a_repository_s_gguf_file() -> None:
    assert gguf_model_name("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert gguf_model_name("sub/dir/model q4 (new).gguf") == "model-q4-new-"
    assert gguf_model_name("_x..y.GGUF") == "x.y"
    assert gguf_model_name("a" * 200 + ".gguf") == "a" * 128
    with pytest.raises(ModelError) as exc:
        gguf_model_name("....gguf")
    assert exc.value.code == "invalid_name"


def test_the_convert_command_flag_is_split_like_the_worker_command(tmp_path: Path) -> None:
    args = _parser().parse_args(["--convert-command", "python3 -m my.converter --fast"])
    assert args.convert_command == "python3 -m my.converter --fast"
    assert _parser().parse_args([]).convert_command.endswith("-m rbee_worker.gguf_import")
    settings = HiveSettings(models_dir=tmp_path / "m", convert_command=["a", "b"])
    assert settings.convert_command == ("a", "b")
    assert HiveSettings(models_dir=tmp_path / "m").convert_command == DEFAULT_CONVERT_COMMAND
    with pytest.raises(ValueError, match="convert_command"):
        HiveSettings(models_dir=tmp_path / "m", convert_command=[])


# -- model_import through a hive -------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if ".import-" in p.name)


def _catalog(models_dir: Path) -> dict[str, Any]:
    path = models_dir / "catalog.json"
    models: dict[str, Any] = json.loads(path.read_text())["models"] if path.exists() else {}
    return models


def _runs(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


@pytest.mark.anyio
async def test_import_converts_once_narrating_and_a_second_import_is_instant(
    start_hive: Any,
    make_settings: Settings,
    kit: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count, env_out = tmp_path / "runs.txt", tmp_path / "env.txt"
    src = write_gguf(tmp_path / "external" / "ggufs" / "tiny.gguf")
    monkeypatch.setenv("RBEE_HIVE_TOKEN", "the-hive-s-own-secret")
    monkeypatch.setenv("HF_TOKEN", "the-user-s-hub-token")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "the-user-s-old-hub-token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    settings = make_settings(
        convert_command=fake_converter("--count", str(count), "--env-out", str(env_out))
    )
    async with start_hive(settings) as h:
        result, events = await kit.run_job(h.client, "model_import", name="tiny", path=str(src))
        target = settings.models_dir / "tiny"
        assert result == {
            "name": "tiny",
            "size_bytes": (target / "config.json").stat().st_size + 1000,
            "source": "gguf",
            "path": str(target),
            "revision": None,
            "repo_id": None,
            "source_file": str(src),
            "sha256": _sha256(src),
        }
        config = json.loads((target / "config.json").read_text())
        assert config["source_bytes"] == src.stat().st_size and config["dtype"] == "float32"
        said = [n.message for n in kit.narrations(events, "model_import")]
        assert any("converting tiny.gguf (llama, 2 layers" in m and "to float32" in m for m in said)
        assert "reading tiny.gguf (FAKE converter)" in said  # the converter's steps, narrated
        assert any(m.startswith("imported tiny") for m in said)
        steps = kit.progresses(events, "model_import")
        assert any(p.message.startswith("sha256:") for p in steps)
        writes = [p for p in steps if p.message.startswith("write:")]
        assert writes and writes[-1].current == writes[-1].total == 4
        entry = _catalog(settings.models_dir)["tiny"]
        assert entry["source"] == "gguf" and entry["sha256"] == _sha256(src)
        assert (entry["size"], entry["mtime_ns"]) == (src.stat().st_size, src.stat().st_mtime_ns)
        assert (entry["dtype"], entry["architecture"], entry["parameters"]) == (
            "float32",
            "llama",
            250,
        )
        listed, _ = await kit.run_job(h.client, "model_list")
        assert listed["models"] == [result]
        # The converter's log holds what it said besides its JSON; its environment holds none
        # of the hive's credentials nor the user's Hugging Face token, and it runs offline.
        log = (settings.logs_dir / "imports" / "tiny.log").read_text()
        assert "this line is for the log" in log and "exited with status 0" in log
        env = json.loads(env_out.read_text())
        assert not {"RBEE_HIVE_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(env)
        assert env["HF_HUB_OFFLINE"] == "1"
        assert _runs(count) == 1

        # The same file again: nothing converted.
        again, events = await kit.run_job(h.client, "model_import", name="tiny", path=str(src))
        assert again == result and _runs(count) == 1
        assert any("already imported" in n.message for n in kit.narrations(events))

        # The same bytes elsewhere (another path, another mtime): known by their digest.
        copy = tmp_path / "external" / "copy.gguf"
        shutil.copyfile(src, copy)
        again, _ = await kit.run_job(h.client, "model_import", name="tiny", path=str(copy))
        assert again["source_file"] == str(copy) and _runs(count) == 1
        # A model whose converted files were removed by hand is converted again.
        (target / "config.json").unlink()
        again, _ = await kit.run_job(h.client, "model_import", name="tiny", path=str(src))
        assert (target / "config.json").is_file() and _runs(count) == 2
        assert again == result

        # Another dtype, or another file, under the same name: refused.
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(
                h.client, "model_import", name="tiny", path=str(src), dtype="bfloat16"
            )
        assert exc.value.code == "model_exists" and "float32" in exc.value.message
        other = write_gguf(
            tmp_path / "external" / "other.gguf", gguf_bytes([("general.name", STR, "Other")])
        )
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="tiny", path=str(other))
        assert exc.value.code == "model_exists"
        # ... and under another name it is a model of its own.
        second, _ = await kit.run_job(
            h.client, "model_import", name="other", path=str(other), dtype="bfloat16"
        )
        assert second["sha256"] == _sha256(other) and _runs(count) == 3

        # Deleting an imported model removes what was converted, never the source file.
        await kit.run_job(h.client, "model_delete", name="tiny")
        assert not target.exists() and src.exists() and copy.exists()
        assert "tiny" not in _catalog(settings.models_dir)
    assert _leftovers(settings.models_dir) == []


@pytest.mark.anyio
async def test_imports_are_refused_before_any_work(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path, model_dir: Path
) -> None:
    count = tmp_path / "runs.txt"
    external = tmp_path / "external"
    outside = write_gguf(tmp_path / "elsewhere" / "m.gguf")
    (external / "dir.gguf").mkdir(parents=True)
    cases: list[tuple[str, str, str]] = [
        (str(outside), "path_not_allowed", "not under a model root"),
        (str(external / "ln.gguf"), "path_not_allowed", "not under a model root"),
        (str(external / "missing.gguf"), "path_not_found", "does not exist"),
        (str(external / "dir.gguf"), "not_a_file", "not a regular file"),
        (str(write_gguf(external / "m.bin")), "not_gguf", "must end in .gguf"),
        (str(write_gguf(external / "zip.gguf", b"PK\x03\x04")), "not_gguf", "GGUF"),
        (
            str(write_gguf(external / "v1.gguf", gguf_bytes(version=1))),
            "unsupported_gguf_version",
            "version 1",
        ),
        (
            str(write_gguf(external / "mamba.gguf", gguf_bytes(arch="mamba"))),
            "unsupported_architecture",
            "'mamba' model; this hive imports GGUF files of these architectures: gemma2,",
        ),
    ]
    (external / "ln.gguf").symlink_to(outside)
    settings = make_settings(convert_command=fake_converter("--count", str(count)))
    async with start_hive(settings) as h:
        for path, code, words in cases:
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_import", name="m", path=path)
            assert (exc.value.code, path) == (code, path)
            assert words in exc.value.message, exc.value.message
        # A name taken by a registered model is not imported over.
        await kit.run_job(h.client, "model_register", name="taken", path=str(model_dir))
        src = write_gguf(external / "ok.gguf")
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="taken", path=str(src))
        assert exc.value.code == "model_exists"
        # Nor is a directory someone put into the models directory.
        (settings.models_dir / "handmade").mkdir()
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="handmade", path=str(src))
        assert exc.value.code == "model_exists"
    assert not count.exists()  # the converter never ran
    assert set(_catalog(settings.models_dir)) == {"taken"}
    assert sorted(SUPPORTED_ARCHITECTURES) == [
        "gemma2",
        "gemma3",
        "llama",
        "mistral",
        "phi3",
        "qwen2",
        "qwen3",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("flags", "code", "words"),
    [
        (("--refuse", "unsupported_architecture"), "unsupported_architecture", "FAKE refusal"),
        (("--crash",), "conversion_failed", "RuntimeError: FAKE converter crashed"),
        (("--no-done",), "conversion_failed", "without saying it was done"),
        (None, "conversion_failed", "could not start the converter"),  # no such command
    ],
)
async def test_a_converter_that_refuses_or_fails_leaves_nothing_behind(
    start_hive: Any,
    make_settings: Settings,
    kit: Any,
    tmp_path: Path,
    flags: tuple[str, ...] | None,
    code: str,
    words: str,
) -> None:
    command = fake_converter(*flags) if flags is not None else (str(tmp_path / "no-converter"),)
    src = write_gguf(tmp_path / "external" / "m.gguf")
    settings = make_settings(convert_command=command)
    async with start_hive(settings) as h:
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="m", path=str(src))
        assert exc.value.code == code and words in exc.value.message, exc.value.message
        if "crashed" in words:
            assert str(settings.logs_dir / "imports" / "m.log") in exc.value.message
            assert "Traceback" not in exc.value.message  # folded to its last line
        listed, _ = await kit.run_job(h.client, "model_list")
        assert listed["models"] == []
    assert _leftovers(settings.models_dir) == [] and not (settings.models_dir / "m").exists()
    assert "m" not in _catalog(settings.models_dir)


@pytest.mark.anyio
async def test_cancelling_the_import_kills_the_converter_s_process_group(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    src = write_gguf(tmp_path / "external" / "m.gguf")
    settings = make_settings(convert_command=fake_converter("--hang", "--pids", str(pids_file)))
    async with start_hive(settings) as h:
        created = await h.client.create("model_import", name="m", path=str(src))
        events = h.client.events(created.job_id)
        async for item in events:  # a job starts once it has a subscriber
            if getattr(item.event, "message", "").startswith("reading m.gguf"):
                break
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 2 and not any(kit.gone(pid) for pid in pids)
        assert _leftovers(settings.models_dir)  # the conversion's directory, while it runs
        # Busy meanwhile: neither deleted, listed, nor imported from another file.
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_delete", name="m")
        assert exc.value.code == "model_busy"
        other = write_gguf(tmp_path / "external" / "other.gguf")
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="m", path=str(other))
        assert exc.value.code == "model_busy"
        await h.client.cancel(created.job_id)
        async for item in events:
            if getattr(item, "terminal", False):
                break
        assert (await h.client.status(created.job_id)).state == "cancelled"
        await kit.wait_for(lambda: all(kit.gone(pid) for pid in pids), 10.0)
        await kit.wait_for(lambda: not h.hive.catalog.imports.running, 10.0)
        assert _leftovers(settings.models_dir) == []
        assert "m" not in _catalog(settings.models_dir)
        assert "cancelled" in (settings.logs_dir / "imports" / "m.log").read_text()


@pytest.mark.anyio
async def test_concurrent_imports_of_one_model_share_one_conversion(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    count, go = tmp_path / "runs.txt", tmp_path / "go"
    src = write_gguf(tmp_path / "external" / "m.gguf")
    command = fake_converter("--count", str(count), "--wait-for", str(go))
    async with start_hive(make_settings(convert_command=command)) as h:
        results: list[Any] = []
        seen: list[list[JobEvent]] = []

        def go_on_join(event: JobEvent) -> None:
            if isinstance(event.event, Narration) and "joining" in event.event.message:
                go.touch()

        async def run() -> None:
            result, events = await kit.run_job(
                h.client, "model_import", go_on_join, name="m", path=str(src)
            )
            results.append(result)
            seen.append(events)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            tg.start_soon(run)
    assert len(results) == 2 and results[0] == results[1]
    assert _runs(count) == 1
    # Both jobs heard the converter.
    assert all(kit.progresses(events, "model_import") for events in seen)


@pytest.mark.anyio
async def test_stopping_the_hive_kills_a_running_converter(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids"
    src = write_gguf(tmp_path / "external" / "m.gguf")
    settings = make_settings(convert_command=fake_converter("--hang", "--pids", str(pids_file)))
    with anyio.fail_after(30):
        async with start_hive(settings) as h:
            created = await h.client.create("model_import", name="m", path=str(src))
            async for item in h.client.events(created.job_id):
                if getattr(item.event, "message", "").startswith("reading m.gguf"):
                    break
    pids = [int(p) for p in pids_file.read_text().split()]
    await kit.wait_for(lambda: all(kit.gone(pid) for pid in pids), 10.0)
    assert _leftovers(settings.models_dir) == []


@pytest.mark.anyio
async def test_an_imported_model_whose_directory_was_removed_can_be_deleted_and_its_name_reused(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    src = write_gguf(tmp_path / "external" / "m.gguf")
    other = write_gguf(
        tmp_path / "external" / "other.gguf", gguf_bytes([("general.name", STR, "Other")])
    )
    settings = make_settings(convert_command=fake_converter())
    async with start_hive(settings) as h:
        await kit.run_job(h.client, "model_import", name="m", path=str(src))
        shutil.rmtree(settings.models_dir / "m")  # removed by hand: the entry stays
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", name="m", path=str(other))
        assert exc.value.code == "model_exists" and "delete it first" in exc.value.message
        # What the refusal says to do works: the entry is forgotten (nothing else is touched).
        deleted, _ = await kit.run_job(h.client, "model_delete", name="m")
        assert (deleted["name"], deleted["source"], deleted["size_bytes"]) == ("m", "gguf", 0)
        assert "m" not in _catalog(settings.models_dir) and src.exists()
        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_delete", name="m")
        assert exc.value.code == "model_not_found"
        again, _ = await kit.run_job(h.client, "model_import", name="m", path=str(other))
        assert again["sha256"] == _sha256(other)


@pytest.mark.anyio
async def test_an_import_never_removes_the_running_conversion_of_another_name(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    # "m"'s conversion directories are ".m.import-XXXXXXXX"; "m.import-x"'s start the same way.
    pids_file = tmp_path / "pids"
    src = write_gguf(tmp_path / "external" / "m.gguf")
    hung = make_settings(convert_command=fake_converter("--hang", "--pids", str(pids_file)))
    async with start_hive(hung) as h:
        created = await h.client.create("model_import", name="m.import-x", path=str(src))
        events = h.client.events(created.job_id)
        async for item in events:
            if getattr(item.event, "message", "").startswith("reading m.gguf"):
                break
        running = _leftovers(hung.models_dir)
        assert len(running) == 1
        h.hive.catalog.imports.convert_command = fake_converter()
        await kit.run_job(h.client, "model_import", name="m", path=str(src))
        assert _leftovers(hung.models_dir) == running  # still there, still in use
        await h.client.cancel(created.job_id)
        async for item in events:
            if getattr(item, "terminal", False):
                break
        pids = [int(p) for p in pids_file.read_text().split()]
        await kit.wait_for(lambda: all(kit.gone(pid) for pid in pids), 10.0)
        await kit.wait_for(lambda: not h.hive.catalog.imports.running, 10.0)
    assert _leftovers(hung.models_dir) == []


@pytest.mark.anyio
async def test_the_catalog_removes_what_interrupted_imports_left_when_it_starts(
    start_hive: Any, make_settings: Settings
) -> None:
    # What a hive killed mid-import leaves: ".{name}.import-XXXXXXXX" directories.
    settings = make_settings()
    models = settings.models_dir
    (models / ".locks").mkdir(parents=True)
    left = [models / ".tiny.import-abcd_123", models / ".m.import-x.import-0a1b2c3d"]
    busy = models / ".busy.import-zz99yy88"  # another process's import, running: its lock held
    kept = [
        models / ".m.import-toolongsuffix",  # no import's
        models / ".m.import-ABCDEFGH",  # mkdtemp's suffixes are lower case
        models / "tiny",  # a model
    ]
    for directory in [*left, busy, *kept]:
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"\0" * 10)
    (models / ".file.import-abcd1234").write_text("a file, not a directory")
    held = filelock.FileLock(str(models / ".locks" / "busy.lock"))
    held.acquire()
    try:
        async with start_hive(settings):
            assert not any(d.exists() for d in left)
            assert busy.is_dir() and all(d.is_dir() for d in kept)
            assert (models / ".file.import-abcd1234").is_file()
    finally:
        held.release()


@pytest.mark.anyio
async def test_a_source_file_that_changes_during_its_import_is_not_recorded(
    start_hive: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    # The digest and the conversion read the file one after the other: a file still being
    # written (a copy not finished) would be recorded with a digest of other bytes.
    go = tmp_path / "go"
    src = write_gguf(tmp_path / "external" / "m.gguf")
    settings = make_settings(convert_command=fake_converter("--wait-for", str(go)))
    async with start_hive(settings) as h:

        def grow_then_go(event: JobEvent) -> None:
            message = getattr(event.event, "message", "")
            if isinstance(event.event, Narration) and message.startswith("reading m.gguf"):
                with src.open("ab") as f:
                    f.write(b"\0" * 100)
                go.touch()

        with pytest.raises(RemoteJobFailed) as exc:
            await kit.run_job(h.client, "model_import", grow_then_go, name="m", path=str(src))
        assert exc.value.code == "source_changed", exc.value.message
        assert "changed while it was imported" in exc.value.message
        assert "m" not in _catalog(settings.models_dir)
        assert not (settings.models_dir / "m").exists()
        # Once it stays put, it is imported, with the digest of what was converted.
        go.touch()
        done, _ = await kit.run_job(h.client, "model_import", name="m", path=str(src))
        assert done["sha256"] == _sha256(src)
    assert _leftovers(settings.models_dir) == []


# -- model_download of one GGUF file ---------------------------------------------------------------

REPO = "rbee-test/tiny-gguf"


@pytest.mark.anyio
async def test_download_of_one_gguf_file_then_import(
    start_hive: Any, fake_hub: Any, make_settings: Settings, kit: Any, tmp_path: Path
) -> None:
    count = tmp_path / "runs.txt"
    data = gguf_bytes(LLAMA_KVS) + os.urandom(200_000)  # a header, then SYNTHETIC "tensors"
    files = {
        "tiny.Q4_0.gguf": data,
        "other.Q8_0.gguf": gguf_bytes(arch="mamba"),
        "README.md": b"# tiny",
        "fake.gguf": b"<html>not a model</html>" * 100,
    }
    async with fake_hub() as (hub_url, hub):
        sha = hub.add(REPO, files)
        settings = make_settings(
            hf_endpoint=hub_url, convert_command=fake_converter("--count", str(count))
        )
        async with start_hive(settings) as h:
            result, events = await kit.run_job(
                h.client, "model_download", repo_id=REPO, file="tiny.Q4_0.gguf"
            )
            assert (result["name"], result["source"], result["repo_id"], result["revision"]) == (
                "tiny.Q4_0",
                "gguf",
                REPO,
                sha,
            )
            assert result["sha256"] == hashlib.sha256(data).hexdigest()
            assert result["path"] == str(settings.models_dir / "tiny.Q4_0")
            # Only that file was fetched (its start first, to judge it), into the hive's own
            # cache.
            probe = f"bytes=0-{PROBE_BYTES - 1}"
            assert hub.file_gets("tiny.Q4_0.gguf") == [probe, None]
            assert not hub.file_gets("other.Q8_0.gguf") and not hub.file_gets("README.md")
            assert Path(result["source_file"]).is_relative_to(settings.hf_cache_dir)
            fetched = kit.progresses(events, "model_download")
            assert fetched and fetched[-1].current == fetched[-1].total == len(data)
            assert kit.progresses(events, "model_import")
            entry = _catalog(settings.models_dir)["tiny.Q4_0"]
            assert (entry["repo_id"], entry["revision"], entry["file"]) == (
                REPO,
                sha,
                "tiny.Q4_0.gguf",
            )

            # Again: nothing fetched, nothing converted.
            again, _ = await kit.run_job(
                h.client, "model_download", repo_id=REPO, file="tiny.Q4_0.gguf"
            )
            assert again == result
            assert len(hub.file_gets("tiny.Q4_0.gguf")) == 2 and _runs(count) == 1

            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(
                    h.client, "model_download", repo_id=REPO, file="none.gguf", name="x"
                )
            assert exc.value.code == "file_not_found"
            assert "fake.gguf, other.Q8_0.gguf, tiny.Q4_0.gguf" in exc.value.message
            # A file of an architecture the hive does not import is refused by its first bytes,
            # before it is downloaded.
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, file="other.Q8_0.gguf")
            assert exc.value.code == "unsupported_architecture"
            assert f"{REPO}:other.Q8_0.gguf holds a 'mamba' model" in exc.value.message
            assert hub.file_gets("other.Q8_0.gguf") == [probe]
            # ... and one that is no GGUF file at all.
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(h.client, "model_download", repo_id=REPO, file="fake.gguf")
            assert exc.value.code == "not_gguf"
            assert hub.file_gets("fake.gguf") == [probe]
            # A name taken by another model is refused before anything is fetched.
            before = len(hub.requests)
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(
                    h.client,
                    "model_download",
                    repo_id=REPO,
                    file="other.Q8_0.gguf",
                    name="tiny.Q4_0",
                )
            assert exc.value.code == "model_exists" and len(hub.requests) == before
            # ... and so is the same file as another dtype than the name's.
            with pytest.raises(RemoteJobFailed) as exc:
                await kit.run_job(
                    h.client,
                    "model_download",
                    repo_id=REPO,
                    file="tiny.Q4_0.gguf",
                    dtype="bfloat16",
                )
            assert exc.value.code == "model_exists" and "as float32" in exc.value.message
            assert len(hub.requests) == before
    assert _runs(count) == 1


# -- the real converter ----------------------------------------------------------------------------

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_real_converter_imports_smollm2_once(
    start_hive: Any, make_settings: Settings, kit: Any, smollm2_gguf: Path, tmp_path: Path
) -> None:
    # The hive's default converter: python -m rbee_worker.gguf_import with this interpreter.
    settings = make_settings(
        convert_command=DEFAULT_CONVERT_COMMAND,
        model_roots=(tmp_path / "models", smollm2_gguf.parent),
    )
    async with start_hive(settings) as h:
        started = time.monotonic()
        result, events = await kit.run_job(
            h.client, "model_import", name="smollm2", path=str(smollm2_gguf)
        )
        took = time.monotonic() - started
        target = settings.models_dir / "smollm2"
        assert (result["source"], result["path"], result["sha256"]) == (
            "gguf",
            str(target),
            SMOLLM2_SHA256,
        )
        config = json.loads((target / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert (target / "model.safetensors").is_file()
        assert (target / "tokenizer_config.json").is_file()
        steps = [n.fields.get("step") for n in kit.narrations(events, "model_import")]
        assert [s for s in steps if s] == ["read", "tokenizer", "weights", "write"]
        writes = [
            p for p in kit.progresses(events, "model_import") if p.message.startswith("write")
        ]
        assert writes and writes[-1].current == writes[-1].total and "(100%)" in writes[-1].message

        started = time.monotonic()
        again, events = await kit.run_job(
            h.client, "model_import", name="smollm2", path=str(smollm2_gguf)
        )
        instant = time.monotonic() - started
        assert again == result
        assert any("already imported" in n.message for n in kit.narrations(events))
    print(f"SmolLM2 imported through the hive in {took:.1f} s; imported again in {instant:.2f} s")
