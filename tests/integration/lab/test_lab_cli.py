"""`knet lab ...` as a user runs it, and `knet lab down` (also of a crashed run's leftovers)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from knet import netns
from lab import api
from lab.net import topology

pytestmark = pytest.mark.integration
KNET = os.path.join(os.path.dirname(sys.executable), "knet")


def knet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KNET, *args], capture_output=True, text=True, timeout=60)


def test_cli_against_the_session_lab(lab: api.Lab, pods: dict[str, dict]) -> None:
    assert knet("version").stdout.startswith("knet ")
    r = knet("lab", "status", "--name", lab.name)
    assert r.returncode == 0, r.stderr
    assert "node3" in r.stdout and "192.168.33.13" in r.stdout and pods["b1"]["ip"] in r.stdout
    assert lab.name in knet("lab", "list").stdout

    r = knet("lab", "pod", "add", "--name", lab.name, "2", "clip", "--namespace", "cli", "--port", "30081:80")
    assert r.returncode == 0, r.stderr
    rec = lab.pod("clip", "cli")
    assert rec["node"] == "node2" and rec["ip"] in r.stdout
    r = knet("lab", "exec", "--name", lab.name, "cli/clip", "--", "ping", "-c1", "-W2", pods["a1"]["ip"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert knet("lab", "exec", "--name", lab.name, "node1", "--", "sh", "-c", "exit 3").returncode == 3
    r = knet("lab", "exec", "--name", lab.name, "client", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert "192.168.33.100/24" in r.stdout

    r = knet("lab", "pod", "del", "--name", lab.name, "-", "clip", "--namespace", "cli")
    assert r.returncode == 0, r.stderr
    assert not netns.exists(rec["netns"])

    r = knet("lab", "up", "--name", lab.name)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = knet("lab", "up", "--name", "Bad-Name")
    assert r.returncode != 0 and "invalid lab name" in r.stderr
    r = knet("lab", "pod", "add", "--name", lab.name, "node1", "a1")
    assert r.returncode != 0 and "already exists" in r.stderr


def test_down_removes_everything_also_after_a_crash() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = "kt" + secrets.token_hex(2)
    try:
        lab = api.up(name, nodes=1)
        lab.add_pod("node1", "p", cmd="exec sleep 60")
        r = knet("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert netns.list_names(f"{name}-") == []
        assert not os.path.exists(topology.state_dir(name))

        # A crashed run: namespaces with a process inside, no state dir, no lab.json.
        for ns in (f"{name}-node1", f"{name}-pod-default-p"):
            netns.create(ns)
        netns.spawn(f"{name}-pod-default-p", ["sleep", "60"])
        assert "leftovers" in knet("lab", "list").stdout
        r = knet("lab", "down", "--name", name)
        assert r.returncode == 0, r.stderr
        assert netns.list_names(f"{name}-") == []
        assert name not in knet("lab", "list").stdout
    finally:
        api.down(name)
