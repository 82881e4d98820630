"""The pure compiler: NetworkPolicy semantics on small hand-made worlds."""

from __future__ import annotations

import pytest

from knet.kube.models import Pod
from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.scenarios import A, E, block, both, expr, np, nss, pods, port, rule, sel
from netpolicy.compiler import compile_policies
from netpolicy.model import Clause, PortRange, block_minus_except, in_nets, normalize

IPS = {"x/a": "10.244.1.2", "x/b": "10.244.2.2", "x/c": "10.244.1.3", "y/a": "10.244.2.3", "y/b": "10.244.1.4"}


def world(**labels):
    ps = [matrix.make_pod(*k.split("/"), ip, "node1" if ip.startswith("10.244.1.") else "node2", labels.get(k))
          for k, ip in IPS.items()]
    return ps, [matrix.make_namespace(n) for n in ("x", "y")]


def comp(*raw, node=None, **labels):
    ps, nss_ = world(**labels)
    return compile_policies([matrix.policy(r) for r in raw], ps, nss_, node=node)


def test_unselected_pods_are_not_isolated():
    c = comp(np("p", select=A, types=["Ingress"]))
    assert c.pods["x/a"].ingress.isolated and not c.pods["x/a"].egress.isolated
    assert not c.pods["x/b"].ingress.isolated
    assert not c.pods["y/a"].ingress.isolated  # a policy selects pods of its own namespace only


def test_policy_types_default_from_egress_rules():
    c = comp(np("p", select=A, ingress=[], egress=E(rule([pods()]))))
    assert c.pods["x/a"].ingress.isolated and c.pods["x/a"].egress.isolated
    c = comp(np("p", select=A, egress=E(rule([pods()])), types=["Ingress"]))
    assert not c.pods["x/a"].egress.isolated  # explicit policyTypes wins: egress rules ignored


def test_peer_kinds_and_their_combination():
    pol = np("p", select=A, ingress=[rule([pods(pod="b")]), rule([nss(ns="y")]),
                                     rule([both(sel({"ns": "y"}), sel({"pod": "b"}))])])
    rules = comp(pol).pods["x/a"].ingress.rules
    assert [r.clauses[0].nets for r in rules] == [("10.244.2.2/32",), ("10.244.1.4/32", "10.244.2.3/32"),
                                                  ("10.244.1.4/32",)]


def test_ipblock_except_and_union_with_pods():
    pol = np("p", select=A, ingress=[rule([block("10.244.0.0/16", "10.244.1.0/24"), pods(pod="c")])])
    nets = comp(pol).pods["x/a"].ingress.rules[0].clauses[0].nets
    assert "10.244.1.3/32" in nets  # x/c comes back through the pod peer
    assert not any(n.startswith("10.244.1.0/") for n in nets)
    assert block_minus_except("10.0.0.0/8", ["10.0.0.0/8"]) == []
    assert normalize(block_minus_except("10.0.0.0/30", ["10.0.0.1/32"])) == ("10.0.0.0/32", "10.0.0.2/31")


def test_ports_numeric_range_protocol_only_and_named_per_destination():
    pol = np("p", ingress=[rule(None, [port(80), port(81, "UDP", end=90), port(None, "SCTP"), port("web")])])
    c = comp(pol)
    assert c.pods["x/a"].ingress.rules[0].clauses == (Clause(None, (
        PortRange("SCTP", 0, 65535), PortRange("TCP", 80, 80), PortRange("UDP", 81, 90))),)
    b_ports = c.pods["x/b"].ingress.rules[0].clauses[0].ports
    assert PortRange("TCP", 81, 81) in b_ports  # "web" is 81 on pods b
    assert PortRange("TCP", 80, 80) in b_ports  # (and 80 stays from the numeric entry)


def test_named_port_missing_on_the_pod_allows_nothing():
    c = comp(np("p", ingress=[rule(None, [port("web")])]))
    assert c.pods["x/c"].ingress.isolated and c.pods["x/c"].ingress.rules == ()
    assert c.pods["x/a"].ingress.rules[0].clauses[0].ports == (PortRange("TCP", 80, 80),)


def test_egress_named_port_resolves_per_destination_pod():
    c = comp(np("p", select=A, types=["Egress"], egress=E(rule([block("10.244.0.0/16")], [port("web")]))))
    clauses = {cl.nets: cl.ports for cl in c.pods["x/a"].egress.rules[0].clauses}
    assert clauses[("10.244.1.2/32",)] == (PortRange("TCP", 80, 80),)  # x/a: web = 80
    assert clauses[("10.244.2.2/32",)] == (PortRange("TCP", 81, 81),)  # x/b: web = 81
    assert ("10.244.1.3/32",) not in clauses  # x/c has no "web"


def test_named_port_protocol_must_match():
    c = comp(np("p", select=A, ingress=[rule(None, [port("serve-80-udp")])]))
    assert c.pods["x/a"].ingress.rules == ()
    c = comp(np("p", select=A, ingress=[rule(None, [port("serve-80-udp", "UDP")])]))
    assert c.pods["x/a"].ingress.rules[0].clauses[0].ports == (PortRange("UDP", 80, 80),)


def test_node_filter_and_ineligible_pods():
    c = comp(np("p", types=["Ingress"]), node="node1")
    assert set(c.pods) == {"x/a", "x/c", "y/b"}  # y/b is on node1 but not selected: still listed
    assert c.addresses["10.244.2.2"] == "x/b"  # every pod's address is known (for explain)
    ps, nss_ = world()
    host = Pod.model_validate({"metadata": {"name": "h", "namespace": "x", "labels": {"pod": "a"}},
                               "spec": {"hostNetwork": True, "nodeName": "node1"},
                               "status": {"podIP": "192.168.33.11", "phase": "Running"}})
    done = matrix.make_pod("x", "d", "10.244.1.9", "node1").model_copy(deep=True)
    done.status.phase = "Succeeded"
    pol = matrix.policy(np("p", ingress=[rule([pods(pod="a")])]))
    c = compile_policies([pol], [*ps, host, done], nss_)
    assert "x/h" not in c.pods and "x/d" not in c.pods
    assert c.pods["x/b"].ingress.rules[0].clauses[0].nets == ("10.244.1.2/32",)


def test_namespace_selector_matches_unknown_namespace_only_when_empty():
    ps, _ = world()
    pol = matrix.policy(np("p", select=A, ingress=[rule([nss()]),
                                                   rule([{"namespaceSelector": expr("ns", "Exists")}])]))
    c = compile_policies([pol], ps, [])  # no Namespace objects at all
    first, second = c.pods["x/a"].ingress.rules
    assert all(in_nets(ip, first.clauses[0].nets) for ip in IPS.values())
    assert second.clauses[0].nets == ()


@pytest.mark.parametrize("text,expected", [("x/b", True), ("y/a", False)])
def test_evaluate_gives_reasons(text, expected):
    c = comp(np("p", select=A, ingress=[rule([pods(pod="b")])]))
    v = c.evaluate(IPS[text], IPS["x/a"], "TCP", 80)
    assert v.allowed is expected
    assert ("x/p rule 0" in v.reasons[-1]) is expected
    assert c.evaluate(IPS["x/a"], IPS["x/a"], "TCP", 80).allowed  # a pod always reaches itself
