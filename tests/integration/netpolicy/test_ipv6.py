"""netpolicy in IPv6 on the kernel (knet_testing.netpolicy.v6bed: a node, two pods on its bridge,
an outside client, dual-stack): an ingress policy allowing only an IPv6 ipBlock with an except
admits a client inside it and drops one outside it, one in the except and the client's IPv4
address; an egress policy's IPv6 ipBlock likewise; same-node (bridged) IPv6 traffic is filtered."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from knet import netns
from knet.kube.models import Pod
from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.v6bed import CLIENT_V4, IN_BLOCK, IN_EXCEPT, OUTSIDE, PEER, SRV, V6Bed, v6bed
from netpolicy.backend import BRIDGE_NF6, NftBackend
from netpolicy.compiler import compile_policies

pytestmark = pytest.mark.integration


def pod(name: str, ips: tuple[str, str]) -> Pod:
    p = matrix.make_pod("x", name, ips[0], "node1", {"app": name})
    p.status.pod_ips.append(type(p.status.pod_ips[0])(ip=ips[1]))
    return p


def apply(backend: NftBackend, *raw) -> None:
    policies = [matrix.policy(r) for r in raw]
    compiled = compile_policies(policies, [pod("srv", SRV), pod("peer", PEER)], [matrix.make_namespace("x")],
                                node="node1")
    backend.apply(compiled)
    netns.run(backend.netns or "", ["conntrack", "-F"])


def policy(name: str, app: str, **spec) -> dict:
    return {"metadata": {"name": name, "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, **spec}}


@pytest.fixture(scope="module")
def bed() -> Iterator[V6Bed]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with v6bed() as b:
        yield b


@pytest.fixture
def backend(bed: V6Bed) -> Iterator[NftBackend]:
    b = NftBackend(netns=bed.node)
    # The IPv6 switch off, as a node may have it: the backend must turn it on for bridged traffic.
    netns.run(bed.node, ["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=0"])
    assert b.ensure_bridge_netfilter()
    assert netns.run(bed.node, ["cat", BRIDGE_NF6]).stdout.strip() == "1"
    yield b
    b.remove()


def test_everything_connects_without_a_policy(bed: V6Bed):
    """The paths work in both families (so the drops below are the policy's)."""
    for src in (IN_BLOCK, IN_EXCEPT, OUTSIDE):
        assert bed.reaches(bed.cli, src, SRV[1]) == "srv", src
    assert bed.reaches(bed.cli, CLIENT_V4, SRV[0]) == "srv"
    assert bed.reaches(bed.peer, PEER[1], SRV[1]) == "srv"  # bridged, same node
    assert bed.reaches(bed.peer, PEER[1], OUTSIDE) == "cli"


def test_ingress_allowing_only_an_ipv6_ipblock(bed: V6Bed, backend: NftBackend):
    apply(backend, policy("v6-block", "srv", policyTypes=["Ingress"], ingress=[{
        "from": [{"ipBlock": {"cidr": "fd00:33::/64", "except": ["fd00:33::8:0/112"]}}],
        "ports": [{"port": 8080, "protocol": "TCP"}]}]))
    assert bed.reaches(bed.cli, IN_BLOCK, SRV[1]) == "srv"
    assert bed.connect(bed.cli, IN_EXCEPT, SRV[1]) is None  # in the except
    assert bed.connect(bed.cli, OUTSIDE, SRV[1]) is None  # outside the block
    assert bed.connect(bed.cli, CLIENT_V4, SRV[0]) is None  # the pod's IPv4 address is isolated too
    assert bed.connect(bed.peer, PEER[1], SRV[1]) is None  # a same-node pod outside the block (bridged)
    # The drops were counted against the policy.
    counters = backend.drops()
    assert counters.get("drop_ingress.x/v6-block", 0) >= 4, counters


def test_egress_ipv6_ipblock_with_except(bed: V6Bed, backend: NftBackend):
    apply(backend, policy("v6-out", "peer", policyTypes=["Egress"], egress=[{
        "to": [{"ipBlock": {"cidr": "fd00::/8", "except": ["fd00:34::/32"]}}]}]))
    assert bed.reaches(bed.peer, PEER[1], SRV[1]) == "srv"  # a pod inside the block (bridged)
    assert bed.reaches(bed.peer, PEER[1], IN_BLOCK) == "cli"  # routed out of the node
    assert bed.connect(bed.peer, PEER[1], OUTSIDE) is None  # in the except
    assert bed.connect(bed.peer, PEER[0], SRV[0]) is None  # IPv4: no IPv4 peer allowed
    assert bed.reaches(bed.cli, OUTSIDE, SRV[1]) == "srv"  # srv is not isolated
