"""The node API's serving certificate: self-signed, made once per state directory, as a kubelet
without --tls-cert-file makes one (the API server does not verify it: kube-apiserver without
--kubelet-certificate-authority does not either; clients are verified, see server.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def ensure_self_signed(directory: str, name: str, ips: list[str]) -> tuple[str, str]:
    """(cert path, key path) of a certificate for `name` and `ips`, made if missing."""
    os.makedirs(directory, exist_ok=True)
    cert, key_path = os.path.join(directory, "kubelet.crt"), os.path.join(directory, "kubelet.key")
    if os.path.exists(cert) and os.path.exists(key_path):
        with open(cert, "rb") as f:
            existing = x509.load_pem_x509_certificate(f.read())
        sans = existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if {str(a) for a in sans.get_values_for_type(x509.IPAddress)} >= set(ips):
            return cert, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@knet-node-agent")])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    sans_list: list[x509.GeneralName] = [x509.DNSName(name)]
    sans_list += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    built = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + dt.timedelta(days=3650))
             .add_extension(x509.SubjectAlternativeName(sans_list), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
             .sign(key, hashes.SHA256()))
    fd = os.open(key_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert + ".tmp", "wb") as f:
        f.write(built.public_bytes(serialization.Encoding.PEM))
    os.replace(key_path + ".tmp", key_path)
    os.replace(cert + ".tmp", cert)
    return cert, key_path
