"""Policies and kproxy's data paths together, in iptables, nftables and ebpf mode: a ClusterIP is
translated before the forward hook (iptables, nftables: DNAT in prerouting; ebpf: the connect/sendmsg
socket hooks, before the first packet exists), so policies judge the real backend pod, for the
server's ingress and for the client's egress alike.

Clients run as processes in the source pod's namespace *and* its node's pod cgroup, where the
ebpf mode's socket hooks are (a socket made by this test process would bypass them)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

from knet import cgroups, netns
from knet_testing.netpolicy import probe
from knet_testing.netpolicy.scenarios import EGR, A, E, Step, np, pods, rule
from kproxy import backend as backends
from kproxy.model import Config, Endpoint, ServicePort
from lab.net import kernel

pytestmark = pytest.mark.integration
VIP = "10.96.77.77"


# Prints the answering pod's name, or nothing when the connection/datagram got no answer.
CLIENT = r"""
import socket, sys
vip, proto, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    s.connect((vip, 80))
    if proto == "UDP":
        s.send(b"?")
    print(s.recv(64).decode(), end="")
except OSError:
    pass
"""


@pytest.fixture(params=["iptables", "nftables", "ebpf"])
def service(harness, request):
    """Service x/web (TCP and UDP 80) -> x/a:80, programmed by kproxy on both nodes in the mode."""
    ip = harness.pods["x/a"][1]
    ports = [ServicePort("x", "web", proto.lower(), proto, 80, (VIP,),
                         endpoints=(Endpoint(ip, 80, node_name=harness.nodes["x/a"]),)) for proto in ("TCP", "UDP")]
    proxies = {}
    try:
        for node in harness.backends:
            cfg = Config(node_name=node, cluster_cidr="10.244.0.0/16")
            # Made in the node's namespace: iptables-restore and the BPF loader inherit it.
            with netns.enter(harness.node_ns(node)):
                opts = backends.Options(cgroup=cgroups.ensure(kernel.node_cgroup(harness.lab.name, node)))
                proxies[node] = backends.create(request.param, cfg, opts)
                backends.sync_all(proxies[node], ports, full=True)
        yield request.param
    finally:
        for node, proxy in proxies.items():
            with contextlib.suppress(Exception), netns.enter(harness.node_ns(node)):
                proxy.cleanup()


def via_service(harness, src: str, proto: str = "TCP", timeout: float = 0.5) -> str | None:
    """The name of the pod that answered on VIP:80 from pod `src`, None when nothing did."""
    argv = netns.exec_argv(harness.pods[src][0], [sys.executable, "-S", "-c", CLIENT, VIP, proto, str(timeout)])
    argv = cgroups.join_argv(kernel.node_cgroup(harness.lab.name, harness.nodes[src]), argv)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout or None


def answers(harness, sources, proto="TCP"):
    return {src: via_service(harness, src, proto) for src in sources}


def test_ingress_policy_applies_behind_a_cluster_ip(harness, service):
    harness.program(Step(lambda c: []))
    everyone = ["x/b", "x/c", "y/a", "y/b", "z/c"]
    assert set(answers(harness, everyone).values()) == {"x/a"}
    harness.program(Step(lambda c: [np("only-b", select=A, ingress=[rule([pods(pod="b")])])]))
    assert answers(harness, everyone) == {"x/b": "x/a", "x/c": None, "y/a": None, "y/b": None, "z/c": None}
    assert answers(harness, ["x/b", "y/b"], "UDP") == {"x/b": "x/a", "y/b": None}


def test_egress_policy_sees_the_backend_not_the_cluster_ip(harness, service):
    # x/c may talk to pods "a" of its namespace only: the service (whose backend is x/a) works,
    # although 10.96.77.77 itself is no pod; the same pod reached directly also works, y/a does not.
    harness.program(Step(lambda c: [np("c-to-a", select={"matchLabels": {"pod": "c"}}, types=EGR,
                                       egress=E(rule([pods(pod="a")])))]))
    assert via_service(harness, "x/c") == "x/a"
    got = probe.probe([("x/c", "x/a", 81, "TCP"), ("x/c", "y/a", 80, "TCP")], harness.pods, 0.5)
    assert got == {("x/c", "x/a", 81, "TCP"): True, ("x/c", "y/a", 80, "TCP"): False}
    harness.program(Step(lambda c: [np("c-to-b", select={"matchLabels": {"pod": "c"}}, types=EGR,
                                       egress=E(rule([pods(pod="b")])))]))
    assert via_service(harness, "x/c") is None
