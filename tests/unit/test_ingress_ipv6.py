"""knet-ingress and IPv6 (pure): IPv6 backends (bracketed upstream servers from IPv6
EndpointSlices, both families of a dual-stack Service), the listen addresses, the flags."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ingress import daemon
from ingress.compiler import Options, Snapshot, compile_table
from ingress.nginxconf import Settings, render
from knet_testing.ingress import endpoint_slice, ingress, path, rule, service

V6 = ["fd00:10:244:1::5", "fd00:10:244:2::6"]


def table(*slices):
    ing = ingress("web", rule("web.example", path("/", "web")))
    return compile_table(Snapshot.of([ing], [], [service("web")], list(slices), []), Options())


def test_ipv6_endpoints_are_bracketed_upstream_servers():
    t = table(endpoint_slice("web", V6, port=8080))
    assert t.upstreams["default_web_80"].servers == ("[fd00:10:244:1::5]:8080", "[fd00:10:244:2::6]:8080")
    text = render(t, Settings(run_dir="/run/knet-ingress"))
    assert "server [fd00:10:244:1::5]:8080 max_fails=1 fail_timeout=10s;" in text


def test_dual_stack_service_proxies_to_both_families():
    t = table(endpoint_slice("web", ["10.244.1.5"], suffix="v4"), endpoint_slice("web", [V6[0]], suffix="v6"))
    assert t.upstreams["default_web_80"].servers == ("10.244.1.5:80", "[fd00:10:244:1::5]:80")
    # Only ready IPv6 endpoints count, as IPv4 ones.
    t = table(endpoint_slice("web", [V6[0]], not_ready=[V6[1]]))
    assert t.upstreams["default_web_80"].servers == ("[fd00:10:244:1::5]:80",)


def test_listen_targets():
    s = Settings(run_dir="/r")
    assert s.listens(80) == ["80", "[::]:80"]  # every address of both families
    assert Settings(run_dir="/r", ipv6=False).listens(80) == ["80"]
    only = Settings(run_dir="/r", listen_addresses=("192.168.33.11", "fd00:33::11"))
    assert only.listens(443) == ["192.168.33.11:443", "[fd00:33::11]:443"]
    text = render(table(endpoint_slice("web", V6)), only)
    assert "listen [fd00:33::11]:80 default_server;" in text and "listen 192.168.33.11:443 ssl default_server;" in text
    assert "listen 80" not in text and "[::]" not in text


def test_daemon_flags():
    args = daemon.parse_args(["--listen-address", "[FD00:33::11]", "--listen-address", "192.168.33.11",
                              "--disable-ipv6"])
    assert args.listen_address == ["fd00:33::11", "192.168.33.11"] and args.disable_ipv6
    with pytest.raises(SystemExit) as e:
        daemon.parse_args(["--listen-address", "fd00:33::zz"])
    assert e.value.code == 2  # argparse's usage error, naming the value


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_nginx_accepts_ipv6_listens_and_upstreams(tmp_path):
    """nginx -t on a config with [::] listens and IPv6 upstream servers (wildcard listens only:
    nginx -t binds explicit addresses)."""
    from ingress import tls
    s = Settings(run_dir=str(tmp_path))
    tls.ensure_default_certificate(s.cert_dir)
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(table(endpoint_slice("web", V6)), s))
    r = subprocess.run(["nginx", "-t", "-q", "-p", f"{tmp_path}/", "-e", f"{tmp_path}/error.log", "-c", str(conf)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
