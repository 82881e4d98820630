"""RFC 6455 WebSocket framing and the server side of the opening handshake (pure).

`Parser` turns received bytes into whole messages (fragments joined, control frames passed on
at once, as they may arrive between fragments); `frame()` encodes one (masked when a client
sends it). No extensions are offered, so no frame may carry RSV bits.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CONTROL = frozenset({CLOSE, PING, PONG})
NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, TOO_BIG, INTERNAL_ERROR = 1000, 1001, 1002, 1009, 1011
DEFAULT_MAX_MESSAGE = 32 * 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the framing rules; `code` is the close code to answer with."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class HandshakeError(Exception):
    """Not a valid WebSocket upgrade request (answered with 400)."""


@dataclass(frozen=True)
class Message:
    opcode: int  # TEXT, BINARY, CLOSE, PING or PONG
    data: bytes


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """A WebSocket upgrade request (`Upgrade: websocket`, `Connection` naming upgrade)."""
    connection = [t.strip().lower() for t in headers.get("connection", "").split(",")]
    return headers.get("upgrade", "").strip().lower() == "websocket" and "upgrade" in connection


def offered_protocols(headers: Mapping[str, str]) -> list[str]:
    """The client's Sec-WebSocket-Protocol list, in its order of preference."""
    return [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def choose_protocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first offered protocol the server supports (the client's preference wins, as in
    wsstream's handshake); "" when none was offered and "" is supported; None: no match."""
    for p in offered or [""]:
        if p in supported:
            return p
    return None


def handshake(headers: Mapping[str, str], protocol: str) -> list[tuple[str, str]]:
    """The 101 response headers for a checked upgrade request (lower-case header names)."""
    if not is_upgrade(headers):
        raise HandshakeError("not a WebSocket upgrade request")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise HandshakeError("unsupported Sec-WebSocket-Version (13 is)")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError("missing or malformed Sec-WebSocket-Key") from None
    out = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
    if protocol:
        out.append(("Sec-WebSocket-Protocol", protocol))
    return out


def _masked(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. `mask`: the 4-byte masking key a client must use (None: unmasked, as a server
    sends); `mask=b""` picks a random one."""
    if mask == b"":
        mask = os.urandom(4)
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if mask is None:
        return bytes(head) + payload
    return bytes(head) + mask + _masked(payload, mask)


def close_payload(code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """(code, reason) of a CLOSE frame's payload (no code: None)."""
    if len(payload) < 2:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode(errors="replace")


class Parser:
    """Incremental frame parser. `expect_masked`: frames from a client must be masked, frames
    from a server must not be (RFC 6455 5.1)."""

    def __init__(self, *, expect_masked: bool = True, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.expect_masked = expect_masked
        self.max_message = max_message
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return out
            if isinstance(parsed, Message):
                out.append(parsed)

    def _one(self) -> Message | object | None:
        """The next whole message, _PARTIAL for a fragment taken in, None: more bytes needed."""
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if b0 & 0x70:
            raise ProtocolError("reserved bits set without a negotiated extension")
        if masked != self.expect_masked:
            raise ProtocolError("client frames must be masked" if self.expect_masked
                                else "server frames must not be masked")
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
        if opcode in CONTROL and (n > 125 or not fin):
            raise ProtocolError("control frames are at most 125 bytes and never fragmented")
        if n > self.max_message:
            raise ProtocolError(f"frame of {n} bytes is too big", TOO_BIG)
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        if masked:
            payload = _masked(payload, key)
        if opcode in CONTROL:
            return Message(opcode, payload)
        if opcode == CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolError("continuation frame without a message to continue")
        elif opcode in (TEXT, BINARY):
            if self._fragment_opcode is not None:
                raise ProtocolError("new message before the previous one was finished")
            self._fragment_opcode = opcode
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        self._fragments.append(payload)
        self._fragment_size += n
        if self._fragment_size > self.max_message:
            raise ProtocolError(f"message of more than {self.max_message} bytes", TOO_BIG)
        if not fin:
            return _PARTIAL
        msg = Message(self._fragment_opcode, b"".join(self._fragments))
        self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
        if msg.opcode == TEXT:
            try:
                msg.data.decode()
            except UnicodeDecodeError:
                raise ProtocolError("text message is not valid UTF-8", 1007) from None
        return msg


_PARTIAL = object()  # a fragment was consumed; no whole message yet
