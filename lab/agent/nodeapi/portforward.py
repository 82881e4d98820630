"""port-forward: TCP connections to a port inside the pod's network namespace (its localhost,
as a container runtime dials it), carried over

- SPDY (kubectl's SPDY path, directly or tunnelled in a WebSocket): per forwarded connection
  the client opens an error stream and a data stream with the same `port` and `requestid`
  headers; the connection is dialled once both are there; a dial failure is written on the
  error stream; the error stream is closed when the connection is done.
- WebSocket channels (`v4.channel.k8s.io`: the Python client, older kubectl): the ports are in
  the query, one connection per port, data on channel 2i and errors on 2i+1, each channel's
  first message being the port (2 bytes, little-endian).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from knet import netns
from knet.kube.streams import channels
from lab.agent.nodeapi.conns import SpdyConn, SpdyStream, WsConn, stream_type

log = logging.getLogger("lab.agent.nodeapi")
PAIR_TIMEOUT = 30.0  # the second stream of a pair must come within this


def _socket_in(pod_netns: str, family: int) -> socket.socket:
    """A TCP socket that belongs to the pod's network namespace (made while this thread is
    inside it; it stays there)."""
    with netns.enter(pod_netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


async def dial(pod_netns: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to localhost:port inside the pod (IPv4, then IPv6), as a container runtime does."""
    loop = asyncio.get_running_loop()
    failures = []
    for family, host, label in ((socket.AF_INET, "127.0.0.1", "IPv4"), (socket.AF_INET6, "::1", "IPv6")):
        sock = await loop.run_in_executor(None, _socket_in, pod_netns, family)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
            return await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as e:
            sock.close()
            why = e.strerror if isinstance(e, OSError) and e.strerror else "timed out"
            failures.append(f"{label}: dial {host}:{port}: {why.lower()}")
    raise OSError(f"failed to connect to localhost:{port} inside namespace {pod_netns!r}, " + ", ".join(failures))


def _error_text(port: int, pod: str, uid: str, e: BaseException) -> bytes:
    return f"error forwarding port {port} to pod {pod}, uid {uid}: {e}".encode()


# --- SPDY ---------------------------------------------------------------------------------------

async def serve_spdy(conn: SpdyConn, pod_netns: str, pod: str, uid: str) -> None:
    """Pair the client's streams by request id and forward each pair until the session ends."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task] = set()
    timers: dict[str, asyncio.TimerHandle] = {}
    loop = asyncio.get_running_loop()

    def expire(request_id: str) -> None:
        for stream in pending.pop(request_id, {}).values():
            conn.reset_stream(stream)

    try:
        while (stream := await conn.accept()) is not None:
            kind = stream_type(stream.headers)
            port_text = stream.header("port")
            # Old clients send no requestID: pair by arrival (error stream first, then data).
            request_id = stream.header("requestid") or f"port-{port_text}-{len(tasks)}"
            if kind not in ("error", "data") or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                conn.reset_stream(stream)
                continue
            pair = pending.setdefault(request_id, {})
            if kind in pair:
                conn.reset_stream(stream)
                continue
            pair[kind] = stream
            if len(pair) == 1:
                timers[request_id] = loop.call_later(PAIR_TIMEOUT, expire, request_id)
                continue
            timers.pop(request_id).cancel()
            del pending[request_id]
            task = asyncio.create_task(_forward_pair(conn, pair["error"], pair["data"], int(port_text),
                                                     pod_netns, pod, uid))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for timer in timers.values():
            timer.cancel()
        for task in list(tasks):
            task.cancel()
        await conn.close()


async def _forward_pair(conn: SpdyConn, error: SpdyStream, data: SpdyStream, port: int, pod_netns: str,
                        pod: str, uid: str) -> None:
    try:
        reader, writer = await dial(pod_netns, port)
    except OSError as e:
        await error.write(_error_text(port, pod, uid, e))
        await error.close()
        conn.reset_stream(data)
        return
    try:
        await _splice(data.read, data.write, data.close, reader, writer)
    finally:
        with contextlib.suppress(OSError):
            writer.close()
        await error.close()
        conn.streams.pop(data.id, None)
        conn.streams.pop(error.id, None)


async def _splice(read_client, write_client, close_client, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    """Both directions until both are done; a half-close passes through (client EOF -> write
    EOF to the pod; pod EOF -> end of the client's stream)."""
    async def upstream() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await read_client():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

    async def downstream() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                await write_client(chunk)
        await close_client()

    up, down = asyncio.create_task(upstream()), asyncio.create_task(downstream())
    try:
        # The pod's side ending ends the connection (as the kubelet's copy does); the client's
        # end only half-closes, the pod may still answer.
        await down
    finally:
        up.cancel()


# --- WebSocket channels -------------------------------------------------------------------------

async def serve_websocket(ws: WsConn, protocol: str, ports: list[int], pod_netns: str, pod: str, uid: str) -> None:
    codec = channels.Codec(protocol)
    inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue(64) for _ in ports]

    async def send(channel: int, data: bytes) -> None:
        await ws.send(codec.encode(channel, data), text=codec.text)

    async def demux() -> None:
        while (msg := await ws.recv()) is not None:
            with contextlib.suppress(channels.ChannelError):
                channel, data = codec.decode(msg.data)
                if channel % 2 == 0 and channel // 2 < len(ports) and data:
                    await inbound[channel // 2].put(data)
        for q in inbound:
            q.put_nowait(b"")

    async def one(index: int, port: int) -> None:
        data_ch, error_ch = channels.port_channels(index)
        try:
            reader, writer = await dial(pod_netns, port)
        except OSError as e:
            await send(error_ch, _error_text(port, pod, uid, e))
            return
        async def nothing() -> None:  # a channel has no half-close to pass on
            return None
        try:
            await _splice(inbound[index].get, lambda chunk: send(data_ch, chunk), nothing, reader, writer)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    for i, port in enumerate(ports):
        data_ch, error_ch = channels.port_channels(i)
        await send(data_ch, channels.port_prefix(port))
        await send(error_ch, channels.port_prefix(port))
    reader_task = asyncio.create_task(demux())
    async def all_ports() -> None:
        await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
    forwards = asyncio.create_task(all_ports())
    try:
        # Done when every port's connection is (the client then sees the WebSocket close), or
        # when the client leaves.
        await asyncio.wait([forwards, reader_task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        forwards.cancel()
        reader_task.cancel()
        await ws.close()
