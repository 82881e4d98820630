"""SPDY/3.1 framing as Kubernetes' SPDY streams use it (pure): client-go's SPDY round tripper
upgrades an HTTP/1.1 request (`Upgrade: SPDY/3.1`, one `X-Stream-Protocol-Version` header per
protocol it speaks) and then opens one SPDY stream per channel, named by its `streamtype` header
(error, stdin, stdout, stderr, resize; port-forward: error and data, with `port` and
`requestid`). Flow control (WINDOW_UPDATE) is parsed and ignored, as moby/spdystream does.

Frame layouts (SPDY/3 draft, section 2.2 and 2.6):
  control: 1 | version(15) = 3 | type(16) ; flags(8) | length(24) ; payload
  data:    0 | stream id(31)               ; flags(8) | length(24) ; payload
Header blocks (SYN_STREAM, SYN_REPLY, HEADERS): u32 count, then per pair u32-length-prefixed
lower-case name and value (several values joined by NUL), compressed with zlib seeded with the
SPDY/3 dictionary; one compression context per direction for the whole connection, each block
ending on a sync flush.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

VERSION = 3
UPGRADE = "SPDY/3.1"
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02
MAX_DATA = (1 << 24) - 1
# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL, INTERNAL_ERROR = 1, 2, 3, 5, 6
# GOAWAY status codes
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR = 0, 1

# The SPDY/3 header compression dictionary: these names and values, each as a u32 length and the
# bytes, followed by a run of common status lines, dates and content types (1423 bytes in all).
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
    "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
    "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
    "keep-alive", "origin",
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
DICTIONARY = b"".join(struct.pack("!I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode()

Headers = dict[str, list[str]]


class SpdyError(Exception):
    """A framing or compression error: the connection cannot go on."""


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    flags: int = 0
    associated_id: int = 0
    priority: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data


def header(headers: Mapping[str, str | Sequence[str]], name: str) -> str:
    """The first value of a header (names compare case-insensitively); "" if absent."""
    values = headers.get(name.lower())
    if values is None:
        return ""
    return values if isinstance(values, str) else (values[0] if values else "")


def encode_header_block(headers: Mapping[str, str | Iterable[str]]) -> bytes:
    out = [struct.pack("!I", len(headers))]
    for name, values in headers.items():
        value = values if isinstance(values, str) else "\x00".join(values)
        n, v = name.lower().encode(), value.encode()
        out += [struct.pack("!I", len(n)), n, struct.pack("!I", len(v)), v]
    return b"".join(out)


def decode_header_block(block: bytes) -> Headers:
    try:
        (count,), pos = struct.unpack_from("!I", block), 4
        out: Headers = {}
        for _ in range(count):
            (n,) = struct.unpack_from("!I", block, pos)
            name = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from("!I", block, pos)
            value = block[pos + 4:pos + 4 + n].decode()
            pos += 4 + n
            if pos > len(block):
                raise SpdyError("truncated header block")
            if not name or name != name.lower():
                raise SpdyError(f"header name {name!r} is empty or not lower-case")
            if name in out:
                raise SpdyError(f"duplicate header {name!r}")
            out[name] = value.split("\x00")
    except (struct.error, UnicodeDecodeError) as e:
        raise SpdyError(f"malformed header block: {e}") from None
    if pos != len(block):
        raise SpdyError("trailing bytes after the header block")
    return out


class Codec:
    """One side of a SPDY connection: `feed()` parses what the peer sent, `encode()` makes what
    we send. Each direction has its own zlib context, kept for the connection's lifetime."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._compress = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._decompress = zlib.decompressobj(15, DICTIONARY)

    # --- reading ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            first, flags_len = struct.unpack_from("!II", self._buf)
            flags, length = flags_len >> 24, flags_len & 0xFFFFFF
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            if first & 0x80000000:
                version, ftype = (first >> 16) & 0x7FFF, first & 0xFFFF
                if version != VERSION:
                    raise SpdyError(f"unsupported SPDY version {version}")
                parsed = self._control(ftype, flags, payload)
                if parsed is not None:
                    frames.append(parsed)
            else:
                frames.append(Data(first & 0x7FFFFFFF, payload, flags))
        return frames

    def _headers(self, compressed: bytes) -> Headers:
        try:
            block = self._decompress.decompress(compressed)
        except zlib.error as e:
            raise SpdyError(f"header decompression failed: {e}") from None
        return decode_header_block(block)

    def _control(self, ftype: int, flags: int, p: bytes) -> Frame | None:
        try:
            if ftype == SYN_STREAM:
                sid, assoc, prio = struct.unpack_from("!IIB", p)
                return SynStream(sid & 0x7FFFFFFF, self._headers(p[10:]), flags, assoc & 0x7FFFFFFF, prio >> 5)
            if ftype == SYN_REPLY:
                return SynReply(struct.unpack_from("!I", p)[0] & 0x7FFFFFFF, self._headers(p[4:]), flags)
            if ftype == HEADERS:
                return HeadersFrame(struct.unpack_from("!I", p)[0] & 0x7FFFFFFF, self._headers(p[4:]), flags)
            if ftype == RST_STREAM:
                sid, status = struct.unpack_from("!II", p)
                return RstStream(sid & 0x7FFFFFFF, status)
            if ftype == SETTINGS:
                (n,) = struct.unpack_from("!I", p)
                entries = []
                for i in range(n):
                    flag_id, value = struct.unpack_from("!II", p, 4 + 8 * i)
                    entries.append((flag_id >> 24, flag_id & 0xFFFFFF, value))
                return Settings(tuple(entries), flags)
            if ftype == PING:
                return Ping(struct.unpack_from("!I", p)[0])
            if ftype == GOAWAY:
                sid, status = struct.unpack_from("!II", p)
                return GoAway(sid & 0x7FFFFFFF, status)
            if ftype == WINDOW_UPDATE:
                sid, delta = struct.unpack_from("!II", p)
                return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        except struct.error:
            raise SpdyError(f"truncated control frame of type {ftype}") from None
        return None  # unknown control frame types are ignored (SPDY/3 2.2.1)

    # --- writing ---------------------------------------------------------------------------------

    def _block(self, headers: Mapping[str, str | Iterable[str]]) -> bytes:
        return self._compress.compress(encode_header_block(headers)) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control_frame(ftype: int, flags: int, payload: bytes) -> bytes:
        return struct.pack("!HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload

    def encode(self, frame: Frame) -> bytes:
        if isinstance(frame, Data):
            out = []
            data, flags = frame.data, frame.flags
            while len(data) > MAX_DATA:  # only the last piece carries FIN
                out.append(struct.pack("!II", frame.stream_id, MAX_DATA) + data[:MAX_DATA])
                data = data[MAX_DATA:]
            out.append(struct.pack("!II", frame.stream_id, (flags << 24) | len(data)) + data)
            return b"".join(out)
        if isinstance(frame, SynStream):
            body = struct.pack("!IIBB", frame.stream_id, frame.associated_id, frame.priority << 5, 0)
            return self._control_frame(SYN_STREAM, frame.flags, body + self._block(frame.headers))
        if isinstance(frame, SynReply):
            return self._control_frame(SYN_REPLY, frame.flags,
                                       struct.pack("!I", frame.stream_id) + self._block(frame.headers))
        if isinstance(frame, HeadersFrame):
            return self._control_frame(HEADERS, frame.flags,
                                       struct.pack("!I", frame.stream_id) + self._block(frame.headers))
        if isinstance(frame, RstStream):
            return self._control_frame(RST_STREAM, 0, struct.pack("!II", frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = struct.pack("!I", len(frame.entries)) + b"".join(
                struct.pack("!II", (f << 24) | i, v) for f, i, v in frame.entries)
            return self._control_frame(SETTINGS, frame.flags, body)
        if isinstance(frame, Ping):
            return self._control_frame(PING, 0, struct.pack("!I", frame.ping_id))
        if isinstance(frame, GoAway):
            return self._control_frame(GOAWAY, 0, struct.pack("!II", frame.last_good_stream_id, frame.status))
        if isinstance(frame, WindowUpdate):
            return self._control_frame(WINDOW_UPDATE, 0, struct.pack("!II", frame.stream_id, frame.delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """httpstream.Handshake: the first of the client's protocols the server supports; "" when
    the client named none (the unversioned v1 protocol); None: no common protocol (403)."""
    if not offered:
        return ""
    for p in offered:
        if p in supported:
            return p
    return None
