"""The DNS server: UDP and TCP listeners, a dict-lookup fast path for UDP, asyncio for the rest.

Fast path: for a query whose bytes after the ID are in the answer cache, send the client's ID +
the stored response: one recvfrom, one dict lookup, one sendto. That is the whole cost of a
cluster answer once it has been asked once, which is what keeps kdns near a C resolver's rate.

Two ways to run it (`udp_mode`):
  * "thread" (default): a thread per UDP socket, blocking recvfrom, nothing between datagrams but
    the lookup. Misses are answered on that thread too (parse, build from the store, cache:
    bounded, tens of microseconds, under `lock`); only forwarding goes to the event loop. So the
    socket is always read promptly: a flood of names for a slow upstream piles up in the
    forwarder (bounded by `max_pending`), not in the socket queue in front of cluster queries.
  * "loop": a reader callback on the event loop drains the socket (up to BATCH per wake-up).
    One thread, no GIL hand-offs; but each wake-up costs the loop's machinery plus an epoll and
    an EAGAIN recvfrom, and the loop shares its time with the forwarding tasks.
  Measured with bench/dns.py and a forward flood (README): thread mode uses ~10-20% less CPU per
  query at moderate load (on par with unbound) and kept cluster answers at p99 ~5 ms under a
  flood of upstream misses where loop mode queued them behind the flood (p99 ~900 ms). The
  thread waits for the GIL whenever another thread computes; the daemon shortens the switch
  interval to bound that wait.

Slow path: garbage gets FORMERR (or is dropped when not even the header is usable, or when it is
a response: answering responses can loop two servers). Names outside the zone are forwarded in
tasks; a forwarder cache hit is answered at once; at most `max_pending` forwards are in flight,
beyond that queries are dropped (clients retry), so a dead upstream cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

from kdns import wire
from kdns.answer import Resolution, resolve
from kdns.cache import AnswerCache
from kdns.forward import Forwarder, Result
from kdns.metrics import Stats
from kdns.records import RecordStore
from kdns.wire import FORMERR, NOTIMP, REFUSED, SERVFAIL, FormError, Query, Reply

log = logging.getLogger("knet.kdns")
BATCH = 256  # datagrams handled per wake-up before letting other callbacks (TCP, timers) run
REFRESH_BATCH = 64  # answers recomputed per loop callback after an invalidation (~2-3 ms of the lock)
REFRESH_MAX = 10_000  # queued recomputations at most; beyond that, misses rebuild them
perf = time.perf_counter


class Server:
    def __init__(self, store: RecordStore, forwarder: Forwarder | None = None, stats: Stats | None = None, *,
                 cache_size: int = 100_000, max_pending: int = 1000, tcp_idle: float = 10.0,
                 max_tcp: int = 256, udp_mode: str = "thread") -> None:
        if udp_mode not in ("loop", "thread"):
            raise ValueError(f"udp mode {udp_mode!r}: loop or thread")
        self.udp_mode = udp_mode
        # Guards the store, the answer cache and the stats between the loop thread and the UDP
        # threads (thread mode): whoever updates the store invalidates under the same lock, so
        # an answer built from the old records can never be cached after its invalidation.
        self.lock = threading.Lock()
        self.closing = False
        self.store = store
        self.forwarder = forwarder if forwarder is not None and forwarder.upstreams else None
        self.stats = stats or Stats()
        self.cache = AnswerCache(cache_size)
        self.max_pending = max_pending
        self.tcp_idle = tcp_idle
        self.max_tcp = max_tcp
        self.pending: set[asyncio.Task] = set()
        self.refresh_keys: set[bytes] = set()  # answers to recompute after an invalidation
        self.refresh_scheduled = False
        self.refreshed = 0
        self.tcp_open = 0
        self.udp_socks: list[socket.socket] = []
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stats.source = self._snapshot
        self.stats.lock = self.lock

    # --- lifecycle -----------------------------------------------------------------------------

    async def listen(self, addresses: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Bind UDP and TCP on each (host, port); port 0 picks one (the same for TCP). Returns the
        bound addresses."""
        self.loop = loop = asyncio.get_running_loop()
        self.stats.loop = loop
        bound = []
        for host, want in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for attempt in range(20):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with contextlib.suppress(OSError):  # a deep queue absorbs bursts
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((host, want))
                port = sock.getsockname()[1]
                try:
                    srv = await asyncio.start_server(self._tcp_client, host, port, family=family,
                                                     reuse_address=True)
                    break
                except OSError:
                    sock.close()
                    if want or attempt == 19:  # a fixed port is taken; a random one: try another
                        raise
            self.udp_socks.append(sock)
            if self.udp_mode == "thread":
                threading.Thread(target=self._udp_thread, args=(sock,), name=f"udp {host}:{port}",
                                 daemon=True).start()
            else:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._reader(sock))
            self.tcp_servers.append(srv)
            bound.append((host, port))
            log.info("listening on %s port %d (udp, tcp)", host, port)
        return bound

    def close(self) -> None:
        self.closing = True
        for sock in self.udp_socks:
            if self.udp_mode == "thread":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvfrom
            elif self.loop is not None:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.udp_socks.clear()
        for srv in self.tcp_servers:
            srv.close()
        for task in list(self.pending):
            task.cancel()
        if self.forwarder is not None:
            self.forwarder.close()

    def invalidate(self, names: set[str]) -> None:
        """The store changed these names: drop every cached answer computed from them. Call with
        `lock` held, together with the store update.

        Dropped answers that clients were using are recomputed soon after, on the loop, in small
        batches (`refresh`): the next query for a popular name after a cluster change is then a
        cache hit again instead of a slow-path miss. Dropping first keeps correctness simple: no
        stale answer survives the invalidation, whatever the refresh manages to do."""
        if not names:
            return
        popular = self.cache.invalidate(names)
        if popular and len(self.refresh_keys) < REFRESH_MAX:
            self.refresh_keys.update(popular[:REFRESH_MAX - len(self.refresh_keys)])
            if not self.refresh_scheduled and self.loop is not None and not self.closing:
                self.refresh_scheduled = True
                with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                    self.loop.call_soon_threadsafe(self._refresh_batch)

    def _refresh_batch(self) -> None:
        with self.lock:
            self.refresh_scheduled = False
            left = self.refresh(REFRESH_BATCH)
            if left and not self.closing and self.loop is not None:
                self.refresh_scheduled = True
                self.loop.call_soon(self._refresh_batch)  # yield to queries and events in between

    def refresh(self, limit: int | None = None) -> int:
        """Recompute up to `limit` queued answers (with `lock` held); returns how many are left.
        A key answered meanwhile by a client query is skipped (already fresh)."""
        keys = self.refresh_keys
        done = 0
        while keys and (limit is None or done < limit):
            key = keys.pop()
            done += 1
            if key in self.cache.entries:
                continue
            data = b"\0\0" + key
            try:
                q = wire.parse_query(data)
            except FormError:
                continue
            res = resolve(self.store, q.qname, q.qtype, q.qclass)
            if res.forward or res.chase:
                continue
            self._local_answer(q, res, q.udp_limit, key)
            self.refreshed += 1
        return len(keys)

    # --- UDP -----------------------------------------------------------------------------------

    def _reader(self, sock: socket.socket) -> Callable[[], None]:
        # A closure: everything the hot loop touches is a local (no attribute lookups per packet).
        recvfrom, sendto = sock.recvfrom, sock.sendto
        get = self.cache.entries.get
        miss = self._udp_miss
        observe = self.stats.latency.observe

        def on_readable() -> None:
            t0 = perf()
            hits = 0
            for _ in range(BATCH):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. an ICMP error queued on the socket: not fatal
                    continue
                entry = get(data[2:])
                if entry is not None:
                    entry[1] += 1
                    hits += 1
                    # A plain try (zero cost in 3.11), not contextlib.suppress: this runs per packet.
                    try:  # noqa: SIM105
                        sendto(data[:2] + entry[0], addr)
                    except OSError:
                        pass
                else:
                    t1 = perf()
                    miss(sock, data, addr)
                    t0 += perf() - t1  # the batch average below is for cache hits only
            if hits:
                observe("cache", (perf() - t0) / hits, hits)

        return on_readable

    def _udp_miss(self, sock: socket.socket, data: bytes, addr: tuple) -> None:
        t0 = perf()
        response, pending = self._prepare_safely(data, udp=True)
        if pending is not None:
            if self.udp_mode == "thread":
                with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
                    self.loop.call_soon_threadsafe(self._spawn, pending, sock, addr, t0)  # type: ignore[union-attr]
            else:
                self._spawn(pending, sock, addr, t0)
            return
        if response is not None:
            with contextlib.suppress(OSError):
                sock.sendto(response, addr)
            with self.lock:
                self.stats.latency.observe("local", perf() - t0)

    def _udp_thread(self, sock: socket.socket) -> None:
        """Thread mode: a blocking socket, one recvfrom per datagram and no event loop between
        them. Cache-hit latency is sampled (1 in 64, counted 64 times) to keep the clock off the
        per-packet path."""
        recvfrom, sendto = sock.recvfrom, sock.sendto
        get = self.cache.entries.get
        miss = self._udp_miss
        n = 0
        while True:
            try:
                data, addr = recvfrom(65535)
            except OSError:
                if self.closing:
                    return
                continue
            if not data and self.closing:
                return
            n += 1
            if n & 63:
                entry = get(data[2:])
                if entry is not None:
                    entry[1] += 1
                    try:  # noqa: SIM105 (per packet: a plain try costs nothing)
                        sendto(data[:2] + entry[0], addr)
                    except OSError:
                        pass
                    continue
            t0 = perf()
            entry = get(data[2:])
            if entry is None:
                miss(sock, data, addr)
                continue
            entry[1] += 1
            with contextlib.suppress(OSError):
                sendto(data[:2] + entry[0], addr)
            with self.lock:
                self.stats.latency.observe("cache", perf() - t0, 64)

    def _spawn(self, pending: tuple[Query, Resolution], sock: socket.socket, addr: tuple, t0: float) -> None:
        if len(self.pending) >= self.max_pending:
            with self.lock:
                self.stats.drop("overload")
            return

        async def run() -> None:
            q, res = pending
            response = await self._complete(q, res, q.udp_limit)
            with contextlib.suppress(OSError):
                sock.sendto(response, addr)
            with self.lock:
                self.stats.latency.observe("forward", perf() - t0)

        task = asyncio.get_running_loop().create_task(run())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    # --- answering -----------------------------------------------------------------------------

    def _prepare_safely(self, data: bytes, udp: bool) -> tuple[bytes | None, tuple[Query, Resolution] | None]:
        try:
            with self.lock:
                return self._prepare(data, udp)
        except Exception:  # a bug must cost one answer, never the listener
            log.exception("answering %r failed", data[:64])
            return wire.error_response(data, SERVFAIL), None

    def _prepare(self, data: bytes, udp: bool) -> tuple[bytes | None, tuple[Query, Resolution] | None]:
        """A response now, or the parsed query and its resolution to complete upstream."""
        stats = self.stats
        try:
            q = wire.parse_query(data)
        except FormError:
            response = wire.error_response(data, FORMERR)
            if response is None:
                stats.drop("malformed")
            else:
                stats.count(0, FORMERR)
            return response, None
        if q.opcode != 0:
            stats.count(q.qtype, NOTIMP)
            return wire.error_response(data, NOTIMP), None
        limit = q.udp_limit if udp else None
        if q.edns and q.edns_version > 0:
            stats.count(q.qtype, wire.BADVERS)
            return wire.build(q, Reply(wire.BADVERS), limit)[0], None
        res = resolve(self.store, q.qname, q.qtype, q.qclass)
        if res.forward or res.chase:
            if self.forwarder is None:
                if res.forward:  # not ours and no upstream to ask (a chase keeps its bare CNAME)
                    res.reply.rcode = REFUSED
            else:
                name_wire = q.qname_wire if res.forward else wire.name_to_wire(res.chase or "")
                cached = self.forwarder.lookup(name_wire, q.qtype, q.do)
                if cached is None:
                    return None, (q, res)
                return self._finish(q, res, cached, limit), None
        response, truncated = self._local_answer(q, res, limit, data[2:] if udp else None)
        stats.count(q.qtype, res.reply.rcode)
        stats.truncated += truncated
        return response, None

    def _local_answer(self, q: Query, res: Resolution, limit: int | None,
                      cache_key: bytes | None) -> tuple[bytes, bool]:
        """The wire answer from the store's records, cached under `cache_key` (UDP queries)."""
        res.reply.ra = self.forwarder is not None
        response, truncated = wire.build(q, res.reply, limit)
        if cache_key is not None:
            self.cache.put(cache_key, response[2:], res.deps, q.qtype, res.reply.rcode)
        return response, truncated

    async def _complete(self, q: Query, res: Resolution, limit: int | None) -> bytes:
        assert self.forwarder is not None
        name_wire = q.qname_wire if res.forward else wire.name_to_wire(res.chase or "")
        try:
            result = await self.forwarder.resolve(name_wire, q.qtype, q.do)
        except Exception:
            log.exception("forwarding %s failed", q.qname)
            result = None
        with self.lock:
            return self._finish(q, res, result, limit)

    def _finish(self, q: Query, res: Resolution, result: Result | None, limit: int | None) -> bytes:
        reply = res.reply
        reply.ra = True
        if result is None:
            reply.rcode, reply.answer, reply.authority = SERVFAIL, [], []
        elif res.forward:
            reply.rcode, reply.aa = result.rcode, False
            reply.answer, reply.authority, reply.additional = result.answer, result.authority, result.additional
        else:  # an ExternalName chased upstream: our CNAME, then the target's records (RFC 6604 rcode)
            reply.rcode = result.rcode
            reply.answer = reply.answer + result.answer
            reply.authority = result.authority if not result.answer else []
        response, truncated = wire.build(q, reply, limit)
        self.stats.count(q.qtype, reply.rcode)
        if limit is not None:
            self.stats.truncated += truncated
        return response

    # --- TCP -----------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            if self.tcp_open >= self.max_tcp:
                self.stats.drop("tcp_limit")
                writer.close()
                return
            self.tcp_open += 1
            self.stats.tcp_connections += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), self.tcp_idle)
                t0 = perf()
                response, pending = self._prepare_safely(data, udp=False)
                if pending is not None:
                    response = await self._complete(pending[0], pending[1], None)
                if response is None:  # not even a header: the stream is garbage, hang up
                    break
                writer.write(len(response).to_bytes(2, "big") + response)
                await writer.drain()
                with self.lock:
                    self.stats.latency.observe("tcp", perf() - t0)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.tcp_open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- metrics -------------------------------------------------------------------------------

    def _snapshot(self) -> dict:  # called by Stats.snapshot with the lock held
        fwd = self.forwarder
        hits = self.cache.hits_by_type()
        return {
            "cache_hits_by_type": hits,
            "answer_hits": sum(hits.values()),
            "answer_misses": sum(self.stats.queries.values()),
            "answer_entries": len(self.cache),
            "invalidations": self.cache.invalidations,
            "refreshed": self.refreshed,
            "forward_hits": fwd.hits if fwd else 0,
            "forward_misses": fwd.misses if fwd else 0,
            "forward_entries": len(fwd.cache) if fwd else 0,
            "forward": dict(fwd.requests) if fwd else {},
            "names": len(self.store.names),
        }
