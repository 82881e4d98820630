"""Byte and datagram relays for the userspace proxy, as asyncio protocols.

Protocols (not streams) because each chunk is handed straight from one transport to the other
with no task switch; back-pressure pauses the reading side when the writing side's buffer fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable

from kproxy.model import Endpoint
from kproxy.userspace.balancer import Balancer

log = logging.getLogger("knet.kproxy.userspace")
CONNECT_TIMEOUT = 2.0
_tasks: set[asyncio.Task] = set()  # strong references: the loop only keeps weak ones


def background(coro) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class _Half(asyncio.Protocol):
    """One side of a spliced TCP connection; forwards everything to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: pass the FIN on and keep the other direction open.
        if self.peer and self.peer.transport and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()


def _reset(transport: asyncio.Transport) -> None:
    """Close with RST (SO_LINGER 0): the client sees "connection refused/reset", not a hang."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpFront(_Half):
    """Accepted client connection: pick a backend (retrying refused ones), then splice."""

    def __init__(self, balancer: Balancer, stats: dict) -> None:
        super().__init__()
        self.balancer = balancer
        self.stats = stats
        self.early: list[bytes] = []
        self.early_eof = False

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.early_eof = True
            return True
        return super().eof_received()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Nothing is read until a backend is connected: the client's first bytes wait in the
        # kernel. (uvloop may deliver data before the pause takes effect: kept in `early`.)
        transport.pause_reading()  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        background(self._connect(peer[0] if peer else ""))

    async def _connect(self, client_ip: str) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        for ep in self.balancer.candidates(client_ip):
            back = _Half()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):  # cheaper than wait_for: no extra task
                    await loop.create_connection(lambda b=back: b, ep.ip, ep.port)
            except (TimeoutError, OSError) as e:
                self.stats["connect_failures"] = self.stats.get("connect_failures", 0) + 1
                log.info("backend %s failed (%s); trying the next one", ep.addr, type(e).__name__)
                continue
            if self.transport.is_closing():  # the client gave up while we connected
                if back.transport is not None:
                    back.transport.close()
                return
            self.balancer.record(client_ip, ep)
            self.peer, back.peer = back, self
            for data in self.early:
                back.transport.write(data)  # type: ignore[union-attr]
            self.early.clear()
            if self.early_eof and back.transport.can_write_eof():  # type: ignore[union-attr]
                back.transport.write_eof()  # type: ignore[union-attr]
            self.stats["connections"] = self.stats.get("connections", 0) + 1
            self.transport.resume_reading()
            return
        _reset(self.transport)


class UdpFlow(asyncio.DatagramProtocol):
    """Backend side of one client's UDP flow: replies go back through the front socket."""

    def __init__(self, front: UdpFront, client: tuple, endpoint: Endpoint) -> None:
        self.front = front
        self.client = client
        self.endpoint = endpoint
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        for data in self.pending:
            transport.sendto(data)  # type: ignore[attr-defined]
        self.pending.clear()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.last = time.monotonic()
        if self.front.transport is not None:
            self.front.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from the backend: drop the flow so the next datagram picks again.
        self.front.drop(self.client)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpFront(asyncio.DatagramProtocol):
    """The service port's UDP socket: one flow (a connected socket to a backend) per client."""

    def __init__(self, balancer: Balancer, idle_timeout: float, stats: dict,
                 spawn: Callable[[UdpFlow, Endpoint], None]) -> None:
        self.balancer = balancer
        self.idle_timeout = idle_timeout
        self.stats = stats
        self.spawn = spawn
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple, UdpFlow] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            choices = self.balancer.candidates(addr[0])
            if not choices:
                return  # no endpoint: drop (the filter REJECT rule answers clients of such services)
            flow = UdpFlow(self, addr, choices[0])
            self.balancer.record(addr[0], choices[0])
            self.flows[addr] = flow
            self.stats["udp_flows"] = self.stats.get("udp_flows", 0) + 1
            self.spawn(flow, choices[0])
        flow.send(data)

    def drop(self, client: tuple) -> None:
        flow = self.flows.pop(client, None)
        if flow:
            flow.close()

    def sweep(self, alive: set[str]) -> None:
        """Close idle flows and flows to endpoints that are gone."""
        now = time.monotonic()
        for client, flow in list(self.flows.items()):
            if now - flow.last > self.idle_timeout or flow.endpoint.addr not in alive:
                self.drop(client)

    def close(self) -> None:
        for client in list(self.flows):
            self.drop(client)
        if self.transport is not None:
            self.transport.close()
