"""Rendering: sets, chains, dedupe, the two-transaction update scripts, listings (pure)."""

from __future__ import annotations

import ipaddress
import json

from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.scenarios import A, E, block, np, pods, port, rule
from netpolicy import nft, nftscript
from netpolicy.compiler import compile_policies

IPS = {"x/a": "10.244.1.2", "x/b": "10.244.1.3", "x/c": "10.244.1.4", "y/a": "10.244.1.5"}


def ruleset(*raw, salt=""):
    ps = [matrix.make_pod(*k.split("/"), ip, "node1") for k, ip in IPS.items()]
    c = compile_policies([matrix.policy(r) for r in raw], ps, [matrix.make_namespace(n) for n in "xy"], node="node1")
    return nft.build(c, salt)


def test_disjoint_rectangles():
    n = ipaddress.ip_network
    out = nft._disjoint([(n("10.0.0.0/24"), 80, 90), (n("10.0.0.0/25"), 85, 100), (n("10.0.1.0/24"), 80, 90)])
    # 85-90 is covered by the /24, the /25 and the other /24: pieces with equal networks merge.
    assert out == [("10.0.0.0/23", 80, 90), ("10.0.0.0/25", 91, 100)]
    # No two elements overlap in address AND port (what the kernel rejects).
    for i, (a, lo1, hi1) in enumerate(out):
        for b, lo2, hi2 in out[i + 1:]:
            assert not (n(a).overlaps(n(b)) and lo1 <= hi2 and lo2 <= hi1)


def test_identical_directions_share_one_chain_and_sets():
    rs = ruleset(np("deny", types=["Ingress"]))
    assert len(rs.chains) == 1 and not rs.sets
    assert len(set(rs.maps["in4"].values())) == 1 and len(rs.maps["in4"]) == 3  # x/a, x/b, x/c
    chain = next(iter(rs.chains.values()))
    assert chain.lines() == ['counter name "drop_ingress.x/deny" drop']


def test_chain_lines_and_elements():
    rs = ruleset(np("p", select=A, types=["Ingress", "Egress"],
                    ingress=[rule([pods(pod="b")]), rule([block("10.0.0.0/8", "10.1.0.0/16")], [port(80, end=81)])],
                    egress=E(rule(None, [port(53, "UDP")]))))
    ing = rs.chains[rs.maps["in4"]["10.244.1.2"]]
    eg = rs.chains[rs.maps["eg4"]["10.244.1.2"]]
    assert [line.split(" @")[0] for line in ing.lines()[:2]] == ["ip saddr", "ip saddr . meta l4proto . th dport"]
    assert eg.lines()[0].startswith("ip daddr . meta l4proto . th dport @") and len(eg.lines()) == 3  # v4 + v6 sets
    ported = next(s for s in ing.sets if s.ported)
    assert ported.type == "ipv4_addr . inet_proto . inet_service"
    assert "10.0.0.0/16 . tcp . 80-81" in ported.rendered_elements()
    assert not ported.contains("10.1.2.3", "TCP", 80) and ported.contains("10.2.0.1", "TCP", 81)
    assert rs.simulate("10.244.1.3", "10.244.1.2", "TCP", 8080)  # x/b: any port
    assert rs.simulate("10.244.1.4", "10.244.1.2", "TCP", 80)  # x/c: in the ipBlock on 80-81 only
    assert not rs.simulate("10.244.1.4", "10.244.1.2", "TCP", 8080)
    assert rs.simulate("10.244.1.2", "8.8.8.8", "UDP", 53) and not rs.simulate("10.244.1.2", "8.8.8.8", "TCP", 53)


def test_salt_renames_every_object():
    a, b = ruleset(np("deny", types=["Ingress"]), salt=""), ruleset(np("deny", types=["Ingress"]), salt="x")
    assert set(a.chains).isdisjoint(b.chains) and a.counters == b.counters


def test_counter_names_fit_nft():
    assert nft.counter_name("x/allow-all", "ingress") == "drop_ingress.x/allow-all"
    long = nft.counter_name("n" * 63 + "/" + "p" * 253, "egress")
    assert len(long) <= 255 and long.startswith("drop_egress.nnn")


def test_incremental_update_stages_then_switches():
    old = ruleset(np("deny", types=["Ingress"]))
    new = ruleset(np("deny", types=["Ingress"]), np("allow", select=A, ingress=[rule([pods(pod="b")])]))
    stage = nftscript.stage_script(new, nftscript.Listing.of(old))
    switch = nftscript.switch_script(new, old, nftscript.Listing.of(old))
    assert "add table" not in stage and "add counter inet knet-netpol drop_ingress.x/allow" in stage
    assert "add element" not in stage and "delete" not in stage  # staging never touches live objects
    lines = switch.splitlines()
    assert lines[0].startswith("delete element inet knet-netpol in4 { 10.244.1.2 }")
    assert lines[1].startswith("add element inet knet-netpol in4 { 10.244.1.2 : jump i_")
    assert not any("chain" in line for line in lines)  # the shared deny chain is still used by x/b, x/c
    assert nftscript.stage_script(new, nftscript.Listing.of(new)) == ""
    assert nftscript.switch_script(new, new, nftscript.Listing.of(new)) == ""


def test_full_sync_rewrites_entries_and_removes_strangers():
    new = ruleset(np("deny", types=["Ingress"]))
    have = nftscript.Listing(True, {"forward", "i_old", "e_old"}, {"self4", "self6", "s_old"}, set(nft.MAPS),
                             {"drop_ingress.x/deny", "drop_ingress.x/gone"}, 7)
    stage = nftscript.stage_script(new, have)
    assert "add counter" not in stage and "add chain inet knet-netpol i_" in stage
    switch = nftscript.switch_script(new, None, have)
    for expected in ("flush chain inet knet-netpol forward", "flush map inet knet-netpol in4",
                     "flush set inet knet-netpol self4", "delete chain inet knet-netpol i_old",
                     "delete set inet knet-netpol s_old", "delete counter inet knet-netpol drop_ingress.x/gone"):
        assert expected in switch
    assert switch.index("flush map inet knet-netpol in4") < switch.index("delete chain inet knet-netpol i_old")
    fresh = nftscript.stage_script(new, nftscript.Listing())
    assert fresh.startswith("add table inet knet-netpol\nadd map inet knet-netpol eg4")


def test_listing_parse_and_match():
    rs = ruleset(np("deny", types=["Ingress"]))
    chain = next(iter(rs.chains))
    doc = {"nftables": [{"metainfo": {}}, {"table": {"name": "knet-netpol"}},
                        *[{"map": {"name": m}} for m in nft.MAPS],
                        {"set": {"name": "self4"}}, {"set": {"name": "self6"}},
                        {"counter": {"name": "drop_ingress.x/deny"}}, {"chain": {"name": "forward"}},
                        {"chain": {"name": chain}},
                        *[{"rule": {"chain": "forward"}} for _ in nftscript.FORWARD_RULES]]}
    listing = nftscript.Listing.parse(json.dumps(doc))
    assert listing.matches(rs)
    listing.chains.discard(chain)
    assert not listing.matches(rs)
    assert not nftscript.Listing.parse(None).exists


def test_ipv6_pods_get_ip6_rules():
    v6 = matrix.make_pod("x", "a", "fd00::2", "node1")
    v6.status.pod_ips.append(type(v6.status.pod_ips[0])(ip="10.244.1.2"))
    peer = matrix.make_pod("x", "b", "fd00::3", "node1")
    pol = matrix.policy(np("p", select=A, ingress=[rule([pods(pod="b")], [port(80)])]))
    rs = nft.build(compile_policies([pol], [v6, peer], [matrix.make_namespace("x")], node="node1"))
    chain = rs.chains[rs.maps["in6"]["fd00::2"]]
    assert rs.maps["in4"]["10.244.1.2"] == rs.maps["in6"]["fd00::2"]  # one chain for both families
    assert chain.lines()[0].startswith("ip6 saddr . meta l4proto . th dport @")
    assert "fd00::3 . tcp . 80" in chain.sets[0].rendered_elements()
    assert rs.simulate("fd00::3", "fd00::2", "TCP", 80) and not rs.simulate("fd00::3", "fd00::2", "TCP", 81)
    assert "fd00::2 . fd00::2" in nftscript.switch_script(rs, None, nftscript.Listing())
