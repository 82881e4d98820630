"""TLS material: kubernetes.io/tls Secrets -> validated PEM files for nginx, and the controller's
self-signed default certificate (unknown SNI names, TLS hosts without a secretName, and hosts
whose secret is broken, which then answer with an error page).

A secret is checked before nginx ever sees it (type, both keys, PEM parses, the key belongs to
the certificate): nginx refuses a whole configuration over one bad certificate, and one tenant's
broken secret must not stop everyone else's changes from being applied.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingress.model import TlsCert
from knet.kube.models import Secret

log = logging.getLogger("knet.ingress.tls")

TLS_TYPE = "kubernetes.io/tls"
DEFAULT_CERT = "default.pem"


def _public(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_secret(secret: Secret | None, key: str) -> TlsCert:
    """A TlsCert for the secret "ns/name" (`key`): the PEM to write, or why it cannot be used."""
    if secret is None:
        return TlsCert(key, error=f"secret {key} not found")
    if secret.type != TLS_TYPE:
        return TlsCert(key, error=f"secret {key} has type {secret.type}, want {TLS_TYPE}")
    crt, pkey = secret.decoded("tls.crt"), secret.decoded("tls.key")
    if not crt or not pkey:
        return TlsCert(key, error=f"secret {key} lacks tls.crt or tls.key")
    try:
        certs = x509.load_pem_x509_certificates(crt)
    except ValueError as e:
        return TlsCert(key, error=f"secret {key}: tls.crt is not a PEM certificate ({e})")
    try:
        private = serialization.load_pem_private_key(pkey, password=None)
    except (ValueError, TypeError) as e:
        return TlsCert(key, error=f"secret {key}: tls.key is not an unencrypted PEM private key ({e})")
    if _public(private.public_key()) != _public(certs[0].public_key()):
        return TlsCert(key, error=f"secret {key}: tls.key does not belong to the certificate in tls.crt")
    now = datetime.datetime.now(datetime.UTC)
    if certs[0].not_valid_after_utc < now:
        # Still served: an expired certificate is the owner's to renew, and clients report it clearly.
        log.warning("certificate of secret %s expired at %s", key, certs[0].not_valid_after_utc)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    pem += private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return TlsCert(key, pem=pem)


def self_signed(common_name: str, hosts: Iterable[str] = (), days: int = 3650,
                issuer: tuple[x509.Certificate, object] | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `common_name` + SAN `hosts`; signed by `issuer` (cert, key)
    when given, else self-signed. Used for the default certificate, and by tests and the lab."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer[0].subject if issuer else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    sans = [x509.DNSName(h) for h in hosts]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=issuer is None and not sans, path_length=None),
                                    critical=True)
    signer = issuer[1] if issuer else key
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_private(path: str, data: bytes) -> None:
    """Write a key file atomically with mode 0600 from the start (never briefly world-readable)."""
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_default_certificate(cert_dir: str) -> str:
    """The default certificate file (created once per run directory)."""
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    path = os.path.join(cert_dir, DEFAULT_CERT)
    if not os.path.exists(path):
        crt, key = self_signed("knet-ingress default certificate")
        _write_private(path, crt + key)
    return path


def write_certificates(cert_dir: str, certs: Iterable[TlsCert]) -> list[str]:
    """Write every usable certificate (chain + key in one 0600 file); returns the file names.
    Stale files are removed separately (`prune`), after nginx stopped referring to them."""
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    names = []
    for cert in certs:
        name = cert.file_name
        if name is None:
            continue
        path = os.path.join(cert_dir, name)
        if not os.path.exists(path):
            _write_private(path, cert.pem)
        names.append(name)
    return names


def prune(cert_dir: str, keep: Iterable[str]) -> None:
    keep_set = set(keep) | {DEFAULT_CERT}
    for name in os.listdir(cert_dir):
        if name.endswith(".pem") and name not in keep_set:
            os.unlink(os.path.join(cert_dir, name))
