"""Node IPAM's pure part (lab.controllers.cidrset): blocks of the cluster CIDR handed out, held
while their Node exists, adopted after a restart, a full range reported once."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from lab.controllers.cidrset import (
    SERVICE_RANGE,
    Action,
    CidrSet,
    NodeIpam,
    NodeView,
    OutOfRange,
    RangeAllocator,
    RangeFull,
)
from lab.controllers.main import build_parser, node_ipam


def n(name: str, *cidrs: str, uid: str = "") -> NodeView:
    return NodeView(name, uid or f"uid-{name}", tuple(cidrs))


@pytest.mark.parametrize(("cluster", "mask", "first", "count"), [
    ("10.244.0.0/16", 24, "10.244.0.0/24", 256),
    ("10.244.0.0/16", 26, "10.244.0.0/26", 1024),
    ("10.8.0.0/22", 24, "10.8.0.0/24", 4),
    ("10.8.0.7/22", 24, "10.8.0.0/24", 4),  # host bits ignored, as kube-controller-manager parses it
    ("10.8.0.0/24", 24, "10.8.0.0/24", 1),
])
def test_cidrset_blocks(cluster: str, mask: int, first: str, count: int) -> None:
    s = CidrSet(cluster, mask)
    assert (str(s.block(0)), s.max) == (first, count)
    got = [str(s.allocate_next()) for _ in range(count)]
    assert (got[0], len(set(got))) == (first, count)
    with pytest.raises(RangeFull, match="no CIDRs remaining"):
        s.allocate_next()


@pytest.mark.parametrize(("cluster", "mask", "error"), [
    ("10.244.0.0/16", 15, "between"),
    ("10.244.0.0/16", 33, "between"),
    ("10.0.0.0/8", 30, "more than 65536"),
    ("fd00::/48", 129, "between"),
    ("fd00::/48", 72, "more than 65536"),
    ("10.244.0.0/33", 24, "10.244.0.0/33"),
])
def test_cidrset_refuses_what_upstream_refuses(cluster: str, mask: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        CidrSet(cluster, mask)


def test_cidrset_rotates_so_a_released_block_is_not_reused_at_once() -> None:
    s = CidrSet("10.8.0.0/22", 24)
    a, b, c = s.allocate_next(), s.allocate_next(), s.allocate_next()
    s.release(b)
    assert str(s.allocate_next()) == "10.8.3.0/24"  # the next candidate, not the hole
    assert s.allocate_next() == b  # then it wraps around to the hole
    assert (s.allocated, s.allocations, s.releases) == (4, 5, 1)
    s.release(a)
    s.release(a)  # twice: counted once
    assert (s.allocated, s.releases, s.usage) == (3, 2, 0.75)
    assert s.used(c) and not s.used(a)


@pytest.mark.parametrize(("cidr", "blocks"), [
    ("10.8.1.0/24", [1]),
    ("10.8.1.128/25", [1]),        # smaller than a block: its block
    ("10.8.2.0/23", [2, 3]),       # larger: every block in it
    ("10.0.0.0/8", [0, 1, 2, 3]),  # covers the whole cluster CIDR
])
def test_cidrset_occupy_marks_every_block_overlapped(cidr: str, blocks: list[int]) -> None:
    s = CidrSet("10.8.0.0/22", 24)
    s.occupy(IPv4Network(cidr))
    assert [i for i in range(4) if s.used(s.block(i))] == blocks
    with pytest.raises(OutOfRange, match=r"out the range of cluster cidr 10\.8\.0\.0/22"):
        s.occupy(IPv4Network("10.9.0.0/24"))


# --- RangeAllocator: (event, expected actions) in order; each row's state carries to the next ---

A, R = Action, "release"
SCENARIOS = {
    "new nodes get the next blocks, a heartbeat changes nothing": [
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node2", n("node2")), [A("assign", "node2", "10.8.1.0/24")]),
        # the patch has landed: the Node shows the block it was given
        (("node1", n("node1", "10.8.0.0/24")), []),
    ],
    "a pending assignment is repeated, never a second block": [
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node2", n("node2")), [A("assign", "node2", "10.8.1.0/24")]),
    ],
    "a deleted node's block is released and handed out only after the others": [
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node2", n("node2")), [A("assign", "node2", "10.8.1.0/24")]),
        (("node1", None), [A(R, "node1", "10.8.0.0/24", "node deleted")]),
        (("node3", n("node3")), [A("assign", "node3", "10.8.2.0/24")]),
        (("node4", n("node4")), [A("assign", "node4", "10.8.3.0/24")]),
        (("node5", n("node5")), [A("assign", "node5", "10.8.0.0/24")]),
        (("node1", None), []),  # deleted twice: nothing left to release
    ],
    "a node re-created under its name is a new node": [
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node1", n("node1", "10.8.0.0/24")), []),
        (("node1", n("node1", uid="second")), [A(R, "node1", "10.8.0.0/24", "node re-created"),
                                               A("assign", "node1", "10.8.1.0/24")]),
        # Adopting does not move the next candidate (as upstream): after a restart the adopted
        # block of a re-created node may come back to it.
        (("node2", n("node2", "10.8.3.0/24")), [A("adopt", "node2", "10.8.3.0/24")]),
        (("node2", n("node2", uid="third")), [A(R, "node2", "10.8.3.0/24", "node re-created"),
                                              A("assign", "node2", "10.8.2.0/24")]),
    ],
    "a podCIDR set by someone else while ours was in flight stands": [
        (("node1", n("node1")), [A("assign", "node1", "10.8.0.0/24")]),
        (("node1", n("node1", "10.8.2.0/24")), [A(R, "node1", "10.8.0.0/24", "node has podCIDR 10.8.2.0/24"),
                                                A("adopt", "node1", "10.8.2.0/24")]),
        (("node2", n("node2")), [A("assign", "node2", "10.8.1.0/24")]),
        (("node3", n("node3")), [A("assign", "node3", "10.8.3.0/24")]),
        (("node4", n("node4")), [A("assign", "node4", "10.8.0.0/24")]),  # ours went back to the pool
    ],
    "a full range leaves the node without podCIDR, reported once, until a block is free": [
        (("a", n("a")), [A("assign", "a", "10.8.0.0/24")]),
        (("b", n("b")), [A("assign", "b", "10.8.1.0/24")]),
        (("c", n("c")), [A("assign", "c", "10.8.2.0/24")]),
        (("d", n("d")), [A("assign", "d", "10.8.3.0/24")]),
        (("e", n("e")), [A("full", "e", message="no CIDRs remaining in cluster CIDR 10.8.0.0/22 "
                                                 "(4 blocks of /24, all in use)")]),
        (("e", n("e")), []),  # its heartbeats: no second report
        (("b", None), [A(R, "b", "10.8.1.0/24", "node deleted")]),
        (("e", n("e")), [A("assign", "e", "10.8.1.0/24")]),
    ],
    "a node deleted while waiting is forgotten": [
        (("a", n("a", "10.8.0.0/22")), [A("adopt", "a", "10.8.0.0/22")]),  # one node, the whole range
        (("e", n("e")), [A("full", "e", message="no CIDRs remaining in cluster CIDR 10.8.0.0/22 "
                                                 "(4 blocks of /24, all in use)")]),
        (("e", None), []),
        (("a", None), [A(R, "a", "10.8.0.0/22", "node deleted")]),
        (("f", n("f")), [A("assign", "f", "10.8.0.0/24")]),
    ],
    "podCIDRs that cannot be adopted are reported and left alone": [
        (("x", n("x", "10.9.0.0/24")), [A("invalid", "x", "10.9.0.0/24", "podCIDR 10.9.0.0/24 of node x cannot be "
                                         "adopted: cidr 10.9.0.0/24 is out the range of cluster cidr 10.8.0.0/22")]),
        (("y", n("y", "fd00::/64")), [A("invalid", "y", "fd00::/64",
                                        "podCIDR fd00::/64 of node y cannot be adopted: not IPv4")]),
        (("z", n("z", "bogus")), [A("invalid", "z", "bogus", "podCIDR bogus of node z cannot be adopted: "
                                    "'bogus' does not appear to be an IPv4 or IPv6 network")]),
        (("w", n("w")), [A("assign", "w", "10.8.0.0/24")]),
    ],
    "two nodes given one podCIDR by hand: the block is free once both are gone": [
        (("a", n("a", "10.8.1.0/24")), [A("adopt", "a", "10.8.1.0/24")]),
        (("b", n("b", "10.8.1.0/24")), [A("adopt", "b", "10.8.1.0/24", "podCIDR 10.8.1.0/24 overlaps what a holds")]),
        (("a", None), [A(R, "a", "10.8.1.0/24", "node deleted")]),
        (("c", n("c")), [A("assign", "c", "10.8.0.0/24")]),
        (("d", n("d")), [A("assign", "d", "10.8.2.0/24")]),  # 1 is still b's
        (("b", None), [A(R, "b", "10.8.1.0/24", "node deleted")]),
        (("e", n("e")), [A("assign", "e", "10.8.3.0/24")]),
        (("f", n("f")), [A("assign", "f", "10.8.1.0/24")]),
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_range_allocator(steps: list) -> None:
    ipam = RangeAllocator("10.8.0.0/22", 24)
    for i, ((name, node), want) in enumerate(steps):
        assert ipam.sync(name, node) == want, f"step {i}: {name} {node}"
    # The bookkeeping agrees both ways: every held block is used, nothing else is.
    held = {ipam.cidrs.indices(h.cidr).start for h in ipam.held.values()}
    assert {i for i in range(ipam.cidrs.max) if ipam.cidrs.used(ipam.cidrs.block(i))} >= held


def test_restart_adopts_every_existing_podcidr_before_allocating() -> None:
    """A restarted controller lists Nodes in any order: one without a podCIDR listed before the
    one holding 10.8.0.0/24 must not be given that block."""
    listed = [n("new"), n("old2", "10.8.1.0/24"), n("old1", "10.8.0.0/24")]
    ipam = RangeAllocator("10.8.0.0/22", 24)
    assert ipam.adopt_existing(listed) == [A("adopt", "old2", "10.8.1.0/24"), A("adopt", "old1", "10.8.0.0/24")]
    assert [ipam.sync(v.name, v) for v in listed] == [[A("assign", "new", "10.8.2.0/24")], [], []]


def test_the_service_range_is_never_handed_out() -> None:
    ipam = RangeAllocator("10.8.0.0/22", 24, service_cidr="10.8.1.0/24")
    assert ipam.holders[1] == {SERVICE_RANGE}
    got = [ipam.sync(x, n(x))[0].cidr for x in ("a", "b", "c")]
    assert got == ["10.8.0.0/24", "10.8.2.0/24", "10.8.3.0/24"]
    # A node given a block in it by hand keeps it; the block stays the service's when it goes.
    adopted = ipam.sync("d", n("d", "10.8.1.0/24"))
    assert adopted[0].message == "podCIDR 10.8.1.0/24 overlaps what the service range holds"
    ipam.sync("d", None)
    assert ipam.cidrs.used(IPv4Network("10.8.1.0/24"))
    # A service range elsewhere changes nothing.
    assert RangeAllocator("10.244.0.0/16", 24, service_cidr="10.96.0.0/12").cidrs.allocated == 0


@pytest.mark.parametrize(("argv", "result"), [
    ([], None),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16"], ("10.244.0.0/16", 24)),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "26"],
     ("10.244.0.0/16", 26)),
    (["--allocate-node-cidrs"], "needs --cluster-cidr"),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "8"], "between"),
    (["--allocate-node-cidrs", "--cluster-cidr", "fd00:10:244::/56"], ("fd00:10:244::/56", 64)),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/56", "--node-cidr-mask-size", "24"],
     "not allowed with dual-stack clusters"),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size-ipv6", "64"],
     "not allowed for a single-stack IPv4 cluster"),
    (["--allocate-node-cidrs", "--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"], "two of different IP families"),
])
def test_flags(argv: list[str], result: object) -> None:
    args = build_parser().parse_args(["--kubeconfig", "x", *argv])
    if isinstance(result, str):
        with pytest.raises(ValueError, match=result):
            node_ipam(args)
        return
    ipam = node_ipam(args)
    first = None if ipam is None else ipam.families[0].cidrs
    assert (None if first is None else (str(first.cluster), first.mask_size)) == result


def test_dual_stack_node_gets_a_block_of_each_family_primary_first() -> None:
    ipam = NodeIpam("10.244.0.0/16,fd00:10:244::/56", {"IPv4": 24, "IPv6": 64}, "10.96.0.0/12,fd00:10:96::/112")
    assert ipam.sync("a", NodeView("a", "u1")) == [Action("assign", "a", "10.244.0.0/24,fd00:10:244::/64")]
    assert ipam.sync("b", NodeView("b", "u2")) == [Action("assign", "b", "10.244.1.0/24,fd00:10:244:1::/64")]
    # the patch landed: nothing more to do
    assert ipam.sync("a", NodeView("a", "u1", ("10.244.0.0/24", "fd00:10:244::/64"))) == []
    # an IPv6-primary cluster orders them the other way
    v6 = NodeIpam("fd00:10:244::/56,10.244.0.0/16", {"IPv4": 24, "IPv6": 64})
    assert v6.sync("a", NodeView("a", "u1")) == [Action("assign", "a", "fd00:10:244::/64,10.244.0.0/24")]
    # a Node holding only its IPv4 block gets the IPv6 one beside it
    assert ipam.sync("c", NodeView("c", "u3", ("10.244.9.0/24",)))[-1] == \
        Action("assign", "c", "10.244.9.0/24,fd00:10:244:2::/64")
    # deletion releases both
    released = ipam.sync("b", None)
    assert sorted(a.cidr for a in released) == ["10.244.1.0/24", "fd00:10:244:1::/64"]
