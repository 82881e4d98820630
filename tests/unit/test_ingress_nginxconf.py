"""Routing table -> nginx.conf: golden file for the seed scenario, plus the rules of the mapping."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest

from ingress.compiler import Options, Snapshot, compile_table
from ingress.model import TlsCert
from ingress.nginxconf import Settings, config_digest, quote, render, server_name
from knet_testing.ingress import backend, endpoint_slice, ingress, path, rule, service

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "ingress_nginx.conf")
FIXED_PEM = b"-----BEGIN CERTIFICATE-----\nfixed for the golden file\n-----END CERTIFICATE-----\n"


def seed_table():
    """S21: a.whale.hey / b.whale.hey / default backend, TLS for a.whale.hey from kuard-tls,
    plus a wildcard host, an Exact path, a named port and a backend without endpoints."""
    whale = ingress(
        "whale",
        rule("a.whale.hey", path("/", "whale-svc-a")),
        rule("b.whale.hey", path("/", "whale-svc-b"), path("/health", "whale-svc-b", kind="Exact")),
        rule("*.pods.whale.hey", path("/api/", "api", "http")),
        rule(None, path("/empty", "no-endpoints")),
        default=backend("whale-svc-default"),
        tls=[{"hosts": ["a.whale.hey"], "secretName": "kuard-tls"}],
    )
    services = [service("whale-svc-a"), service("whale-svc-b"), service("whale-svc-default"),
                service("api", ("http", 8080)), service("no-endpoints")]
    slices = [endpoint_slice("whale-svc-a", ["10.244.1.2", "10.244.2.2"]),
              endpoint_slice("whale-svc-b", ["10.244.1.3"]),
              endpoint_slice("whale-svc-default", ["10.244.2.3"]),
              endpoint_slice("api", ["10.244.3.4"], port=9000, port_name="http")]
    table = compile_table(Snapshot.of([whale], [], services, slices, []), Options())
    # The secret does not exist in this snapshot: give the host a fixed certificate, so that the
    # file name (a content hash) is stable.
    server = table.servers["a.whale.hey"]
    table.servers["a.whale.hey"] = dataclasses.replace(server, tls=TlsCert("default/kuard-tls", FIXED_PEM),
                                                       ssl_redirect=True)
    return table


SETTINGS = Settings(run_dir="/run/knet-ingress")


def test_seed_config_matches_golden():
    text = render(seed_table(), SETTINGS)
    if os.environ.get("KNET_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_seed_config_passes_nginx_t(tmp_path):
    """nginx -t on the rendered config (only parses: binds nothing, sends nothing)."""
    from ingress import tls

    s = Settings(run_dir=str(tmp_path))
    table = seed_table()
    crt, key = tls.self_signed("a.whale.hey", ["a.whale.hey"])
    table.servers["a.whale.hey"].tls = TlsCert("default/kuard-tls", crt + key)
    tls.ensure_default_certificate(s.cert_dir)
    tls.write_certificates(s.cert_dir, [table.servers["a.whale.hey"].tls])
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(table, s))
    r = subprocess.run(["nginx", "-t", "-q", "-p", f"{tmp_path}/", "-e", f"{tmp_path}/error.log", "-c", str(conf)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_prefix_paths_become_exact_plus_slash_locations():
    text = render(seed_table(), SETTINGS)
    # /api/ (Prefix) on the wildcard host: = /api and /api/ — never a bare "/api" string prefix.
    assert 'location = "/api" {' in text and 'location "/api/" {' in text and 'location "/api" {' not in text
    # Exact /health is only an exact location.
    assert 'location = "/health" {' in text and 'location "/health/"' not in text


def test_wildcard_host_is_a_one_label_regex():
    assert server_name("*.pods.whale.hey") == r"~^[^.]+\.pods\.whale\.hey$"
    assert server_name("a.whale.hey") == "a.whale.hey" and server_name("") == "_"


def test_tls_host_redirects_and_listens_with_its_certificate():
    text = render(seed_table(), SETTINGS)
    block = text[text.index("server_name a.whale.hey;"):]
    assert "return 308 https://$host$request_uri;" in block
    assert f"ssl_certificate /run/knet-ingress/certs/{TlsCert('default/kuard-tls', FIXED_PEM).file_name};" in block


def test_no_endpoints_answers_503_and_431_mapping():
    text = render(seed_table(), SETTINGS)
    assert 'return 503 "knet-ingress: 503 Service Unavailable: no ready endpoints for service ' \
           'default/no-endpoints:80\\n";' in text
    assert "error_page 494 =431 @knet_431;" in text


def test_upstreams_are_ready_endpoints_with_keepalive_and_passive_health():
    text = render(seed_table(), SETTINGS)
    up = text[text.index("upstream default_whale-svc-a_80 {"):]
    up = up[:up.index("}")]
    assert "server 10.244.1.2:80 max_fails=1 fail_timeout=10s;" in up
    assert "server 10.244.2.2:80 max_fails=1 fail_timeout=10s;" in up
    assert "keepalive 64;" in up and "zone knet_upstreams" in up


def test_digest_changes_with_content_only():
    a = render(seed_table(), SETTINGS)
    assert config_digest(a) == config_digest(render(seed_table(), SETTINGS))
    other = dataclasses.replace(SETTINGS, max_body_size="2m")
    assert config_digest(render(seed_table(), other)) != config_digest(a)
    assert f'return 200 "{config_digest(a)}\\n";' in a


def test_quote_strips_variables_and_escapes():
    assert quote('a "b" $c \\d') == '"a \\"b\\" c \\\\d"'
    assert quote("x", newline=True) == '"x\\n"'


def test_exact_path_with_trailing_slash_gets_a_bare_location():
    """nginx would 301 `/foo` to `/foo/` for a proxied `location = /foo/`; the spec says `/foo`
    does not match Exact `/foo/`, so `/foo` gets its own exact location with the table's answer."""
    ing = ingress("e", rule("h", path("/foo/", "exact", kind="Exact"), path("/", "root")))
    snap = Snapshot.of([ing], [], [service("exact"), service("root")],
                       [endpoint_slice("exact", ["10.244.1.2"]), endpoint_slice("root", ["10.244.1.3"])], [])
    text = render(compile_table(snap), SETTINGS)
    block = text[text.index('location = "/foo" {'):]
    assert "proxy_pass http://default_root_80;" in block[:block.index("}")]
    assert 'location = "/foo/" {' in text
