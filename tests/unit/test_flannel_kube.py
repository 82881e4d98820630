"""flannel_py.kube_annotations: flanneld's Node annotations (names, exact value formats), the patch
that publishes ours, and Nodes read back as leases (table tests, pure)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel_py.config import ConfigError
from flannel_py.kube_annotations import (
    Annotations,
    annotation_patch,
    network_available,
    network_available_patch,
    node_lease,
    own_ipv6_subnet,
    own_subnet,
    published,
)
from flannel_py.lease import Lease, LeaseError, hostgw_attrs, vxlan_attrs
from knet.kube.models import Node

A = Annotations.with_prefix()
VX = vxlan_attrs(IPv4Address("192.168.33.11"), 1, "2E:8A:00:11:22:33")
HG = hostgw_attrs(IPv4Address("192.168.33.12"))


def node(name="n1", annotations=None, pod_cidr=None, pod_cidrs=None) -> Node:
    spec = {}
    if pod_cidr:
        spec["podCIDR"] = pod_cidr
    if pod_cidrs:
        spec["podCIDRs"] = pod_cidrs
    return Node.model_validate({"apiVersion": "v1", "kind": "Node",
                                "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec})


def test_flanneld_annotation_names():
    assert Annotations("flannel.alpha.coreos.com/kube-subnet-manager", "flannel.alpha.coreos.com/backend-type",
                       "flannel.alpha.coreos.com/backend-data", "flannel.alpha.coreos.com/public-ip",
                       "flannel.alpha.coreos.com/public-ip-overwrite", "flannel.alpha.coreos.com/backend-v6-data",
                       "flannel.alpha.coreos.com/public-ipv6", "flannel.alpha.coreos.com/public-ipv6-overwrite") == A
    assert Annotations.with_prefix("example.com/net").backend_type == "example.com/net-backend-type"
    assert Annotations.with_prefix("example.com/net-").public_ip == "example.com/net-public-ip"


@pytest.mark.parametrize("prefix", ["a/b/c", "Example.com", "nodots", "example.com/UPPER"])
def test_bad_prefix(prefix):
    with pytest.raises(ConfigError):
        Annotations.with_prefix(prefix)


def test_published_values_are_flanneld_formats():
    assert published(A, VX, {}) == {
        A.backend_type: "vxlan",
        A.backend_data: '{"VNI":1,"VtepMAC":"2e:8a:00:11:22:33"}',
        A.public_ip: "192.168.33.11",
        A.kube_subnet_manager: "true",
    }
    assert published(A, HG, {})[A.backend_data] == "null"
    assert published(A, VX, {A.public_ip_overwrite: "203.0.113.7"})[A.public_ip] == "203.0.113.7"


def test_patch_carries_only_what_differs():
    assert annotation_patch(A, VX, published(A, VX, {})) is None
    stale = {**published(A, VX, {}), A.public_ip: "192.168.33.99", "other/annotation": "kept"}
    assert annotation_patch(A, VX, stale) == {"metadata": {"annotations": {A.public_ip: "192.168.33.11"}}}
    assert annotation_patch(A, VX, {})["metadata"]["annotations"] == published(A, VX, {})


@pytest.mark.parametrize("attrs", [VX, HG], ids=["vxlan", "host-gw"])
def test_published_node_reads_back_as_the_same_lease(attrs):
    n = node(annotations=published(A, attrs, {}), pod_cidr="10.244.3.0/24")
    assert node_lease(A, n) == Lease(IPv4Network("10.244.3.0/24"), attrs)


NOT_LEASES = [
    ("no flannel yet", {}, "10.244.3.0/24", "kube-subnet-manager"),
    ("no podCIDR", published(A, VX, {}), None, "no IPv4 podCIDR"),
    ("bad backend-data", {**published(A, VX, {}), A.backend_data: "{nope"}, "10.244.3.0/24", "not JSON"),
    ("bad VtepMAC", {**published(A, VX, {}), A.backend_data: '{"VNI":1,"VtepMAC":"zz"}'}, "10.244.3.0/24",
     "not a MAC"),
    ("bad public-ip", {**published(A, VX, {}), A.public_ip: "a.b"}, "10.244.3.0/24", "not an IPv4"),
]


@pytest.mark.parametrize("why,annotations,cidr,reason", NOT_LEASES, ids=[c[0] for c in NOT_LEASES])
def test_nodes_that_are_not_leases(why, annotations, cidr, reason):
    with pytest.raises(LeaseError, match=reason):
        node_lease(A, node(annotations=annotations, pod_cidr=cidr))


def test_dual_stack_uses_the_ipv4_cidr():
    n = node(annotations=published(A, VX, {}), pod_cidr="fd00:10::/64", pod_cidrs=["fd00:10::/64", "10.244.4.0/24"])
    assert node_lease(A, n).subnet == IPv4Network("10.244.4.0/24")


def test_own_subnet():
    net = IPv4Network("10.244.0.0/16")
    assert own_subnet(node(pod_cidr="10.244.5.0/24"), net) == IPv4Network("10.244.5.0/24")
    assert own_subnet(node(), net) is None  # not assigned yet: the daemon waits
    with pytest.raises(ConfigError, match=r"10\.99\.0\.0/24 is not inside the Network 10\.244\.0\.0/16"):
        own_subnet(node(pod_cidr="10.99.0.0/24"), net)


def test_backend_data_is_compact_json():
    data = published(A, VX, {})[A.backend_data]
    assert json.loads(data) == {"VNI": 1, "VtepMAC": "2e:8a:00:11:22:33"} and " " not in data


# --- dual-stack ------------------------------------------------------------------------------------

VX6 = vxlan_attrs(IPv4Address("192.168.33.11"), 1, "2E:8A:00:11:22:33", IPv6Address("fd00:33::11"),
                  "9E:03:00:11:22:33")
HG6 = hostgw_attrs(IPv4Address("192.168.33.12"), IPv6Address("fd00:33::12"))


def test_dual_stack_publishes_flanneld_v6_annotations():
    assert published(A, VX6, {}) == {
        A.backend_type: "vxlan",
        A.backend_data: '{"VNI":1,"VtepMAC":"2e:8a:00:11:22:33"}',
        A.public_ip: "192.168.33.11",
        A.kube_subnet_manager: "true",
        A.backend_v6_data: '{"VNI":1,"VtepMAC":"9e:03:00:11:22:33"}',
        A.public_ipv6: "fd00:33::11",
    }
    assert A.backend_v6_data == "flannel.alpha.coreos.com/backend-v6-data"
    assert A.public_ipv6 == "flannel.alpha.coreos.com/public-ipv6"
    assert published(A, HG6, {})[A.backend_v6_data] == "null"  # as flanneld's host-gw nodes carry it
    assert published(A, VX6, {A.public_ipv6_overwrite: "2001:db8::7"})[A.public_ipv6] == "2001:db8::7"
    assert A.backend_v6_data not in published(A, VX, {})  # a single-stack node writes none


@pytest.mark.parametrize("attrs", [VX6, HG6], ids=["vxlan", "host-gw"])
def test_dual_stack_node_reads_back_with_its_ipv6_subnet(attrs):
    n = node(annotations=published(A, attrs, {}), pod_cidr="10.244.3.0/24",
             pod_cidrs=["10.244.3.0/24", "fd00:10:244:3::/64"])
    assert node_lease(A, n) == Lease(IPv4Network("10.244.3.0/24"), attrs, IPv6Network("fd00:10:244:3::/64"))


def test_bad_v6_annotations_are_not_leases():
    for bad, reason in (({A.public_ipv6: "nope"}, "not an IPv6"), ({A.backend_v6_data: "{x"}, "not JSON"),
                        ({A.backend_v6_data: '{"VNI":2,"VtepMAC":"9e:03:00:11:22:33"}'}, "differs")):
        n = node(annotations={**published(A, VX6, {}), **bad}, pod_cidrs=["10.244.3.0/24", "fd00:10:244:3::/64"])
        with pytest.raises(LeaseError, match=reason):
            node_lease(A, n)


def test_own_ipv6_subnet():
    net = IPv6Network("fd00:10:244::/56")
    assert own_ipv6_subnet(node(pod_cidrs=["10.244.5.0/24", "fd00:10:244:5::/64"]), net) == \
        IPv6Network("fd00:10:244:5::/64")
    assert own_ipv6_subnet(node(pod_cidr="10.244.5.0/24"), net) is None  # no IPv6 entry yet: the daemon waits
    with pytest.raises(ConfigError, match="not inside the IPv6Network"):
        own_ipv6_subnet(node(pod_cidrs=["10.244.5.0/24", "fd00:99::/64"]), net)


def test_network_available_condition_is_flanneld_s():
    # flanneld's CompleteLease (pkg/subnet/kube/kube.go): type, status, reason and message as it sends them
    cond = network_available_patch("2026-01-02T03:04:05Z")["status"]["conditions"]
    assert cond == [{"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                     "message": "Flannel is running on this node", "lastTransitionTime": "2026-01-02T03:04:05Z",
                     "lastHeartbeatTime": "2026-01-02T03:04:05Z"}]
    down = node()
    assert not network_available(down)
    up = Node.model_validate({**down.model_dump(by_alias=True, exclude_none=True),
                              "status": {"conditions": cond}})
    assert network_available(up)
