"""The compiled model: what the compiler produces and the kernel backend renders.

Per pod and direction (ingress: who may reach the pod; egress: what the pod may reach):
- `policies`: the policies that select the pod for that direction. Empty = not isolated
  (everything allowed); non-empty = isolated (only what a rule allows passes).
- `rules`: one `RuleAllow` per (policy, rule) that selects the pod, each a union of `Clause`s.
  A clause is "peer address in `nets` AND (protocol, port) in `ports`"; `nets=None` means any
  address, `ports=None` any protocol and port. Named ports are already resolved to numbers here
  (against the pod itself for ingress, against each destination pod for egress), so the model
  is plain addresses x ports and both the kernel renderer and `explain` read the same thing.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS, EGRESS = "ingress", "egress"


@dataclass(frozen=True, order=True)
class PortRange:
    protocol: str  # TCP | UDP | SCTP
    first: int
    last: int

    def matches(self, protocol: str, port: int) -> bool:
        return protocol == self.protocol and self.first <= port <= self.last

    def __str__(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{span}/{self.protocol}"


@dataclass(frozen=True)
class Clause:
    nets: tuple[str, ...] | None  # normalized CIDRs (collapsed, sorted); None = any address
    ports: tuple[PortRange, ...] | None  # None = any protocol and port

    def matches(self, peer_ip: str, protocol: str, port: int) -> bool:
        if self.nets is not None and not in_nets(peer_ip, self.nets):
            return False
        return self.ports is None or any(p.matches(protocol, port) for p in self.ports)

    def __str__(self) -> str:
        peers = "any peer" if self.nets is None else (", ".join(self.nets) or "no peer")
        ports = "any port" if self.ports is None else (", ".join(map(str, self.ports)) or "no port")
        return f"{peers} on {ports}"


@dataclass(frozen=True)
class RuleAllow:
    policy: str  # "namespace/name"
    index: int  # position of the rule in spec.ingress / spec.egress
    clauses: tuple[Clause, ...]

    def matches(self, peer_ip: str, protocol: str, port: int) -> bool:
        return any(c.matches(peer_ip, protocol, port) for c in self.clauses)


@dataclass(frozen=True)
class Direction:
    policies: tuple[str, ...] = ()
    rules: tuple[RuleAllow, ...] = ()

    @property
    def isolated(self) -> bool:
        return bool(self.policies)

    def allowing(self, peer_ip: str, protocol: str, port: int) -> list[RuleAllow]:
        return [r for r in self.rules if r.matches(peer_ip, protocol, port)]


NOT_ISOLATED = Direction()


@dataclass(frozen=True)
class PodRules:
    key: str  # "namespace/name"
    ips: tuple[str, ...]
    node: str | None
    ingress: Direction = NOT_ISOLATED
    egress: Direction = NOT_ISOLATED

    def direction(self, which: str) -> Direction:
        return self.ingress if which == INGRESS else self.egress


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reasons: tuple[str, ...]


@dataclass
class Compiled:
    """Compiled state of the pods of one node (or of every pod when compiled without a node)."""

    pods: dict[str, PodRules] = field(default_factory=dict)  # key -> rules (the enforced pods)
    # every known pod IP -> pod key (the incremental compiler hands out a read-only live view)
    addresses: Mapping[str, str] = field(default_factory=dict)
    policies: tuple[str, ...] = ()  # keys of every policy seen (for counters and metrics)

    def by_ip(self, ip: str) -> PodRules | None:
        key = self.addresses.get(ip)
        return self.pods.get(key) if key else None

    def evaluate(self, src_ip: str, dst_ip: str, protocol: str, port: int) -> Verdict:
        """Would a new connection src -> dst:port/protocol pass? Reasons name the deciding rules.
        Only the enforced pods' sides are judged (a node enforces its own pods)."""
        protocol = protocol.upper()
        reasons: list[str] = []
        if src_ip == dst_ip:
            return Verdict(True, ("a pod can always reach itself",))
        ok = True
        for which, pod, peer in ((EGRESS, self.by_ip(src_ip), dst_ip), (INGRESS, self.by_ip(dst_ip), src_ip)):
            if pod is None:
                continue
            d = pod.direction(which)
            if not d.isolated:
                reasons.append(f"{which} of {pod.key}: not isolated (no policy selects it for {which})")
                continue
            allowing = d.allowing(peer, protocol, port)
            if allowing:
                names = ", ".join(f"{r.policy} rule {r.index}" for r in allowing)
                reasons.append(f"{which} of {pod.key}: allowed by {names}")
            else:
                ok = False
                reasons.append(f"{which} of {pod.key}: DENIED (isolated by {', '.join(d.policies)}; "
                               f"no rule allows {peer} {port}/{protocol})")
        return Verdict(ok, tuple(reasons))


# --- address helpers ---------------------------------------------------------------------------
# The compiler handles thousands of addresses per sync; ipaddress objects are slow to make, so
# sets of addresses are merged as integer intervals and parsed strings are cached.

@functools.lru_cache(maxsize=65536)
def parse_net(net: str) -> Network:
    return ipaddress.ip_network(net, strict=False)


@functools.lru_cache(maxsize=65536)
def _addr(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return a.version, int(a)


@functools.lru_cache(maxsize=4096)
def _intervals(nets: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple(sorted((n.version, int(n.network_address), int(n.broadcast_address)) for n in map(parse_net, nets)))


def in_nets(ip: str, nets: tuple[str, ...]) -> bool:
    version, value = _addr(ip)
    return any(v == version and lo <= value <= hi for v, lo, hi in _intervals(nets))


@functools.lru_cache(maxsize=65536)
def _range_cidrs(version: int, first: int, last: int) -> tuple[str, ...]:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return tuple(str(n) for n in ipaddress.summarize_address_range(cls(first), cls(last)))


def normalize(nets: list[Network] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Merge overlapping/adjacent networks (per family) into a sorted, disjoint tuple of CIDRs."""
    spans = sorted((n.version, int(n.network_address), int(n.broadcast_address))
                   for n in (parse_net(x) if isinstance(x, str) else x for x in nets))
    merged: list[list[int]] = []
    for v, lo, hi in spans:
        if merged and merged[-1][0] == v and lo <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], hi)
        else:
            merged.append([v, lo, hi])
    return tuple(c for v, lo, hi in merged for c in _range_cidrs(v, lo, hi))


def block_minus_except(cidr: str, excepts: list[str]) -> list[Network]:
    """An ipBlock as disjoint networks: cidr without every except."""
    parts: list[Network] = [parse_net(cidr)]
    for ex in excepts:
        hole = parse_net(ex)
        nxt: list[Network] = []
        for p in parts:
            if p.version != hole.version or not p.overlaps(hole):
                nxt.append(p)
            elif hole.supernet_of(p):  # type: ignore[arg-type]  # same family (checked above); the stub wants one
                continue  # all of p is excepted
            else:
                nxt += list(p.address_exclude(hole))  # type: ignore[arg-type]  # same family, as above
        parts = nxt
    return parts


@functools.lru_cache(maxsize=65536)
def host_net(ip: str) -> Network:
    return ipaddress.ip_network(ip)
