"""Node IPAM's pure part, as kube-controller-manager's range allocator decides it
(`--allocate-node-cidrs --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24`, or dual-stack
`--cluster-cidr 10.244.0.0/16,fd00:10:244::/56 --node-cidr-mask-size-ipv4 24 --node-cidr-mask-size-ipv6 64`):

- `CidrSet`: the cluster CIDR cut into /mask blocks, a used flag per block, and a rotating next
  candidate: a released block is handed out again only after every other free one was, so an
  address a deleted node's pods used is not at once someone else's.
- `RangeAllocator`: which block each Node holds. A Node with a podCIDR has it adopted (after a
  controller restart, or one set by an administrator); a Node without gets the next free block; a
  block is held while its Node exists (by uid: a Node deleted and created again under the same
  name is a new node) and released when it goes. A full range leaves the Node without podCIDR and
  is reported once until a block is released, then the Node is tried again.
- `NodeIpam`: one `RangeAllocator` per cluster CIDR (one per family, primary first); a Node's
  spec.podCIDRs are one block of each, in that order, and spec.podCIDR the first.

No API calls here: `RangeAllocator.sync` returns the actions for the controller (nodeipam.py) to
carry out, so every case is a table test (tests/unit/test_controllers_nodeipam.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

from knet.kube.ipfamily import family_of, family_or_none, is_dual_stack

Network = IPv4Network | IPv6Network
SERVICE_RANGE = "the service range"


class OutOfRange(ValueError):
    pass


class RangeFull(RuntimeError):
    pass


class CidrSet:
    def __init__(self, cluster_cidr: str, mask_size: int = 24) -> None:
        net = ip_network(cluster_cidr, strict=False)
        self.bits = net.max_prefixlen
        if not net.prefixlen <= mask_size <= self.bits:
            raise ValueError(f"node CIDR mask size {mask_size} must be between the cluster CIDR's "
                             f"/{net.prefixlen} and /{self.bits}")
        if mask_size - net.prefixlen > 16:  # kube-controller-manager's limit too
            raise ValueError(f"node CIDR mask size {mask_size} and cluster CIDR {net} give more than 65536 blocks")
        self.cluster = net
        self.mask_size = mask_size
        self.max = 1 << (mask_size - net.prefixlen)
        self._used = bytearray(self.max)
        self.allocated = 0
        self.next_candidate = 0
        self.allocations = 0  # counters for the controller's metrics (upstream names)
        self.releases = 0

    def block(self, index: int) -> Network:
        return ip_network((int(self.cluster.network_address) + (index << (self.bits - self.mask_size)),
                           self.mask_size))

    def indices(self, cidr: Network) -> range:
        """The blocks `cidr` overlaps (a service range that covers part of the cluster CIDR: many)."""
        if not cidr.overlaps(self.cluster):
            raise OutOfRange(f"cidr {cidr} is out the range of cluster cidr {self.cluster}")
        lo = max(int(cidr.network_address), int(self.cluster.network_address))
        hi = min(int(cidr.broadcast_address), int(self.cluster.broadcast_address))
        base, shift = int(self.cluster.network_address), self.bits - self.mask_size
        return range((lo - base) >> shift, ((hi - base) >> shift) + 1)

    def allocate_next(self) -> Network:
        if self.allocated == self.max:
            raise RangeFull(f"no CIDRs remaining in cluster CIDR {self.cluster} "
                            f"({self.max} blocks of /{self.mask_size}, all in use)")
        candidate = self.next_candidate
        while self._used[candidate]:
            candidate = (candidate + 1) % self.max
        self._used[candidate] = 1
        self.allocated += 1
        self.allocations += 1
        self.next_candidate = (candidate + 1) % self.max
        return self.block(candidate)

    def occupy(self, cidr: Network) -> None:
        for i in self.indices(cidr):
            if not self._used[i]:
                self._used[i] = 1
                self.allocated += 1
                self.allocations += 1

    def release(self, cidr: Network) -> None:
        for i in self.indices(cidr):
            if self._used[i]:
                self._used[i] = 0
                self.allocated -= 1
                self.releases += 1

    def used(self, cidr: Network) -> bool:
        return any(self._used[i] for i in self.indices(cidr))

    @property
    def usage(self) -> float:
        return self.allocated / self.max


@dataclass(frozen=True)
class NodeView:
    """What the allocator needs of a Node."""
    name: str
    uid: str
    pod_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """assign: patch the Node's podCIDR; adopt / release: bookkeeping only (logged); full: no
    block left (an event on the Node and a log line); invalid: the Node's podCIDR cannot be
    adopted (logged, the Node left as it is)."""
    kind: str
    node: str
    cidr: str = ""
    message: str = ""


@dataclass(frozen=True)
class _Holding:
    uid: str
    cidr: Network


class RangeAllocator:
    def __init__(self, cluster_cidr: str, mask_size: int = 24, service_cidr: str | None = None) -> None:
        self.cidrs = CidrSet(cluster_cidr, mask_size)
        self.held: dict[str, _Holding] = {}  # node name -> its podCIDR
        # block index -> who holds it: one node, unless podCIDRs were set by hand to overlap, or
        # SERVICE_RANGE. A block is free again only when its last holder is gone.
        self.holders: dict[int, set[str]] = {}
        self.waiting: dict[str, str] = {}  # node name -> uid: left without a block by a full range
        if service_cidr:
            svc = ip_network(service_cidr, strict=False)
            if svc.version == self.cidrs.cluster.version and svc.overlaps(self.cidrs.cluster):
                # As upstream: never hand out pod blocks inside the service range.
                self._occupy(SERVICE_RANGE, svc)

    @property
    def family(self) -> str:
        return "IPv6" if self.cidrs.cluster.version == 6 else "IPv4"

    def adopt_existing(self, nodes: Iterable[NodeView]) -> list[Action]:
        """At start-up, before any allocation: every podCIDR already assigned is marked used, so no
        Node listed later gets a block another already has (a restart forgets nothing)."""
        out: list[Action] = []
        for n in nodes:
            if n.pod_cidrs:
                out += self.sync(n.name, n)
        return out

    def sync(self, name: str, node: NodeView | None) -> list[Action]:
        """The actions that bring Node `name` (None: deleted) and the bookkeeping together."""
        out: list[Action] = []
        held = self.held.get(name)
        if held is not None and (node is None or node.uid != held.uid):
            out.append(self._release(name, "node deleted" if node is None else "node re-created"))
            held = None
        if node is None:
            self.waiting.pop(name, None)
            return out
        if node.pod_cidrs:
            self.waiting.pop(name, None)
            return out + self._adopt(node, held)
        if held is not None:
            # Assigned, but the Node does not show it yet (the patch is in flight, or failed and
            # is retried): the same block again, never a second one.
            return [*out, Action("assign", name, str(held.cidr))]
        try:
            cidr = self.cidrs.allocate_next()
        except RangeFull as e:
            if self.waiting.get(name) == node.uid:
                return out  # reported already; tried again when a block is released
            self.waiting[name] = node.uid
            return [*out, Action("full", name, message=str(e))]
        self.waiting.pop(name, None)
        self.held[name] = _Holding(node.uid, cidr)
        self.holders.setdefault(self.cidrs.indices(cidr).start, set()).add(name)
        return [*out, Action("assign", name, str(cidr))]

    def _adopt(self, node: NodeView, held: _Holding | None) -> list[Action]:
        family = self.family
        raw = next((c for c in node.pod_cidrs if family_or_none(c) == family), node.pod_cidrs[0])
        try:
            cidr = ip_network(raw, strict=False)
            if cidr.version != self.cidrs.cluster.version:
                raise ValueError(f"not {family}")
            self.cidrs.indices(cidr)  # out of the cluster CIDR: raises before anything changes
        except ValueError as e:
            return [Action("invalid", node.name, raw, f"podCIDR {raw} of node {node.name} cannot be adopted: {e}")]
        out: list[Action] = []
        if held is not None:
            if held.cidr == cidr:
                return []
            # Set by someone else while our assignment was in flight: theirs stands, ours goes back.
            out.append(self._release(node.name, f"node has podCIDR {cidr}"))
        others = self._occupy(node.name, cidr)
        self.held[node.name] = _Holding(node.uid, cidr)
        message = f"podCIDR {cidr} overlaps what {', '.join(others)} holds" if others else ""
        return [*out, Action("adopt", node.name, str(cidr), message)]

    def _occupy(self, name: str, cidr: Network) -> list[str]:
        """Mark `cidr`'s blocks held by `name`; the others who already held one of them."""
        others: set[str] = set()
        for i in self.cidrs.indices(cidr):
            holders = self.holders.setdefault(i, set())
            others |= holders - {name}
            holders.add(name)
        self.cidrs.occupy(cidr)
        return sorted(others)

    def _release(self, name: str, why: str) -> Action:
        held = self.held.pop(name)
        for i in self.cidrs.indices(held.cidr):
            holders = self.holders.get(i, set())
            holders.discard(name)
            if not holders:
                self.holders.pop(i, None)
                self.cidrs.release(self.cidrs.block(i))
        return Action("release", name, str(held.cidr), why)


DEFAULT_MASKS = {"IPv4": 24, "IPv6": 64}


def mask_sizes(cluster_cidrs: str, mask: int = 0, ipv4: int = 0, ipv6: int = 0) -> dict[str, int]:
    """The node block size per family from kube-controller-manager's flags (0: unset):
    --node-cidr-mask-size for a single-stack cluster, -ipv4 / -ipv6 for either family's (the only
    ones a dual-stack cluster takes); ValueError with its words for a combination it refuses."""
    fams = [family_or_none(c.strip()) for c in cluster_cidrs.split(",")]
    out = dict(DEFAULT_MASKS)
    if len(fams) > 1:
        if mask:
            raise ValueError("usage of --node-cidr-mask-size is not allowed with dual-stack clusters")
    elif mask:
        if ipv4 or ipv6:
            raise ValueError("usage of --node-cidr-mask-size-ipv4 and --node-cidr-mask-size-ipv6 is not allowed if "
                             "--node-cidr-mask-size is set. For dual-stack clusters please unset it and use IPFamily "
                             "specific flags")
        return {"IPv4": mask, "IPv6": mask}
    elif ipv4 and fams == ["IPv6"]:
        raise ValueError("usage of --node-cidr-mask-size-ipv4 is not allowed for a single-stack IPv6 cluster")
    elif ipv6 and fams == ["IPv4"]:
        raise ValueError("usage of --node-cidr-mask-size-ipv6 is not allowed for a single-stack IPv4 cluster")
    out["IPv4"] = ipv4 or out["IPv4"]
    out["IPv6"] = ipv6 or out["IPv6"]
    return out


class NodeIpam:
    """The range allocators of a (dual-stack) cluster, one per cluster CIDR, primary first. Each
    decides its own family's block (a Node is synced by each with only its podCIDRs of that
    family); the Node's assignment is all of them at once: one `assign` action whose `cidr` is
    the comma-separated podCIDRs, primary first (the patch sets spec.podCIDRs to them)."""

    def __init__(self, cluster_cidrs: str, mask_sizes: dict[str, int], service_cidrs: str | None = None) -> None:
        cidrs = [c.strip() for c in cluster_cidrs.split(",")]
        if len(cidrs) > 2 or (len(cidrs) == 2 and not is_dual_stack(cidrs)):
            raise ValueError(f"cluster CIDR {cluster_cidrs}: one CIDR, or two of different IP families")
        services = [c.strip() for c in (service_cidrs or "").split(",") if c.strip()]
        self.families = []
        for c in cidrs:
            fam = family_of(c)
            svc = next((s for s in services if family_or_none(s) == fam), None)
            self.families.append(RangeAllocator(c, mask_sizes[fam], svc))

    @property
    def waiting(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in self.families:
            out.update(f.waiting)
        return out

    def adopt_existing(self, nodes: Iterable[NodeView]) -> list[Action]:
        return [a for n in nodes if n.pod_cidrs for a in self.sync(n.name, n)]

    def sync(self, name: str, node: NodeView | None) -> list[Action]:
        out: list[Action] = []
        assigned: list[str] = []
        for ra in self.families:
            mine = None if node is None else NodeView(node.name, node.uid, tuple(
                c for c in node.pod_cidrs if family_or_none(c) == ra.family))
            for a in ra.sync(name, mine):
                if a.kind == "assign":
                    assigned.append(a.cidr)
                else:
                    out.append(a)
        if assigned and not any(a.kind == "full" for a in out):
            # One patch with every family's block; a family the Node has already keeps its own.
            have = list(node.pod_cidrs) if node is not None else []
            blocks = [next((c for c in have + assigned if family_or_none(c) == ra.family), "") for ra in self.families]
            out.append(Action("assign", name, ",".join(b for b in blocks if b)))
        return out
