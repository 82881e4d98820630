"""DNS wire format (RFC 1035, EDNS0 RFC 6891): parse queries and upstream responses, build answers.

Hand-written rather than through dnslib because the server needs control over exactly the parts
that matter here: strict and cheap rejection of garbage (label types, lengths, compression loops,
counts that run past the end), the question echoed byte for byte (case included: resolvers that
randomise 0x20 case check it), compression against the question, and the truncation decision.

Names inside kdns are dotted, lowercased (ASCII only, as DNS compares), without the trailing dot;
the root is "". A label holding a "." or "\\" byte is escaped, so it can never collide with a
cluster name. Record data is kept structured (see `encode_rdata`), or raw uncompressed wire bytes
for records that came from an upstream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, DNAME, OPT = 1, 2, 5, 6, 12, 15, 16, 28, 33, 39, 41
IXFR, AXFR, ANY = 251, 252, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode: only in the OPT record's upper bits
QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010

TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT", AAAA: "AAAA",
              SRV: "SRV", DNAME: "DNAME", OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", ANY: "ANY", 65: "HTTPS",
              64: "SVCB", 257: "CAA", 43: "DS", 48: "DNSKEY", 46: "RRSIG", 47: "NSEC", 50: "NSEC3"}
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL", NXDOMAIN: "NXDOMAIN",
               NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}
# Record types whose rdata holds names that an upstream may have compressed (RFC 3597 §4: only
# these well-known ones); decompressed on parse so records can be re-emitted in another message.
_NAME_RDATA = {NS: (0,), CNAME: (0,), PTR: (0,), MX: (2,), SOA: (0, 0), SRV: (6,), DNAME: (0,)}

MAX_NAME = 255
MAX_HOPS = 64  # compression pointers followed per name; a valid name needs at most 127, real ones < 10
OUR_UDP_SIZE = 1232  # what we advertise in OPT (the DNS flag day 2020 value: no IP fragmentation)

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_Q = struct.Struct("!HH")
_OPT_SIZE_TTL = struct.Struct("!HI")  # an OPT record after its name and type: UDP size, TTL field


class FormError(ValueError):
    """The message cannot be parsed (answer FORMERR, or drop when even the header is unusable)."""


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, f"TYPE{qtype}")


def read_name(data: bytes, off: int) -> tuple[list[bytes], int]:
    """Labels of the name at `off` and the offset after it (after the first pointer if any).

    A pointer must land before the start of the run of labels it ends (a compressed name refers
    to a name written earlier), so every hop goes strictly backwards past everything read so far:
    no loop is possible, and MAX_HOPS bounds the work of long chains."""
    labels: list[bytes] = []
    end = -1
    total = 1
    hops = 0
    n = len(data)
    run_start = off
    while True:
        if off >= n:
            raise FormError("name runs past the end")
        length = data[off]
        if length == 0:
            return labels, (off + 1 if end < 0 else end)
        kind = length & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise FormError("truncated pointer")
            target = ((length & 0x3F) << 8) | data[off + 1]
            if target >= run_start:
                raise FormError("forward or looping compression pointer")
            hops += 1
            if hops > MAX_HOPS:
                raise FormError("too many compression pointers")
            if end < 0:
                end = off + 2
            off = run_start = target
            continue
        if kind:
            raise FormError("bad label type")
        total += length + 1
        if total > MAX_NAME:
            raise FormError("name too long")
        if off + 1 + length > n:
            raise FormError("label runs past the end")
        labels.append(data[off + 1:off + 1 + length])
        off += 1 + length


def labels_to_str(labels: list[bytes]) -> str:
    out = []
    for lab in labels:
        s = lab.lower().decode("latin-1")
        if "." in s or "\\" in s:
            s = s.replace("\\", "\\\\").replace(".", "\\.")
        out.append(s)
    return ".".join(out)


def labels_to_wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(lab),)) + lab for lab in labels) + b"\0"


def name_to_wire(name: str) -> bytes:
    """Wire form of one of our own dotted names (no escapes in them)."""
    if not name:
        return b"\0"
    parts = name.encode("latin-1").split(b".")
    if any(not p or len(p) > 63 for p in parts) or len(name) > 253:
        raise ValueError(f"not a valid DNS name: {name!r}")
    return b"".join(bytes((len(p),)) + p for p in parts) + b"\0"


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    opcode: int
    qname: str  # normalised (lowercase, dotted)
    qname_wire: bytes  # as asked, uncompressed (case preserved)
    qtype: int
    qclass: int
    edns: bool = False
    udp_size: int = 512  # the client's advertised limit (512 without EDNS)
    do: bool = False
    edns_version: int = 0

    @property
    def udp_limit(self) -> int:
        # Never answer above what we advertise ourselves: larger UDP answers fragment.
        return min(max(self.udp_size, 512), OUR_UDP_SIZE) if self.edns else 512


def parse_query(data: bytes) -> Query:
    """A query's question and EDNS state. FormError for garbage; a response (QR set) also raises
    (it must never be answered, or two servers could bounce packets forever).

    Every cache miss comes through here, so the usual shape (plain labels, at most one OPT
    record) takes a short path; anything else (pointers, escapes, other records) the general one."""
    n = len(data)
    if n < 12:
        raise FormError("short header")
    qid, flags, qd, an, ns, ar = _H.unpack_from(data)
    if flags & QR:
        raise FormError("not a query")
    opcode = (flags >> 11) & 0xF
    if qd != 1:
        raise FormError(f"{qd} questions")
    off, labels = 12, []
    try:
        length = data[12]
        while 0 < length < 64:
            labels.append(data[off + 1:off + 1 + length])
            off += length + 1
            length = data[off]
    except IndexError:
        raise FormError("name runs past the end") from None
    joined = b".".join(labels)
    if not length and off < 267 and off + 5 <= n and b"\\" not in joined \
            and joined.count(b".") == len(labels) - (1 if labels else 0):  # < 267: a name of at most 255 bytes
        qtype, qclass = _Q.unpack_from(data, off + 1)
        q = Query(qid, flags, opcode, joined.lower().decode("latin-1"), data[12:off + 1], qtype, qclass)
        off += 5
        if not (an or ns or ar):
            return q
        if not (an or ns) and ar == 1 and off + 11 <= n and data[off] == 0 and data[off + 1] == 0 \
                and data[off + 2] == OPT and data[off + 9] == 0 and data[off + 10] == 0:  # no options
            q.edns = True
            q.udp_size, ttl = _OPT_SIZE_TTL.unpack_from(data, off + 3)
            q.edns_version, q.do = (ttl >> 16) & 0xFF, bool(ttl & 0x8000)
            return q
        _read_edns(data, off, an + ns, ar, q)
        return q
    labels, off = read_name(data, 12)
    if off + 4 > n:
        raise FormError("truncated question")
    qtype, qclass = _Q.unpack_from(data, off)
    q = Query(qid, flags, opcode, labels_to_str(labels), labels_to_wire(labels), qtype, qclass)
    off += 4
    if an or ns or ar:
        _read_edns(data, off, an + ns, ar, q)
    return q


def _read_edns(data: bytes, off: int, skip: int, ar: int, q: Query) -> None:
    n = len(data)
    for i in range(skip + ar):
        labels, off = read_name(data, off)
        if off + 10 > n:
            raise FormError("truncated record")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        off += 10
        if off + rdlen > n:
            raise FormError("rdata runs past the end")
        if rtype == OPT and i >= skip:
            if q.edns or labels:
                raise FormError("second OPT or OPT not at the root")
            q.edns, q.udp_size = True, rclass
            q.edns_version, q.do = (ttl >> 16) & 0xFF, bool(ttl & 0x8000)
            end, o = off + rdlen, off
            while o < end:  # options: code, length, value; they must tile the rdata exactly
                if o + 4 > end:
                    raise FormError("truncated EDNS option")
                o += 4 + int.from_bytes(data[o + 2:o + 4], "big")
            if o != end:
                raise FormError("EDNS option runs past the record")
        off += rdlen


# --- building ----------------------------------------------------------------------------------

RR = tuple[Any, int, int, Any]  # (owner: str | wire bytes, type, ttl, data)


class Builder:
    """One response message, with name compression against the question and earlier names."""

    __slots__ = ("buf", "comp", "qname")

    def __init__(self, header: bytes, question: bytes, qname: str) -> None:
        self.buf = bytearray(header)
        self.buf += question
        self.qname = qname
        self.comp: dict[str, int] = {}
        if qname and "\\" not in qname:  # offsets of escaped labels do not follow from the dots
            self._register(qname, 12)

    def _register(self, name: str, off: int) -> None:
        # Every suffix of a name written at `off` can be pointed at later (offsets < 0x4000 only).
        while name and off < 0x4000 and name not in self.comp:
            self.comp[name] = off
            dot = name.find(".")
            if dot < 0:
                break
            off += dot + 1
            name = name[dot + 1:]

    def name(self, name: str, compress: bool = True) -> None:
        buf = self.buf
        start = len(buf)
        if not compress:  # written whole, but later names may still point into it
            buf += name_to_wire(name)
            self._register(name, start)
            return
        rest = name
        while rest:
            ptr = self.comp.get(rest)
            if ptr is not None:
                buf += bytes((0xC0 | (ptr >> 8), ptr & 0xFF))
                self._register(name, start)
                return
            dot = rest.find(".")
            label = rest if dot < 0 else rest[:dot]
            buf.append(len(label))
            buf += label.encode("latin-1")
            rest = "" if dot < 0 else rest[dot + 1:]
        buf.append(0)
        self._register(name, start)

    def rr(self, rr: RR) -> None:
        owner, rtype, ttl, data = rr
        buf = self.buf
        if isinstance(owner, bytes):
            buf += owner
        else:
            self.name(owner)
        buf += struct.pack("!HHI", rtype, IN, ttl)
        at = len(buf)
        buf += b"\0\0"
        encode_rdata(self, rtype, data)
        struct.pack_into("!H", buf, at, len(buf) - at - 2)


def encode_rdata(b: Builder, rtype: int, data: Any) -> None:
    """Structured rdata: A/AAAA bytes; CNAME/PTR/NS/DNAME name; SRV (prio, weight, port, target);
    TXT tuple of str; SOA (mname, rname, serial, refresh, retry, expire, minimum); MX (pref, name).
    Raw bytes for anything else (already uncompressed wire)."""
    buf = b.buf
    if isinstance(data, bytes | bytearray):
        buf += data
    elif rtype in (CNAME, PTR, NS):
        b.name(data)
    elif rtype == SRV:
        buf += struct.pack("!HHH", data[0], data[1], data[2])
        b.name(data[3], compress=False)  # RFC 2782: the target is never compressed
    elif rtype == TXT:
        for s in data:
            raw = s.encode()
            buf.append(len(raw))
            buf += raw
    elif rtype == SOA:
        b.name(data[0])
        b.name(data[1])
        buf += struct.pack("!IIIII", *data[2:])
    elif rtype == MX:
        buf += struct.pack("!H", data[0])
        b.name(data[1])
    elif rtype == DNAME:
        b.name(data, compress=False)
    else:
        raise ValueError(f"no encoding for type {rtype} data {data!r}")


@dataclass(slots=True)
class Reply:
    rcode: int = NOERROR
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    aa: bool = False
    ra: bool = False


def build(q: Query, reply: Reply, limit: int | None) -> tuple[bytes, bool]:
    """The response to `q` and whether it was truncated. `limit`: the UDP size, None over TCP.

    Records go in, in order (answer, authority, additional), while they fit. When an answer or
    authority record does not, the response keeps those that did and has TC set: the client
    retries over TCP (and one that does not still has some addresses, as CoreDNS's truncation
    leaves them). Additional records are optional (RFC 2181 §9): dropping them sets no TC."""
    rcode = reply.rcode
    flags = QR | (q.opcode << 11) | (q.flags & (RD | CD)) | (rcode & 0xF)
    if reply.aa:
        flags |= AA
    if reply.ra:
        flags |= RA
    question = q.qname_wire + _Q.pack(q.qtype, q.qclass)
    b = Builder(b"\0" * 12, question, q.qname)
    opt = _opt(q, rcode) if q.edns else b""
    cap = (65535 if limit is None else limit) - len(opt)
    counts = [0, 0, 0]
    truncated = False
    for section, records in enumerate((reply.answer, reply.authority, reply.additional)):
        for rr in records:
            mark = len(b.buf)
            b.rr(rr)
            if len(b.buf) > cap:
                del b.buf[mark:]  # (names it registered for compression point past the end: unused)
                truncated = section < 2
                break
            counts[section] += 1
        else:
            continue
        break
    if truncated:
        flags |= TC
    b.buf += opt
    _H.pack_into(b.buf, 0, q.id, flags, 1, counts[0], counts[1], counts[2] + (1 if opt else 0))
    return bytes(b.buf), truncated


def _opt(q: Query, rcode: int) -> bytes:
    ttl = ((rcode >> 4) << 24) | (0x8000 if q.do else 0)
    return b"\0" + _RR.pack(OPT, OUR_UDP_SIZE, ttl, 0)


def error_response(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP/... for a message whose question may be unusable: the header only (with the
    client's ID, opcode and RD). None when even that is impossible (short, or a response)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = QR | (data[2] << 8 & 0x7900) | rcode
    return _H.pack(int.from_bytes(data[:2], "big"), flags, 0, 0, 0, 0)
