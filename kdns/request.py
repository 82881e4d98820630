"""What the server's parts pass around: the listening sockets and a client's question in flight."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdns.blocks import Block
from kdns.wire import Query

_Q = struct.Struct("!HH")


@dataclass(eq=False)
class Listener:
    index: int
    host: str
    port: int
    sock: socket.socket
    tcp: asyncio.base_events.Server | None = None

    @property
    def server(self) -> str:
        """CoreDNS's `server` label: dns://[address]:port (no address when listening on all)."""
        host = "" if self.host in ("0.0.0.0", "::") else (f"[{self.host}]" if ":" in self.host else self.host)
        return f"dns://{host}:{self.port}"

    @property
    def family(self) -> str:
        return "2" if ":" in self.host else "1"


class Request:
    """One client question on its way through the server (a miss of the fast path)."""

    __slots__ = ("addr", "block", "data", "limit", "listener", "q", "reply", "t0")

    def __init__(self, q: Query, data: bytes, listener: Listener, addr: Any, t0: float,
                 reply: Callable[[bytes | None], None] | None) -> None:
        self.q = q
        self.data = data
        self.listener = listener
        self.addr = addr
        self.t0 = t0
        self.reply = reply  # TCP: hands the response to the connection; None: UDP
        self.block: Block | None = None
        self.limit = q.udp_limit if reply is None else None

    @property
    def proto(self) -> str:
        return "udp" if self.reply is None else "tcp"

    def question(self) -> bytes:
        return self.q.qname_wire + _Q.pack(self.q.qtype, self.q.qclass)
