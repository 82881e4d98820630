"""`knet-cni` in Python: the thin executable where the native one (cni/shim/knet-cni.c) is not
built, and, as `knet-cni-py --direct`, the direct path the native one hands a request to.

Starting Python costs more than the work itself, so, as Cilium and Multus do, the executable
hands the request to the node's long-running agent over a unix socket (`agentSocket` in the
config, default /run/knet/cni.sock), importing only C modules on that path (`_socket` and, through
`wire`, `_json`: the `socket` and `json` packages would pull in enum, re and selectors). Without a
usable agent it runs the plugin in-process (the direct path: slower, identical in behaviour, the
same IPAM files and locks, so both can run at once). The native executable speaks the same
exchange and behaves the same; whatever changes here changes there too (test_cni_executables.py
runs both against the same fake agents).

Bounds (`wire.py` describes the exchange and why falling back never runs a request twice), so
that a runtime never hangs:
- connecting takes at most CONNECT_TIMEOUT, and the agent's STARTED comes within START_TIMEOUT
  of the executable's first attempt; otherwise the executable runs the request itself.
- after STARTED the executable waits up to ANSWER_TIMEOUT for each part of the answer (the agent's
  own steps are bounded: iptables waits 5 s for its lock, a delegated IPAM plugin 60 s). An agent
  that dies meanwhile, or answers with anything but "<exit status 0-255> <size>" and that many
  bytes, has not answered: the executable runs the request itself (DEL, CHECK, STATUS and GC are
  idempotent; a repeated ADD fails with "already allocated" rather than allocating twice); one
  that is only slow gets error 11, try again later.
KNET_CNI_START_TIMEOUT and KNET_CNI_ANSWER_TIMEOUT (seconds) override the last two, for tests.
The agent's stdout is passed on byte for byte.
"""

# Only what the interpreter has loaded at start-up (posix, sys) and two C extensions on the agent
# path: `os` alone (its _collections_abc) would add ~15% to the executable's start, `socket` and
# `json` more. Annotations are strings (the deploy launcher runs this file on hosts' python3 >= 3.8).
# The plugin itself is imported lazily, in direct().
import _socket
import posix
import sys
import time

from cni.versions import LATEST_VERSION, SUPPORTED_VERSIONS, version_answer
from cni.wire import dumps, encode_request, loads

DEFAULT_AGENT_SOCKET = "/run/knet/cni.sock"
CONNECT_TIMEOUT = 1.0
START_TIMEOUT = 3.0
ANSWER_TIMEOUT = 120.0
TRY_AGAIN_LATER = 11
MAX_ANSWER = 64 << 20


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL, or a character no file name can hold
        return False
    return True


def parse_config(stdin: bytes) -> "dict | None":
    """The network configuration as a dict, or None when it is not a JSON object (the plugin
    itself then reports the precise error)."""
    try:
        conf = loads(stdin)
    except (ValueError, RecursionError):
        return None
    return conf if isinstance(conf, dict) else None


def _agent_socket(stdin: bytes) -> "str | None":
    conf = parse_config(stdin)
    path = conf.get("agentSocket") if conf else None
    path = path if isinstance(path, str) and path else DEFAULT_AGENT_SOCKET
    return path if _exists(path) else None


def _error(stdin: bytes, code: int, msg: str) -> str:
    conf = parse_config(stdin)
    version = conf.get("cniVersion") if conf else None
    return dumps({"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST_VERSION,
                  "code": code, "msg": msg})


class _Reader:
    """Lines and counted bytes from a socket."""

    def __init__(self, sock: "_socket.socket") -> None:
        self.sock, self.buf = sock, b""

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def line(self, limit: int = 4096) -> "bytes | None":
        while b"\n" not in self.buf:
            if len(self.buf) > limit or not self._more():
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def exactly(self, n: int) -> "bytes | None":
        while len(self.buf) < n:
            if not self._more():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def parse_answer_head(head: "bytes | None") -> "tuple[int, int] | None":
    """(exit status, stdout size) from b"<0-255> <size>" (ASCII digits, no sign or padding)."""
    parts = head.split(b" ") if head else []
    if len(parts) != 2 or not all(p.isdigit() and (p == b"0" or not p.startswith(b"0")) for p in parts):
        return None
    code, size = int(parts[0]), int(parts[1])
    return (code, size) if code <= 255 and size <= MAX_ANSWER else None


def _first_line(sock: "_socket.socket", reader: _Reader, deadline_ns: int) -> "bytes | None":
    """The agent's first line, waited for until the deadline, then looked for once more without
    waiting (wire.py: why that last look makes giving up safe)."""
    try:
        sock.settimeout(max(deadline_ns - time.monotonic_ns(), 1_000_000) / 1e9)
        return reader.line()
    except TimeoutError:
        pass
    except OSError:
        return None
    try:
        sock.settimeout(0.0)
        return reader.line()
    except OSError:  # nothing there (BlockingIOError) or gone
        return None


def via_agent(path: str, env: "dict[str, str] | dict[bytes, bytes]", stdin: bytes
              ) -> "tuple[int, str] | None":
    """(exit status, stdout) from the agent, or None when the direct path must be taken."""
    deadline = time.monotonic_ns() + int(START_TIMEOUT * 1e9)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            sock.settimeout(max(deadline - time.monotonic_ns(), 1_000_000) / 1e9)
            # The agent works in its own namespace: it refuses a caller from another one.
            sock.sendall(encode_request(env, stdin, posix.stat("/proc/thread-self/ns/net").st_ino, deadline))
        except OSError:  # not there, not listening, or not reading: it cannot have started
            return None
        reader = _Reader(sock)
        if _first_line(sock, reader, deadline) != b"STARTED":
            return None  # not started in time, wrong namespace, refused, or gone: nothing was done
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            answer = parse_answer_head(reader.line())  # None: ABORTED (nothing was run), or garbled
            out = reader.exactly(answer[1]) if answer else None
        except TimeoutError:
            return 1, _error(stdin, TRY_AGAIN_LATER, f"knet-cni-agent at {path} started the request but "
                             f"did not answer within {ANSWER_TIMEOUT:.0f}s; try again")
        except OSError:
            return None  # the agent went away before answering: run it here
        return (answer[0], out.decode("utf-8", "surrogateescape")) if answer and out is not None else None
    finally:
        sock.close()


def _version(stdin: bytes) -> "tuple[int, str] | None":
    """VERSION needs no agent and no kernel: answer it here (malformed stdin: the full path)."""
    if not stdin.strip():
        return 0, dumps(version_answer(None))
    conf = parse_config(stdin)
    return (0, dumps(version_answer(conf))) if conf is not None else None


def direct(stdin: bytes) -> "tuple[int, str]":
    # Lazy imports, the point of this module: the agent path never pays for either.
    import os

    from cni.plugin import run
    return run(dict(os.environ), stdin)


def _seconds(environ: "dict[bytes, bytes]", name: bytes, default: float) -> float:
    try:
        seconds = float(environ[name])
    except (KeyError, ValueError):
        return default
    return seconds if 0 < seconds < 1e6 else default


def _timeouts(environ: "dict[bytes, bytes]") -> None:
    global START_TIMEOUT, ANSWER_TIMEOUT
    START_TIMEOUT = _seconds(environ, b"KNET_CNI_START_TIMEOUT", START_TIMEOUT)
    ANSWER_TIMEOUT = _seconds(environ, b"KNET_CNI_ANSWER_TIMEOUT", ANSWER_TIMEOUT)


def main(argv: "list[str] | None" = None) -> int:
    """Run one request; stdout is flushed when this returns (the launcher then exits at once).
    `--direct` (how the native executable hands a request over): run it in-process."""
    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    environ = posix.environ  # bytes; exactly what the agent is sent
    answer = None
    if environ.get(b"CNI_COMMAND") == b"VERSION":
        answer = _version(stdin)
    elif environ.get(b"KNET_CNI_DIRECT") != b"1" and (sys.argv if argv is None else argv)[1:] != ["--direct"]:
        path = _agent_socket(stdin)
        if path:
            _timeouts(environ)
            answer = via_agent(path, environ, stdin)
    if answer is None:
        answer = direct(stdin)
    code, out = answer
    if out:
        sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape") + b"\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
