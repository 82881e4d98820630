"""The kube subnet manager's leases: a Node's `spec.podCIDR` plus flannel's annotations (pure).

    metadata.annotations (prefix `flannel.alpha.coreos.com`, flanneld's --kube-annotation-prefix):
        <prefix>/kube-subnet-manager: "true"
        <prefix>/backend-type:        "vxlan"                                (or "host-gw")
        <prefix>/backend-data:        '{"VNI":1,"VtepMAC":"2e:8a:..."}'      (host-gw: 'null')
        <prefix>/public-ip:           "192.168.33.11"
        <prefix>/public-ip-overwrite: set by an operator; published as public-ip instead of ours
      dual-stack (EnableIPv6) also:
        <prefix>/backend-v6-data:     '{"VNI":1,"VtepMAC":"9e:03:..."}'      (host-gw: 'null')
        <prefix>/public-ipv6:         "fd00:33::11"
        <prefix>/public-ipv6-overwrite: as public-ip-overwrite, for public-ipv6
    spec.podCIDR / spec.podCIDRs:     the node subnet(s) (kube-controller-manager's node IPAM; the
                                      IPv6 entry of podCIDRs is the node's IPv6 subnet)

Exactly flanneld's names and value formats, so a node run by flanneld and one run by flannel-py
read each other. Only Nodes carrying `kube-subnet-manager: "true"` are leases (flanneld's rule: a
node whose daemon has not published yet has nothing to route to).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from flannel_py.config import ConfigError
from flannel_py.lease import Lease, LeaseAttrs, LeaseError, decode_doc
from knet.kube.models import Node

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
_PREFIX = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?")


@dataclass(frozen=True)
class Annotations:
    kube_subnet_manager: str
    backend_type: str
    backend_data: str
    public_ip: str
    public_ip_overwrite: str
    backend_v6_data: str
    public_ipv6: str
    public_ipv6_overwrite: str

    @classmethod
    def with_prefix(cls, prefix: str = DEFAULT_PREFIX) -> Annotations:
        """flanneld's rules: `fqdn` gives `fqdn/<name>`, `fqdn/word` gives `fqdn/word-<name>`."""
        if prefix.count("/") > 1:
            raise ConfigError(f"annotation prefix {prefix!r} may contain at most one slash")
        if "/" not in prefix:
            prefix += "/"
        if not prefix.endswith(("/", "-")):
            prefix += "-"
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(f"annotation prefix {prefix!r} must look like fqdn[/word]")
        return cls(prefix + "kube-subnet-manager", prefix + "backend-type", prefix + "backend-data",
                   prefix + "public-ip", prefix + "public-ip-overwrite", prefix + "backend-v6-data",
                   prefix + "public-ipv6", prefix + "public-ipv6-overwrite")


def published(names: Annotations, attrs: LeaseAttrs, current: Mapping[str, str]) -> dict[str, str]:
    """The annotations a node with our attributes carries (an operator's public-ip-overwrite wins);
    the IPv6 ones only on a dual-stack node."""
    out = {
        names.backend_type: attrs.backend_type,
        names.backend_data: json.dumps(attrs.backend_data, separators=(",", ":")),
        names.public_ip: current.get(names.public_ip_overwrite) or str(attrs.public_ip),
        names.kube_subnet_manager: "true",
    }
    if attrs.public_ipv6 is not None:
        out[names.backend_v6_data] = json.dumps(attrs.backend_v6_data, separators=(",", ":"))
        out[names.public_ipv6] = current.get(names.public_ipv6_overwrite) or str(attrs.public_ipv6)
    return out


def annotation_patch(names: Annotations, attrs: LeaseAttrs, current: Mapping[str, str]) -> dict[str, Any] | None:
    """The strategic-merge patch (for nodes/status, as flanneld sends it) that makes the node's
    annotations ours; None when they already are."""
    changed = {k: v for k, v in published(names, attrs, current).items() if current.get(k) != v}
    return {"metadata": {"annotations": changed}} if changed else None


def network_available_patch(now: str) -> dict[str, Any]:
    """The nodes/status patch flanneld sends once its subnet file is written (its CompleteLease,
    --set-node-network-unavailable): the Node's NetworkUnavailable condition False, merged by type
    beside the kubelet's conditions. `now`: RFC 3339 time."""
    return {"status": {"conditions": [{
        "type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
        "message": "Flannel is running on this node", "lastTransitionTime": now, "lastHeartbeatTime": now}]}}


def network_available(node: Node) -> bool:
    """The Node's NetworkUnavailable condition is already False (a restart has nothing to say)."""
    return any(c.type == "NetworkUnavailable" and c.status == "False" for c in node.status.conditions)


def pod_subnet(node: Node) -> IPv4Network | None:
    """The node's IPv4 pod subnet (the IPv4 one of podCIDRs on a dual-stack node); None when none
    is assigned yet (the model has checked that each value is a CIDR)."""
    for cidr in node.pod_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if isinstance(net, IPv4Network):
            return net
    return None


def pod_subnet_v6(node: Node) -> IPv6Network | None:
    """The node's IPv6 pod subnet: the IPv6 entry of spec.podCIDRs (None on a single-stack node)."""
    for cidr in node.pod_cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if isinstance(net, IPv6Network):
            return net
    return None


def node_lease(names: Annotations, node: Node) -> Lease:
    """The lease a Node stands for; LeaseError with the reason when it is not one (yet)."""
    ann = node.metadata.annotations
    if ann.get(names.kube_subnet_manager) != "true":
        raise LeaseError(f"no {names.kube_subnet_manager} annotation (its flannel has not started)")
    subnet = pod_subnet(node)
    if subnet is None:
        raise LeaseError("no IPv4 podCIDR")
    return lease_of(names, ann, subnet, pod_subnet_v6(node))


def lease_of(names: Annotations, ann: Mapping[str, str], subnet: IPv4Network,
             ipv6_subnet: IPv6Network | None = None) -> Lease:
    """The lease that annotations describe for a subnet (and IPv6 subnet); LeaseError for unusable values."""
    data = {}
    for key in (names.backend_data, names.backend_v6_data):
        try:
            data[key] = json.loads(ann.get(key) or "null")
        except ValueError as e:
            raise LeaseError(f"{key} is not JSON: {e}") from None
    doc = {"PublicIP": ann.get(names.public_ip), "PublicIPv6": ann.get(names.public_ipv6) or None,
           "BackendType": ann.get(names.backend_type), "BackendData": data[names.backend_data],
           "BackendV6Data": data[names.backend_v6_data]}
    return Lease(subnet, decode_doc(doc), ipv6_subnet)


def own_subnet(node: Node, network: IPv4Network) -> IPv4Network | None:
    """Our node subnet, None while the node has no podCIDR; ConfigError when it lies outside the
    Network of net-conf.json (flanneld refuses that too: routes would point nowhere)."""
    subnet = pod_subnet(node)
    if subnet is not None and not subnet.subnet_of(network):
        raise ConfigError(f"node {node.name}'s podCIDR {subnet} is not inside the Network {network} of "
                          "net-conf.json (kube-controller-manager --cluster-cidr and net-conf.json must agree)")
    return subnet


def own_ipv6_subnet(node: Node, network: IPv6Network) -> IPv6Network | None:
    """Our IPv6 node subnet (dual-stack), None while podCIDRs has no IPv6 entry; ConfigError when
    it lies outside IPv6Network."""
    subnet = pod_subnet_v6(node)
    if subnet is not None and not subnet.subnet_of(network):
        raise ConfigError(f"node {node.name}'s IPv6 podCIDR {subnet} is not inside the IPv6Network {network} "
                          "of net-conf.json")
    return subnet
