"""The reference evaluator on the documentation's statements, and the cross-check of the compiled
model and the rendered nftables ruleset against it (pure, no kernel: every catalogue scenario
and a few hundred seeded random ones, 324 cells each)."""

from __future__ import annotations

import pytest

from knet_testing.netpolicy import matrix, randomized, scenarios
from knet_testing.netpolicy.reference import World
from knet_testing.netpolicy.scenarios import A, E, block, both, np, nss, pods, port, rule, sel
from netpolicy import nft
from netpolicy.compiler import compile_policies

KEYS = matrix.pod_keys()
IPS = {k: f"10.244.{i % 2 + 1}.{10 + i}" for i, k in enumerate(KEYS)}
NODES = {k: f"node{i % 2 + 1}" for i, k in enumerate(KEYS)}
CTX = scenarios.Ctx(IPS)


def ref(*raw, pod_labels=None, ns_labels=None) -> World:
    step = scenarios.Step(lambda c: list(raw), pod_labels or {}, ns_labels or {})
    policies, pods, namespaces = scenarios.build(step, CTX, NODES)
    return World(policies, pods, namespaces)


def ok(w: World, src: str, dst: str, port_: int = 80, proto: str = "TCP") -> bool:
    return w.allowed(IPS[src], IPS[dst], proto, port_)


def test_no_policy_allows_everything():
    w = ref()
    assert all(ok(w, s, d) for s in KEYS for d in KEYS)


def test_isolation_is_per_direction_and_additive():
    w = ref(np("deny", types=["Ingress"]), np("allow-b", select=A, ingress=[rule([pods(pod="b")])]))
    assert ok(w, "x/b", "x/a") and not ok(w, "x/c", "x/a") and not ok(w, "x/a", "x/b")
    assert ok(w, "x/a", "y/a")  # egress of x is not isolated
    assert ok(w, "x/a", "x/a")  # a pod reaches itself


def test_and_versus_or():
    both_ = ref(np("and", select=A, ingress=[rule([both(sel({"ns": "y"}), sel({"pod": "b"}))])]))
    either = ref(np("or", select=A, ingress=[rule([nss(ns="y"), pods(pod="b")])]))
    assert ok(both_, "y/b", "x/a") and not ok(both_, "y/a", "x/a") and not ok(both_, "x/b", "x/a")
    assert ok(either, "y/a", "x/a") and ok(either, "x/b", "x/a") and not ok(either, "z/b", "x/a")


def test_ports_named_range_and_protocol():
    w = ref(np("p", ingress=[rule(None, [port("web"), port(81, "UDP", end=82)])]))
    assert ok(w, "y/a", "x/a", 80) and not ok(w, "y/a", "x/a", 81)  # web = 80 on a
    assert ok(w, "y/a", "x/b", 81) and not ok(w, "y/a", "x/b", 80)  # web = 81 on b
    assert not ok(w, "y/a", "x/c", 80) and ok(w, "y/a", "x/c", 81, "UDP")
    assert not ok(w, "y/a", "x/c", 80, "UDP")


def test_ipblock_except_and_egress():
    w = ref(np("p", select=A, types=["Egress"], egress=E(rule([block("10.244.0.0/16", "10.244.2.0/24")]))))
    assert ok(w, "x/a", "x/c") and not ok(w, "x/a", "x/b")  # x/b is in 10.244.2.0/24
    assert w.allowed(IPS["x/a"], "8.8.8.8", "TCP", 53) is False
    assert w.allowed("192.168.33.11", IPS["x/a"], "TCP", 80, node_ips=["192.168.33.11"])


def _cross_check(sc: scenarios.Scenario) -> list[str]:
    bad = []
    for i, step in enumerate(sc.steps):
        policies, pods, namespaces = scenarios.build(step, CTX, NODES)
        want = matrix.expected(policies, pods, namespaces, matrix.cells())
        compiled = compile_policies(policies, pods, namespaces)
        rulesets = {n: nft.build(compile_policies(policies, pods, namespaces, node=n)) for n in ("node1", "node2")}
        for (s, d, p, proto), expected in want.items():
            model = compiled.evaluate(IPS[s], IPS[d], proto, p).allowed
            # A flow crosses the forward hook of the source's node (egress) and the destination's.
            kernel = all(rulesets[n].simulate(IPS[s], IPS[d], proto, p) for n in {NODES[s], NODES[d]})
            if not expected == model == kernel:
                bad.append(f"{sc.name}[{i}] {s}->{d} {p}/{proto}: reference {expected} model {model} nft {kernel}")
    return bad


@pytest.mark.parametrize("sc", scenarios.catalogue(), ids=lambda s: s.name)
def test_compiled_model_and_ruleset_agree_with_reference(sc):
    assert _cross_check(sc) == []


def test_random_policies_agree_with_reference():
    bad = [b for sc in randomized.scenarios(range(1000, 1200)) for b in _cross_check(sc)]
    assert bad == [], "\n".join(bad[:20])
