"""The connection engines of the node API's streaming requests, over asyncio streams:

- `WsConn`: a server-side WebSocket (pings answered, close handshake, messages whole);
- `SpdyConn`: a SPDY/3.1 server session (streams the client opens are accepted and replied to,
  data queued per stream with backpressure, pings echoed, GOAWAY on close), on any byte stream:
  the upgraded TCP connection itself, or a WebSocket carrying SPDY (`WsBytes`, the tunnel of
  current kubectl's port-forward).

Framing is knet.kube.streams'; what runs on the streams is the callers' (remotecommand.py,
portforward.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from knet.kube.streams import spdy, websocket

log = logging.getLogger("lab.agent.nodeapi")
QUEUE_DEPTH = 64  # messages buffered per stream before the reader stops reading the socket


class WsConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = websocket.Parser(expect_masked=True)
        self.pending: list[websocket.Message] = []
        self.closed = False  # we sent CLOSE (or the transport is gone)

    async def recv(self) -> websocket.Message | None:
        """The next TEXT or BINARY message; None once the peer closed (its CLOSE is answered)."""
        while True:
            while self.pending:
                msg = self.pending.pop(0)
                if msg.opcode == websocket.PING:
                    self._send_raw(websocket.PONG, msg.data)
                elif msg.opcode == websocket.CLOSE:
                    code, _ = websocket.parse_close(msg.data)
                    await self.close(code or websocket.NORMAL_CLOSURE)
                    return None
                elif msg.opcode in (websocket.TEXT, websocket.BINARY):
                    return msg
            try:
                data = await self.reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.closed = True
                return None
            try:
                self.pending = self.parser.feed(data)
            except websocket.ProtocolError as e:
                log.info("websocket protocol error: %s", e)
                await self.close(e.code, str(e)[:100])
                return None

    def _send_raw(self, opcode: int, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(websocket.frame(opcode, data))

    def send_nowait(self, data: bytes, text: bool = False) -> None:
        """Queue one message (frames go out in call order; `drain()` waits for the socket)."""
        self._send_raw(websocket.TEXT if text else websocket.BINARY, data)

    async def send(self, data: bytes, text: bool = False) -> None:
        self.send_nowait(data, text)
        await self.drain()

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def close(self, code: int = websocket.NORMAL_CLOSURE, reason: str = "") -> None:
        if not self.closed:
            self._send_raw(websocket.CLOSE, websocket.close_payload(code, reason))
            self.closed = True
            await self.drain()
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.close()


class TcpBytes:
    """A byte stream on the upgraded connection itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read(self) -> bytes:
        try:
            return await self.reader.read(65536)
        except (ConnectionError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.close()


class WsBytes:
    """A byte stream carried in WebSocket binary messages (client-go's TunnelingConnection)."""

    def __init__(self, ws: WsConn) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        msg = await self.ws.recv()
        return msg.data if msg is not None else b""

    def write(self, data: bytes) -> None:
        self.ws.send_nowait(data)

    async def drain(self) -> None:
        await self.ws.drain()

    async def close(self) -> None:
        await self.ws.close()


ByteStream = TcpBytes | WsBytes


class SpdyStream:
    def __init__(self, conn: SpdyConn, stream_id: int, headers: spdy.Headers) -> None:
        self.conn, self.id, self.headers = conn, stream_id, headers
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_DEPTH)
        self.remote_done = False  # FIN or RST from the client: read() returns b"" once drained
        self.local_done = False   # we sent FIN or RST
        self.reset = False

    def header(self, name: str) -> str:
        return spdy.header(self.headers, name)

    async def read(self) -> bytes:
        """Next data; b"" at the end (FIN, RST or the connection gone)."""
        if self.remote_done and self.queue.empty():
            return b""
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        if data and not self.local_done:
            self.conn.send(spdy.Data(self.id, data))
            await self.conn.transport.drain()

    async def close(self) -> None:
        """Half-close: FIN, we send nothing more."""
        if not self.local_done:
            self.local_done = True
            self.conn.send(spdy.Data(self.id, b"", spdy.FLAG_FIN))
            await self.conn.transport.drain()

    def _remote_end(self) -> None:
        if not self.remote_done:
            self.remote_done = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(b"")


class SpdyConn:
    """The server side of a SPDY session. Run `serve()` as a task; take the client's streams
    from `accept()`."""

    def __init__(self, transport: ByteStream) -> None:
        self.transport = transport
        self.codec = spdy.Codec()
        self.streams: dict[int, SpdyStream] = {}
        self.incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.last_stream_id = 0
        self.closed = asyncio.Event()  # we closed the session
        self.ended = asyncio.Event()   # the session is over (either side)

    def send(self, frame: spdy.Frame) -> None:
        """Encode and queue one frame: synchronous, so the header compression context and the
        order on the wire agree."""
        if not self.closed.is_set():
            self.transport.write(self.codec.encode(frame))

    async def accept(self, timeout: float | None = None) -> SpdyStream | None:
        """The next stream the client opened; None when the session ended or time ran out."""
        try:
            return await asyncio.wait_for(self.incoming.get(), timeout)
        except TimeoutError:
            return None

    async def serve(self) -> None:
        try:
            while True:
                data = await self.transport.read()
                if not data:
                    break
                try:
                    frames = self.codec.feed(data)
                except spdy.SpdyError as e:
                    log.info("SPDY protocol error: %s", e)
                    self.send(spdy.GoAway(self.last_stream_id, spdy.GOAWAY_PROTOCOL_ERROR))
                    break
                for frame in frames:
                    if not await self._handle(frame):
                        return
        finally:
            await self._ended()

    async def _handle(self, frame: spdy.Frame) -> bool:
        if isinstance(frame, spdy.Data):
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                return True  # a stream we reset, or never had: its data is dropped (as spdystream does)
            if frame.data and not stream.remote_done:
                await stream.queue.put(frame.data)  # blocks reading the socket while the stream is full
            if frame.fin:
                stream._remote_end()
        elif isinstance(frame, spdy.SynStream):
            if frame.stream_id <= self.last_stream_id or frame.stream_id % 2 == 0:
                self.send(spdy.RstStream(frame.stream_id, spdy.PROTOCOL_ERROR))
                return True
            self.last_stream_id = frame.stream_id
            stream = SpdyStream(self, frame.stream_id, frame.headers)
            self.streams[frame.stream_id] = stream
            self.send(spdy.SynReply(frame.stream_id, {}))
            if frame.flags & spdy.FLAG_FIN:
                stream._remote_end()
            await self.incoming.put(stream)
        elif isinstance(frame, spdy.RstStream):
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.reset = stream.local_done = True
                stream._remote_end()
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2 == 1:  # the client's (odd ids): echoed; ours would be even
                self.send(frame)
        elif isinstance(frame, spdy.GoAway):
            return False
        elif isinstance(frame, spdy.HeadersFrame) and frame.flags & spdy.FLAG_FIN:
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream._remote_end()
        return True  # SETTINGS, WINDOW_UPDATE: no flow control here, as in spdystream

    async def _ended(self) -> None:
        self.ended.set()
        for stream in self.streams.values():
            stream.local_done = True
            stream._remote_end()
        await self.incoming.put(None)

    def reset_stream(self, stream: SpdyStream) -> None:
        if not stream.local_done or not stream.remote_done:
            self.send(spdy.RstStream(stream.id, spdy.CANCEL))
        stream.local_done = True
        stream._remote_end()
        self.streams.pop(stream.id, None)

    async def close(self) -> None:
        """GOAWAY, then the transport: the client's streams end when it reads the EOF."""
        if not self.closed.is_set():
            self.send(spdy.GoAway(self.last_stream_id))
            await self.transport.drain()
            self.closed.set()
            self.ended.set()
            await self.transport.close()


def stream_type(headers: Mapping[str, list[str]]) -> str:
    return spdy.header(headers, "streamtype")
