"""The lab's plan as pure data: name + node count -> namespaces, addresses, subnets, routes, conflists.

Nothing here touches the kernel or the disk, so the whole layout is unit-tested; `lab.net.kernel`
turns a plan into namespaces and links.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field

from lab.errors import LabError

STATE_ROOT = "/run/knet/lab"
UNDERLAY_CIDR = "192.168.33.0/24"
UNDERLAY_BRIDGE = "underlay"
CTL_IP = "192.168.33.2"
CLIENT_IP = "192.168.33.100"
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
# Dual-stack (`--ip-family dual`, IPv4 primary): the IPv6 twins, beside the IPv4 ranges. A member's
# IPv6 address repeats its IPv4 one's last byte as hex digits (192.168.33.11 -> fd00:33::11).
UNDERLAY6_CIDR = "fd00:33::/64"
POD6_CIDR = "fd00:10:244::/56"   # a /64 per node
SERVICE6_CIDR = "fd00:10:96::/112"
IP_FAMILIES = ("ipv4", "ipv6", "dual")
# LoadBalancer addresses (assigned from 192.168.33.200-250 by the lab's LB controller): the
# "cloud load balancer" is the client's route for this block, spread over every node (ECMP),
# which is what an external LB in front of kube-proxy does.
LB_ROUTE = "192.168.33.192/26"
ETCD_URL = "http://192.168.33.2:2379"
# "vxlan" and "host-gw": flannel_py leases each node's subnet from etcd and programs the routes;
# "static": fixed 10.244.<i>.0/24 subnets and host-gw routes written by the lab (no etcd needed).
OVERLAYS = ("vxlan", "host-gw", "static")
CNI_NETWORK = "knet"
CONFLIST_NAME = "10-knet.conflist"
# Node i is 192.168.33.(10+i) and the client is .100, so at most 89 nodes fit; keep a round margin.
MAX_NODES = 50
# No hyphen allowed: every object of lab "a" is prefixed "a-", which can then never be a prefix of
# another lab's objects ("a-" vs "ab-"), so teardown by prefix is safe.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")


class PlanError(LabError, ValueError):
    """An invalid lab name, node count or pod name (a user error, not a bug)."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PlanError(f"invalid lab name {name!r}: must match {_NAME_RE.pattern} "
                        "(lowercase letter, then up to 11 lowercase letters or digits)")
    return name


def validate_label(kind: str, value: str) -> str:
    """Kubernetes-style names for pods and namespaces (also keeps netns names path-safe)."""
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise PlanError(f"invalid {kind} {value!r}: lowercase letters, digits, '-' and '.', "
                        "starting and ending with a letter or digit, at most 63 characters")
    return value


def prefix(lab: str) -> str:
    return f"{lab}-"


def state_dir(lab: str, root: str = STATE_ROOT) -> str:
    return os.path.join(root, lab)


def pod_netns(lab: str, namespace: str, pod: str) -> str:
    return f"{lab}-pod-{namespace}-{pod}"


def container_id(lab: str, namespace: str, pod: str) -> str:
    # Deterministic, so a crashed runtime can still DEL what it added; 64 hex like a real runtime.
    return hashlib.sha256(f"knet-lab/{lab}/{namespace}/{pod}".encode()).hexdigest()


def dual(ip_family: str) -> bool:
    return ip_family == "dual"


def pod_cidrs(ip_family: str = "ipv4") -> str:
    """The cluster CIDR(s), primary first, as --cluster-cidr takes them."""
    return f"{POD_CIDR},{POD6_CIDR}" if dual(ip_family) else POD_CIDR


def service_cidrs(ip_family: str = "ipv4") -> str:
    """The service range(s), primary first, as --service-cluster-ip-range takes them."""
    return f"{SERVICE_CIDR},{SERVICE6_CIDR}" if dual(ip_family) else SERVICE_CIDR


def node_cidr_mask_flags(ip_family: str = "ipv4") -> list[str]:
    """kube-controller-manager's block-size flags: one size single-stack, one per family dual."""
    if dual(ip_family):
        return ["--node-cidr-mask-size-ipv4", "24", "--node-cidr-mask-size-ipv6", "64"]
    return ["--node-cidr-mask-size", "24"]


def ipv6_of(ipv4: str) -> str:
    """The member's underlay IPv6 address beside its IPv4 one."""
    return f"fd00:33::{ipv4.rsplit('.', 1)[1]}"


def conflist(lab: str, index: int, cni_type: str = "knet-cni", root: str = STATE_ROOT,
             overlay: str = "static") -> dict:
    """The node's CNI network configuration list (what /etc/cni/net.d holds on a real node).

    With an overlay the plugin runs in flannel mode: subnet, MTU and masquerading come from the
    node's subnet.env, so every node's config is the same but for its paths."""
    node_dir = os.path.join(state_dir(lab, root), f"node{index}")
    main: dict = {
        "type": cni_type,
        "bridge": "cni0",
        "isGateway": True,
        "hairpinMode": True,
        "agentSocket": os.path.join(node_dir, "cni.sock"),
        "ipam": {"type": "host-local", "dataDir": os.path.join(node_dir, "ipam")},
    }
    if overlay == "static":
        main["ipMasq"] = True
        main["ipam"].update({"ranges": [[{"subnet": pod_subnet(index)}]], "routes": [{"dst": "0.0.0.0/0"}]})
    else:
        main["subnetFile"] = os.path.join(node_dir, "subnet.env")
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [main, {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}],
    }


def pod_subnet(index: int) -> str:
    return f"10.244.{index}.0/24"


def node_ip(index: int) -> str:
    return str(ipaddress.ip_address("192.168.33.0") + 10 + index)


@dataclass(frozen=True)
class Route:
    dst: str
    via: str


@dataclass
class Member:
    """A namespace attached to the underlay bridge (a node, the control plane or the client)."""

    role: str            # "node", "ctl" or "client"
    short: str           # "node1", "ctl", "client": the CLI target and the underlay port name
    netns: str
    ip: str
    prefixlen: int = 24
    routes: list[Route] = field(default_factory=list)
    ip6: str = ""        # dual-stack: the underlay IPv6 address (a /64)

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    @property
    def cidr6(self) -> str:
        return f"{self.ip6}/64" if self.ip6 else ""


@dataclass
class Node(Member):
    index: int = 0
    pod_subnet: str = ""
    dir: str = ""
    conflist: dict = field(default_factory=dict)

    @property
    def conflist_path(self) -> str:
        return os.path.join(self.dir, "cni", CONFLIST_NAME)

    @property
    def agent_socket(self) -> str:
        return os.path.join(self.dir, "cni.sock")

    @property
    def ipam_dir(self) -> str:
        return os.path.join(self.dir, "ipam")

    @property
    def agent_log(self) -> str:
        return os.path.join(self.dir, "cni-agent.log")

    @property
    def subnet_file(self) -> str:
        return os.path.join(self.dir, "subnet.env")


@dataclass
class Plan:
    name: str
    state_dir: str
    underlay_netns: str
    ctl: Member
    client: Member
    nodes: list[Node]
    overlay: str = "static"
    ip_family: str = "ipv4"

    @property
    def members(self) -> list[Member]:
        return [self.ctl, *self.nodes, self.client]

    @property
    def netns_names(self) -> list[str]:
        return [self.underlay_netns, *(m.netns for m in self.members)]

    def node(self, ref: str | int) -> Node:
        """A node by index, "3", "node3" or its netns name."""
        for n in self.nodes:
            if ref in (n.index, str(n.index), n.short, n.netns):
                return n
        raise PlanError(f"lab {self.name} has no node {ref!r} (nodes: "
                        + ", ".join(n.short for n in self.nodes) + ")")


def plan(name: str, nodes: int = 3, cni_type: str = "knet-cni", root: str = STATE_ROOT,
         overlay: str = "static", ip_family: str = "ipv4") -> Plan:
    validate_name(name)
    if ip_family not in IP_FAMILIES:
        raise PlanError(f"ip family must be one of {', '.join(IP_FAMILIES)}, got {ip_family!r}")
    if ip_family == "ipv6":
        raise PlanError("--ip-family ipv6 is not supported: flannel-py refuses an IPv6-only overlay "
                        "(EnableIPv4 false), as its pod network needs IPv4; use --ip-family dual")
    if dual(ip_family) and overlay == "static":
        raise PlanError("--ip-family dual needs an overlay (vxlan or host-gw): the static overlay's "
                        "routes are IPv4 only")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"node count must be 1..{MAX_NODES}, got {nodes!r}")
    if overlay not in OVERLAYS:
        raise PlanError(f"overlay must be one of {', '.join(OVERLAYS)}, got {overlay!r}")
    base = state_dir(name, root)
    node_list = []
    for i in range(1, nodes + 1):
        routes: list[Route] = []
        if overlay == "static":
            # host-gw by hand: every other node's pod subnet via that node's underlay address.
            routes = [Route(pod_subnet(j), node_ip(j)) for j in range(1, nodes + 1) if j != i]
        node_list.append(Node(role="node", short=f"node{i}", netns=f"{name}-node{i}", ip=node_ip(i),
                              routes=routes, index=i,
                              # with an overlay the subnet is leased at start-up (filled in by lab.api)
                              pod_subnet=pod_subnet(i) if overlay == "static" else "",
                              dir=os.path.join(base, f"node{i}"),
                              conflist=conflist(name, i, cni_type, root, overlay),
                              ip6=ipv6_of(node_ip(i)) if dual(ip_family) else ""))
    v6 = dual(ip_family)
    return Plan(
        name=name,
        state_dir=base,
        underlay_netns=f"{name}-underlay",
        ctl=Member(role="ctl", short="ctl", netns=f"{name}-ctl", ip=CTL_IP, ip6=ipv6_of(CTL_IP) if v6 else ""),
        client=Member(role="client", short="client", netns=f"{name}-client", ip=CLIENT_IP,
                      ip6=ipv6_of(CLIENT_IP) if v6 else ""),
        nodes=node_list,
        overlay=overlay,
        ip_family=ip_family,
    )


def describe(p: Plan) -> dict:
    """The JSON-able lab description written to lab.json (pods are added by the runtime)."""
    return {
        "name": p.name,
        "state_dir": p.state_dir,
        "underlay": {"netns": p.underlay_netns, "bridge": UNDERLAY_BRIDGE, "cidr": UNDERLAY_CIDR,
                     **({"cidr6": UNDERLAY6_CIDR} if dual(p.ip_family) else {})},
        "ctl": {"netns": p.ctl.netns, "ip": p.ctl.ip, **({"ip6": p.ctl.ip6} if p.ctl.ip6 else {})},
        "client": {"netns": p.client.netns, "ip": p.client.ip, **({"ip6": p.client.ip6} if p.client.ip6 else {})},
        "ip_family": p.ip_family,
        "pod_cidr": POD_CIDR,  # the primary ones (what an IPv4 consumer reads); both below
        "service_cidr": SERVICE_CIDR,
        "pod_cidrs": pod_cidrs(p.ip_family).split(","),
        "service_cidrs": service_cidrs(p.ip_family).split(","),
        "overlay": p.overlay,
        "cni_type": p.nodes[0].conflist["plugins"][0]["type"],
        "nodes": {
            n.short: {
                "index": n.index, "netns": n.netns, "ip": n.ip, "pod_subnet": n.pod_subnet,
                **({"ip6": n.ip6} if n.ip6 else {}),
                "routes": [{"dst": r.dst, "via": r.via} for r in n.routes],
                "dir": n.dir, "conflist": n.conflist_path, "agent_socket": n.agent_socket,
            }
            for n in p.nodes
        },
        "pods": {},
    }
