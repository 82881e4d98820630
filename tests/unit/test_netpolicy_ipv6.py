"""The compiler and the nftables rendering in IPv6 and dual-stack worlds (pure): IPv6 ipBlock with
except in ingress and egress rules, both addresses of dual-stack pods (status.podIPs) selected and
matched as peers, and every decision checked against the reference evaluator."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from knet.kube.models import Pod
from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.reference import World
from knet_testing.netpolicy.scenarios import A, E, block, np, pods, port, rule
from netpolicy import nft, nftscript
from netpolicy.compiler import compile_policies
from netpolicy.model import block_minus_except, normalize

# Dual-stack pods as the issue lays them out: pods 10.244.0.0/16 + fd00:10:244::/56, a /64 per node.
DUAL = {"x/a": ("10.244.1.2", "fd00:10:244:1::2"), "x/b": ("10.244.2.2", "fd00:10:244:2::2"),
        "x/c": ("10.244.1.3", "fd00:10:244:1::3"), "y/a": ("10.244.2.3", "fd00:10:244:2::3")}
UNDERLAY = "fd00:33::/64"
IN_BLOCK, IN_EXCEPT, OUTSIDE = "fd00:33::10", "fd00:33::8:2", "fd00:34::10"


def dual_pod(key: str, v4: str, v6: str) -> Pod:
    ns, name = key.split("/")
    p = matrix.make_pod(ns, name, v4, "node1" if v4.startswith("10.244.1.") else "node2")
    p.status.pod_ips.append(type(p.status.pod_ips[0])(ip=v6))
    return p


def world() -> tuple[list[Pod], list]:
    return [dual_pod(k, *ips) for k, ips in DUAL.items()], [matrix.make_namespace(n) for n in "xy"]


def build(*raw, node=None):
    ps, namespaces = world()
    policies = [matrix.policy(r) for r in raw]
    compiled = compile_policies(policies, ps, namespaces, node=node)
    return compiled, nft.build(compiled), World(policies, ps, namespaces)


def test_block_minus_except_ipv6():
    hole = ipaddress.ip_network("fd00:33::8:0/112")
    parts = block_minus_except(UNDERLAY, [str(hole)])
    # Disjoint pieces of the /64, none touching the except, covering all of it but the except.
    assert all(p.subnet_of(ipaddress.ip_network(UNDERLAY)) and not p.overlaps(hole) for p in parts)
    assert len(normalize(parts)) == len(parts)
    assert sum(p.num_addresses for p in parts) == 2**64 - 2**16
    # An except of the other family leaves the block whole; one covering it all empties it.
    assert normalize(block_minus_except(UNDERLAY, ["10.0.0.0/8"])) == (UNDERLAY,)
    assert block_minus_except(UNDERLAY, ["fd00:33::/48"]) == []


def test_ingress_ipv6_ipblock_with_except():
    _, rs, ref = build(np("v6only", select=A, types=["Ingress"],
                          ingress=[rule([block(UNDERLAY, "fd00:33::8:0/112")], [port(8080)])]))
    # x/a is isolated in both families, through one chain.
    chain = rs.maps["in6"]["fd00:10:244:1::2"]
    assert rs.maps["in4"]["10.244.1.2"] == chain
    sets = rs.chains[chain].sets
    assert [(s.family, s.ported) for s in sets] == [(6, True)]
    assert sets[0].type == "ipv6_addr . inet_proto . inet_service"
    assert "fd00:33::/109 . tcp . 8080" in sets[0].rendered_elements()
    assert rs.chains[chain].lines()[0].startswith("ip6 saddr . meta l4proto . th dport @")
    dst = "fd00:10:244:1::2"
    assert rs.simulate(IN_BLOCK, dst, "TCP", 8080)
    assert not rs.simulate(IN_EXCEPT, dst, "TCP", 8080)
    assert not rs.simulate(OUTSIDE, dst, "TCP", 8080)
    assert not rs.simulate(IN_BLOCK, dst, "TCP", 80)
    assert not rs.simulate("192.168.33.10", "10.244.1.2", "TCP", 8080)  # the v4 address: no v4 peer allowed
    for src, d in itertools.product((IN_BLOCK, IN_EXCEPT, OUTSIDE, "192.168.33.10"), (dst, "10.244.1.2")):
        if (":" in src) != (":" in d):
            continue  # a packet has one family
        assert rs.simulate(src, d, "TCP", 8080) == ref.allowed(src, d, "TCP", 8080), (src, d)


def test_egress_ipv6_ipblock_with_except():
    _, rs, ref = build(np("out", select=A, types=["Egress"],
                          egress=E(rule([block("fd00::/8", "fd00:34::/32")], [port(53, "UDP"), port(443)]))))
    src = "fd00:10:244:1::2"
    assert rs.simulate(src, IN_BLOCK, "UDP", 53) and rs.simulate(src, IN_BLOCK, "TCP", 443)
    assert not rs.simulate(src, OUTSIDE, "UDP", 53)  # in the except
    assert not rs.simulate(src, "2001:db8::1", "TCP", 443)  # outside fd00::/8
    assert not rs.simulate(src, IN_BLOCK, "TCP", 53)
    assert not rs.simulate("10.244.1.2", "10.96.0.10", "UDP", 53)  # the pod's v4 side is isolated too
    for dst, (proto, p) in itertools.product((IN_BLOCK, OUTSIDE, "2001:db8::1", "fd00:10:244:2::2"),
                                             (("UDP", 53), ("TCP", 443), ("TCP", 80))):
        assert rs.simulate(src, dst, proto, p) == ref.allowed(src, dst, proto, p), (dst, proto, p)


def test_pod_selector_peers_match_both_families():
    _, rs, ref = build(np("from-b", select=A, types=["Ingress"], ingress=[rule([pods(pod="b")])]))
    chain = rs.chains[rs.maps["in6"]["fd00:10:244:1::2"]]
    elements = {s.family: s.rendered_elements() for s in chain.sets}
    assert elements == {4: ["10.244.2.2"], 6: ["fd00:10:244:2::2"]}
    assert rs.simulate("fd00:10:244:2::2", "fd00:10:244:1::2", "TCP", 80)
    assert rs.simulate("10.244.2.2", "10.244.1.2", "TCP", 80)
    assert not rs.simulate("fd00:10:244:1::3", "fd00:10:244:1::2", "TCP", 80)  # x/c
    # A pod reaches itself in both families (hairpin through a service); the self sets hold both.
    assert rs.simulate("fd00:10:244:1::2", "fd00:10:244:1::2", "TCP", 80)
    script = nftscript.switch_script(rs, None, nftscript.Listing())
    assert "fd00:10:244:1::2 . fd00:10:244:1::2" in script and "10.244.1.2 . 10.244.1.2" in script
    everyone = [ip for ips in DUAL.values() for ip in ips]
    for s, d in itertools.product(everyone, everyone):
        if (":" in s) == (":" in d):
            assert rs.simulate(s, d, "TCP", 80) == ref.allowed(s, d, "TCP", 80), (s, d)


@pytest.mark.parametrize("raw", [
    np("mixed", select=A, types=["Ingress", "Egress"],
       ingress=[rule([block("10.0.0.0/8", "10.244.2.0/24"), block("fd00:10:244::/56", "fd00:10:244:2::/64")])],
       egress=E(rule([block("::/0", "fd00:10:244:1::/64")], [port(80), port(81, "UDP")]))),
    np("ns-peers", types=["Ingress"], ingress=[rule([{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                                    [port("serve-80-tcp")])]),
    np("egress-named", select=A, types=["Egress"], egress=E(rule([pods()], [port("web")]))),
])
def test_dual_stack_matches_the_reference(raw):
    """Every (source, destination, port) over both families' addresses and outside addresses."""
    _, rs, ref = build(raw)
    everyone = [ip for ips in DUAL.values() for ip in ips]
    outside = ["10.9.9.9", "10.244.2.50", "fd00:10:244:2::50", "fd00:33::10", "2001:db8::1"]
    for s, d in itertools.product(everyone + outside, everyone + outside):
        if (":" in s) != (":" in d) or (s not in everyone and d not in everyone):
            continue
        for proto, p in (("TCP", 80), ("TCP", 81), ("UDP", 81)):
            assert rs.simulate(s, d, proto, p) == ref.allowed(s, d, proto, p), (raw["metadata"]["name"], s, d, p)
