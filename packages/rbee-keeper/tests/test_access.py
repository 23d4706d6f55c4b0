"""The keeper's token and TLS trust: what it presents to the queen, what it says when refused,
and ``rbee cert generate|fingerprint``. The fake queen checks tokens with jobproto's security
middleware, as the real one does."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rbee_contracts.auth import keeper_token, write_private_file
from rbee_keeper.certs import fingerprint

Invoke = Callable[..., Result]


def test_the_token_reaches_the_queen_as_a_bearer_header(
    fake_queen: str, fake_queen_token: str, env: dict[str, str], invoke: Invoke
) -> None:
    # The fake queen answers /v1/jobs only to "Authorization: Bearer <its keeper token>".
    refused = httpx.get(f"{fake_queen}/v1/jobs")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    by_env = invoke(
        "jobs", "list", "--json", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN=fake_queen_token
    )
    assert by_env.exit_code == 0, by_env.stderr
    assert "jobs" in json.loads(by_env.stdout)
    assert fake_queen_token not in by_env.stdout + by_env.stderr


def test_the_token_file_is_read_and_must_be_private(
    fake_queen: str, fake_queen_token: str, tmp_path: Path, invoke: Invoke
) -> None:
    copy = tmp_path / "keeper.token"
    write_private_file(copy, fake_queen_token + "\n")
    ok = invoke("jobs", "list", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN_FILE=str(copy))
    assert ok.exit_code == 0, ok.stderr

    copy.chmod(0o644)
    loose = invoke("jobs", "list", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN_FILE=str(copy))
    assert loose.exit_code == 2
    assert f"chmod 600 {copy}" in loose.stderr
    assert fake_queen_token not in loose.stdout + loose.stderr

    missing = tmp_path / "nothing.token"
    gone = invoke("jobs", "list", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN_FILE=str(missing))
    assert gone.exit_code == 2
    assert f"token file {missing} does not exist" in gone.stderr


def test_no_token_is_a_refusal_that_says_what_to_set(
    fake_queen: str, env: dict[str, str], invoke: Invoke
) -> None:
    result = invoke("infer", "hi", "-m", "tiny", "--no-autostart", RBEE_QUEEN_URL=fake_queen)
    assert result.exit_code == 5
    err = result.stderr
    assert "needs the keeper's token, and the keeper found no token" in err
    assert "RBEE_TOKEN" in err and "RBEE_TOKEN_FILE" in err
    default = Path(env["XDG_STATE_HOME"]) / "rbee" / "queen" / "keeper.token"
    assert str(default) in err


def test_a_wrong_token_is_refused_and_never_printed(
    fake_queen: str, env: dict[str, str], invoke: Invoke
) -> None:
    wrong = keeper_token(os.urandom(32))
    for args in (("infer", "hi", "-m", "tiny", "--no-autostart"), ("jobs", "list")):
        result = invoke(*args, "--json", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN=wrong)
        assert result.exit_code == 5, result.stderr
        assert "did not accept the token from env RBEE_TOKEN" in result.stderr
        assert wrong not in result.stdout + result.stderr
        error = json.loads(result.stdout.splitlines()[-1])
        assert error["code"] == "unauthorized" and error["exit_code"] == 5
        said = " ".join(result.stderr.split())
        assert "fix or unset RBEE_TOKEN (it wins over token_file)" in said

    # The default file, left by a queen other than the one that answers now:
    stale = Path(env["XDG_STATE_HOME"]) / "rbee" / "queen" / "keeper.token"
    write_private_file(stale, wrong + "\n")
    result = invoke("jobs", "list", RBEE_QUEEN_URL=fake_queen)
    assert result.exit_code == 5, result.stderr
    said = " ".join(result.stderr.split())
    assert f"did not accept the token from file {stale}, which another queen wrote" in said
    assert "`rbee queen stop` then `rbee queen start` makes it write its own" in said
    assert wrong not in result.stdout + result.stderr


# -- certificates ---------------------------------------------------------------------------------


def test_cert_generate_writes_a_private_key_and_prints_the_fingerprint(
    tmp_path: Path, invoke: Invoke
) -> None:
    out = tmp_path / "tls"
    result = invoke(
        "cert", "generate", "--host", "gpu1.lan", "--host", "10.0.0.7", "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    key, cert = out / "key.pem", out / "cert.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert shown["key"] == str(key) and shown["cert"] == str(cert)
    # The fingerprint printed is SHA-256 over the certificate's DER bytes, computed here apart.
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    expected = hashlib.sha256(loaded.public_bytes(Encoding.DER)).hexdigest().upper()
    assert shown["fingerprint_sha256"].replace(":", "") == expected
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gpu1.lan"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert "--tls-cert" in result.stderr and "tls_ca" in result.stderr

    again = invoke("cert", "fingerprint", str(cert))
    assert again.exit_code == 0, again.stderr
    assert again.stdout.strip() == shown["fingerprint_sha256"]
    # An existing pair is never overwritten: clients may have pinned it.
    twice = invoke("cert", "generate", "--host", "gpu1.lan", "--out", str(out))
    assert twice.exit_code != 0 and "exists" in twice.stderr
    assert fingerprint(cert) == shown["fingerprint_sha256"]


def test_cert_generate_refuses_a_bad_host(tmp_path: Path, invoke: Invoke) -> None:
    result = invoke("cert", "generate", "--host", "a b", "--out", str(tmp_path / "x"))
    assert result.exit_code != 0
    assert "neither a host name nor an IP address" in result.stderr


@pytest.fixture
def https_queen(
    tmp_path: Path, invoke: Invoke, fake_queens: Callable[..., str]
) -> tuple[str, Path, Path]:
    """A fake queen serving HTTPS with a certificate ``rbee cert generate`` made; yields its URL,
    its certificate and its keeper token file."""
    tls = tmp_path / "tls"
    made = invoke(
        "cert", "generate", "--host", "127.0.0.1", "--host", "localhost", "--out", str(tls)
    )
    assert made.exit_code == 0, made.stderr
    state = tmp_path / "queen-state"
    url = fake_queens(
        *("--state-dir", str(state)),
        *("--tls-cert", str(tls / "cert.pem"), "--tls-key", str(tls / "key.pem")),
    )
    return url.replace("http://", "https://"), tls / "cert.pem", state / "keeper.token"


def test_an_https_queen_is_verified_with_tls_ca_and_refused_without(
    https_queen: tuple[str, Path, Path], env: dict[str, str], invoke: Invoke
) -> None:
    url, cert, token_file = https_queen
    base = {"RBEE_QUEEN_URL": url, "RBEE_TOKEN_FILE": str(token_file)}
    trusted = invoke("jobs", "list", **base, RBEE_TLS_CA=str(cert))
    assert trusted.exit_code == 0, trusted.stderr
    infer = invoke("infer", "hi", "-m", "tiny", **base, RBEE_TLS_CA=str(cert))
    assert infer.exit_code == 0, infer.stderr
    assert infer.stdout == "Hello, world!\n"

    untrusted = invoke("jobs", "list", **base)
    assert untrusted.exit_code == 3
    assert "presented a certificate that cannot be trusted" in untrusted.stderr
    assert "RBEE_TLS_CA" in untrusted.stderr
    # With autostart, an untrusted local queen is not mistaken for a stopped one.
    started = invoke("infer", "hi", "-m", "tiny", **base)
    assert started.exit_code == 3
    assert "cannot be trusted" in started.stderr and "started queen" not in started.stderr

    plain = invoke("jobs", "list", **{**base, "RBEE_QUEEN_URL": url.replace("https", "http")})
    assert plain.exit_code == 3, plain.stderr
    assert "does it serve https?" in plain.stderr

    queen_start = invoke("queen", "start", **base)  # an answering queen we cannot trust
    assert queen_start.exit_code == 3 and isinstance(queen_start.exception, SystemExit)
    assert "cannot be trusted" in queen_start.stderr and "RBEE_TLS_CA" in queen_start.stderr

    status = invoke("queen", "status", **base)  # its probe of the queen is no traceback
    assert status.exit_code == 3 and isinstance(status.exception, SystemExit), status.stderr
    assert "cannot be trusted" in status.stderr

    other = Path(env["XDG_STATE_HOME"]) / "other"
    made = invoke("cert", "generate", "--host", "127.0.0.1", "--out", str(other))
    assert made.exit_code == 0, made.stderr
    pinned_wrong = invoke("jobs", "list", **base, RBEE_TLS_CA=str(other / "cert.pem"))
    assert pinned_wrong.exit_code == 3
    wrong = other / "cert.pem"
    assert (
        f"tls_ca ({wrong}) does not vouch for it: compare `rbee cert fingerprint {wrong}` with"
        " the queen's certificate's"
    ) in " ".join(pinned_wrong.stderr.split())

    missing = invoke("jobs", "list", **base, RBEE_TLS_CA=str(other / "none.pem"))
    assert missing.exit_code == 2
    assert "tls_ca (env RBEE_TLS_CA): cannot load" in missing.stderr


def test_a_token_with_spaces_is_a_bad_setting(fake_queen: str, invoke: Invoke) -> None:
    result = invoke("jobs", "list", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN="two words")
    assert result.exit_code == 2
    assert "RBEE_TOKEN must hold one token" in result.stderr
    assert "two words" not in result.stderr


def test_a_bad_token_file_is_a_bad_setting_without_its_bytes(
    fake_queen: str, tmp_path: Path, invoke: Invoke
) -> None:
    binary = tmp_path / "binary.token"
    binary.write_bytes(b"\xffsecret-ish\xfe\n")
    binary.chmod(0o600)
    read = invoke("status", RBEE_QUEEN_URL=fake_queen, RBEE_TOKEN_FILE=str(binary))
    assert read.exit_code == 2, read.output
    assert f"token file {binary} does not hold a token" in read.stderr
    assert "secret-ish" not in read.output and "xff" not in read.output
    assert read.exception is None or isinstance(read.exception, SystemExit)

    config = tmp_path / "config.toml"
    config.write_text('token_file = "\\u0000bad"\n')
    nul = invoke("status", RBEE_QUEEN_URL=fake_queen, RBEE_CONFIG=str(config))
    assert nul.exit_code == 2, nul.output
    assert "holds a NUL character" in nul.stderr
    assert nul.exception is None or isinstance(nul.exception, SystemExit)
