"""Render a `Compiled` model as an nftables ruleset, diff two rulesets, simulate one (all pure).

Why nftables (rather than ipset + iptables):
- One `nft -f` run is one kernel transaction: sets, chains, verdict-map entries and counters
  change together and packets see either the old or the new ruleset, never a half-applied one.
  With ipset + iptables-restore an update is two commands (sets first, then rules) with a window
  in between, and replacing an ipset in use needs a swap dance.
- Sets with concatenated interval keys (`address . protocol . port-range`) express an allowed
  (peer x port) table in one lookup, so a pod's chain is at most four set lookups whatever the
  number of policies, rules, peers and ports (per-packet cost does not grow with policies).
- Verdict maps dispatch on the pod address in one hash lookup instead of a linear scan of
  per-pod jump rules; named counters give per-policy drop counts.

Layout (table inet knet-netpol, in the node's network namespace):
    chain forward  (hook forward, priority filter, policy accept)
        ct state established,related accept          replies of allowed connections
        ip saddr . ip daddr @self4 accept             a pod reaching itself (hairpin via a service)
        ip saddr vmap @eg4                            local pod isolated for egress -> its chain
        ip daddr vmap @in4                            local pod isolated for ingress -> its chain
    chain i_<hash> / e_<hash>   peer in an allowed set -> return, else count per policy and drop
Only the forward hook is used: traffic between a pod and its own node (kubelet probes, host
network processes) never crosses it, and the documentation says that traffic is always allowed.
Bridged pod-to-pod traffic on the same node reaches the forward hook through br_netfilter
(bridge-nf-call-iptables=1, which the backend ensures in its namespace). Pods are matched by
address, so the same rules cover bridged, routed (overlay) and service-translated traffic (the
proxies' DNAT runs in prerouting, before forward, so policies see the real backend address).

Sets and chains are named by a hash of their content: identical chains (pods selected by the
same policies) are shared, a changed set is a new set, so an update never modifies a set or chain
that packets use; it adds new ones, repoints verdict-map entries and deletes what nothing
references any more (see `nftscript` for the two transactions this takes and why).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
from dataclasses import dataclass, field

from netpolicy.model import EGRESS, INGRESS, Compiled, Direction, Network, normalize, parse_net

TABLE = "knet-netpol"
FAMILY = "inet"
MAPS = ("eg4", "eg6", "in4", "in6")


@dataclass(frozen=True)
class SetDef:
    name: str
    family: int  # 4 | 6
    ported: bool  # address . protocol . port-range, or address only
    elements: tuple  # address only: CIDR strings; ported: (cidr, proto, first, last)

    @property
    def type(self) -> str:
        addr = "ipv4_addr" if self.family == 4 else "ipv6_addr"
        return f"{addr} . inet_proto . inet_service" if self.ported else addr

    def rendered_elements(self) -> list[str]:
        if not self.ported:
            return [_addr(e) for e in self.elements]
        return [f"{_addr(n)} . {proto.lower()} . {_span(lo, hi)}" for n, proto, lo, hi in self.elements]

    def contains(self, ip: str, protocol: str, port: int) -> bool:
        addr = ipaddress.ip_address(ip)
        if not self.ported:
            return any(addr in parse_net(n) for n in self.elements)
        return any(addr in parse_net(n) and p == protocol and lo <= port <= hi for n, p, lo, hi in self.elements)


@dataclass(frozen=True)
class ChainDef:
    direction: str  # ingress (peer = source address) | egress (peer = destination address)
    sets: tuple[SetDef, ...]
    counters: tuple[str, ...]  # one per selecting policy: drops are counted against each
    salt: str = ""  # see `build`

    def lines(self) -> list[str]:
        peer = "saddr" if self.direction == INGRESS else "daddr"
        out = []
        for s in self.sets:
            ip = "ip" if s.family == 4 else "ip6"
            key = f"{ip} {peer} . meta l4proto . th dport" if s.ported else f"{ip} {peer}"
            out.append(f"{key} @{s.name} return")
        out.append(" ".join(f'counter name "{c}"' for c in self.counters) + " drop")
        return out

    @property
    def name(self) -> str:
        return ("i_" if self.direction == INGRESS else "e_") + _digest(self.salt + "\n".join(self.lines()))

    def allows(self, peer_ip: str, protocol: str, port: int) -> bool:
        return any(s.contains(peer_ip, protocol, port) for s in self.sets
                   if s.family == ipaddress.ip_address(peer_ip).version)


@dataclass
class Ruleset:
    sets: dict[str, SetDef] = field(default_factory=dict)
    chains: dict[str, ChainDef] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {m: {} for m in MAPS})  # ip -> chain
    selfs: dict[str, frozenset[str]] = field(default_factory=lambda: {"self4": frozenset(), "self6": frozenset()})
    counters: frozenset[str] = frozenset()
    counter_policy: dict[str, tuple[str, str]] = field(default_factory=dict)  # counter -> (policy, direction)

    def stats(self) -> dict[str, int]:
        return {"chains": len(self.chains), "sets": len(self.sets),
                "set_elements": sum(len(s.elements) for s in self.sets.values()),
                "rules": sum(len(c.lines()) for c in self.chains.values()) + 7,
                "map_entries": sum(len(m) for m in self.maps.values()), "counters": len(self.counters)}

    def simulate(self, src: str, dst: str, protocol: str, port: int) -> bool:
        """What the forward chain decides for the first packet of a new connection."""
        fam = ipaddress.ip_address(src).version
        if src == dst and src in self.selfs[f"self{fam}"]:
            return True
        eg = self.maps[f"eg{fam}"].get(src)
        if eg is not None and not self.chains[eg].allows(dst, protocol, port):
            return False
        ing = self.maps[f"in{fam}"].get(dst)
        return ing is None or self.chains[ing].allows(src, protocol, port)


def counter_name(policy: str, direction: str) -> str:
    # nft object names are [A-Za-z_][A-Za-z0-9/._-]* (declarations take no quotes) and at most
    # 255 bytes; a policy key ("ns/name", DNS names) fits the alphabet but may be longer (63 + 253).
    name = f"drop_{direction}.{policy}"
    return name if len(name) <= 200 else f"drop_{direction}.{policy[:150]}.{_digest(policy)}"


def build(compiled: Compiled, salt: str = "", cache: dict | None = None) -> Ruleset:
    """The ruleset of a compiled model. `salt` goes into every set and chain name: a backend
    replacing a table it knows nothing about uses a fresh salt, so that all its objects are new
    (see `nftscript`). `cache` (a dict the caller keeps between builds with the same salt) maps
    directions to their chains: most directions do not change from one update to the next, and
    normalizing their sets is the expensive part; it keeps only what this build used."""
    rs = Ruleset()
    chain_of: dict[tuple[str, Direction], str] = {}
    counters: dict[str, tuple[str, str]] = {}
    used: dict = {}
    for pod in compiled.pods.values():
        for which, prefix in ((INGRESS, "in"), (EGRESS, "eg")):
            d = pod.direction(which)
            if not d.isolated:
                continue
            if (which, d) not in chain_of:
                chain = cache.get((salt, which, d)) if cache is not None else None
                if chain is None:
                    chain = _chain(which, d, salt)
                used[(salt, which, d)] = chain
                for c, pol in zip(chain.counters, d.policies, strict=True):
                    counters[c] = (pol, which)
                for s in chain.sets:
                    rs.sets[s.name] = s
                rs.chains[chain.name] = chain
                chain_of[(which, d)] = chain.name
            for ip in pod.ips:
                rs.maps[f"{prefix}{ipaddress.ip_address(ip).version}"][ip] = chain_of[(which, d)]
    ips = [ip for pod in compiled.pods.values() for ip in pod.ips]
    rs.selfs = {f"self{v}": frozenset(ip for ip in ips if ipaddress.ip_address(ip).version == v) for v in (4, 6)}
    rs.counters = frozenset(counters)
    rs.counter_policy = counters
    if cache is not None:
        cache.clear()
        cache.update(used)
    return rs


def _chain(which: str, d: Direction, salt: str) -> ChainDef:
    anywhere: list[Network] = []
    rects: dict[tuple[int, str], list[tuple[Network, int, int]]] = {}
    for rule in d.rules:
        for clause in rule.clauses:
            nets = [parse_net(n) for n in clause.nets] if clause.nets is not None else \
                [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            if clause.ports is None:
                anywhere += nets
                continue
            for n in nets:
                for p in clause.ports:
                    rects.setdefault((n.version, p.protocol), []).append((n, p.first, p.last))
    sets: list[SetDef] = []
    for fam in (4, 6):
        nets = normalize([n for n in anywhere if n.version == fam])
        if nets:
            sets.append(_set(fam, False, nets, salt))
        ported = tuple(sorted((n, proto, lo, hi) for (v, proto), rs in rects.items() if v == fam
                              for n, lo, hi in _disjoint(rs)))
        if ported:
            sets.append(_set(fam, True, ported, salt))
    return ChainDef(which, tuple(sets), tuple(counter_name(p, which) for p in d.policies), salt)


def _set(family: int, ported: bool, elements: tuple, salt: str) -> SetDef:
    return SetDef("s_" + _digest(f"{salt}{family}{ported}{elements}"), family, ported, elements)


def _disjoint(rects: list[tuple[Network, int, int]]) -> list[tuple[str, int, int]]:
    """Rectangles (network x port range) of one family and protocol as non-overlapping ones:
    nftables rejects overlapping elements in a concatenated interval set."""
    bounds = sorted({lo for _, lo, _ in rects} | {hi + 1 for _, _, hi in rects})
    pieces: list[tuple[int, int, tuple[str, ...]]] = []
    for a, b in itertools.pairwise(bounds):
        nets = normalize([n for n, lo, hi in rects if lo <= a and b - 1 <= hi])
        if not nets:
            continue
        if pieces and pieces[-1][2] == nets and pieces[-1][1] + 1 == a:
            pieces[-1] = (pieces[-1][0], b - 1, nets)
        else:
            pieces.append((a, b - 1, nets))
    return [(n, lo, hi) for lo, hi, nets in pieces for n in nets]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _addr(net: str) -> str:
    n = parse_net(net)
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"
