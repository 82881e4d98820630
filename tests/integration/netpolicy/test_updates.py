"""Updates, counters, node traffic and drift, on the matrix lab (see conftest)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from knet import netns
from knet_testing.netpolicy import probe, scenarios
from knet_testing.netpolicy.scenarios import EGR, A, E, Step, block, both, np, nss, pods, port, rule, sel
from netpolicy.compiler import compile_policies

pytestmark = pytest.mark.integration


def _flip_sets(c):
    """Two policy sets that both allow {x/b, y/b} -> x/a on 80/TCP and 80/UDP but compile to
    different chains and sets (other peers, ports and an egress side), so every switch replaces
    chains, sets and verdict-map entries on both nodes."""
    set_a = [np("in-a", select=A, ingress=[rule([both(sel(), sel({"pod": "b"}))], [port(80), port(80, "UDP")])]),
             np("out-b", select=sel({"pod": "b"}), types=EGR, egress=E(rule([pods(pod="a")])))]
    set_b = [np("in-a", select=A, ingress=[rule([nss()], [port(80, end=81), port(None, "UDP")]),
                                           rule([block(c.subnet("x/c"))])]),
             np("in-a-2", select=A, ingress=[rule([pods(pod="c")], [port(81)])]),
             np("out-b", select=sel({"pod": "b"}), types=EGR, egress=E(rule(None, [port(80), port(80, "UDP")])))]
    return set_a, set_b


def test_updates_never_open_a_gap(harness):
    """Probes (new connections, all the time) of flows allowed before and after each update
    never fail while the policies are switched back and forth 80 times. (Applying each update
    as a single transaction fails this test every few runs: see netpolicy.nftscript.)"""
    set_a, set_b = _flip_sets(harness.ctx)
    harness.program(Step(lambda c: set_a))
    flows = [("x/b", "x/a", 80, "TCP"), ("y/b", "x/a", 80, "TCP"), ("x/b", "x/a", 80, "UDP"),
             ("y/b", "x/a", 80, "UDP")]
    assert all(probe.probe(flows, harness.pods, 2.0).values())
    stop = threading.Event()
    results: list[tuple[float, dict]] = []

    def prober() -> None:
        while not stop.is_set():
            results.append((time.monotonic(), probe.probe(flows, harness.pods, 1.0)))

    t = threading.Thread(target=prober, daemon=True)
    t.start()
    try:
        for i in range(80):
            chosen = set_b if i % 2 == 0 else set_a
            # Not harness.program(): its conntrack flush would break the probes' own flows.
            policies, pod_models, namespaces = scenarios.build(Step(lambda c, p=chosen: p), harness.ctx, harness.nodes)
            for node, backend in harness.backends.items():
                backend.apply(compile_policies(policies, pod_models, namespaces, node=node))
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(5)
    failed = [(ts, {c: ok for c, ok in r.items() if not ok}) for ts, r in results if not all(r.values())]
    assert len(results) >= 20, "the prober did not get to run"
    assert not failed, f"{len(failed)} of {len(results)} probe rounds failed during updates: {failed[:3]}"
    # And the switches were real: in set_b x/c reaches x/a:81, in set_a it does not.
    assert probe.probe([("x/c", "x/a", 81, "TCP")], harness.pods, 0.5)[("x/c", "x/a", 81, "TCP")] is False


def test_drops_are_counted_per_policy(harness):
    harness.program(Step(lambda c: [np("deny-a", select=A, types=["Ingress"]),
                                    np("only-80", select=A, ingress=[rule(None, [port(80)])])]))
    node = harness.nodes["x/a"]
    before = harness.backends[node].drops()
    blocked = [("y/b", "x/a", 81, "TCP"), ("z/c", "x/a", 81, "UDP")]
    assert not any(probe.probe(blocked, harness.pods, 0.3).values())
    after = harness.backends[node].drops()
    for name in ("drop_ingress.x/deny-a", "drop_ingress.x/only-80"):
        assert after[name] - before.get(name, 0) >= 2, (name, before, after)


def test_node_reaches_its_isolated_pods(harness):
    """kubelet-style health checks: the node itself reaches its pods under default deny all."""
    harness.program(Step(lambda c: [np("deny-all", types=["Ingress", "Egress"])]))
    for key in ("x/a", "x/b"):
        node_ns = harness.node_ns(harness.nodes[key])
        with netns.enter(node_ns):
            s = socket.socket()
        with s:
            s.settimeout(2)
            s.connect((harness.pods[key][1], 80))
            assert s.recv(64) == key.encode()
    # ... while a pod of another namespace does not.
    assert probe.probe([("y/a", "x/a", 80, "TCP")], harness.pods, 0.3) == {("y/a", "x/a", 80, "TCP"): False}


def test_reapplying_is_a_no_op_and_drift_is_repaired(harness):
    step = Step(lambda c: [np("deny-a", select=A, types=["Ingress"])])
    harness.program(step)
    backend = harness.backends[harness.nodes["x/a"]]
    assert backend.apply(backend.compiled).commands == 0
    assert backend.in_sync()
    chain = next(iter(backend.current.chains))
    netns.run(backend.netns, ["nft", "flush", "chain", "inet", "knet-netpol", chain], check=True)
    netns.run(backend.netns, ["nft", "delete", "chain", "inet", "knet-netpol", chain], check=False)
    netns.run(backend.netns, ["nft", "flush", "map", "inet", "knet-netpol", "in4"], check=True)
    netns.run(backend.netns, ["nft", "delete", "chain", "inet", "knet-netpol", chain], check=True)
    assert not backend.in_sync()
    assert probe.probe([("y/b", "x/a", 80, "TCP")], harness.pods, 1.0)[("y/b", "x/a", 80, "TCP")] is True
    backend.apply(backend.compiled, full=True)
    assert backend.in_sync()
    assert probe.probe([("y/b", "x/a", 80, "TCP")], harness.pods, 0.3)[("y/b", "x/a", 80, "TCP")] is False
