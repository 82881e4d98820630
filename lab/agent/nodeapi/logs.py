"""Container logs as the kubelet serves them (GET /containerLogs/<ns>/<pod>/<container>): the
CRI log files a container's log writer keeps, read with the API's options: `tailLines`,
`sinceSeconds`/`sinceTime`, `timestamps`, `limitBytes`, `follow` (until the container
instance ends), `previous` (the instance before the last restart) — the caller picks the file.

A CRI log line: `<RFC3339Nano time> <stdout|stderr> <F|P> <text>`; P marks a piece of a line
that continues on the next one. Rotated files (`<file>.1`, `.2`, ...) are read oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from lab.agent.nodeapi.http1 import BadRequest, Request

POLL = 0.2  # seconds between checks for new output while following


@dataclass(frozen=True)
class LogOptions:
    container: str = ""
    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: dt.datetime | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_request(cls, req: Request, now: dt.datetime | None = None) -> LogOptions:
        def number(name: str, minimum: int) -> int | None:
            raw = req.arg(name)
            if not raw:
                return None
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(f"{name}: invalid value {raw!r}: must be an integer") from None
            if value < minimum:
                raise BadRequest(f"{name}: invalid value {value}: must be greater than or equal to {minimum}")
            return value

        since = None
        seconds = number("sinceSeconds", 1)
        if seconds is not None and req.arg("sinceTime"):
            raise BadRequest("at most one of sinceTime or sinceSeconds may be specified")
        if seconds is not None:
            since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)
        elif req.arg("sinceTime"):
            try:
                since = dt.datetime.fromisoformat(req.arg("sinceTime").replace("Z", "+00:00"))
            except ValueError:
                raise BadRequest(f"sinceTime: invalid value {req.arg('sinceTime')!r}: must be RFC3339") from None
        return cls(container=req.arg("container"), follow=req.flag("follow"), previous=req.flag("previous"),
                   timestamps=req.flag("timestamps"), tail_lines=number("tailLines", 0), since=since,
                   limit_bytes=number("limitBytes", 1))


@dataclass(frozen=True)
class Line:
    time: str        # as written (RFC3339Nano)
    stream: str      # stdout / stderr
    text: bytes      # without the newline
    full: bool       # F: the line ends here; P: it continues on the next

    @property
    def when(self) -> dt.datetime:
        return parse_time(self.time)


def parse_time(text: str) -> dt.datetime:
    """RFC3339 with up to nanoseconds (fromisoformat takes microseconds at most)."""
    head, _, frac = text.rstrip("Z").partition(".")
    micro = (frac + "000000")[:6] if frac else "000000"
    return dt.datetime.fromisoformat(f"{head}.{micro}+00:00")


def parse_line(raw: bytes) -> Line | None:
    parts = raw.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[2] not in (b"F", b"P"):
        return None
    try:
        time = parts[0].decode()
        parse_time(time)
    except ValueError:
        return None
    return Line(time, parts[1].decode(errors="replace"), parts[3] if len(parts) == 4 else b"", parts[2] == b"F")


def join(lines: Iterable[Line]) -> list[Line]:
    """Pieces (P) joined into whole lines, per stream, with the time of their first piece."""
    out: list[Line] = []
    pending: dict[str, Line] = {}
    for line in lines:
        head = pending.pop(line.stream, None)
        if head is not None:
            line = Line(head.time, line.stream, head.text + line.text, line.full)
        if line.full:
            out.append(line)
        else:
            pending[line.stream] = line
    out += pending.values()  # a last line still being written
    return out


def render(line: Line, timestamps: bool) -> bytes:
    text = line.text + (b"\n" if line.full else b"")
    return (line.time.encode() + b" " + text) if timestamps else text


def select(lines: list[Line], opts: LogOptions) -> list[Line]:
    """sinceTime/sinceSeconds, then tailLines (both on whole lines)."""
    if opts.since is not None:
        lines = [ln for ln in lines if ln.when >= opts.since]
    if opts.tail_lines is not None:
        lines = lines[len(lines) - opts.tail_lines:] if opts.tail_lines else []
    return lines


def files(path: str) -> list[str]:
    """The log file and its rotated predecessors, oldest first."""
    rotated = []
    i = 1
    while os.path.exists(f"{path}.{i}"):
        rotated.append(f"{path}.{i}")
        i += 1
    return [*reversed(rotated), *([path] if os.path.exists(path) else [])]


def read_lines(path: str, upto: tuple[int, int] | None = None) -> list[Line]:
    """Whole lines of the log and its rotated files; `upto` (inode, size): of the current file
    only what it held then (a follower goes on from there)."""
    lines = []
    for name in files(path):
        with contextlib.suppress(FileNotFoundError), open(name, "rb") as f:
            data = f.read()
            if upto is not None and name == path and os.fstat(f.fileno()).st_ino == upto[0]:
                data = data[:upto[1]]
            lines += [ln for raw in data.splitlines() if (ln := parse_line(raw)) is not None]
    return join(lines)


def position(path: str) -> tuple[int, int]:
    """(inode, size) of the log now; (0, 0) if it does not exist yet."""
    try:
        st = os.stat(path)
        return st.st_ino, st.st_size
    except FileNotFoundError:
        return 0, 0


Write = Callable[[bytes], Awaitable[None]]


async def serve(path: str, opts: LogOptions, write: Write, running: Callable[[], bool],
                gone: asyncio.Event | None = None) -> None:
    """The selected lines of the log; with follow, then what is written until the container
    instance ends (or the client leaves: `gone`)."""
    budget = opts.limit_bytes

    async def emit(data: bytes) -> bool:
        nonlocal budget
        if budget is not None:
            data = data[:budget]
            budget -= len(data)
        if data:
            await write(data)
        return budget is None or budget > 0

    start = position(path)
    for line in select(read_lines(path, start), opts):
        if not await emit(render(line, opts.timestamps)):
            return
    if not opts.follow:
        return

    async def on_line(line: Line) -> None:
        if not await emit(render(line, opts.timestamps)):
            raise _Done

    with contextlib.suppress(_Done):
        await follow(path, on_line, running, gone, start=start)


class _Done(Exception):
    pass


async def follow(path: str, on_line: Callable[[Line], Awaitable[None]], running: Callable[[], bool],
                 gone: asyncio.Event | None = None, start: tuple[int, int] | None = None) -> None:
    """Lines appended to the log from `start` ((inode, offset); None: its end now), across
    rotations, until the container is not running and its log has stopped growing, or `gone`."""
    if start is None:
        start = position(path)
    f = None
    buf = b""
    idle_after_exit = 0
    try:
        while gone is None or not gone.is_set():
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - held across polls
                except FileNotFoundError:
                    f = None
                if f is not None and os.fstat(f.fileno()).st_ino == start[0]:
                    f.seek(start[1])
            chunk = f.read() if f is not None else b""
            if chunk:
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    line = parse_line(raw)
                    if line is not None:
                        await on_line(line)
                idle_after_exit = 0
                continue
            if f is not None:
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:  # rotated: the new file
                        f.close()
                        f = None
                        start = (0, 0)
                        continue
            if not running():
                idle_after_exit += 1
                if idle_after_exit > 2:  # the writer had time to flush what the container left
                    return
            await asyncio.sleep(POLL)
    finally:
        if f is not None:
            f.close()
