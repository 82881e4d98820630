"""A container's I/O keeper (what conmon or containerd's shim is to a container), one per
container instance, started by the node agent right before the container:

    python -S logwriter.py --log DIR/0.log --out-fd N [--err-fd M] [--tty] [--max-size BYTES]
                           [--max-files N] [--stdin-fd FD --stdin-fifo-fd FD] [--control-fifo-fd FD]

--out-fd is the read end of the container's stdout (with --tty: the master side of its
terminal), --err-fd the read end of its stderr (not with --tty). Every line is written in the CRI
log format the kubelet reads (`<RFC3339Nano time> stdout|stderr F|P <text>`, P for a part of a
line longer than 16 KiB or cut by a read); the file rotates at --max-size into `.1` ...
`.<max-files - 1>`.

Input (`stdin: true`): what arrives on the stdin FIFO is written to --stdin-fd (the write end of
the container's stdin pipe, or its terminal). The control FIFO carries JSON lines: a terminal size
`{"Width":..,"Height":..}` (applied to the terminal) or `{"CloseStdin":true}` (the container's
stdin ends: the pipe is closed, a terminal gets an end-of-file character), which the agent sends
when a `stdinOnce` container's first attachment ends. Both FIFOs are opened read-write by the
agent before it starts us: a writer never finds them without a reader.

It runs in a session of its own and outlives the agent (an agent restart leaves containers and
their output untouched); it exits when the container and everything holding its output are gone.
Standard library only, started with -S: one of these runs per container.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import termios

MAX_LINE = 16 * 1024  # the longest piece one log line holds (containerd's and CRI-O's)
EOF_CHAR = b"\x04"    # what closing a terminal's input means: ^D at the start of a line


def timestamp() -> bytes:
    now = dt.datetime.now(dt.UTC)
    return (now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z").encode()


class LogFile:
    def __init__(self, path: str, max_size: int, max_files: int) -> None:
        self.path, self.max_size, self.max_files = path, max_size, max(1, max_files)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.size = os.fstat(self.fd).st_size

    def write(self, stream: bytes, tag: bytes, text: bytes) -> None:
        line = b"%s %s %s %s\n" % (timestamp(), stream, tag, text)
        os.write(self.fd, line)
        self.size += len(line)
        if self.size >= self.max_size:
            self.rotate()

    def rotate(self) -> None:
        """path -> path.1 -> path.2 ... (the oldest beyond max_files - 1 rotated ones dropped); a
        reader following the file notices the new inode and reopens."""
        os.close(self.fd)
        for i in range(self.max_files - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        if self.max_files == 1:
            os.truncate(self.path, 0)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.size = os.fstat(self.fd).st_size


class Splitter:
    """Bytes of one stream -> log lines: full lines tagged F, pieces tagged P."""

    def __init__(self, log: LogFile, stream: bytes) -> None:
        self.log, self.stream, self.buf = log, stream, b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            nl = self.buf.find(b"\n", 0, MAX_LINE + 1)
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                self.log.write(self.stream, b"F", line)
            elif len(self.buf) > MAX_LINE:
                self.log.write(self.stream, b"P", self.buf[:MAX_LINE])
                self.buf = self.buf[MAX_LINE:]
            else:
                return

    def flush(self, final: bool) -> None:
        """What is buffered without a newline: at the end (final) a last full line, else a piece."""
        if self.buf:
            self.log.write(self.stream, b"F" if final else b"P", self.buf)
            self.buf = b""


class Input:
    """The container's stdin: bytes from the FIFO, written without ever blocking the output side
    (what the container does not read yet waits here)."""

    def __init__(self, fd: int | None, tty: bool) -> None:
        self.fd, self.tty, self.pending, self.closing = fd, tty, b"", False
        if fd is not None:
            os.set_blocking(fd, False)

    def add(self, data: bytes) -> None:
        if self.fd is not None and not self.closing:
            self.pending += data

    def close(self) -> None:
        self.closing = True
        if self.tty:
            self.pending += EOF_CHAR
            self.closing = False  # a terminal stays: later attachments may type again

    def writable(self) -> list[int]:
        return [self.fd] if self.fd is not None and (self.pending or self.closing) else []

    def flush(self) -> None:
        if self.fd is None:
            return
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.fd, self.pending):]
        except BlockingIOError:
            return
        except OSError:  # the container is gone: nothing reads its input any more
            self.pending = b""
        if self.closing and not self.pending and not self.tty:
            os.close(self.fd)
            self.fd = None


def control(line: bytes, terminal: int | None, stdin: Input) -> None:
    try:
        msg = json.loads(line)
    except ValueError:
        return
    if not isinstance(msg, dict):
        return
    if msg.get("CloseStdin"):
        stdin.close()
    elif terminal is not None and "Width" in msg and "Height" in msg:
        try:
            size = struct.pack("HHHH", int(msg["Height"]), int(msg["Width"]), 0, 0)
            fcntl.ioctl(terminal, termios.TIOCSWINSZ, size)
        except (ValueError, TypeError, OSError):
            pass


def run(args: argparse.Namespace) -> int:
    log = LogFile(args.log, args.max_size, args.max_files)
    outputs = {args.out_fd: Splitter(log, b"stdout")}
    if args.err_fd is not None:
        outputs[args.err_fd] = Splitter(log, b"stderr")
    stdin = Input(args.stdin_fd, args.tty)
    fifos = [fd for fd in (args.stdin_fifo_fd, args.control_fifo_fd) if fd is not None]
    for fd in fifos:
        os.set_blocking(fd, False)
    pending_control = b""
    while outputs:
        try:
            ready, writable, _ = select.select(list(outputs) + fifos, stdin.writable(), [], 1.0)
        except InterruptedError:
            continue
        if writable:
            stdin.flush()
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError as e:  # a terminal whose other side is closed reads EIO: the end
                if e.errno != errno.EIO:
                    raise
                data = b""
            if fd == args.stdin_fifo_fd:
                stdin.add(data)
                stdin.flush()
            elif fd == args.control_fifo_fd:
                *lines, pending_control = (pending_control + data).split(b"\n")
                for line in lines:
                    control(line, args.out_fd if args.tty else None, stdin)
                stdin.flush()
            elif data:
                outputs[fd].feed(data)
                if args.tty:  # terminal output has no line structure worth waiting for
                    outputs[fd].flush(final=False)
            else:
                outputs.pop(fd).flush(final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="logwriter")
    p.add_argument("--log", required=True)
    p.add_argument("--out-fd", type=int, required=True)
    p.add_argument("--err-fd", type=int)
    p.add_argument("--stdin-fd", type=int)
    p.add_argument("--stdin-fifo-fd", type=int)
    p.add_argument("--control-fifo-fd", type=int)
    p.add_argument("--max-size", type=int, default=10 * 1024 * 1024)
    p.add_argument("--max-files", type=int, default=5)
    p.add_argument("--tty", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ends with its input, so nothing is cut off
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a container that no longer reads its stdin
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
