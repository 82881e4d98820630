"""Upstream messages as bytes: the query kdns sends, the reply it checks and keeps, the copy each
client gets.

A forwarded answer is never parsed into records and rebuilt: `scan` walks the reply once (where
each record ends, where its TTL sits, the negative-caching TTL of RFC 2308, the OPT record) and
`render` makes each client's copy by patching bytes: the client's ID and RD bit, the question as
the client spelled it (the same length as ours: only the case differs), TTLs aged by the time in
the cache, our own OPT record when the client sent one, and truncation to the client's buffer.
That keeps the per-query Python work of forwarding to a few microseconds.

Truncation keeps the longest run of records that fits, in message order (answer, authority,
additional): names compress only against what comes before, so a prefix stays valid. TC is set
when an answer or authority record had to go (RFC 2181 §9: additional records are optional); the
client then retries over TCP and gets everything.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kdns import wire
from kdns.wire import AAAA, IN, MX, NOERROR, NXDOMAIN, OPT, OUR_UDP_SIZE, QR, RD, SOA, SRV, TC, A, FormError

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
_COUNTS = struct.Struct("!HHH")
_OPT_HEAD = b"\0" + OPT.to_bytes(2, "big")
DO_BIT = 0x8000


class IdSource:
    """Random 16-bit message IDs from the kernel's CSPRNG, read 2048 at a time: unpredictable
    like `secrets`, without a getrandom() call per query."""

    __slots__ = ("ids", "pos")

    def __init__(self) -> None:
        self.ids: tuple[int, ...] = ()
        self.pos = 0

    def next(self) -> int:
        pos = self.pos
        if pos >= len(self.ids):
            self.ids = struct.unpack("!2048H", os.urandom(4096))
            pos = 0
        self.pos = pos + 1
        return self.ids[pos]


def upstream_query(qid: int, question: bytes, do: bool, rd: bool = True) -> bytes:
    """RD set (unless a health check's `no_rec`), one question (name wire + type + class), our OPT
    (1232, DO as the client asked)."""
    flags = RD if rd else 0
    return _H.pack(qid, flags, 1, 0, 0, 1) + question + _OPT_HEAD + \
        struct.pack("!HIH", OUR_UDP_SIZE, DO_BIT if do else 0, 0)


@dataclass(slots=True)
class Answer:
    """An upstream reply, ready to be copied out to clients.

    `data`: the reply without its OPT record (header counts adjusted), ID zeroed; `qend`: where the
    question ends; `ends`: the end offset of each record; `an`/`ns`/`ar`: section counts (OPT not
    counted); `ttls`: the offset of every record's TTL field; `ttl`: how long it may be cached
    (0: not at all); `opt_ttl`: the upstream OPT's TTL field (extended rcode, version, DO), 0 if
    it had none."""

    data: bytes
    qend: int
    ends: tuple[int, ...]
    an: int
    ns: int
    ar: int
    ttls: tuple[int, ...]
    rcode: int
    ttl: int
    opt_ttl: int
    truncated: bool
    multi: int = -1  # loadbalance has something to reorder: 1/0, -1 not yet looked at (see balanced)

    @property
    def denial(self) -> bool:
        """NXDOMAIN, or NODATA (NOERROR without answers): RFC 2308's negative answers."""
        return self.rcode == NXDOMAIN or (self.rcode == NOERROR and self.an == 0)


def scan(data: bytes, question: bytes) -> Answer:
    """Check a reply against the question we sent (name wire + type + class, byte for byte) and
    index it. FormError for anything malformed, a query, or another question. (Every forwarded
    answer comes through here: one pass, no names decoded.)"""
    if len(data) < 12:
        raise FormError("short reply")
    _, flags, qd, an, ns, ar = _H.unpack_from(data)
    qend = 12 + len(question)
    if not flags & QR or qd != 1 or data[12:qend] != question:  # we send it lowercased: echoed as is
        raise FormError("not a reply to our question")
    n = len(data)
    off = qend
    ends: list[int] = []
    ttls: list[int] = []
    low = negative = 0xFFFFFFFF  # negative: min(SOA TTL, SOA MINIMUM) of an SOA in the authority
    opt_at, opt_ttl = -1, 0
    an_ns = an + ns
    total = an_ns + ar
    unpack = _RR.unpack_from
    i = 0
    try:
        while i < total:
            start = off
            length = data[off]
            if length >= 0xC0:  # the usual owner: a pointer (to the question)
                off += 2
            else:
                while length:  # labels up to the root or a pointer
                    if length > 63:
                        if length < 0xC0:
                            raise FormError("bad label type")
                        off += 1
                        break
                    off += length + 1
                    length = data[off]
                off += 1
            rtype, rclass, ttl, rdlen = unpack(data, off)
            end = off + 10 + rdlen
            if end > n:
                raise FormError("rdata runs past the end")
            if rtype == OPT:
                if i < an_ns:
                    raise FormError("misplaced OPT")
                opt_at, opt_ttl, total = start, ttl, i + 1  # anything after the OPT is dropped
                break
            if ttl > 0x7FFFFFFF:
                ttl = 0  # RFC 2181 §8: a TTL with the top bit set counts as zero
            ttls.append(off + 4)
            if ttl < low:
                low = ttl
            if rtype == SOA and an <= i < an_ns and rclass == IN and rdlen >= 22:
                negative = min(negative, ttl, int.from_bytes(data[end - 4:end], "big"))
            ends.append(end)
            off = end
            i += 1
    except (IndexError, struct.error):
        raise FormError("record runs past the end") from None
    rcode = flags & 0xF
    kept_ar = total - an_ns - (1 if opt_at >= 0 else 0)
    if opt_at >= 0:
        body = b"\0\0" + data[2:6] + _COUNTS.pack(an, ns, kept_ar) + data[12:opt_at]
    else:
        body = b"\0\0" + data[2:]
    if rcode == NOERROR and an:
        cache = low
    elif rcode in (NOERROR, NXDOMAIN) and negative != 0xFFFFFFFF:
        cache = negative
    else:
        cache = -1  # failures, and negative answers without an SOA (RFC 2308 §5: not cached)
    # Tuples: kept in the cache by the thousand, and tuples of ints leave the GC's lists.
    return Answer(body, qend, tuple(ends), an, ns, kept_ar, tuple(ttls), rcode, cache, opt_ttl, bool(flags & TC))


def render(a: Answer, qid: bytes, question: bytes, rd: int, edns: bool, do: bool, limit: int | None,
           age: int = 0, fixed_ttl: int | None = None) -> tuple[bytes, bool]:
    """The client's copy of `a` and whether it was truncated. `qid`: the client's two ID bytes;
    `question`: its question bytes (same length as ours); `rd`: its flags' RD bit (0x0100 or 0);
    `edns`: it sent an OPT record (then ours goes back, DO echoed); `limit`: its UDP size, None over
    TCP; `age`: seconds since `a` was received (TTLs count down); `fixed_ttl`: every TTL set to
    this (a stale answer served per RFC 8767). AA is cleared: relayed, the answer is not
    authoritative (as unbound relays it)."""
    buf = bytearray(a.data)
    buf[0:2] = qid
    buf[2] = (buf[2] & 0xFA) | (rd >> 8)  # the client's RD; AA cleared: kdns is not the authority
    buf[12:a.qend] = question
    if fixed_ttl is not None:
        packed = _TTL.pack(fixed_ttl)
        for off in a.ttls:
            buf[off:off + 4] = packed
    elif age > 0:
        pack_into, unpack_from = _TTL.pack_into, _TTL.unpack_from
        for off in a.ttls:
            ttl = unpack_from(buf, off)[0]
            pack_into(buf, off, ttl - age if age < ttl <= 0x7FFFFFFF else 0)
    opt = b""
    if edns:
        opt = _OPT_HEAD + struct.pack("!HIH", OUR_UDP_SIZE, (a.opt_ttl & 0xFFFF0000) | (DO_BIT if do else 0), 0)
    truncated = False
    if limit is not None and len(buf) + len(opt) > limit:
        room = limit - len(opt)
        keep = 0
        for end in a.ends:
            if end > room:
                break
            keep += 1
        del buf[a.ends[keep - 1] if keep else a.qend:]
        an = min(keep, a.an)
        ns = min(keep - an, a.ns)
        ar = keep - an - ns
        truncated = keep < a.an + a.ns
        if truncated:
            buf[2] |= TC >> 8
        _COUNTS.pack_into(buf, 6, an, ns, ar)
    if opt:
        buf += opt
        buf[10:12] = (int.from_bytes(buf[10:12], "big") + 1).to_bytes(2, "big")
    return bytes(buf), truncated


def balanced(a: Answer) -> bool:
    """Whether CoreDNS's `loadbalance` reorders `a`: a NOERROR answer with a section holding two or
    more A/AAAA or two or more MX records. Read from the record headers (the type sits 4 bytes
    before each TTL), once per answer: a cached answer keeps the verdict."""
    if a.multi < 0:
        found = False
        if a.rcode == NOERROR:
            data, ttls = a.data, a.ttls
            bounds = (0, a.an, a.an + a.ns, len(ttls))
            for section in range(3):
                addresses = mxs = 0
                for off in ttls[bounds[section]:bounds[section + 1]]:
                    rtype = (data[off - 4] << 8) | data[off - 3]
                    if rtype in (A, AAAA):
                        addresses += 1
                    elif rtype == MX:
                        mxs += 1
                if addresses > 1 or mxs > 1:
                    found = True
                    break
        a.multi = int(found)
    return bool(a.multi)


def shuffled(a: Answer, reorder: Callable[[list[URR]], list[URR] | None]) -> Answer:
    """`a` with each section's records in the order `reorder` gives (None: as they were), as a new
    Answer that `render` copies out like any other. Moving records would break compression
    pointers into them, so the records are written with names expanded (owners equal to the
    question's name point at it). Records of classes other than IN are left out (as `records`)."""
    sections = records(a)
    body = bytearray(a.data[:a.qend])
    qname = a.data[12:a.qend - 4]
    ends: list[int] = []
    ttls: list[int] = []
    counts = []
    for rrs in sections:
        rrs = reorder(rrs) or rrs
        counts.append(len(rrs))
        for owner, rtype, ttl, rdata in rrs:
            body += b"\xc0\x0c" if owner == qname else owner
            ttls.append(len(body) + 4)
            body += _RR.pack(rtype, IN, ttl, len(rdata))
            body += rdata
            ends.append(len(body))
    _COUNTS.pack_into(body, 6, *counts)
    return Answer(bytes(body), a.qend, tuple(ends), counts[0], counts[1], counts[2], tuple(ttls), a.rcode, a.ttl,
                  a.opt_ttl, a.truncated, 1)


def question_text(question: bytes) -> str:
    """`name. TYPE` of a question's bytes, for log lines."""
    labels, off = wire.read_name(question, 0)
    return f"{wire.labels_to_str(labels)}. {wire.type_name(int.from_bytes(question[off:off + 2], 'big'))}"


def failure(qid: bytes, question: bytes, rd: int, edns: bool, do: bool, rcode: int, ra: bool = True) -> bytes:
    """A reply carrying only the question and `rcode` (SERVFAIL when every upstream failed)."""
    flags = QR | rd | (0x0080 if ra else 0) | rcode
    out = qid + struct.pack("!HHHHH", flags, 1, 0, 0, 1 if edns else 0) + question
    if edns:
        out += _OPT_HEAD + struct.pack("!HIH", OUR_UDP_SIZE, DO_BIT if do else 0, 0)
    return out


URR = tuple[bytes, int, int, bytes]  # (owner wire, type, ttl, uncompressed rdata): a wire.RR


def records(a: Answer, age: int = 0) -> tuple[list[URR], list[URR], list[URR]]:
    """The answer, authority and additional records of `a`, names uncompressed so they can go
    into another message (autopath's and ExternalName's composed answers), TTLs aged."""
    data = a.data
    off = a.qend
    out: list[list[URR]] = [[], [], []]
    for i, end in enumerate(a.ends):
        labels, off = wire.read_name(data, off)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        off += 10
        if rclass == IN:
            section = 0 if i < a.an else 1 if i < a.an + a.ns else 2
            ttl = 0 if ttl & 0x80000000 else max(0, ttl - age)
            out[section].append((wire.labels_to_wire(labels), rtype, ttl, _rdata(data, off, rdlen, rtype)))
        off = end
    return out[0], out[1], out[2]


def _rdata(data: bytes, off: int, rdlen: int, rtype: int) -> bytes:
    """Rdata with any compressed names expanded (RFC 3597 §4: only the well-known types)."""
    if rtype not in wire._NAME_RDATA:
        return data[off:off + rdlen]
    end = off + rdlen
    out = bytearray()
    if rtype in (MX, SRV):
        fixed = 2 if rtype == MX else 6
        out += data[off:off + fixed]
        off += fixed
    for _ in range(2 if rtype == SOA else 1):
        labels, off = wire.read_name(data, off)
        out += wire.labels_to_wire(labels)
    if rtype == SOA:
        out += data[off:off + 20]
        off += 20
    if off != end:
        raise FormError(f"type {rtype} rdata length does not match its contents")
    return bytes(out)
