"""The DNS server: UDP listeners with a dict-lookup fast path, the slow path, TCP on asyncio.

Fast path: for a query whose bytes after the ID are in the answer cache, send the client's ID +
the stored response: a dict lookup between a recvfrom and a sendto. That is the whole cost of a
cluster answer once it has been asked once, which is what keeps kdns near a C resolver's rate.

Everything UDP runs on one engine thread (engine.py): listeners are drained in batches when
readable; a miss is parsed and answered from the record store (under `lock`, which store updates
and invalidations take too, so no answer built from old records can be cached after its
invalidation), or handed to the relay (forward.py), whose upstream sockets the same thread reads.
A forwarded query thus costs four datagram syscalls and a few microseconds of Python between
them; no thread hand-off, no asyncio task. TCP clients are served on the event loop, their
questions answered on the engine thread.

What a query meets, in order: the server block of the longest zone containing its name
(blocks.py); autopath for a known pod's search-path expansion (autopath.py); the cluster records
(kubernetes zones, with fallthrough); the forward cache (`cache`); the upstreams (`forward`).
Garbage gets FORMERR, or nothing when even the header is unusable or the packet is a response
(answering responses can loop two servers). Forwarding (relaying.py) and autopath's walk
(walking.py) are the server's too, kept in modules of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kdns import autopath, wire
from kdns.answer import Resolution, resolve, round_robin
from kdns.blocks import Block, Routes
from kdns.cache import AnswerCache
from kdns.config import BlockConfig
from kdns.engine import Engine
from kdns.fcache import ForwardCache
from kdns.forward import Group, Relay
from kdns.metrics import Stats, qtype_label, rcode_label
from kdns.records import RecordStore
from kdns.relaying import Lean, Relaying
from kdns.request import Listener, Request
from kdns.walking import Walking
from kdns.wire import FORMERR, NOTIMP, NXDOMAIN, RD, REFUSED, SERVFAIL, FormError, Query, Reply

log = logging.getLogger("knet.kdns")
qlog = logging.getLogger("knet.kdns.query")
BATCH = 256  # datagrams handled per wake-up before other sockets get their turn
REFRESH_BATCH = 64  # answers recomputed per loop callback after an invalidation (~2-3 ms of the lock)
REFRESH_MAX = 10_000  # queued recomputations at most; beyond that, misses rebuild them
perf = time.perf_counter
_Q = struct.Struct("!HH")


class Server(Relaying, Walking):
    def __init__(self, store: RecordStore, blocks: Iterable[BlockConfig] = (), stats: Stats | None = None, *,
                 cache_size: int = 100_000, max_tcp: int = 256, tcp_idle: float = 10.0, udp_mode: str = "thread",
                 host_search: Iterable[str] = ()) -> None:
        self.lock = threading.Lock()
        self._shuffle = random.Random().shuffle  # loadbalance: no need for a cryptographic source
        self.closing = False
        self.store = store
        self.stats = stats or Stats()
        self.engine = Engine(udp_mode)
        self.relay = Relay(self.engine)
        self.cache = AnswerCache(cache_size)
        self.pods = autopath.PodAddresses()
        self.host_search = list(host_search)
        self.routes = Routes([])
        self.lean: Lean | None = None
        self.loop_probe_wire = b""
        self.configure(blocks)
        self.max_tcp = max_tcp
        self.tcp_idle = tcp_idle
        self.tcp_open = 0
        self.listeners: list[Listener | None] = []  # by index; a closed one leaves its slot (metrics)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.refresh_keys: set[bytes] = set()
        self.refresh_scheduled = False
        self.refreshed = 0
        self.loop_probe: str | None = None  # `loop`: the name of our probe query, and its sightings
        self.loop_seen = 0
        self.on_loop_detected: Callable[[], None] | None = None

    # --- configuration ---------------------------------------------------------------------------

    def configure(self, blocks: Iterable[BlockConfig]) -> None:
        """Serve these server blocks from now on. On the engine thread (or before it starts):
        queries see either the old blocks or the new ones, never a mix."""
        built = [Block(b) for b in blocks]
        old = self.routes
        for new in built:  # a block whose cache settings did not change keeps its cache
            prev = next((b for b in old.blocks if b.cfg.zones == new.cfg.zones and b.cfg.cache == new.cfg.cache), None)
            if prev is not None and prev.cache is not None:
                new.cache = prev.cache
        routes = Routes(built)
        self.relay.attach(routes.groups())
        self.relay.forget({u for g in routes.groups() for u in g.upstreams})
        self.routes = routes
        self.lean = Lean.of(routes)

    @property
    def forwarding(self) -> bool:
        return any(b.groups for b in self.routes.blocks)

    # --- lifecycle -------------------------------------------------------------------------------

    async def listen(self, addresses: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Bind UDP and TCP on each (host, port); port 0 picks one (the same for TCP). Starts the
        engine on first use. Returns the bound addresses."""
        self.loop = loop = asyncio.get_running_loop()
        bound = []
        new: list[Listener] = []
        for host, want in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            for attempt in range(20):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with contextlib.suppress(OSError):  # a deep queue absorbs bursts
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((host, want))
                sock.setblocking(False)
                port = sock.getsockname()[1]
                lst = Listener(len(self.listeners) + len(new), host, port, sock)
                try:
                    lst.tcp = await asyncio.start_server(lambda r, w, lst=lst: self._tcp_client(r, w, lst), host, port,
                                                         family=family, reuse_address=True)
                    break
                except OSError:
                    sock.close()
                    if want or attempt == 19:  # a fixed port is taken; a random one: try another
                        raise
            new.append(lst)
            bound.append((host, port))
            log.info("listening on %s port %d (udp, tcp)", host, port)
        started = self.engine.loop is not None
        if started:
            await self.on_engine(self._add_listeners, new)
        else:
            self._add_listeners(new)
            self.engine.start(loop)
        return bound

    def _add_listeners(self, new: list[Listener]) -> None:
        self.listeners.extend(new)
        with self.lock:
            self.cache.resize(len(self.listeners))
        for lst in new:
            self.engine.add_reader(lst.sock.fileno(), self._udp_handler(lst))

    async def unlisten(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Stop serving on these addresses (a reload that moved kdns): after the new ones are open."""
        gone = [lst for lst in self.listeners if lst is not None and (lst.host, lst.port) in set(addresses)]
        await self.on_engine(self._remove_listeners, gone)
        for lst in gone:
            if lst.tcp is not None:
                lst.tcp.close()

    def _remove_listeners(self, gone: list[Listener]) -> None:
        for lst in gone:
            self.engine.remove_reader(lst.sock.fileno())
            lst.sock.close()
            self.listeners[lst.index] = None

    def addresses(self) -> list[tuple[str, int]]:
        return [(lst.host, lst.port) for lst in self.listeners if lst is not None]

    async def on_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the engine thread and wait for its result."""
        if self.engine.loop is None or self.engine.mode == "loop":
            return fn(*args)
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)

        self.engine.submit(run)
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        self.closing = True
        self.engine.stop()
        self.relay.close()
        for lst in self.listeners:
            if lst is None:
                continue
            lst.sock.close()
            if lst.tcp is not None:
                lst.tcp.close()

    # --- cluster changes -------------------------------------------------------------------------

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
            try:
                q = wire.parse_query(b"\0\0" + key)
            except FormError:
                continue
            block = self.routes.route(q.qname)
            if block is None or block.scope is None:
                continue
            res = resolve(self.store, q.qname, q.qtype, q.qclass, block.scope)
            if res.forward or res.chase:
                continue
            self._local_answer(q, res, q.udp_limit, key, block)
            self.refreshed += 1
        return len(keys)

    # --- UDP ---------------------------------------------------------------------------------------

    def _udp_handler(self, lst: Listener) -> Callable[[], None]:
        # A closure: everything the hot loop touches is a local (no attribute lookups per packet).
        recvfrom, sendto = lst.sock.recvfrom, lst.sock.sendto
        get = self.cache.entries.get
        miss = self._udp_miss
        observe = self.stats.observe
        index = lst.index

        def on_readable() -> None:
            t0 = perf()
            hits = 0
            entry = None
            for _ in range(BATCH):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. the socket was closed by a reload
                    break
                hit = get(data[2:])
                if hit is not None:
                    entry = hit
                    hit[1][index] += 1
                    hits += 1
                    # A plain try (zero cost in 3.11), not contextlib.suppress: this runs per packet.
                    try:  # noqa: SIM105
                        sendto(data[:2] + hit[0], addr)
                    except OSError:
                        pass
                else:
                    t1 = perf()
                    miss(lst, data, addr, t1)
                    t0 += perf() - t1  # the batch average below is for cache hits only
            if hits:
                observe(index, entry[5], (perf() - t0) / hits, hits)  # type: ignore[index]

        return on_readable

    def _udp_miss(self, lst: Listener, data: bytes, addr: Any, t0: float) -> None:
        if not self._lean(lst, data, addr, t0):
            self._query(lst, data, addr, t0, None)

    def _query(self, lst: Listener, data: bytes, addr: Any, t0: float,
               reply: Callable[[bytes | None], None] | None) -> None:
        """A message the fast path could not answer (reply None: UDP, else TCP's)."""
        proto = "udp" if reply is None else "tcp"
        try:
            q = wire.parse_query(data)
        except FormError:
            response = wire.error_response(data, FORMERR)
            if response is None:
                self.stats.dropped += 1
            else:
                self.stats.answer(lst.index, ".", proto, 0, FORMERR, "")
            if reply is not None:
                reply(response)
            elif response is not None:
                with contextlib.suppress(OSError):
                    lst.sock.sendto(response, addr)
            return
        try:
            self._handle(Request(q, data, lst, addr, t0, reply))
        except Exception:  # a bug must cost one answer, never the listener
            log.exception("answering %r failed", data[:64])
            self.stats.panics += 1
            response = wire.error_response(data, SERVFAIL)
            if reply is not None:
                reply(response)
            elif response is not None:
                with contextlib.suppress(OSError):
                    lst.sock.sendto(response, addr)

    # --- answering -------------------------------------------------------------------------------

    def _handle(self, req: Request) -> None:
        q = req.q
        if q.opcode != 0:
            self._respond(req, wire.error_response(req.data, NOTIMP) or b"", NOTIMP, "")
            return
        if q.edns and q.edns_version > 0:
            self._respond(req, wire.build(q, Reply(wire.BADVERS), req.limit)[0], wire.BADVERS, "")
            return
        block = self.routes.route(q.qname)
        if block is None:
            self._respond(req, wire.build(q, Reply(REFUSED), req.limit)[0], REFUSED, "")
            return
        req.block = block
        if q.do:
            k = (req.listener.index, block.label)
            self.stats.do_requests[k] = self.stats.do_requests.get(k, 0) + 1
        if self.loop_probe is not None and q.qname == self.loop_probe:
            self._loop_probe_seen()
        if block.autopath and self._autopath(req, block):
            return
        if block.scope is not None and block.is_local(q.qname):
            with self.lock:
                res = resolve(self.store, q.qname, q.qtype, q.qclass, block.scope)
                if not (res.forward or res.chase):
                    cache_key = req.data[2:] if req.reply is None and self._cacheable(q.qname, res, block) else None
                    if block.loadbalance and (order := round_robin(res.reply.answer, self._shuffle)) is not None:
                        # A new order per query: such answers never go to the fast path's cache.
                        res.reply.answer, cache_key = order, None
                    response, truncated = self._local_answer(q, res, req.limit, cache_key, block)
            if not (res.forward or res.chase):
                self._respond(req, response, res.reply.rcode, "kubernetes", truncated)
                return
            if res.chase:
                self._chase(req, res)
                return
        if not self._forward(req, block, q.qname, q.qname_wire.lower(), self._deliver_forwarded, req):
            self._respond(req, wire.build(q, Reply(REFUSED), req.limit)[0], REFUSED, "")

    def _cacheable(self, qname: str, res: Resolution, block: Block) -> bool:
        """Whether a local answer may go to the fast path. With autopath on, not the NXDOMAINs of
        search-path expansions (`x.<ns>.svc.<zone>`): a pod's copy of that question must reach
        autopath, not a cached NXDOMAIN."""
        if not block.autopath or res.reply.rcode != NXDOMAIN or block.cluster_zone is None:
            return True
        zone = block.cluster_zone
        return not (qname.endswith(".svc." + zone) and qname.count(".") >= zone.count(".") + 3)

    def _local_answer(self, q: Query, res: Resolution, limit: int | None, cache_key: bytes | None,
                      block: Block) -> tuple[bytes, bool]:
        """The wire answer from the store's records, cached under `cache_key` (UDP queries)."""
        res.reply.ra = bool(block.groups)
        response, truncated = wire.build(q, res.reply, limit)
        if cache_key is not None:
            self.cache.put(cache_key, response[2:], res.deps, q.qtype, res.reply.rcode, block.label)
        return response, truncated

    def _respond(self, req: Request, response: bytes, rcode: int, plugin: str, truncated: bool = False) -> None:
        lst = req.listener
        if req.reply is None:
            with contextlib.suppress(OSError):
                lst.sock.sendto(response, req.addr)
        else:
            req.reply(response)
        block = req.block
        zone = block.label if block is not None else "."
        stats = self.stats
        stats.answer(lst.index, zone, req.proto, req.q.qtype, rcode, plugin)
        took = perf() - req.t0
        stats.observe(lst.index, zone, took)
        if truncated:
            stats.truncated += 1
        if block is not None and block.log:
            self._log(req, rcode, len(response), took, truncated)
        if rcode == SERVFAIL and block is not None and block.errors:
            log.error("%s %s: SERVFAIL", req.q.qname or ".", qtype_label(req.q.qtype))

    def _log(self, req: Request, rcode: int, size: int, took: float, truncated: bool) -> None:
        """The `log` plugin: one line per query in CoreDNS's format,
        `REMOTE:PORT - ID "TYPE CLASS NAME PROTO SIZE DO BUFSIZE" RCODE FLAGS RSIZE DURATION`."""
        q = req.q
        remote = f"{req.addr[0]}:{req.addr[1]}" if isinstance(req.addr, tuple) else str(req.addr)
        flags = ",".join(f for f, on in (("qr", True), ("tc", truncated), ("rd", q.flags & RD), ("ra", True)) if on)
        qlog.info('%s - %d "%s IN %s %s %d %s %d" %s %s %d %.6fs', remote, q.id, qtype_label(q.qtype), q.qname + ".",
                  req.proto, len(req.data), str(q.do).lower(), q.udp_size, rcode_label(rcode), flags, size, took)

    # --- loop detection (the `loop` plugin) ------------------------------------------------------

    def _loop_probe_seen(self) -> None:
        self.loop_seen += 1  # sent once by kdns itself: seen again, it came back through the upstreams
        if self.loop_seen >= 2 and self.on_loop_detected is not None:
            callback, self.on_loop_detected = self.on_loop_detected, None
            callback()

    # --- TCP ---------------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lst: Listener) -> None:
        if self.tcp_open >= self.max_tcp:
            writer.close()
            return
        self.tcp_open += 1
        self.stats.tcp_connections += 1
        loop = asyncio.get_running_loop()
        addr = writer.get_extra_info("peername")
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), self.tcp_idle)
                fut: asyncio.Future[bytes | None] = loop.create_future()

                def reply(response: bytes | None, fut: asyncio.Future = fut) -> None:
                    loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(response))

                self.engine.submit(self._tcp_query, lst, data, addr, reply)
                response = await fut
                if response is None:  # not even a header: the stream is garbage, hang up
                    break
                writer.write(len(response).to_bytes(2, "big") + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.tcp_open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _tcp_query(self, lst: Listener, data: bytes, addr: Any, reply: Callable[[bytes | None], None]) -> None:
        self._query(lst, data, addr, perf(), reply)

    # --- metrics -----------------------------------------------------------------------------------

    def snapshot(self, timeout: float = 2.0) -> dict[str, Any]:
        """Every number the metrics collector renders, taken on the engine thread (consistent)."""
        if self.engine.loop is None or self.engine.mode == "loop" or self.closing:
            with self.lock:
                return self._snapshot()
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            try:
                with self.lock:
                    fut.set_result(self._snapshot())
            except BaseException as e:
                fut.set_exception(e)

        self.engine.submit(take)
        return fut.result(timeout)

    def _snapshot(self) -> dict[str, Any]:
        s = self.stats
        answered = dict(s.answered)
        for (li, zone, qtype, rcode), n in self.cache.hits_by_type().items():
            k = (li, zone, "udp", qtype, rcode, "kubernetes")
            answered[k] = answered.get(k, 0) + n
        servers = [lst.server if lst is not None else "dns://" for lst in self.listeners]
        families = [lst.family if lst is not None else "1" for lst in self.listeners]
        caches = []
        plugins = []
        for b in self.routes.blocks:
            server = _block_server(b.cfg)
            for name in b.plugin_names():
                plugins.append((server, b.label, name))
            c = b.cache
            if c is not None:
                caches.append((server, b.label, _cache_numbers(c)))
        return {
            "servers": servers, "families": families, "plugins": plugins, "answered": answered,
            "durations": {k: h for k, h in s.durations.items()}, "do": dict(s.do_requests), "dropped": s.dropped,
            "caches": caches, "upstreams": dict(self.relay.stats),
            "healthcheck_broken": self.relay.healthcheck_broken,
            "max_concurrent_rejects": self.relay.max_concurrent_rejects, "autopath": dict(s.autopath),
            "reload_failed": s.reload_failed, "panics": s.panics, "invalidations": self.cache.invalidations,
            "refreshed": self.refreshed, "answer_entries": len(self.cache), "names": len(self.store.names),
            "store_updates": dict(s.store_updates), "truncated": s.truncated, "tcp_connections": s.tcp_connections,
        }

    def groups(self) -> list[Group]:
        return self.routes.groups()


def _block_server(cfg: BlockConfig) -> str:
    host = cfg.bind[0] if cfg.bind and cfg.bind[0] not in ("0.0.0.0", "::") else ""
    return f"dns://{host}:{cfg.port}"


def _cache_numbers(c: ForwardCache) -> dict[str, Any]:
    return {"entries": {"success": len(c.success), "denial": len(c.denial)}, "hits": dict(c.hits),
            "evictions": dict(c.evictions), "misses": c.misses, "requests": c.misses + sum(c.hits.values()),
            "prefetch": c.prefetches, "served_stale": c.served_stale}
