"""A self-signed CA and the server certificate it signs (kubectl only sends a bearer token over
TLS: client-go ignores a kubeconfig's credentials for a plain-http server), and the API server's
client certificate towards the node agents (kube-apiserver's --kubelet-client-certificate).

EC P-256 keys: generated in milliseconds, accepted by Go's and Python's TLS stacks.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DNS_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local")


@dataclass(frozen=True)
class Pki:
    ca_cert: str
    cert: str
    key: str

    def ca_pem(self) -> bytes:
        with open(self.ca_cert, "rb") as f:
            return f.read()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool = False) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure(directory: str, ips: Iterable[str], dns: Iterable[str] = DNS_NAMES, cn: str = "knet-lab") -> Pki:
    """CA (kept if present, so existing kubeconfigs stay valid) + a fresh server cert for `ips`."""
    os.makedirs(directory, exist_ok=True)
    pki = Pki(os.path.join(directory, "ca.crt"), os.path.join(directory, "apiserver.crt"),
              os.path.join(directory, "apiserver.key"))
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock differences
    ca_key_path = os.path.join(directory, "ca.key")
    if os.path.exists(pki.ca_cert) and os.path.exists(ca_key_path):
        with open(ca_key_path, "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
        with open(pki.ca_cert, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (x509.CertificateBuilder().subject_name(_name(f"{cn}-ca")).issuer_name(_name(f"{cn}-ca"))
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        _write(ca_key_path, ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), private=True)
        _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(["127.0.0.1", *ips])]
    cert = (x509.CertificateBuilder().subject_name(_name("kube-apiserver")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _write(pki.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), private=True)
    _write(pki.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pki


def kubelet_client(directory: str, cn: str = "kube-apiserver-kubelet-client") -> tuple[str, str]:
    """(cert, key) the API server shows the node agents: signed by the CA of `ensure()` (which the
    agents have in their kubeconfigs), CN kube-apiserver-kubelet-client, O system:masters, for
    client authentication only. Made anew each time, as the serving certificate is."""
    with open(os.path.join(directory, "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(directory, "ca.crt"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    paths = os.path.join(directory, "kubelet-client.crt"), os.path.join(directory, "kubelet-client.key")
    _write(paths[1], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), private=True)
    _write(paths[0], cert.public_bytes(serialization.Encoding.PEM))
    return paths
