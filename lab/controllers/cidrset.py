"""Node IPAM's pure part, as kube-controller-manager's range allocator decides it
(`--allocate-node-cidrs --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24`):

- `CidrSet`: the cluster CIDR cut into /mask blocks, a used flag per block, and a rotating next
  candidate: a released block is handed out again only after every other free one was, so an
  address a deleted node's pods used is not at once someone else's.
- `RangeAllocator`: which block each Node holds. A Node with a podCIDR has it adopted (after a
  controller restart, or one set by an administrator); a Node without gets the next free block; a
  block is held while its Node exists (by uid: a Node deleted and created again under the same
  name is a new node) and released when it goes. A full range leaves the Node without podCIDR and
  is reported once until a block is released, then the Node is tried again.

No API calls here: `RangeAllocator.sync` returns the actions for the controller (nodeipam.py) to
carry out, so every case is a table test (tests/unit/test_controllers_nodeipam.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network

SERVICE_RANGE = "the service range"


class OutOfRange(ValueError):
    pass


class RangeFull(RuntimeError):
    pass


class CidrSet:
    def __init__(self, cluster_cidr: str, mask_size: int = 24) -> None:
        net = ip_network(cluster_cidr, strict=False)
        if not isinstance(net, IPv4Network):
            raise ValueError(f"cluster CIDR {cluster_cidr}: only IPv4 is supported")
        if not net.prefixlen <= mask_size <= 32:
            raise ValueError(f"node CIDR mask size {mask_size} must be between the cluster CIDR's "
                             f"/{net.prefixlen} and /32")
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

    def block(self, index: int) -> IPv4Network:
        return IPv4Network((int(self.cluster.network_address) + (index << (32 - self.mask_size)), self.mask_size))

    def indices(self, cidr: IPv4Network) -> range:
        """The blocks `cidr` overlaps (a service range that covers part of the cluster CIDR: many)."""
        if not cidr.overlaps(self.cluster):
            raise OutOfRange(f"cidr {cidr} is out the range of cluster cidr {self.cluster}")
        lo = max(int(cidr.network_address), int(self.cluster.network_address))
        hi = min(int(cidr.broadcast_address), int(self.cluster.broadcast_address))
        base, shift = int(self.cluster.network_address), 32 - self.mask_size
        return range((lo - base) >> shift, ((hi - base) >> shift) + 1)

    def allocate_next(self) -> IPv4Network:
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

    def occupy(self, cidr: IPv4Network) -> None:
        for i in self.indices(cidr):
            if not self._used[i]:
                self._used[i] = 1
                self.allocated += 1
                self.allocations += 1

    def release(self, cidr: IPv4Network) -> None:
        for i in self.indices(cidr):
            if self._used[i]:
                self._used[i] = 0
                self.allocated -= 1
                self.releases += 1

    def used(self, cidr: IPv4Network) -> bool:
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
    cidr: IPv4Network


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
            if isinstance(svc, IPv4Network) and svc.overlaps(self.cidrs.cluster):
                # As upstream: never hand out pod blocks inside the service range.
                self._occupy(SERVICE_RANGE, svc)

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
        raw = node.pod_cidrs[0]  # the IPv4 one (a single-stack cluster has one)
        try:
            cidr = ip_network(raw, strict=False)
            if not isinstance(cidr, IPv4Network):
                raise ValueError("not IPv4")
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

    def _occupy(self, name: str, cidr: IPv4Network) -> list[str]:
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
