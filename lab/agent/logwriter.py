"""A container's output keeper (what conmon or containerd's shim is to a container), one per
container instance, started by the node agent right before the container:

    python -S logwriter.py --log DIR/0.log --out-fd N [--err-fd M] [--max-size BYTES] [--max-files N]
                           [--tty [--stdin-fd FIFO-FD] [--resize-fd FIFO-FD]]

--out-fd is the read end of the container's stdout (with --tty: the master side of its
terminal), --err-fd the read end of its stderr (not with --tty). Every line is written in the CRI log format
the kubelet reads (`<RFC3339Nano time> stdout|stderr F|P <text>`, P for a part of a line longer
than 16 KiB or cut by a read); the file rotates at --max-size into `.1` ... `.<max-files - 1>`.
With --tty it also copies what arrives on the stdin FIFO to the terminal and applies the
terminal sizes (JSON `{"Width":..,"Height":..}` lines) that arrive on the resize FIFO (both
opened read-write by the agent before it starts us: a writer never finds them without a reader).

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


def set_size(fd: int, data: bytes) -> bytes:
    """Apply every complete resize message in data; returns what is left of an incomplete one."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        try:
            size = json.loads(line)
            rows, cols = int(size["Height"]), int(size["Width"])
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except (ValueError, KeyError, TypeError, OSError):
            continue
    return rest


def run(args: argparse.Namespace) -> int:
    log = LogFile(args.log, args.max_size, args.max_files)
    outputs = {args.out_fd: Splitter(log, b"stdout")}
    if args.err_fd is not None:
        outputs[args.err_fd] = Splitter(log, b"stderr")
    stdin, resize = (args.stdin_fd, args.resize_fd) if args.tty else (None, None)
    for fd in (stdin, resize):
        if fd is not None:
            os.set_blocking(fd, False)
    pending = b""
    while outputs:
        watched = list(outputs) + [fd for fd in (stdin, resize) if fd is not None]
        try:
            ready, _, _ = select.select(watched, [], [], 1.0)
        except InterruptedError:
            continue
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError as e:  # a terminal whose other side is closed reads EIO: the end
                if e.errno != errno.EIO:
                    raise
                data = b""
            if fd == stdin:
                if data:
                    os.write(args.out_fd, data)
            elif fd == resize:
                pending = set_size(args.out_fd, pending + data)
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
    p.add_argument("--max-size", type=int, default=10 * 1024 * 1024)
    p.add_argument("--max-files", type=int, default=5)
    p.add_argument("--tty", action="store_true")
    p.add_argument("--stdin-fd", type=int)
    p.add_argument("--resize-fd", type=int)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ends with its input, so nothing is cut off
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
