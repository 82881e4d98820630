"""exec and attach: the five channels (stdin, stdout, stderr, error, resize) of one request,
whichever transport carries them, and what runs behind them: a command in the pod (pipes, or a
terminal with `tty`), or the attachment to a running container's terminal and output.

The kubelet's semantics: the client opens the channels it asked for in the query (`stdin`,
`stdout`, `stderr`, `tty`; no stderr with a tty); when the command ends, its exit status goes
on the error channel (a JSON Status from v4 on: kubectl prints `command terminated with exit code
N` and exits with N) and the connection closes. A client that goes away ends the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import struct
import termios
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from knet import cgroups, netns
from knet.kube.streams import channels
from knet.kube.streams.channels import ERROR, RESIZE, STDERR, STDIN, STDOUT
from lab.agent.nodeapi.conns import QUEUE_DEPTH, SpdyConn, SpdyStream, WsConn, stream_type
from lab.agent.nodeapi.http1 import BadRequest, Request
from lab.agent.nodeapi.logs import Line

log = logging.getLogger("lab.agent.nodeapi")
STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's: the client must open its streams within it
OUTPUT_GRACE = 2.0  # after the command exits, how long its output may still be draining


@dataclass(frozen=True)
class Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool
    command: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, req: Request, command: bool) -> Options:
        # The kubelet's names (input/output/error, as kube-apiserver's proxy sends them) or the
        # API's (stdin/stdout/stderr, as a client sends them).
        stdin, stdout, stderr = (req.flag(k) or req.flag(a) for k, a in
                                 (("input", "stdin"), ("output", "stdout"), ("error", "stderr")))
        tty = req.flag("tty")
        if not (stdin or stdout or stderr):
            raise BadRequest("you must specify at least 1 of stdin, stdout, stderr")
        argv = tuple(req.query.get("command", []))
        if command and not argv:
            raise BadRequest("you must specify a command (the `command` parameter)")
        return cls(stdin, stdout, stderr and not tty, tty, argv)


class Streams(Protocol):
    """The channels of one exec/attach, as the runners see them."""
    gone: asyncio.Event  # the client went away

    async def read_stdin(self) -> bytes: ...  # b"": stdin ended
    async def next_resize(self) -> tuple[int, int] | None: ...  # None: no more
    async def write(self, channel: int, data: bytes) -> None: ...
    async def finish(self, status: dict) -> None: ...


class WsStreams:
    """The channels as WebSocket messages (v5/v4/v1, binary or base64)."""

    def __init__(self, ws: WsConn, protocol: str, opts: Options) -> None:
        self.ws, self.codec, self.opts = ws, channels.Codec(protocol), opts
        self.gone = asyncio.Event()
        self._stdin: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_DEPTH)
        self._resizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        self._stdin_closed = not opts.stdin
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (msg := await self.ws.recv()) is not None:
                try:
                    channel, data = self.codec.decode(msg.data)
                except channels.ChannelError:
                    continue
                if channel == channels.CLOSE_SIGNAL:
                    if data[0] == STDIN:
                        await self._end_stdin()
                elif channel == STDIN and not self._stdin_closed and data:
                    await self._stdin.put(data)
                elif channel == RESIZE and self.opts.tty:
                    with contextlib.suppress(channels.ChannelError):
                        for size in channels.parse_resize(data):
                            self._resizes.put_nowait(size)
        finally:
            self.gone.set()
            await self._end_stdin()
            self._resizes.put_nowait(None)

    async def _end_stdin(self) -> None:
        if not self._stdin_closed:
            self._stdin_closed = True
            await self._stdin.put(b"")

    async def read_stdin(self) -> bytes:
        return await self._stdin.get()

    async def next_resize(self) -> tuple[int, int] | None:
        return await self._resizes.get()

    async def write(self, channel: int, data: bytes) -> None:
        await self.ws.send(self.codec.encode(channel, data), text=self.codec.text)

    async def finish(self, status: dict) -> None:
        payload = channels.error_payload(status, self.codec.json_status)
        if payload:
            self.ws.send_nowait(self.codec.encode(ERROR, payload), text=self.codec.text)
        await self.ws.close()
        self._reader.cancel()


class SpdyStreams:
    """The channels as SPDY streams named by their `streamtype` header."""

    def __init__(self, conn: SpdyConn, protocol: str, by_type: dict[str, SpdyStream]) -> None:
        self.conn, self.protocol, self.by_type = conn, protocol, by_type
        self.gone = conn.ended
        self._resizes: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        resize = by_type.get("resize")
        self._resize_reader = asyncio.create_task(self._read_resizes(resize)) if resize is not None else None

    @classmethod
    async def accept(cls, conn: SpdyConn, protocol: str, opts: Options) -> SpdyStreams:
        """Wait for the streams the request announced (BadRequest if they do not come in time)."""
        expected = {"error"} | {name for name, on in (("stdin", opts.stdin), ("stdout", opts.stdout),
                                                      ("stderr", opts.stderr)) if on}
        if opts.tty and protocol in (channels.V3, channels.V4):
            expected.add("resize")
        got: dict[str, SpdyStream] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_CREATION_TIMEOUT
        while not expected <= got.keys():
            stream = await conn.accept(max(0.0, deadline - loop.time()))
            if stream is None:
                raise BadRequest(f"timed out waiting for client to create streams {sorted(expected - got.keys())}")
            kind = stream_type(stream.headers)
            if kind in expected and kind not in got:
                got[kind] = stream
            else:
                conn.reset_stream(stream)
        return cls(conn, protocol, got)

    async def _read_resizes(self, stream: SpdyStream) -> None:
        pending = b""
        while data := await stream.read():
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                with contextlib.suppress(channels.ChannelError):
                    for size in channels.parse_resize(line):
                        self._resizes.put_nowait(size)
        self._resizes.put_nowait(None)

    async def read_stdin(self) -> bytes:
        stream = self.by_type.get("stdin")
        return await stream.read() if stream is not None else b""

    async def next_resize(self) -> tuple[int, int] | None:
        return await self._resizes.get() if "resize" in self.by_type else None

    async def write(self, channel: int, data: bytes) -> None:
        stream = self.by_type.get({STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}[channel])
        if stream is not None:
            await stream.write(data)

    async def finish(self, status: dict) -> None:
        payload = channels.error_payload(status, self.protocol in (channels.V4, channels.V5))
        await self.write(ERROR, payload)
        for stream in self.by_type.values():
            await stream.close()
        await self.conn.close()


# --- what runs behind the channels --------------------------------------------------------------

@dataclass(frozen=True)
class ExecTarget:
    """Where and how a command runs "in a container": the pod's network namespace (and the
    mount of its resolv.conf and hosts that `ip netns exec` makes), the container's cgroup,
    environment and working directory."""
    pod_netns: str
    env: dict[str, str]
    cwd: str | None = None
    cgroup: str | None = None


def resolve(argv0: str, env: dict[str, str]) -> str | None:
    """argv[0] as the container's PATH resolves it (None: not found)."""
    if "/" in argv0:
        return argv0 if os.access(argv0, os.X_OK) and os.path.isfile(argv0) else None
    return shutil.which(argv0, path=env.get("PATH", os.defpath))


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _pump_out(read: Callable[[], Awaitable[bytes]], streams: Streams, channel: int) -> None:
    while data := await read():
        await streams.write(channel, data)


async def _pump_stdin(streams: Streams, write: Callable[[bytes], Awaitable[None]],
                      close: Callable[[], None]) -> None:
    try:
        while data := await streams.read_stdin():
            await write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(OSError):
            close()


def _kill(pid: int) -> None:
    for target in (lambda s: os.killpg(pid, s), lambda s: os.kill(pid, s)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            target(signal.SIGKILL)


async def run_exec(target: ExecTarget, opts: Options, streams: Streams) -> dict:
    """Run opts.command in the container; returns the exit Status (also for a client that went
    away: the command is then killed)."""
    if resolve(opts.command[0], target.env) is None:
        return channels.exit_status(None, f'error executing command in container: exec: "{opts.command[0]}": '
                                          "executable file not found in $PATH")
    argv = ["setsid", "--ctty", *opts.command] if opts.tty else list(opts.command)
    cmd = netns.exec_argv(target.pod_netns, argv)
    if target.cgroup and os.path.isdir(target.cgroup):
        cmd = cgroups.join_argv(target.cgroup, cmd)
    cwd = target.cwd if target.cwd and os.path.isdir(target.cwd) else "/"
    run = _run_tty if opts.tty else _run_pipes
    return await run(cmd, target, cwd, opts, streams)


async def _run_pipes(cmd: list[str], target: ExecTarget, cwd: str, opts: Options, streams: Streams) -> dict:
    pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=pipe if opts.stdin else devnull, stdout=pipe if opts.stdout else devnull,
        stderr=pipe if opts.stderr else devnull, env=target.env, cwd=cwd, start_new_session=True)
    tasks = []
    if proc.stdout is not None:
        tasks.append(asyncio.create_task(_pump_out(lambda: proc.stdout.read(65536), streams, STDOUT)))  # type: ignore[union-attr]
    if proc.stderr is not None:
        tasks.append(asyncio.create_task(_pump_out(lambda: proc.stderr.read(65536), streams, STDERR)))  # type: ignore[union-attr]
    stdin_task = None
    if proc.stdin is not None:
        async def write(data: bytes) -> None:
            proc.stdin.write(data)  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
        stdin_task = asyncio.create_task(_pump_stdin(streams, write, proc.stdin.close))
    return await _wait(proc.pid, proc.wait(), tasks, stdin_task, streams)


async def _wait(pid: int, exited: Awaitable[int], outputs: list[asyncio.Task], stdin_task: asyncio.Task | None,
                streams: Streams) -> dict:
    waiter = asyncio.ensure_future(exited)
    gone = asyncio.create_task(streams.gone.wait())
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the client left: so does the command
            _kill(pid)
            await waiter
        if outputs:
            await asyncio.wait(outputs, timeout=OUTPUT_GRACE)
        return channels.exit_status(_exit_code(waiter.result()))
    finally:
        for task in [*outputs, gone, *([stdin_task] if stdin_task else [])]:
            task.cancel()
        if not waiter.done():
            _kill(pid)


async def _run_tty(cmd: list[str], target: ExecTarget, cwd: str, opts: Options, streams: Streams) -> dict:
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=slave, stdout=slave, stderr=slave,
                                                    env={"TERM": "xterm", **target.env}, cwd=cwd)
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    terminal = Terminal(master)
    outputs = [asyncio.create_task(_pump_out(terminal.read, streams, STDOUT))] if opts.stdout else []
    stdin_task = asyncio.create_task(_pump_stdin(streams, terminal.write, lambda: None)) if opts.stdin else None
    resizer = asyncio.create_task(_apply_resizes(streams, master))
    try:
        return await _wait(proc.pid, proc.wait(), outputs, stdin_task, streams)
    finally:
        resizer.cancel()
        terminal.close()


async def _apply_resizes(streams: Streams, fd: int) -> None:
    while (size := await streams.next_resize()) is not None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))


class Terminal:
    """The master side of a pseudo-terminal on the event loop. Reads end (b"") with EIO: every
    process holding the other side is gone."""

    def __init__(self, fd: int) -> None:
        self.fd, self.loop = fd, asyncio.get_running_loop()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_DEPTH)
        self.loop.add_reader(fd, self._readable)
        self.ended = False

    def _readable(self) -> None:
        if self.queue.full():
            return  # read later: the loop calls again while data waits
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.fd)
            self.ended = True
        self.queue.put_nowait(data)

    async def read(self) -> bytes:
        return b"" if self.ended and self.queue.empty() else await self.queue.get()

    async def write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.fd, data):]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --- attach -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttachTarget:
    """A running container instance: its output (the log its writer keeps), the FIFO its writer
    feeds its stdin from and the one it takes control messages from (terminal sizes, the end of
    stdin), when it has them."""
    log_path: str
    tty: bool
    stdin_fifo: str | None
    control_fifo: str | None
    stdin_once: bool
    running: Callable[[], bool]


async def run_attach(target: AttachTarget, opts: Options, streams: Streams,
                     follow: Callable[..., Coroutine[Any, Any, None]]) -> dict:
    """Until the container ends or the client leaves: its new output to stdout/stderr, stdin to
    it, terminal sizes to it; with stdinOnce its stdin ends with this attachment's.
    `follow(log_path, on_line, running, gone)` streams the log."""
    async def write(line: Line) -> None:
        channel = STDERR if line.stream == "stderr" and not target.tty else STDOUT
        data = line.text + (b"\n" if line.full else b"")
        if (opts.stderr if channel == STDERR else opts.stdout) and data:
            await streams.write(channel, data)

    control = Control(target.control_fifo)
    once = opts.stdin and target.stdin_once

    def end_stdin() -> None:
        nonlocal once
        if once:  # the first attachment's input is over (kubectl run -i): so is the container's
            control.send({"CloseStdin": True})
            once = False

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(follow(target.log_path, write, target.running,
                                                                  streams.gone))]
    if opts.stdin and target.stdin_fifo:
        async def stdin() -> None:
            await _fifo_writer(target.stdin_fifo or "", streams.read_stdin)
            end_stdin()
        tasks.append(asyncio.create_task(stdin()))
    if opts.tty and target.tty:
        tasks.append(asyncio.create_task(control.resizes(streams)))
    try:
        await asyncio.wait([tasks[0], asyncio.create_task(streams.gone.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        end_stdin()
        control.close()
    return channels.exit_status(0)


async def _fifo_writer(path: str, read: Callable[[], Awaitable[bytes]]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:  # ENXIO: nobody reads it (the container's instance is gone)
        log.info("attach: %s not writable: %s", path, e)
        return
    try:
        while data := await read():
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
    finally:
        os.close(fd)


class Control:
    """The container's control FIFO (its log writer reads it): JSON lines."""

    def __init__(self, path: str | None) -> None:
        self.fd: int | None = None
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                log.info("attach: %s not writable: %s", path, e)

    def send(self, msg: dict) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # small messages: a FIFO takes them whole
                os.write(self.fd, json.dumps(msg).encode() + b"\n")

    async def resizes(self, streams: Streams) -> None:
        while (size := await streams.next_resize()) is not None:
            self.send({"Width": size[0], "Height": size[1]})

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
