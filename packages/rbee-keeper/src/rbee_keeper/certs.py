"""``rbee cert generate``: a self-signed certificate and key for a queen or hive that listens
beyond loopback, and the SHA-256 fingerprint a person compares to pin it.

The certificate names every host it is for in its subjectAltName (RFC 6125: clients match
the SAN, never the common name): a DNS name for a name, an IP address for an address. It is
its own issuer, so a client trusts it by having it as its CA file (``tls_ca``): the certificate
is pinned. Its key is an ECDSA P-256 key (small, fast, and accepted by every TLS 1.2/1.3
client), written with mode 0600; the certificate is public and written 0644.

The fingerprint is SHA-256 over the certificate's DER bytes, as ``openssl x509 -fingerprint
-sha256`` prints it (hex pairs with colons), so the two can be compared by eye.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rbee_contracts.auth import write_private_file

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "CertError",
    "GeneratedCert",
    "fingerprint",
    "generate",
]

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


class CertError(ValueError):
    """A certificate cannot be made or read; the message says why."""


@attrs.frozen
class GeneratedCert:
    cert: Path
    key: Path
    fingerprint: str
    hosts: tuple[str, ...]
    not_after: datetime.datetime


def _san(host: str) -> x509.GeneralName:
    name = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or any(c.isspace() or c in "/:@" for c in name):
        raise CertError(f"{host!r} is neither a host name nor an IP address")
    return x509.DNSName(name.lower())


def fingerprint_of(cert: x509.Certificate) -> str:
    """SHA-256 over the DER bytes, as ``AB:CD:...``."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint of the (first) PEM certificate in ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{path} holds no PEM certificate") from None
    return fingerprint_of(cert)


def generate(hosts: Sequence[str], out: Path, days: int = 825) -> GeneratedCert:
    """Write ``out/cert.pem`` (self-signed, SAN = ``hosts``) and ``out/key.pem`` (0600).

    Refuses to overwrite either file: a certificate that clients have pinned must not change
    under them by accident.
    """
    if not hosts:
        raise CertError("at least one --host is needed: the names clients use to reach it")
    if days < 1:
        raise CertError("--days must be at least 1")
    names = [_san(host) for host in dict.fromkeys(hosts)]
    cert_path, key_path = out / CERT_FILE, out / KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise CertError(f"{path} exists; remove it, or choose another --out")

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(hosts[0])[:64])])
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks a little behind
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    write_private_file(key_path, key_pem)  # 0600, atomically
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_path.chmod(0o644)
    return GeneratedCert(
        cert_path, key_path, fingerprint_of(cert), tuple(dict.fromkeys(hosts)), not_after
    )
