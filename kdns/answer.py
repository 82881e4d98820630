"""The answer builder: a question and the record store in, a reply (and what it depends on) out.

Pure: `resolve` never does I/O. A name it cannot answer alone is marked for the server's slow
path: `forward` (outside the cluster zone, or a reverse name we hold nothing for) or `chase` (an
ExternalName's CNAME target outside the zone, to be resolved upstream and appended).

Negative answers: NXDOMAIN when the name does not exist at all, NODATA (NOERROR, empty answer)
when it exists -- with records of other types, or as an empty non-terminal such as
`_tcp.web.default.svc.cluster.local` -- and the zone's SOA in the authority section of both, so
resolvers cache the miss for the SOA's negative TTL (RFC 2308).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from kdns.records import RecordStore
from kdns.wire import (
    AAAA,
    ANY,
    AXFR,
    CNAME,
    IN,
    IXFR,
    MX,
    NOERROR,
    NS,
    NXDOMAIN,
    REFUSED,
    RR,
    SRV,
    A,
    Reply,
)

MAX_CHAIN = 8  # CNAME hops followed inside the zone (ExternalName -> another service's name ...)
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")


@dataclass(frozen=True, slots=True)
class Scope:
    """What the store is authoritative for besides the cluster zone, and where a miss goes on
    to the forwarder instead (CoreDNS's `kubernetes ZONES { fallthrough ZONES }`). The default is
    kdns's flag-mode behaviour: the PTRs kdns holds are answered, other reverse names forwarded."""

    reverse_zones: tuple[str, ...] = REVERSE_ZONES
    fallthrough: tuple[str, ...] | None = REVERSE_ZONES  # None: never; (): every zone

    def falls_through(self, zone: str) -> bool:
        return self.fallthrough is not None and (not self.fallthrough or zone in self.fallthrough)


DEFAULT_SCOPE = Scope()


@dataclass(slots=True)
class Resolution:
    reply: Reply
    deps: set[str] = field(default_factory=set)  # names whose change invalidates this answer
    forward: bool = False
    chase: str | None = None


def resolve(store: RecordStore, qname: str, qtype: int, qclass: int = IN, scope: Scope = DEFAULT_SCOPE) -> Resolution:
    if qclass not in (IN, ANY):
        return Resolution(Reply(REFUSED), {qname})
    if store.in_zone(qname):
        if qtype in (AXFR, IXFR):  # zone transfers are not offered
            return Resolution(Reply(REFUSED, aa=True), {qname})
        res = Resolution(Reply(aa=True))
        _local(store, qname, qtype, res, 0)
        if res.reply.rcode == NXDOMAIN and scope.falls_through(store.zone):
            return Resolution(Reply(), {qname}, forward=True)
        return res
    for zone in scope.reverse_zones:
        if qname == zone or qname.endswith("." + zone):
            if qname in store.names:  # a PTR of ours
                res = Resolution(Reply(aa=True))
                _local(store, qname, qtype, res, 0)
                return res
            if scope.falls_through(zone):
                break
            soa = store.soa
            return Resolution(Reply(NXDOMAIN, authority=[(zone, soa[1], soa[2], soa[3])], aa=True), {qname})
    return Resolution(Reply(), {qname}, forward=True)


def _local(store: RecordStore, qname: str, qtype: int, res: Resolution, depth: int) -> None:
    reply = res.reply
    res.deps.add(qname)
    rrsets = store.names.get(qname)
    if rrsets is None:
        rrsets = synthesize(store, qname)
    if rrsets is None:
        exists = store.exists(qname) or _synthetic_ent(store, qname)
        reply.rcode = NOERROR if exists else NXDOMAIN
        _negative(store, qname, reply)
        return
    cname = rrsets.get(CNAME)
    if cname and qtype not in (CNAME, ANY):
        reply.answer += cname
        target = cname[0][3]
        if store.in_zone(target) and depth < MAX_CHAIN:
            _local(store, target, qtype, res, depth + 1)
        elif not store.in_zone(target):
            res.chase = target
        return
    if qtype == ANY:
        for lst in rrsets.values():
            reply.answer += lst
    elif qtype in rrsets:
        reply.answer += rrsets[qtype]
    else:
        _negative(store, qname, reply)
        return
    if qtype in (SRV, NS, ANY):
        _glue(store, reply, res)


def _negative(store: RecordStore, qname: str, reply: Reply) -> None:
    if store.in_zone(qname):
        reply.authority.append(store.soa)


def _glue(store: RecordStore, reply: Reply, res: Resolution) -> None:
    """A/AAAA of SRV targets and NS hosts, for the additional section."""
    seen: set[str] = set()
    for rr in reply.answer:
        if rr[1] == SRV:
            target = rr[3][3]
        elif rr[1] == NS:
            target = rr[3]
        else:
            continue
        if target in seen:
            continue
        seen.add(target)
        res.deps.add(target)
        rrsets = store.names.get(target) or {}
        reply.additional += rrsets.get(A, []) + rrsets.get(AAAA, [])


def synthesize(store: RecordStore, qname: str) -> dict[int, list[RR]] | None:
    """Pod records in "insecure" mode: `a-b-c-d.<ns>.pod.<zone>` answers a.b.c.d for any values
    (the specification's deprecated-but-required form), IPv6 with '-' for ':'."""
    cfg = store.cfg
    if cfg.pods != "insecure":
        return None
    host, _, rest = qname.partition(".")
    ns, _, tail = rest.partition(".")
    if tail != f"pod.{store.zone}" or not ns or not host:
        return None
    ip = pod_address(host)
    if ip is None:
        return None
    rtype = A if ip.version == 4 else AAAA
    return {rtype: [(qname, rtype, cfg.ttl, ip.packed)]}


def pod_address(label: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    parts = label.split("-")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        try:
            return ipaddress.IPv4Address(".".join(parts))
        except ValueError:
            return None
    if "." in label or ":" in label:
        return None
    try:
        return ipaddress.IPv6Address(label.replace("-", ":"))
    except ValueError:
        return None


def _synthetic_ent(store: RecordStore, qname: str) -> bool:
    if store.cfg.pods != "insecure":
        return False
    pod_zone = f"pod.{store.zone}"
    if qname == pod_zone:
        return True
    label, _, rest = qname.partition(".")
    return rest == pod_zone and bool(label)


def round_robin(answer: list[RR], shuffle: Callable[[list[RR]], None]) -> list[RR] | None:
    """The `loadbalance` plugin's reordering, or None when there is nothing to reorder (fewer than
    two A/AAAA or MX records: such answers stay on the cached fast path). As CoreDNS's
    round_robin: CNAMEs first (a chain must precede what it points at), other records next, then
    the addresses and the MX records, each group shuffled."""
    cnames: list[RR] = []
    others: list[RR] = []
    addresses: list[RR] = []
    mxs: list[RR] = []
    for rr in answer:
        rtype = rr[1]
        (cnames if rtype == CNAME else addresses if rtype in (A, AAAA) else mxs if rtype == MX else others).append(rr)
    if len(addresses) < 2 and len(mxs) < 2:
        return None
    shuffle(addresses)
    shuffle(mxs)
    return cnames + others + addresses + mxs
