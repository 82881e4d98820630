"""Policies and kproxy's iptables data path together: a ClusterIP is translated (DNAT in
prerouting) before the forward hook, so policies judge the real backend pod, for the server's
ingress and for the client's egress alike."""

from __future__ import annotations

import contextlib
import socket

import pytest

from knet import netns
from kproxy.iptables.backend import IptablesBackend
from kproxy.iptables.rules import Config
from kproxy.model import Endpoint, ServicePort
from netpolicy import probe
from netpolicy.scenarios import EGR, A, E, Step, np, pods, rule

pytestmark = pytest.mark.integration
VIP = "10.96.77.77"


@pytest.fixture
def service(harness):
    """Service x/web (TCP and UDP 80) -> x/a:80, programmed by kproxy (iptables) on both nodes."""
    ip = harness.pods["x/a"][1]
    ports = [ServicePort("x", "web", proto.lower(), proto, 80, (VIP,),
                         endpoints=(Endpoint(ip, 80, node_name=harness.nodes["x/a"]),)) for proto in ("TCP", "UDP")]
    proxies = {n: IptablesBackend(Config(node_name=n, cluster_cidr="10.244.0.0/16")) for n in harness.backends}
    try:
        for node, proxy in proxies.items():
            with netns.enter(harness.node_ns(node)):  # iptables-restore inherits this thread's namespace
                proxy.sync(ports, full=True)
        yield
    finally:
        for node, proxy in proxies.items():
            with contextlib.suppress(Exception), netns.enter(harness.node_ns(node)):
                proxy.sync([], full=True)


def via_service(harness, src: str, proto: str = "TCP", timeout: float = 0.5) -> str | None:
    """The name of the pod that answered on VIP:80 from pod `src`, None when nothing did."""
    with netns.enter(harness.pods[src][0]):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM)
    with s:
        s.settimeout(timeout)
        try:
            s.connect((VIP, 80))
            if proto == "UDP":
                s.send(b"?")
            return s.recv(64).decode()
        except OSError:
            return None


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
