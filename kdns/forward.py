"""Forwarding to upstream resolvers as CoreDNS's `forward` plugin does, on the engine thread.

A `Group` is one `forward FROM TO... {...}` directive: its upstreams, the order it tries them in
(`policy random|round_robin|sequential`), `max_concurrent` (beyond it: SERVFAIL at once and
`coredns_forward_max_concurrent_rejects_total`, not a queue that grows without bound), health
checks, `failover` rcodes, `force_tcp`, `except`.

The `Relay` moves the bytes. A flight is one upstream question: the first client's query starts
it, identical questions arriving meanwhile wait on it (one upstream query for a burst). It goes
out on one of a small pool of connected UDP sockets per upstream (the kernel drops datagrams from
anyone else; a random 16-bit ID from the kernel's CSPRNG and the question checked byte for byte
on the way back; sockets retired after `expire` seconds or SOCKET_QUERIES queries, so the source
port keeps changing as CoreDNS's connection expiry makes it). Replies are read in batches when the
socket is readable, scanned once (message.scan) and copied out to every waiting client. A reply
with TC set is asked again over TCP (on the event loop). No reply within `timeout`, or an ICMP
error: the next upstream in the group's order, and the failed upstream is health checked.

Health checks are CoreDNS's: after an error, `. IN NS` every `health_check` interval (0.5 s) until
the upstream answers (any rcode counts); more than `max_fails` (2) failed checks in a row and it is
down: skipped by the order until a check succeeds. When every upstream is down, a random one is
asked anyway (`coredns_forward_healthcheck_broken_total`): health checks can be wrong, a query
might still get through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kdns import message
from kdns.engine import Engine
from kdns.fcache import ForwardCache
from kdns.message import Answer, IdSource
from kdns.wire import FormError

log = logging.getLogger("knet.kdns")
SOCKETS = 4  # connected UDP sockets per upstream: replies spread over several random ports
SOCKET_QUERIES = 2000  # queries per socket before a fresh one (and a fresh random port)
BATCH = 256  # datagrams read per wake-up before other sockets get their turn
HEALTH_QUESTION = b"\0" + struct.pack("!HH", 2, 1)  # . IN NS (CoreDNS's default health check)
DURATION_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
                    2.048, 4.096, 8.192)  # CoreDNS's plugin.TimeBuckets
POLICIES = ("random", "round_robin", "sequential")

Waiter = tuple[Callable[[object, Answer | None], None], object]


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """`IP`, `IP:PORT`, `[IPv6]:PORT`, with an optional `dns://` scheme (as CoreDNS writes TO)."""
        text = text.strip().removeprefix("dns://")
        if text.startswith("["):  # [v6]:port
            host, _, port = text[1:].partition("]")
            return cls(host, int(port.lstrip(":")) if port.lstrip(":") else 53)
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host, int(port))
        return cls(text)


@dataclass(slots=True)
class UpstreamStats:
    """CoreDNS's per-upstream numbers: requests, responses by rcode with their durations,
    failed health checks."""

    requests: int = 0
    responses: dict[int, list] = field(default_factory=dict)  # rcode -> [bucket counts, sum, count]
    healthcheck_failures: int = 0

    def observe(self, rcode: int, seconds: float) -> None:
        s = self.responses.get(rcode)
        if s is None:
            s = self.responses[rcode] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0, 0]
        s[0][bisect_left(DURATION_BUCKETS, seconds)] += 1
        s[1] += seconds
        s[2] += 1


class UpSocket:
    __slots__ = ("born", "fd", "retired", "sock", "used", "waiting")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.waiting: dict[int, Flight] = {}
        self.used = 0
        self.born = now
        self.retired = False


class Target:
    """An upstream as the relay uses it: sockets, health, numbers."""

    def __init__(self, upstream: Upstream, stats: UpstreamStats) -> None:
        self.upstream = upstream
        self.label = upstream.label
        self.addr = (upstream.host, upstream.port)
        self.family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
        self.stats = stats
        self.sockets: list[UpSocket] = []
        self.next = 0
        self.fails = 0  # failed health checks in a row
        self.checking = False

    def down(self, max_fails: int) -> bool:
        return max_fails > 0 and self.fails > max_fails


@dataclass(eq=False)
class Group:
    """One `forward` directive."""

    zone: str  # FROM, normalised ("" for the root)
    upstreams: list[Upstream]
    policy: str = "random"
    max_concurrent: int = 0  # 0: no limit
    max_fails: int = 2
    health_check: float = 0.5
    health_question: bytes = HEALTH_QUESTION  # `health_check ... domain FQDN`: FQDN IN NS
    health_rd: bool = True  # `health_check ... no_rec`: without RD
    timeout: float = 2.0  # per upstream attempt (CoreDNS's read timeout)
    expire: float = 10.0
    force_tcp: bool = False
    failover: frozenset[int] = frozenset()
    excepted: tuple[str, ...] = ()
    targets: list[Target] = field(default_factory=list)
    concurrent: int = 0
    rotation: int = 0

    def order(self) -> list[Target]:
        targets = self.targets
        if len(targets) < 2 or self.policy == "sequential":
            return list(targets)
        if self.policy == "round_robin":
            self.rotation = i = (self.rotation + 1) % len(targets)
            return targets[i:] + targets[:i]
        return random.sample(targets, len(targets))

    def excludes(self, qname: str) -> bool:
        return any(qname == z or qname.endswith("." + z) for z in self.excepted)


class Flight:
    __slots__ = (
        "cache",
        "do",
        "group",
        "health",
        "key",
        "order",
        "qid",
        "question",
        "sent",
        "target",
        "tried",
        "usock",
        "waiters",
    )

    def __init__(self, key: bytes, question: bytes, do: bool, group: Group, cache: ForwardCache | None,
                 health: Target | None = None) -> None:
        self.key = key
        self.question = question
        self.do = do
        self.group = group
        self.order = group.order() if health is None else [health]
        self.tried = 0
        self.target: Target | None = None
        self.usock: UpSocket | None = None
        self.qid = 0
        self.waiters: list[Waiter] = []
        self.sent = 0.0
        self.cache = cache
        self.health = health  # a health check of this target, not a client question


class Relay:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids = IdSource()
        self.inflight: dict[bytes, Flight] = {}
        self.timeline: dict[Flight, float] = {}  # flight -> deadline, in deadline order
        self.stats: dict[str, UpstreamStats] = {}  # by upstream label; kept across reloads
        self.targets: dict[Upstream, Target] = {}
        self.max_concurrent_rejects = 0
        self.healthcheck_broken = 0
        self.socket_errors = 0  # ICMP errors (port unreachable...) that ended an upstream socket
        self.tcp_tasks: set[asyncio.Future | concurrent.futures.Future] = set()
        self.closed = False
        engine.every_tick(self.expire)

    # --- configuration -----------------------------------------------------------------------------

    def attach(self, groups: Sequence[Group]) -> None:
        """Give each group its targets, sharing one per upstream address (sockets and health)."""
        for group in groups:
            group.targets = []
            for up in group.upstreams:
                target = self.targets.get(up)
                if target is None:
                    stats = self.stats.setdefault(up.label, UpstreamStats())
                    target = self.targets[up] = Target(up, stats)
                group.targets.append(target)

    def forget(self, keep: set[Upstream]) -> None:
        """Upstreams no longer configured: their sockets close once their flights are done."""
        for up in [u for u in self.targets if u not in keep]:
            target = self.targets.pop(up)
            for us in target.sockets:
                self._retire(us)

    # --- asking ------------------------------------------------------------------------------------

    def ask(self, group: Group, question: bytes, do: bool, waiter: Waiter | None,
            cache: ForwardCache | None) -> None:
        """Get the answer to `question` (lowercased name wire + type + class) from the group's
        upstreams; `waiter` = (fn, arg) is called fn(arg, answer) on the engine thread, answer None
        when every upstream failed or the group is at max_concurrent. waiter None: only refresh
        the cache (prefetch)."""
        key = question + (b"\1" if do else b"\0")
        flight = self.inflight.get(key)
        if flight is not None:
            if waiter is not None:
                flight.waiters.append(waiter)
            return
        if group.max_concurrent and group.concurrent >= group.max_concurrent:
            self.max_concurrent_rejects += 1
            if waiter is not None:
                waiter[0](waiter[1], None)
            elif cache is not None:
                cache.refreshed(key)  # a prefetch that could not start: the next query may try again
            return
        flight = Flight(key, question, do, group, cache)
        if waiter is not None:
            flight.waiters.append(waiter)
        group.concurrent += 1
        self.inflight[key] = flight
        self._send(flight, time.monotonic())

    def _next_target(self, flight: Flight) -> Target | None:
        group = flight.group
        order = flight.order
        while flight.tried < len(order):
            target = order[flight.tried]
            flight.tried += 1
            if not target.fails or not target.down(group.max_fails):
                return target
        if flight.tried == len(order) and order and all(t.down(group.max_fails) for t in order):
            flight.tried += 1  # once per flight: every upstream is down, try one anyway
            self.healthcheck_broken += 1
            return random.choice(order)
        return None

    def _send(self, flight: Flight, now: float) -> None:
        target = flight.health or self._next_target(flight)
        if target is None:
            self._finish(flight, None)
            return
        flight.target = target
        group = flight.group
        if group.force_tcp and flight.health is None:
            self._tcp(flight, target)
            return
        socks = target.sockets
        usock = None
        if len(socks) == SOCKETS:  # the usual case: the next socket of the pool, still fresh
            target.next = i = (target.next + 1) % SOCKETS
            usock = socks[i]
            if usock.used >= SOCKET_QUERIES or now - usock.born >= group.expire:
                usock = None
        if usock is None:
            usock = self._socket(target, group, now)
            if usock is None:
                self._error(flight, now)
                return
        waiting = usock.waiting
        qid = self.ids.next()
        while qid in waiting:
            qid = self.ids.next()
        flight.qid, flight.usock, flight.sent = qid, usock, now
        waiting[qid] = flight
        usock.used += 1
        target.stats.requests += 1
        self.timeline[flight] = now + group.timeout
        try:
            usock.sock.send(message.upstream_query(qid, flight.question, flight.do,
                                                   flight.health is None or group.health_rd))
        except OSError:  # e.g. ICMP unreachable reported on this socket, or no route
            waiting.pop(qid, None)
            self.timeline.pop(flight, None)
            self._retire(usock)
            self._error(flight, now)

    def _socket(self, target: Target, group: Group, now: float) -> UpSocket | None:
        socks = target.sockets
        for _ in range(2):
            if len(socks) < SOCKETS:
                try:
                    sock = socket.socket(target.family, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    sock.connect(target.addr)
                except OSError as e:
                    log.warning("upstream %s: %s", target.label, e)
                    return None
                us = UpSocket(sock, now)
                socks.append(us)
                self.engine.add_reader(us.fd, lambda us=us, target=target: self._readable(us, target))
                return us
            target.next = (target.next + 1) % len(socks)
            us = socks[target.next]
            if us.used < SOCKET_QUERIES and now - us.born < group.expire:
                return us
            self._retire(us)
        return None

    def _retire(self, us: UpSocket) -> None:
        us.retired = True
        for target in self.targets.values():
            if us in target.sockets:
                target.sockets.remove(us)
        if not us.waiting:
            self._close(us)

    def _close(self, us: UpSocket) -> None:
        self.engine.remove_reader(us.fd)
        us.sock.close()

    # --- replies -----------------------------------------------------------------------------------

    def _readable(self, us: UpSocket, target: Target) -> None:
        recv = us.sock.recv
        waiting = us.waiting
        now = 0.0
        for _ in range(BATCH):
            try:
                data = recv(65535)
            except BlockingIOError:
                break
            except OSError:  # ICMP error (port unreachable...): every query on this socket failed
                self._socket_failed(us, target)
                return
            if len(data) < 12:
                continue
            flight = waiting.get(int.from_bytes(data[:2], "big"))
            if flight is None:
                continue  # late (timed out already) or forged
            try:
                answer = message.scan(data, flight.question)
            except FormError:
                continue  # garbage with a matching ID: the real reply may still come
            del waiting[flight.qid]
            self.timeline.pop(flight, None)
            if not now:
                now = time.monotonic()
            target.stats.observe(answer.rcode, now - flight.sent)
            if target.fails:  # it answers: whatever the health checks said
                target.fails = 0
            if flight.health is not None:
                self._health_done(flight, True)
                continue
            if answer.truncated:
                self._tcp(flight, target)
                continue
            if answer.rcode in flight.group.failover and flight.tried < len(flight.order):
                self._send(flight, now)
                continue
            self._answered(flight, answer, now)
        if us.retired and not us.waiting:
            self._close(us)

    def _socket_failed(self, us: UpSocket, target: Target) -> None:
        self.socket_errors += 1
        self._retire(us)
        now = time.monotonic()
        for flight in list(us.waiting.values()):
            self.timeline.pop(flight, None)
            self._error(flight, now)
        us.waiting.clear()
        self._close(us)

    def _error(self, flight: Flight, now: float) -> None:
        """The attempt on flight.target failed (timeout, ICMP error): health check it, try the next."""
        target = flight.target
        if flight.health is not None:
            self._health_done(flight, False)
            return
        if target is not None:
            self._check(target, flight.group)
        self._send(flight, now)

    def _answered(self, flight: Flight, answer: Answer, now: float) -> None:
        if flight.cache is not None:
            flight.cache.put(flight.key, answer, now)
        self._finish(flight, answer)

    def _finish(self, flight: Flight, answer: Answer | None) -> None:
        if self.inflight.get(flight.key) is flight:
            del self.inflight[flight.key]
        flight.group.concurrent -= 1
        if answer is None and flight.cache is not None and not flight.waiters:
            flight.cache.refreshed(flight.key)  # a failed background fetch: allow another
        for fn, arg in flight.waiters:
            try:
                fn(arg, answer)
            except Exception:
                log.exception("delivering an upstream answer failed")

    def expire(self, now: float) -> None:
        """Flights whose deadline passed (called every tick): the next upstream, or failure."""
        timeline = self.timeline
        if not timeline:
            return
        due = []
        for flight, deadline in timeline.items():
            if deadline > now:
                break
            due.append(flight)
        for flight in due:
            del timeline[flight]
            us = flight.usock
            if us is not None:
                us.waiting.pop(flight.qid, None)
                if us.retired and not us.waiting:
                    self._close(us)
            self._error(flight, now)

    # --- health checks -----------------------------------------------------------------------------

    def _check(self, target: Target, group: Group) -> None:
        if target.checking or group.max_fails == 0 or self.closed:
            return
        target.checking = True
        self._send_check(target, group)

    def _send_check(self, target: Target, group: Group) -> None:
        if self.closed or self.targets.get(target.upstream) is not target:
            target.checking = False
            return
        flight = Flight(b"", group.health_question, False, group, None, health=target)
        self._send(flight, time.monotonic())

    def _health_done(self, flight: Flight, ok: bool) -> None:
        target = flight.health
        assert target is not None
        if ok:
            target.fails = 0
            target.checking = False
            return
        target.fails += 1
        target.stats.healthcheck_failures += 1
        if target.fails == flight.group.max_fails + 1:
            log.warning("upstream %s is down (%d health checks failed)", target.label, target.fails)
        self.engine.call_later(flight.group.health_check, lambda: self._send_check(target, flight.group))

    # --- TCP (truncated replies, force_tcp) --------------------------------------------------------

    def _tcp(self, flight: Flight, target: Target) -> None:
        loop = self.engine.loop
        assert loop is not None
        qid = self.ids.next()
        query = message.upstream_query(qid, flight.question, flight.do)
        coro = _tcp_exchange(target.addr, query, flight.group.timeout)
        target.stats.requests += 1
        sent = time.monotonic()
        fut: asyncio.Future | concurrent.futures.Future
        fut = loop.create_task(coro) if self.engine.mode == "loop" else asyncio.run_coroutine_threadsafe(coro, loop)
        self.tcp_tasks.add(fut)

        def done(f: asyncio.Future | concurrent.futures.Future) -> None:  # hand the result to the engine
            self.tcp_tasks.discard(f)
            data = None if f.cancelled() or f.exception() is not None else f.result()
            self.engine.submit(self._tcp_done, flight, target, qid, data, sent)

        fut.add_done_callback(done)

    def _tcp_done(self, flight: Flight, target: Target, qid: int, data: bytes | None, sent: float) -> None:
        now = time.monotonic()
        answer = None
        if data is not None and int.from_bytes(data[:2], "big") == qid:
            with contextlib.suppress(FormError):
                answer = message.scan(data, flight.question)
        if answer is None:
            self._error(flight, now)
            return
        target.stats.observe(answer.rcode, now - sent)
        self._answered(flight, answer, now)

    def close(self) -> None:
        self.closed = True
        for target in self.targets.values():
            for us in target.sockets:
                self._close(us)
            target.sockets.clear()
        for fut in list(self.tcp_tasks):
            fut.cancel()


async def _tcp_exchange(addr: tuple[str, int], query: bytes, timeout: float) -> bytes:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*addr)
        try:
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            return await reader.readexactly(size)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
