"""Requests through nginx from the client namespace: the seed, host and path matrices (the spec's
examples table), forwarded headers, WebSocket, size limits, failing backends, metrics."""

from __future__ import annotations

import json
import time

import pytest

from ingress.accesslog import AccessLogReader
from knet_testing.ingress import SPEC_PATH_TABLE, backend, ingress, path, rule
from tests.integration.ingress.ingress_env import Env, ns_socket
from tests.promtext import value

pytestmark = pytest.mark.integration
LATER = "2024-02-01T00:00:00Z"  # newer than the whale Ingress: it keeps the global default backend


@pytest.fixture(scope="module")
def matrix(env: Env) -> Env:
    """Backends bk0..bk3 (bk0 and bk2 on node2) and the host/path Ingresses."""
    for i in range(4):
        env.backend_pod(f"bk{i}", f"bk{i}", "node2" if i % 2 == 0 else "node1")
        env.service(f"bk{i}", [f"bk{i}"])
    env.service("bk-named", ["bk1"], port=8080, port_name="http")
    env.put(ingress(
        "hosts",
        rule("foo.bar.test", path("/", "bk0"), path("/api", "bk1"), path("/named", "bk-named", "http")),
        rule("*.bar.test", path("/", "bk2"), path("/wild", "bk3")),
        rule(None, path("/common", "bk1")),
        created=LATER))
    rows = [rule(f"row{i}.paths.test", *[path(p, f"bk{j}", kind=k) for j, (k, p) in enumerate(paths)])
            for i, (paths, _, _) in enumerate(SPEC_PATH_TABLE)]
    env.put(ingress("paths", *rows, default=backend("bk3"), created=LATER))
    env.sync()
    return env


def test_seed_whale_hosts(env: Env) -> None:
    code, body = env.curl("a.whale.hey")
    assert code == 200 and body.startswith("Whale Type A\n")
    assert env.who("b.whale.hey") == "Whale Type B"
    assert env.who("unknown.whale.hey") == "Whale Default"
    assert env.who("a.whale.hey", "/any/path?x=1") == "Whale Type A"
    assert ("default", "whale", [{"ip": env.ip}]) in env.status  # status.loadBalancer.ingress


@pytest.mark.parametrize(("host", "p", "want"), [
    ("foo.bar.test", "/", "bk0"),
    ("FOO.BAR.test", "/x", "bk0"),
    ("foo.bar.test", "/api/v1", "bk1"),
    ("foo.bar.test", "/apix", "bk0"),
    ("foo.bar.test", "/wild/1", "bk3"),       # the wildcard rule matches foo.bar.test too
    ("foo.bar.test", "/common", "bk1"),       # a rule without host applies to every host
    ("foo.bar.test", "/named", "bk1"),        # service port by name
    ("x.bar.test", "/", "bk2"),
    ("x.bar.test", "/api", "bk2"),
    ("x.bar.test", "/wild", "bk3"),
    ("a.x.bar.test", "/", "Whale Default"),   # two labels: the wildcard does not match
    ("bar.test", "/", "Whale Default"),
    ("a.whale.hey", "/common", "bk1"),
])
def test_host_matrix(matrix: Env, host: str, p: str, want: str) -> None:
    assert matrix.who(host, p) == want


def test_spec_examples_table(matrix: Env) -> None:
    got, want = [], []
    for i, (paths, request, winner) in enumerate(SPEC_PATH_TABLE):
        got.append((i, paths, request, matrix.who(f"row{i}.paths.test", request)))
        want.append((i, paths, request, f"bk{winner}" if winner is not None else "bk3"))
    assert got == want


def test_forwarded_headers(env: Env) -> None:
    code, body = env.curl("a.whale.hey", "/hdr", "-H", "X-Forwarded-For: 203.0.113.9")
    info = json.loads(body.split("\n")[1])
    h = info["headers"]
    client = env.lab.data()["client"]["ip"]
    assert code == 200 and info["path"] == "/hdr"
    assert h["host"] == "a.whale.hey"
    assert h["x-forwarded-for"] == f"203.0.113.9, {client}"   # appended: the last entry is ours
    assert h["x-real-ip"] == client
    assert h["x-forwarded-proto"] == "http" and h["x-forwarded-host"] == "a.whale.hey"
    assert h["x-forwarded-port"] == "80"


def test_websocket_upgrade(env: Env) -> None:
    with ns_socket(env.client_ns) as s:
        s.connect((env.ip, 80))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: b.whale.hey\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"hello from" not in data or not data.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in data
        assert b"hello from Whale Type B" in data
        s.sendall(b"ping through the tunnel")
        assert s.recv(4096) == b"ping through the tunnel"


def test_request_body_limit_413(env: Env) -> None:
    big = "x" * (1024 * 1024 + 10)
    r = env.lab.exec("client", ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--resolve",
                                f"a.whale.hey:80:{env.ip}", "--data-binary", "@-", "http://a.whale.hey/up"], input=big)
    body, _, code = r.stdout.rpartition("\n")
    assert code == "413" and "Payload Too Large" in body
    r = env.lab.exec("client", ["curl", "-s", "--resolve", f"a.whale.hey:80:{env.ip}", "--data-binary", "@-",
                                "http://a.whale.hey/up"], input="y" * 500_000)
    assert json.loads(r.stdout.split("\n")[1])["body"] == 500_000


def test_oversized_header_431(env: Env) -> None:
    code, body = env.curl("a.whale.hey", "/", "-H", "X-Big: " + "x" * 9000)
    assert code == 431 and "Request Header Fields Too Large" in body
    code, _ = env.curl("a.whale.hey", "/", "-H", "X-Big: " + "x" * 7000)
    assert code == 200


def test_failing_backends(env: Env) -> None:
    env.lab.add_pod("node2", "nothing-listens")   # a pod without a server: connections refused
    env.pods["nothing-listens"] = env.lab.pod("nothing-listens")
    env.service("refusing", ["nothing-listens"])
    env.service("empty", [])
    env.put(ingress("failing", rule("down.test", path("/refused", "refusing"), path("/empty", "empty"),
                                    path("/missing", "no-such-service"), path("/slow", "whale-svc-a")),
                    created=LATER, annotations={"ingress.knet.io/proxy-read-timeout": "1"}))
    env.sync()
    code, body = env.curl("down.test", "/refused")
    assert code == 502 and "Bad Gateway" in body
    code, body = env.curl("down.test", "/empty")
    assert code == 503 and "no ready endpoints for service default/empty:80" in body
    code, body = env.curl("down.test", "/missing")
    assert code == 503 and "service default/no-such-service not found" in body
    code, body = env.curl("down.test", "/slow?ms=2500")       # 1 s read timeout from the annotation
    assert code == 504 and "Gateway Timeout" in body
    assert env.who("a.whale.hey") == "Whale Type A"   # nothing else is affected


def test_metrics_from_access_log(env: Env) -> None:
    time.sleep(1.2)  # earlier requests still in nginx's log buffer (flushed every second)
    reader = AccessLogReader(env.settings.access_log_path, env.controller.metrics.requests.observe)
    for _ in range(3):
        env.curl("a.whale.hey", "/m")
    env.curl("unknown.whale.hey", "/m")
    time.sleep(1.5)
    reader.poll()
    text = env.controller.metrics.registry.render()
    assert value(text, "knet_ingress_requests_total", ingress="default/whale", host="a.whale.hey", status="200") == 3
    assert value(text, "knet_ingress_requests_total", ingress="default/whale", host="_", status="200") == 1
    assert ('knet_ingress_upstream_latency_seconds_count{ingress="default/whale",service="default/whale-svc-a:80"} 3'
            in text)
