"""nft scripts that turn what the kernel holds into a new `nft.Ruleset` without a gap (pure).

An update is two `nft -f` transactions:

1. stage: add the new counters, sets (with their elements) and chains. Nothing points at them
   yet, so no packet sees them.
2. switch: repoint the verdict-map entries of the pods whose chain changed (delete + add of the
   same key inside one transaction), update the self sets, then delete the chains, sets and
   counters nothing references any more. This is the one atomic step: a packet sees either
   every old or every new entry.

Why not one transaction: elements of a set created (or filled) in a transaction become visible
to lookups only when the kernel runs the set's commit hook, which for the concatenated-interval
backend (pipapo) happens after the new generation of rules is already live. A chain created in
the same transaction can therefore look into a still-empty set for a moment, and drop what it
should allow (observed here: 1 probe in ~2000 during back-to-back updates). Staging first makes
sure every set is complete before anything can reach it.

A full sync (first start, after an error, drift repair) does the same against whatever the
table holds (`Listing`): stage creates the skeleton (idempotent `add`s) and every object under a
fresh salt (so all are new), switch rewrites the maps, self sets and base chain and deletes every
other object. Per-policy counters keep their names and values across both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from netpolicy.nft import FAMILY, MAPS, TABLE, Ruleset, SetDef

T = f"{FAMILY} {TABLE}"
SELF_SETS = ("self4", "self6")
FORWARD_RULES = (
    "ct state established,related accept",
    "ip saddr . ip daddr @self4 accept",
    "ip6 saddr . ip6 daddr @self6 accept",
    "ip saddr vmap @eg4",
    "ip6 saddr vmap @eg6",
    "ip daddr vmap @in4",
    "ip6 daddr vmap @in6",
)


@dataclass
class Listing:
    """Names of what the kernel's table holds (`nft -j list table`)."""

    exists: bool = False
    chains: set[str] = field(default_factory=set)
    sets: set[str] = field(default_factory=set)
    maps: set[str] = field(default_factory=set)
    counters: set[str] = field(default_factory=set)
    forward_rules: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Listing:
        if not text:
            return cls()
        out = cls(exists=True)
        for item in json.loads(text).get("nftables", []):
            if "chain" in item:
                out.chains.add(item["chain"]["name"])
            elif "set" in item:
                out.sets.add(item["set"]["name"])
            elif "map" in item:
                out.maps.add(item["map"]["name"])
            elif "counter" in item:
                out.counters.add(item["counter"]["name"])
            elif "rule" in item and item["rule"]["chain"] == "forward":
                out.forward_rules += 1
        return out

    def matches(self, rs: Ruleset) -> bool:
        """Holds exactly the chains and sets of `rs` (plus the fixed skeleton)?"""
        return (self.exists and self.chains == set(rs.chains) | {"forward"}
                and self.sets == set(rs.sets) | set(SELF_SETS) and self.maps == set(MAPS)
                and rs.counters <= self.counters and self.forward_rules == len(FORWARD_RULES))

    @classmethod
    def of(cls, rs: Ruleset) -> Listing:
        return cls(True, set(rs.chains) | {"forward"}, set(rs.sets) | set(SELF_SETS), set(MAPS), set(rs.counters),
                   len(FORWARD_RULES))


def _set_body(s: SetDef) -> str:
    elems = s.rendered_elements()
    return f"{{ type {s.type}; flags interval; " + (f"elements = {{ {', '.join(elems)} }}; " if elems else "") + "}"


def _map_elems(entries: dict[str, str]) -> str:
    return ", ".join(f"{ip} : jump {chain}" for ip, chain in sorted(entries.items()))


def _self_elems(ips: frozenset[str] | set[str]) -> str:
    return ", ".join(f"{ip} . {ip}" for ip in sorted(ips))


def skeleton() -> list[str]:
    """Idempotent: `add` of an existing table, map, set or chain is a no-op."""
    out = [f"add table {T}"]
    for m in MAPS:
        out.append(f"add map {T} {m} {{ type {'ipv4_addr' if m.endswith('4') else 'ipv6_addr'} : verdict; }}")
    out.append(f"add set {T} self4 {{ type ipv4_addr . ipv4_addr; }}")
    out.append(f"add set {T} self6 {{ type ipv6_addr . ipv6_addr; }}")
    out.append(f"add chain {T} forward {{ type filter hook forward priority filter; policy accept; }}")
    return out


def stage_script(new: Ruleset, have: Listing) -> str:
    out = [] if have.exists and have.forward_rules else skeleton()
    out += [f"add counter {T} {c}" for c in sorted(new.counters - have.counters)]
    out += [f"add set {T} {name} {_set_body(s)}" for name, s in new.sets.items() if name not in have.sets]
    for name, chain in new.chains.items():
        if name not in have.chains:
            out.append(f"add chain {T} {name}")
            out += [f"add rule {T} {name} {line}" for line in chain.lines()]
    return "\n".join(out) + "\n" if out else ""


def switch_script(new: Ruleset, old: Ruleset | None, have: Listing) -> str:
    """old None: the previous content is unknown (full sync), rewrite every entry."""
    out: list[str] = []
    if old is None:
        out += [f"flush chain {T} forward"] + [f"add rule {T} forward {r}" for r in FORWARD_RULES]
        for m in MAPS:
            out.append(f"flush map {T} {m}")
            if new.maps[m]:
                out.append(f"add element {T} {m} {{ {_map_elems(new.maps[m])} }}")
        for s in SELF_SETS:
            out.append(f"flush set {T} {s}")
            if new.selfs[s]:
                out.append(f"add element {T} {s} {{ {_self_elems(new.selfs[s])} }}")
    else:
        for m in MAPS:
            o, n = old.maps[m], new.maps[m]
            gone = sorted(ip for ip in o if n.get(ip) != o[ip])
            added = {ip: c for ip, c in n.items() if o.get(ip) != c}
            if gone:
                out.append(f"delete element {T} {m} {{ {', '.join(gone)} }}")
            if added:
                out.append(f"add element {T} {m} {{ {_map_elems(added)} }}")
        for s in SELF_SETS:
            gone_ips, added_ips = old.selfs[s] - new.selfs[s], new.selfs[s] - old.selfs[s]
            if gone_ips:
                out.append(f"delete element {T} {s} {{ {_self_elems(gone_ips)} }}")
            if added_ips:
                out.append(f"add element {T} {s} {{ {_self_elems(added_ips)} }}")
    for name in sorted(have.chains - set(new.chains) - {"forward"}):
        out += [f"flush chain {T} {name}", f"delete chain {T} {name}"]
    out += [f"delete set {T} {name}" for name in sorted(have.sets - set(new.sets) - set(SELF_SETS))]
    out += [f"delete counter {T} {c}" for c in sorted(have.counters - new.counters)]
    return "\n".join(out) + "\n" if out else ""
