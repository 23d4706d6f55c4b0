import os
import socket
import stat
from typing import Any

import pytest

from rbee_contracts import auth


def test_tokens_are_derived_per_role_and_hive() -> None:
    secret = bytes(range(32))
    tokens = {
        auth.keeper_token(secret),
        auth.join_token(secret, "a"),
        auth.join_token(secret, "b"),
        auth.hive_token(secret, "a"),
        auth.hive_token(secret, "b"),
    }
    assert len(tokens) == 5
    assert auth.join_token(secret, "a") == auth.join_token(secret, "a")
    assert auth.keeper_token(secret) != auth.keeper_token(bytes(32))
    assert all(t.startswith("rbee_") and len(t) > 40 for t in tokens)


def test_secret_is_created_private_and_read_back(tmp_path) -> None:
    path = tmp_path / "state" / "secret"
    first = auth.load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert auth.load_or_create_secret(path) == first


def test_a_readable_token_file_is_refused_with_what_to_do(tmp_path) -> None:
    path = tmp_path / "t"
    path.write_text("abc\n")
    os.chmod(path, 0o644)
    with pytest.raises(auth.TokenFileError, match="chmod 600"):
        auth.read_token_file(path)
    os.chmod(path, 0o600)
    assert auth.read_token_file(path) == "abc"


@pytest.mark.parametrize("text", ["", "two words\n", "   \n"])
def test_a_token_file_holds_one_token(tmp_path, text: str) -> None:
    path = tmp_path / "t"
    auth.write_private_file(path, text)
    with pytest.raises(auth.TokenFileError):
        auth.read_token_file(path)


@pytest.mark.parametrize("data", [b"\xff\xfesecret-ish\n", b"tok\x00en\n", "t\u00f6ken".encode()])
def test_a_token_file_that_is_not_text_is_refused_without_its_bytes(tmp_path, data: bytes) -> None:
    path = tmp_path / "t"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    with pytest.raises(auth.TokenFileError, match="does not hold a token") as caught:
        auth.read_token_file(path)
    assert "\\x" not in str(caught.value) and "secret-ish" not in str(caught.value)


def test_a_token_file_name_with_a_nul_is_refused(tmp_path) -> None:
    with pytest.raises(auth.TokenFileError, match="NUL"):
        auth.read_token_file(tmp_path / "\0bad")


def test_token_from_env_prefers_the_value_then_the_file(tmp_path) -> None:
    path = tmp_path / "t"
    auth.write_private_file(path, "from-file\n")
    env = {"X": "", "X_FILE": str(path)}
    assert auth.token_from_env(env, "X", "X_FILE") == "from-file"
    assert auth.token_from_env({"X": "v", "X_FILE": str(path)}, "X", "X_FILE") == "v"
    assert auth.token_from_env({}, "X", "X_FILE") is None


def test_redact() -> None:
    assert auth.redact("a sekrit b", "sekrit", None, "") == "a *** b"


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.0.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_open_bind_refusal(host: str, loop: bool) -> None:
    assert auth.is_loopback(host) is loop
    refusal = auth.open_bind_refusal(host, None, "the hive", "set RBEE_HIVE_TOKEN")
    assert (refusal is None) is loop
    if refusal:
        assert "RBEE_HIVE_TOKEN" in refusal and host in refusal
    assert auth.open_bind_refusal(host, "t", "the hive", "x") is None


def fake_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine is ``Box`` (FQDN ``box.lan``) at 192.168.1.10 and fe80::1 on eth0."""
    table = {"Box": ["192.168.1.10"], "box.lan": ["192.168.1.10", "fe80::1%eth0"]}

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[Any]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
            for a in table[host]
        ]

    monkeypatch.setattr(socket, "gethostname", lambda: "Box")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "box.lan")
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_host_names_of_a_bound_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_machine(monkeypatch)
    names = auth.allowed_host_names("192.168.1.10", "https://Queen.Example:8500/", ["[::2]", " X "])
    assert names == ("localhost", "127.0.0.1", "::1", "192.168.1.10", "queen.example", "::2", "x")
    # a bound address names exactly where callers reach it: this machine's other names are out
    assert "box" not in auth.allowed_host_names("127.0.0.1", None)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "[::]", ""])
def test_a_wildcard_bind_answers_for_this_machines_names_and_addresses(
    monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    fake_machine(monkeypatch)
    assert auth.is_wildcard(bind)
    names = auth.allowed_host_names(bind, None)
    assert names == ("localhost", "127.0.0.1", "::1", "box", "box.lan", "192.168.1.10", "fe80::1")
    assert "0.0.0.0" not in names and "::" not in names


def test_a_machine_whose_name_does_not_resolve_still_answers_for_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_machine(monkeypatch)
    monkeypatch.setattr(socket, "gethostname", lambda: "lonely")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "lonely")
    assert auth.machine_names() == ("lonely",)
    assert not auth.is_wildcard("127.0.0.1") and not auth.is_wildcard("box")


def test_bearer_presents_a_token_and_nothing_without_one() -> None:
    assert auth.bearer("rbee_h_x") == {"Authorization": "Bearer rbee_h_x"}
    assert auth.bearer(None) == {}


def test_service_security_accepts_exactly_its_token_for_jobs() -> None:
    security = auth.service_security("rbee_h_right", ["LocalHost", "box"], ["https://ui:1"])
    assert security.auth is not None
    principal = security.auth.authenticate("rbee_h_right")
    assert principal is not None and principal.may(auth.JOBS_SCOPE)
    assert security.auth.authenticate("rbee_h_wrong") is None
    assert security.jobs_scope == auth.JOBS_SCOPE
    assert security.allowed_hosts == ("localhost", "box")
    assert security.allowed_origins == ("https://ui:1",)
    # no token: no authentication (a hive or worker allows that on loopback only)
    assert auth.service_security(None, ["localhost"]).auth is None


def test_the_keeper_importing_auth_loads_no_server_framework() -> None:
    import subprocess
    import sys

    code = "import sys, rbee_contracts.auth; print('starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_new_secret_replaces_the_secret_privately(tmp_path) -> None:
    path = tmp_path / "queen" / "secret"
    first = auth.load_or_create_secret(path)
    auth.new_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = auth.load_or_create_secret(path)
    assert len(second) == 32 and second != first
    assert auth.ENV_QUEEN_SECRET_FILE == "RBEE_QUEEN_SECRET_FILE"


def test_each_worker_has_its_own_token_derived_from_its_hives() -> None:
    hive = auth.hive_token(bytes(range(32)), "h1")
    w1, w2 = auth.worker_token(hive, "w1"), auth.worker_token(hive, "w2")
    assert len({hive, w1, w2}) == 3 and w1.startswith("rbee_w_")
    assert auth.worker_token(hive, "w1") == w1  # the queen derives what the hive derived
    assert auth.worker_token(auth.hive_token(bytes(range(32)), "h2"), "w1") != w1


def test_cleartext_warning_beyond_loopback_without_tls_only() -> None:
    assert auth.cleartext_warning("127.0.0.1", False, "q") is None
    assert auth.cleartext_warning("0.0.0.0", True, "q") is None
    warning = auth.cleartext_warning("0.0.0.0", False, "rbee-queen")
    assert warning is not None and "without TLS" in warning and "--tls-cert" in warning
