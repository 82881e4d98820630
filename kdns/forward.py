"""Forwarding of names outside the cluster zone to upstream resolvers, with a TTL-honouring cache.

Upstream queries go over a connected UDP socket per upstream (the kernel drops datagrams from
anyone but the upstream), replaced by a fresh one (new random source port) every 100 queries or
5 s; each query has a random ID and its question is checked on the way back; a truncated (TC)
reply is retried over TCP to the same upstream. Upstreams are tried in
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
import itertools
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


CHANNEL_QUERIES = 100  # queries per upstream socket before a fresh one (and a fresh source port)
CHANNEL_SECONDS = 5.0


class _Channel(asyncio.DatagramProtocol):
    """One connected UDP socket to an upstream, shared by the queries in flight to it and told
    apart by their random IDs (and checked questions). Sharing saves a socket, a connect and a
    close per query (forwarding was capped near 2-3k misses/s with a socket per query); the
    source port still changes every CHANNEL_QUERIES queries or CHANNEL_SECONDS, as CoreDNS's
    forward plugin rotates its connections, so a spoofer must still match a recent random port
    as well as the ID and the question."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, tuple[bytes, int, asyncio.Future]] = {}
        self.used = 0
        self.born = time.monotonic()
        self.retired = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            rid, flags, qw, rtype, result = parse_response(data)
        except FormError:
            return  # garbage on our port: the real reply may still come
        waiter = self.waiting.get(rid)
        if waiter is not None and waiter[0] == qw and waiter[1] == rtype and flags & 0x8000 and not waiter[2].done():
            waiter[2].set_result((flags, result))

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable): every query on this socket fails now, not at its
        # timeout, and the next query gets a new socket.
        self.retired = True
        for _, _, fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(OSError(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.retired = True
        for _, _, fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("upstream socket closed"))

    def retire(self) -> None:
        """No new queries; closed when the last one in flight is done."""
        self.retired = True
        if not self.waiting:
            self.close()

    def close(self) -> None:
        self.retired = True
        if self.transport is not None:
            self.transport.close()


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
        self.channels: dict[Upstream, _Channel] = {}
        self.making: dict[Upstream, asyncio.Future[_Channel]] = {}
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
        """Make room in bulk (expired entries, then the oldest tenth): one scan per ~cache_size/10
        insertions, not one per insertion, so a flood of distinct names stays O(1) per query."""
        now = time.monotonic()
        for k in [k for k, (_, exp, _) in self.cache.items() if exp <= now]:
            del self.cache[k]
        target = self.cache_size - max(1, self.cache_size // 10)
        if len(self.cache) > target:  # still (nearly) full: drop the oldest insertions
            for k in list(itertools.islice(self.cache, len(self.cache) - target)):
                del self.cache[k]

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
        deadline = loop.time() + self.timeout
        channel = await self._channel(up)
        qid = secrets.randbits(16)
        while qid in channel.waiting:
            qid = secrets.randbits(16)
        query = self._query(qid, qname_wire, qtype, do)
        want = qname_wire.lower()
        fut: asyncio.Future[tuple[int, Result]] = loop.create_future()
        channel.waiting[qid] = (want, qtype, fut)
        channel.used += 1
        try:
            channel.transport.sendto(query)  # type: ignore[union-attr]
            async with asyncio.timeout_at(deadline):
                flags, result = await fut
        finally:
            del channel.waiting[qid]
            if channel.retired and not channel.waiting:
                channel.close()
        if flags & TC:
            return await self._ask_tcp(up, qid, query, want, qtype, deadline)
        return result

    async def _channel(self, up: Upstream) -> _Channel:
        """The upstream's current UDP channel; a new one (new socket, new random port) once the
        current one has carried CHANNEL_QUERIES queries or lived CHANNEL_SECONDS, or failed.
        Queries arriving while a channel is being made wait for that one."""
        while True:
            channel = self.channels.get(up)
            if channel is not None and not channel.retired and channel.used < CHANNEL_QUERIES \
                    and time.monotonic() - channel.born < CHANNEL_SECONDS:
                return channel
            making = self.making.get(up)
            if making is None:
                break
            await asyncio.shield(making)  # then look again: it may be used up already
        loop = asyncio.get_running_loop()
        making = self.making[up] = loop.create_future()
        try:
            family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
            _, new = await loop.create_datagram_endpoint(_Channel, remote_addr=(up.host, up.port), family=family)
            if channel is not None:
                channel.retire()
            self.channels[up] = new
            making.set_result(new)
            return new
        except BaseException as e:
            making.set_exception(e)
            making.exception()  # retrieved: no warning when nobody else waited
            raise
        finally:
            del self.making[up]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()

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
