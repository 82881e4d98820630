"""The built-in workloads (agnhost netexec, serve-hostname, plain HTTP image) as processes, on
loopback only (KNET_WORKLOAD_BIND=127.0.0.1): HTTP routes, UDP echo, /dial."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(*args: str, port: int) -> None:
        env = dict(os.environ, KNET_WORKLOAD_BIND="127.0.0.1", HOSTNAME="pod-x")
        procs.append(subprocess.Popen([sys.executable, "-m", "lab.workloads", *args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError(f"workload {args} did not listen on {port}")

    yield start
    for p in procs:
        p.terminate()
        p.wait(5)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def udp(port: int, msg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(msg, ("127.0.0.1", port))
        return s.recvfrom(2048)[0]


def test_netexec(run) -> None:
    http, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    run("netexec", f"--http-port={http}", f"--udp-port={udp_port}", port=http)
    assert get(http, "/hostname") == (200, "pod-x")
    assert get(http, "/echo?msg=hi%20there") == (200, "hi there")
    assert get(http, "/clientip")[1].startswith("127.0.0.1:")
    status, body = get(http, f"/dial?request=hostname&protocol=http&host=127.0.0.1&port={http}&tries=2")
    assert status == 200 and json.loads(body) == {"responses": ["pod-x", "pod-x"], "errors": []}
    status, body = get(http, f"/dial?request=echo%20x&protocol=udp&host=127.0.0.1&port={udp_port}")
    assert json.loads(body)["responses"] == ["x"]
    assert udp(udp_port, b"hostname") == b"pod-x"
    assert udp(udp_port, b"echo abc") == b"abc"


def test_plain_http_image_and_serve_hostname(run) -> None:
    a, b, sh = free_port(), free_port(), free_port()
    run("http", "--port", str(a), "--port", str(b), "--version", "0.2", port=a)
    assert get(a, "/") == (200, "pod-x 0.2\n") and get(b, "/hello") == (200, "pod-x 0.2\n")
    assert get(a, "/status/")[0] == 404  # a readiness probe on a missing page fails
    run("serve-hostname", f"--port={sh}", port=sh)
    assert get(sh, "/anything") == (200, "pod-x")
