"""Forwarding of names outside the cluster zone to upstream resolvers, with a TTL-honouring cache.

Each upstream query uses its own connected UDP socket (a fresh random source port, and the kernel
drops datagrams from anyone but the upstream), a random ID, and the question is checked on the
way back; a truncated (TC) reply is retried over TCP to the same upstream. Upstreams are tried in
order; a timeout, SERVFAIL or REFUSED moves on to the next one. Identical questions in flight
share one upstream query.

Cache: answers are kept for the smallest TTL among their records (capped by `max_ttl`); NXDOMAIN
and NODATA for the upstream SOA's negative TTL, min(SOA TTL, SOA MINIMUM) (RFC 2308), and not at
all without an SOA. Served TTLs count down with the time spent in the cache. Failures are never
cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kdns import wire
from kdns.wire import IN, MX, NOERROR, NXDOMAIN, OPT, RD, REFUSED, SERVFAIL, SOA, SRV, TC, FormError

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
URR = tuple[bytes, int, int, bytes]  # (owner wire, type, ttl, uncompressed rdata): a wire.RR


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Upstream:
        text = text.strip()
        if text.startswith("["):  # [v6]:port
            host, _, port = text[1:].partition("]:")
            return cls(host.rstrip("]"), int(port) if port else 53)
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host, int(port))
        return cls(text)


@dataclass(slots=True)
class Result:
    rcode: int
    answer: list[URR]
    authority: list[URR]
    additional: list[URR]


def parse_response(data: bytes) -> tuple[int, int, bytes, int, Result]:
    """(id, flags, qname wire (lowercased), qtype, sections) of an upstream reply; OPT left out."""
    if len(data) < 12:
        raise FormError("short reply")
    qid, flags, qd, an, ns, ar = _H.unpack_from(data)
    if qd != 1:
        raise FormError("reply without exactly one question")
    labels, off = wire.read_name(data, 12)
    if off + 4 > len(data):
        raise FormError("truncated question")
    qtype = int.from_bytes(data[off:off + 2], "big")
    off += 4
    sections: list[list[URR]] = [[], [], []]
    for idx, count in enumerate((an, ns, ar)):
        for _ in range(count):
            owner, off = wire.read_name(data, off)
            if off + 10 > len(data):
                raise FormError("truncated record")
            rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
            off += 10
            if off + rdlen > len(data):
                raise FormError("rdata runs past the end")
            if rtype != OPT and rclass == IN:
                rdata = _rdata(data, off, rdlen, rtype)
                sections[idx].append((wire.labels_to_wire(owner), rtype, 0 if ttl & 0x80000000 else ttl, rdata))
            off += rdlen
    qwire = wire.labels_to_wire([lab.lower() for lab in labels])
    return qid, flags, qwire, qtype, Result(flags & 0xF, *sections)


def _rdata(data: bytes, off: int, rdlen: int, rtype: int) -> bytes:
    """Rdata with any compressed names expanded, so the record can go into another message."""
    layout = wire._NAME_RDATA.get(rtype)
    if layout is None:
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


def cache_ttl(result: Result, max_ttl: int) -> int:
    if result.rcode == NOERROR and result.answer:
        return min(max_ttl, *(rr[2] for rr in result.answer + result.authority + result.additional))
    if result.rcode in (NOERROR, NXDOMAIN):
        for rr in result.authority:
            if rr[1] == SOA and len(rr[3]) >= 20:
                minimum = int.from_bytes(rr[3][-4:], "big")
                return min(max_ttl, rr[2], minimum)
    return 0


def aged(result: Result, elapsed: int) -> Result:
    def age(lst: list[URR]) -> list[URR]:
        return [(o, t, max(0, ttl - elapsed), d) for o, t, ttl, d in lst]
    return Result(result.rcode, age(result.answer), age(result.authority), age(result.additional))


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], *, timeout: float = 2.0, cache_size: int = 10000,
                 max_ttl: int = 3600) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        # The cache is read by the server's UDP threads and written by the loop: guarded.
        self.lock = threading.Lock()
        self.cache: dict[tuple[bytes, int, bool], tuple[float, float, Result]] = {}
        self.inflight: dict[tuple[bytes, int, bool], asyncio.Future[Result | None]] = {}
        # Plain counters, read by the metrics collector.
        self.hits = 0
        self.misses = 0
        self.requests: dict[tuple[str, str], int] = {}  # (upstream, rcode or error) -> count

    def lookup(self, qname_wire: bytes, qtype: int, do: bool = False) -> Result | None:
        """A cached answer with its TTLs aged, or None (synchronous: the server's fast-ish path)."""
        key = (qname_wire.lower(), qtype, do)
        with self.lock:
            hit = self.cache.get(key)
            if hit is None:
                return None
            stored, expires, result = hit
            now = time.monotonic()
            if now >= expires:
                del self.cache[key]
                return None
            self.hits += 1
        return aged(result, int(now - stored))

    async def resolve(self, qname_wire: bytes, qtype: int, do: bool = False) -> Result | None:
        """The upstream answer (from cache if fresh); None when every upstream failed."""
        cached = self.lookup(qname_wire, qtype, do)
        if cached is not None:
            return cached
        key = (qname_wire.lower(), qtype, do)
        fut = self.inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        self.misses += 1
        fut = asyncio.get_running_loop().create_future()
        self.inflight[key] = fut
        try:
            result = await self._ask_all(qname_wire, qtype, do)
            ttl = cache_ttl(result, self.max_ttl) if result is not None else 0
            if ttl > 0:
                with self.lock:
                    if len(self.cache) >= self.cache_size:
                        self._evict()
                    now = time.monotonic()
                    self.cache[key] = (now, now + ttl, result)  # type: ignore[assignment]
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            self.inflight.pop(key, None)

    def _evict(self) -> None:  # with the lock held
        now = time.monotonic()
        for k in [k for k, (_, exp, _) in self.cache.items() if exp <= now]:
            del self.cache[k]
        while len(self.cache) >= self.cache_size:  # still full: drop the oldest insertions
            del self.cache[next(iter(self.cache))]

    def _count(self, up: Upstream, what: str) -> None:
        key = (up.label, what)
        self.requests[key] = self.requests.get(key, 0) + 1

    async def _ask_all(self, qname_wire: bytes, qtype: int, do: bool) -> Result | None:
        last: Result | None = None
        for up in self.upstreams:
            try:
                result = await self._ask(up, qname_wire, qtype, do)
            except (OSError, TimeoutError, FormError, asyncio.IncompleteReadError) as e:
                self._count(up, "timeout" if isinstance(e, TimeoutError) else "error")
                continue
            self._count(up, wire.RCODE_NAMES.get(result.rcode, str(result.rcode)))
            if result.rcode not in (SERVFAIL, REFUSED):
                return result
            last = result
        return last

    def _query(self, qid: int, qname_wire: bytes, qtype: int, do: bool) -> bytes:
        opt = b"\0" + _RR.pack(OPT, wire.OUR_UDP_SIZE, 0x8000 if do else 0, 0)
        return _H.pack(qid, RD, 1, 0, 0, 1) + qname_wire + struct.pack("!HH", qtype, IN) + opt

    async def _ask(self, up: Upstream, qname_wire: bytes, qtype: int, do: bool) -> Result:
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        query = self._query(qid, qname_wire, qtype, do)
        want = qname_wire.lower()
        family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
        deadline = loop.time() + self.timeout
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (up.host, up.port))
            await loop.sock_sendall(sock, query)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535), remaining)
                try:
                    rid, flags, qw, rtype, result = parse_response(data)
                except FormError:
                    continue  # garbage on our port: keep waiting for the real reply
                if rid == qid and qw == want and rtype == qtype and flags & 0x8000:
                    break
        if flags & TC:
            return await self._ask_tcp(up, qid, query, want, qtype, deadline)
        return result

    async def _ask_tcp(self, up: Upstream, qid: int, query: bytes, want: bytes, qtype: int,
                       deadline: float) -> Result:
        loop = asyncio.get_running_loop()
        remaining = max(0.1, deadline - loop.time())
        reader, writer = await asyncio.wait_for(asyncio.open_connection(up.host, up.port), remaining)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            remaining = max(0.1, deadline - loop.time())
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), remaining), "big")
            data = await asyncio.wait_for(reader.readexactly(size), remaining)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        rid, _, qw, rtype, result = parse_response(data)
        if rid != qid or qw != want or rtype != qtype:
            raise FormError("TCP reply does not match the question")
        return result
