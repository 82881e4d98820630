"""knet-cni-agent under bad clients, signals and restarts, and the executable's fallback: a
runtime always gets its answer, no request runs twice, no reservation is lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni import shim, wire
from knet import netns
from tests.integration.cni.conftest import CNI_PATH, Node

pytestmark = pytest.mark.integration

SLOW_IPAM = """#!/bin/sh
# A delegated IPAM plugin that takes SLOW_IPAM_SECONDS: long enough to act on a request in flight.
[ "$CNI_COMMAND" = ADD ] || exit 0
touch "$SLOW_IPAM_MARKS/$CNI_CONTAINERID.$$"
sleep "$SLOW_IPAM_SECONDS"
echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.96.5.9/24", "gateway": "10.96.5.1"}]}'
"""


@pytest.fixture
def slow_ipam(agent_node, tmp_path):
    """(conf, env) for ADDs whose IPAM step takes 3 s; `marks` holds one file per IPAM run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "slow-ipam"
    script.write_text(SLOW_IPAM)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    marks = tmp_path / "marks"
    marks.mkdir()
    conf = agent_node.conf(ipMasq=False, ipam={"type": "slow-ipam"})
    env = {"CNI_PATH": f"{bin_dir}:{CNI_PATH}", "SLOW_IPAM_MARKS": str(marks), "SLOW_IPAM_SECONDS": "3"}
    return conf, env, marks


def in_background(fn) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    return t, out


def wait_for(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def agent_connection(node: Node) -> socket.socket:
    with netns.enter(node.name):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(node.agent_socket)
    return s


def test_bad_requests_and_100_idle_connections_do_not_stop_the_agent(agent_node):
    node = agent_node
    garbage = [b"GET / HTTP/1.1\r\n\r\n", b"KNETCNI3 1 2\n", b"KNETCNI3 x y z w\n", b"\0" * 5000,
               b"KNETCNI3 1 1 100 100\nonly part of it"]
    for data in garbage:  # each answered (BAD) or dropped, then the connection is closed
        with agent_connection(node) as s:
            s.settimeout(30)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            assert reply == b"" or reply.startswith(b"BAD")
    # a caller that vanishes in the middle of its request
    with agent_connection(node) as s:
        s.sendall(wire.encode_request({"CNI_COMMAND": "ADD"}, b"{}", 1, time.monotonic_ns() + 10**10)[:20])
    # 100 callers that connect and say nothing (or half a header) and stay
    idle = [agent_connection(node) for _ in range(100)]
    try:
        for i, s in enumerate(idle[::2]):
            s.sendall(b"KNETCNI3 %d" % i)
        pod = node.new_pod()
        rc, res = node.cni("ADD", node.conf(), "real", pod)
        assert rc == 0, res
        assert node.served_by_agent("ADD", "real")
    finally:
        for s in idle:
            s.close()
    assert node.agent.poll() is None
    assert node.cni("DEL", node.conf(), "real", pod)[0] == 0 and node.served_by_agent("DEL", "real")
    assert "malformed or incomplete request" in node.agent_log_text()


def test_100_concurrent_requests_each_get_their_answer(agent_node):
    """Well-framed requests with bad content (malformed JSON, unknown command, missing variables),
    100 at once: every caller gets the plugin's error, and the agent keeps serving."""
    node = agent_node
    full = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/x"}
    bad = [(full, b'{"cniVersion": "1.0.0", "name": ', 6),
           ({"CNI_COMMAND": "FROB"}, b"{}", 4),
           ({"CNI_COMMAND": "ADD"}, json.dumps(node.conf()).encode(), 4)]

    def ask(i: int) -> tuple[int, str] | None:
        env, stdin, _ = bad[i % len(bad)]
        with netns.enter(node.name):
            return shim.via_agent(node.agent_socket, env, stdin)

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(ask, range(100)))
    for i, answer in enumerate(answers):
        assert answer is not None, f"request {i} was not served"
        code, out = answer
        assert code == 1 and json.loads(out)["code"] == bad[i % len(bad)][2]
    assert node.agent.poll() is None
    rc, res = node.cni("ADD", node.conf(), "after", node.new_pod())
    assert rc == 0 and res["ips"] and node.served_by_agent("ADD", "after")


def test_restart_keeps_every_reservation(agent_node):
    node = agent_node
    conf = node.conf()
    a, b, c = node.new_pod(), node.new_pod(), node.new_pod()
    ip_a = node.cni("ADD", conf, "a", a)[1]["ips"][0]["address"]
    assert node.stop_agent() == 0
    assert not os.path.exists(node.agent_socket)  # gone with the agent: callers go direct at once
    rc, res_b = node.cni("ADD", conf, "b", b)
    assert rc == 0 and not node.served_by_agent("ADD", "b", wait=0)
    node.start_agent()
    rc, res_c = node.cni("ADD", conf, "c", c)
    assert rc == 0 and node.served_by_agent("ADD", "c")
    ips = [ip_a, res_b["ips"][0]["address"], res_c["ips"][0]["address"]]
    assert len(set(ips)) == 3
    assert node.cni("DEL", conf, "a", a)[0] == 0 and node.served_by_agent("DEL", "a")
    assert node.ipam_files() == {ip.split("/")[0] for ip in ips[1:]}


def test_sigterm_finishes_the_request_in_flight(agent_node, slow_ipam, thin_executable):
    node = agent_node
    node.exe = thin_executable
    conf, env, marks = slow_ipam
    pod = node.new_pod()
    t, out = in_background(lambda: node.cni("ADD", conf, "inflight", pod, **env))
    wait_for(lambda: os.listdir(marks), what="the IPAM plugin to start")
    agent = node.agent
    agent.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    rc, res = out[0]
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.96.5.9/24" and node.served_by_agent("ADD", "inflight")
    assert agent.wait(timeout=60) == 0
    assert len(os.listdir(marks)) == 1  # ran once


def test_a_stopped_agent_costs_a_bounded_wait_and_the_request_runs_once(agent_node, slow_ipam, thin_executable):
    node = agent_node
    node.exe = thin_executable
    conf, env, marks = slow_ipam
    env["SLOW_IPAM_SECONDS"] = "0"
    pod = node.new_pod()
    node.agent.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        rc, res = node.cni("ADD", conf, "stopped", pod, **env)
        took = time.monotonic() - start
    finally:
        node.agent.send_signal(signal.SIGCONT)
    assert rc == 0, res
    assert took < 30  # the executable's bound (3 s) plus a loaded machine, never "forever"
    wait_for(lambda: "the caller stopped waiting" in node.agent_log_text(), what="the agent to drop it")
    assert not node.served_by_agent("ADD", "stopped", wait=0)
    assert len(os.listdir(marks)) == 1


def test_an_agent_killed_mid_request_means_the_request_runs_here(agent_node, slow_ipam, thin_executable):
    node = agent_node
    node.exe = thin_executable
    conf, env, marks = slow_ipam
    env["SLOW_IPAM_SECONDS"] = "2"
    pod = node.new_pod()
    t, out = in_background(lambda: node.cni("ADD", conf, "killed", pod, **env))
    wait_for(lambda: os.listdir(marks), what="the IPAM plugin to start")
    node.stop_agent(signal.SIGKILL)
    t.join(timeout=120)
    rc, res = out[0]
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.96.5.9/24"
    assert "10.96.5.9/24" in netns.run(pod, ["ip", "-br", "addr", "show", "eth0"]).stdout
