"""TLS through nginx: SNI picks each host's certificate (checked with Python ssl and curl against
a test CA), http -> https redirect, a broken secret answers 503 for its host only, unknown SNI
gets the default certificate, a rotated secret is served after one sync."""

from __future__ import annotations

import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ingress import tls
from knet_testing.ingress import ingress, path, rule, tls_secret
from tests.integration.ingress.ingress_env import Env, ns_socket

pytestmark = pytest.mark.integration


class CA:
    def __init__(self, directory: str) -> None:
        crt, key = tls.self_signed("knet test CA")
        self.cert = x509.load_pem_x509_certificate(crt)
        self.key = serialization.load_pem_private_key(key, None)
        self.path = os.path.join(directory, "ingress-test-ca.pem")
        with open(self.path, "wb") as f:
            f.write(crt)

    def issue(self, host: str) -> tuple[bytes, bytes]:
        return tls.self_signed(host, [host], issuer=(self.cert, self.key))


@pytest.fixture(scope="module")
def ca(env: Env) -> CA:
    return CA(env.lab.state_dir)


@pytest.fixture(scope="module")
def https(env: Env, ca: CA) -> Env:
    env.put(tls_secret("kuard-tls", *ca.issue("a.tls.hey")), tls_secret("b-tls", *ca.issue("b.tls.hey")),
            ingress("tls", rule("a.tls.hey", path("/", "whale-svc-a")), rule("b.tls.hey", path("/", "whale-svc-b")),
                    rule("broken.tls.hey", path("/", "whale-svc-a")),
                    tls=[{"hosts": ["a.tls.hey"], "secretName": "kuard-tls"},
                         {"hosts": ["b.tls.hey"], "secretName": "b-tls"},
                         {"hosts": ["broken.tls.hey"], "secretName": "does-not-exist"}],
                    created="2024-03-01T00:00:00Z"))
    env.sync()
    return env


def handshake(env: Env, ca: CA | None, sni: str, request_host: str | None = None) -> tuple[dict, str]:
    """TLS from the client namespace with SNI `sni`; returns (peer certificate, response)."""
    ctx = ssl.create_default_context(cafile=ca.path) if ca else ssl._create_unverified_context()
    with ns_socket(env.client_ns) as raw:
        raw.connect((env.ip, 443))
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            cert = s.getpeercert() if ca else {"der": s.getpeercert(binary_form=True)}
            s.sendall(f"GET / HTTP/1.1\r\nHost: {request_host or sni}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    return cert, data.decode(errors="replace")


def subject_cn(cert: dict) -> str:
    return next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName")


def test_sni_selects_each_hosts_certificate(https: Env, ca: CA) -> None:
    cert, resp = handshake(https, ca, "a.tls.hey")       # verified against the CA, hostname checked
    assert subject_cn(cert) == "a.tls.hey" and "Whale Type A" in resp and resp.startswith("HTTP/1.1 200")
    cert, resp = handshake(https, ca, "b.tls.hey")
    assert subject_cn(cert) == "b.tls.hey" and "Whale Type B" in resp


def test_curl_https_and_redirect(https: Env, ca: CA) -> None:
    code, body = https.curl("a.tls.hey", "/x", "--cacert", ca.path, scheme="https")
    assert code == 200 and body.startswith("Whale Type A")
    r = https.lab.exec("client", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                                  "--resolve", f"a.tls.hey:80:{https.ip}", "http://a.tls.hey/p?q=1"])
    assert r.stdout == "308 https://a.tls.hey/p?q=1"
    assert https.who("a.whale.hey") == "Whale Type A"   # hosts without TLS stay on plain http


def test_openssl_s_client_sees_sni_certificate(https: Env) -> None:
    r = https.lab.exec("client", ["openssl", "s_client", "-connect", f"{https.ip}:443", "-servername", "b.tls.hey"],
                       input="", timeout=20)
    assert "CN = b.tls.hey" in r.stdout or "CN=b.tls.hey" in r.stdout


def test_broken_secret_is_an_error_for_its_host_only(https: Env, ca: CA) -> None:
    _, resp = handshake(https, None, "broken.tls.hey")
    assert resp.startswith("HTTP/1.1 503")
    assert "TLS for host broken.tls.hey is unavailable: secret default/does-not-exist not found" in resp
    code, body = https.curl("broken.tls.hey", "/")                 # and no plain-http fallback
    assert code == 503 and "does-not-exist" in body
    assert any("broken.tls.hey" in p for p in https.controller.problems)
    assert subject_cn(handshake(https, ca, "a.tls.hey")[0]) == "a.tls.hey"


def test_unknown_sni_gets_the_default_certificate(https: Env) -> None:
    cert, resp = handshake(https, None, "nobody.example")
    name = x509.load_der_x509_certificate(cert["der"]).subject.rfc4514_string()
    assert name == "CN=knet-ingress default certificate"
    assert "Whale Default" in resp   # unknown host: the default backend, over https too


def test_secret_rotation(https: Env, ca: CA) -> None:
    before, _ = handshake(https, ca, "a.tls.hey")
    https.put(tls_secret("kuard-tls", *ca.issue("a.tls.hey")))
    assert https.sync().reloaded
    after, resp = handshake(https, ca, "a.tls.hey")
    assert after["serialNumber"] != before["serialNumber"] and "Whale Type A" in resp
    names = os.listdir(https.settings.cert_dir)
    assert len([n for n in names if n.startswith("default_kuard-tls_")]) == 1   # the old file is gone
