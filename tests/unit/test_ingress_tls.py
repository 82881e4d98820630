"""TLS: secrets validated before nginx sees them, files 0600, SNI hosts, redirect, broken secrets."""

from __future__ import annotations

import os
import stat

import pytest

from ingress import tls
from ingress.compiler import Options, Snapshot, compile_table
from ingress.model import TlsCert
from knet_testing.ingress import endpoint_slice, ingress, path, rule, service, tls_secret


@pytest.fixture(scope="module")
def pair():
    return tls.self_signed("a.whale.hey", ["a.whale.hey"])


@pytest.fixture(scope="module")
def other_pair():
    return tls.self_signed("b.whale.hey", ["b.whale.hey"])


def test_valid_secret(pair):
    cert = tls.load_secret(tls_secret("kuard-tls", *pair), "default/kuard-tls")
    assert cert.error is None and b"BEGIN CERTIFICATE" in cert.pem and b"PRIVATE KEY" in cert.pem
    assert cert.file_name.startswith("default_kuard-tls_") and cert.file_name.endswith(".pem")


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p, o: None, "not found"),
    (lambda p, o: tls_secret("s", *p, kind="Opaque"), "type Opaque"),
    (lambda p, o: tls_secret("s", b"garbage", p[1]), "not a PEM certificate"),
    (lambda p, o: tls_secret("s", p[0], b"garbage"), "not an unencrypted PEM private key"),
    (lambda p, o: tls_secret("s", p[0], o[1]), "does not belong"),
])
def test_bad_secrets(pair, other_pair, make, reason):
    cert = tls.load_secret(make(pair, other_pair), "default/s")
    assert cert.error is not None and reason in cert.error and cert.file_name is None


def test_files_are_private_and_pruned(tmp_path, pair, other_pair):
    d = str(tmp_path / "certs")
    default = tls.ensure_default_certificate(d)
    a = tls.load_secret(tls_secret("a", *pair), "default/a")
    b = tls.load_secret(tls_secret("b", *other_pair), "default/b")
    names = tls.write_certificates(d, [a, b, TlsCert("default/x", error="broken")])
    assert sorted(names) == sorted([a.file_name, b.file_name])
    for name in [*names, os.path.basename(default)]:
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    tls.prune(d, [a.file_name])
    assert sorted(os.listdir(d)) == sorted([a.file_name, tls.DEFAULT_CERT])


def test_rotation_changes_the_file_name(pair, other_pair):
    a1 = tls.load_secret(tls_secret("a", *pair), "default/a")
    a2 = tls.load_secret(tls_secret("a", *other_pair), "default/a")
    assert a1.file_name != a2.file_name


def _table(ing, secrets, **opts):
    svc = [service("web")]
    return compile_table(Snapshot.of([ing], [], svc, [endpoint_slice("web", ["10.244.1.2"])], secrets), Options(**opts))


def test_sni_hosts_redirect_and_broken_secret(pair, other_pair):
    ing = ingress("t", rule("a.whale.hey", path("/", "web")), rule("b.whale.hey", path("/", "web")),
                  rule("c.whale.hey", path("/", "web")), rule("plain.whale.hey", path("/", "web")),
                  tls=[{"hosts": ["a.whale.hey"], "secretName": "kuard-tls"},
                       {"hosts": ["b.whale.hey"], "secretName": "b-tls"},
                       {"hosts": ["c.whale.hey"], "secretName": "missing"}])
    t = _table(ing, [tls_secret("kuard-tls", *pair), tls_secret("b-tls", *other_pair)])
    a, b, c, plain = (t.servers[h] for h in ("a.whale.hey", "b.whale.hey", "c.whale.hey", "plain.whale.hey"))
    assert a.tls.secret == "default/kuard-tls" and a.ssl_redirect
    assert b.tls.secret == "default/b-tls" and a.tls.file_name != b.tls.file_name
    assert c.tls.error and "missing" in c.tls.error and not c.ssl_redirect
    assert plain.tls is None and not plain.ssl_redirect
    assert any("c.whale.hey" in p for p in t.problems)
    assert t.secrets == {"default/kuard-tls", "default/b-tls", "default/missing"}


def test_redirect_can_be_turned_off(pair):
    ing = ingress("t", rule("a.whale.hey", path("/", "web")), tls=[{"hosts": ["a.whale.hey"], "secretName": "s"}],
                  annotations={"ingress.knet.io/ssl-redirect": "false"})
    assert not _table(ing, [tls_secret("s", *pair)]).servers["a.whale.hey"].ssl_redirect
    ing = ingress("t", rule("a.whale.hey", path("/", "web")), tls=[{"hosts": ["a.whale.hey"], "secretName": "s"}])
    assert not _table(ing, [tls_secret("s", *pair)], ssl_redirect=False).servers["a.whale.hey"].ssl_redirect


def test_tls_without_hosts_or_secret_and_wildcard(pair):
    a = ingress("a", rule("a.whale.hey", path("/", "web")), tls=[{"secretName": "s"}])
    w = ingress("w", rule("x.wild.hey", path("/", "web")), tls=[{"hosts": ["*.wild.hey"]}])
    snap = Snapshot.of([a, w], [], [service("web")], [endpoint_slice("web", ["10.244.1.2"])], [tls_secret("s", *pair)])
    t = compile_table(snap)
    assert t.servers["a.whale.hey"].tls.secret == "default/s"          # no hosts: this Ingress's hosts
    wild = t.servers["x.wild.hey"].tls                                 # covered by the wildcard entry
    assert wild is not None and wild.secret == "" and wild.error is None  # no secretName: default cert
    assert t.servers["x.wild.hey"].ssl_redirect


def test_tls_conflict_oldest_wins(pair, other_pair):
    old = ingress("old", rule("a.whale.hey", path("/", "web")), tls=[{"hosts": ["a.whale.hey"], "secretName": "s1"}],
                  created="2023-01-01T00:00:00Z")
    new = ingress("new", rule("a.whale.hey", path("/x", "web")), tls=[{"hosts": ["a.whale.hey"], "secretName": "s2"}])
    snap = Snapshot.of([new, old], [], [service("web")], [endpoint_slice("web", ["10.244.1.2"])],
                       [tls_secret("s1", *pair), tls_secret("s2", *other_pair)])
    t = compile_table(snap)
    assert t.servers["a.whale.hey"].tls.secret == "default/s1"
    assert any("TLS for a.whale.hey" in p and "default/new" in p for p in t.problems)
