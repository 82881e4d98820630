"""`knet-cni-agent`: the node-side server the thin `knet-cni` executable hands requests to.

It runs in the node's network namespace with the plugin already imported and netlink sockets
open, so a request costs only its own work. The exchange with the executable (`wire.py`; `shim.py`
says how it is bounded) lets the executable take the direct path whenever the agent is not there
or not taking work, without a request ever running twice.

Threads: the thread that accepts a connection serves it (a hand-over to another thread costs a
scheduling delay, several milliseconds on a busy node), and starts another acceptor first if none
is left idle, so slow clients never hold up the next one; spare acceptors beyond SPARE_ACCEPTORS
exit. At most `concurrency` requests run at once (the kernel serializes most netlink work anyway);
every read from a client has a deadline, so clients that send half a request or vanish cost a
thread for READ_TIMEOUT at most. IPAM state lives only in host-local's files under the same lock
the direct path takes: a restarted agent starts from them, and both paths can run at once.

SIGTERM: stop accepting, refuse what has not started (the executables then run it themselves),
let what has started finish (up to DRAIN_TIMEOUT), exit.
"""

from __future__ import annotations

# _thread: threading.Thread.start() waits until the new thread runs; an acceptor starting its
# replacement must not wait for that before serving its own connection.
import _thread
import argparse
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

from cni import plugin
from cni.rtnl import Rtnl
from cni.wire import BadRequest, parse_env, parse_header
from knet import daemon, logs, metrics

log = logging.getLogger("knet.cni.agent")
MAX_CONNECTIONS = 512
SPARE_ACCEPTORS = 2
READ_TIMEOUT = 10.0
DRAIN_TIMEOUT = 60.0


def read_exactly(conn: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = conn.recv(max(65536, n - len(buf)))
        if not chunk:
            raise BadRequest(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def read_line(conn: socket.socket, buf: bytearray, limit: int = 4096) -> bytes:
    while b"\n" not in buf:
        if len(buf) > limit:
            raise BadRequest("header line too long")
        chunk = conn.recv(65536)
        if not chunk:
            raise BadRequest("connection closed before the end of a line")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


class SocketPool:
    """Netlink sockets in the agent's namespace, reused across requests (one per running request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list[Rtnl] = []

    @contextlib.contextmanager
    def socket(self) -> Iterator[Rtnl]:
        with self.lock:
            sock = self.free.pop() if self.free else None
        sock = sock or Rtnl()
        yield sock
        with self.lock:
            self.free.append(sock)


class Agent:
    def __init__(self, path: str, concurrency: int) -> None:
        self.path = path
        self.netns_inode = os.stat("/proc/thread-self/ns/net").st_ino
        self.slots = threading.BoundedSemaphore(concurrency)
        self.pool = SocketPool()
        self.stopping = threading.Event()
        self.lock = threading.Condition()
        self.acceptors = 0            # threads in the accept loop (serving or waiting)
        self.idle = 0                 # of which waiting in accept()
        self.serving = 0              # connections being served
        self.registry = metrics.Registry()
        self.requests = self.registry.counter(
            "knet_cni_agent_requests_total", "CNI requests served, by command and exit status",
            ("command", "exit"))
        self.duration = self.registry.histogram(
            "knet_cni_agent_request_duration_seconds", "Time from STARTED to the answer, by command",
            ("command",))
        self.refused = self.registry.counter(
            "knet_cni_agent_refused_total", "Connections answered without running a request, by reason",
            ("reason",))
        self.listener = self._listen(path)

    def _listen(self, path: str) -> socket.socket:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(tmp)
        os.chmod(tmp, 0o600)
        listener.listen(512)
        os.rename(tmp, path)  # appear (replacing a stale socket) only when ready to serve
        self.inode = os.stat(path).st_ino
        return listener

    def health(self) -> tuple[bool, str]:
        try:
            ours = os.stat(self.path).st_ino == self.inode
        except FileNotFoundError:
            ours = False
        return (ours and not self.stopping.is_set()), ("ok" if ours else f"{self.path} is not this agent's")

    def serve(self) -> None:
        """Accept and serve until stop(); then drain (see the module's docstring)."""
        log.info("listening socket=%s netns_inode=%d", self.path, self.netns_inode)
        for _ in range(SPARE_ACCEPTORS):
            self._start_acceptor()
        while not self.stopping.wait(0.5):  # (a timeout keeps the main thread open to signals)
            pass
        # Wakes every thread blocked in accept() (it fails with EINVAL): they leave their loop.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self.inode:  # a newer agent may have taken the path
                os.unlink(self.path)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with self.lock:
            while (self.acceptors or self.serving) and time.monotonic() < deadline:
                self.lock.wait(0.5)
            left = self.serving
        self.listener.close()
        log.info("stopped" + (f" with {left} request(s) unfinished" if left else ""))

    def stop(self) -> None:
        self.stopping.set()

    def _start_acceptor(self) -> None:
        with self.lock:
            self.acceptors += 1
            self.idle += 1
        _thread.start_new_thread(self._accept_loop, ())

    def _accept_loop(self) -> None:
        """Accept, serve what was accepted, repeat; leave when stopping or when spare."""
        idle = True
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    if self.stopping.is_set():
                        return
                    log.warning("accept failed", exc_info=True)
                    time.sleep(0.1)
                    continue
                with self.lock:
                    self.idle -= 1
                    idle = False
                    self.serving += 1
                    spawn = self.idle == 0 and self.acceptors < MAX_CONNECTIONS
                if spawn:
                    self._start_acceptor()
                self._handle(conn)
                with self.lock:
                    self.serving -= 1
                    if self.idle >= SPARE_ACCEPTORS:
                        return
                    self.idle += 1
                    idle = True
        finally:
            with self.lock:
                self.acceptors -= 1
                self.idle -= 1 if idle else 0
                self.lock.notify_all()

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        self.refused.inc(1, reason)
        with contextlib.suppress(OSError):
            conn.sendall(b"BAD " + reason.encode() + b"\n")

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(READ_TIMEOUT)
            self._serve_one(conn)
        except Exception:
            log.exception("request handler failed")
        finally:
            conn.close()

    def _serve_one(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            inode, deadline, env_len, stdin_len = parse_header(read_line(conn, buf))
            env = parse_env(read_exactly(conn, buf, env_len))
            stdin = read_exactly(conn, buf, stdin_len)
        except (BadRequest, OSError) as e:
            log.warning("dropped a malformed or incomplete request: %s", e)
            self._refuse(conn, "malformed")
            return
        if inode != self.netns_inode:
            self.refused.inc(1, "wrong-netns")
            with contextlib.suppress(OSError):
                conn.sendall(b"WRONG-NETNS\n")
            return
        command, container = env.get("CNI_COMMAND", "-"), env.get("CNI_CONTAINERID", "-")
        with self.slots:
            if self.stopping.is_set():
                self._refuse(conn, "stopping")
                return
            # STARTED first, the clock second (wire.py: that order is what makes it safe).
            started = time.monotonic_ns() < deadline
            if started:
                try:
                    conn.sendall(b"STARTED\n")
                except OSError:
                    started = False
            if started and time.monotonic_ns() >= deadline:
                started = False
                with contextlib.suppress(OSError):
                    conn.sendall(b"ABORTED\n")
            if not started:
                # The executable gave up waiting and runs the request itself: do nothing.
                self.refused.inc(1, "late")
                log.warning("request command=%s container=%s dropped: the caller stopped waiting before "
                            "it could start", command, container)
                return
            start = time.monotonic()
            with self.pool.socket() as node:
                code, out = plugin.run(env, stdin, node, on_bug=self._bug)
            took = time.monotonic() - start
        data = out.encode()
        try:
            conn.sendall(b"%d %d\n" % (code, len(data)) + data)
        except OSError as e:
            log.warning("request command=%s container=%s: the caller left before the answer: %s",
                        command, container, e)
        self.requests.inc(1, command, str(code))
        self.duration.observe(took, command)
        log.info("request command=%s container=%s ifname=%s exit=%d took_ms=%.1f%s", command, container,
                 env.get("CNI_IFNAME", "-"), code, took * 1000, f" error={out[:300]}" if code else "")

    def _bug(self, e: BaseException) -> None:
        log.error("unexpected failure", exc_info=e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knet-cni-agent", description=__doc__.splitlines()[0])
    p.add_argument("--socket", default="/run/knet/cni.sock")
    p.add_argument("--concurrency", type=int, default=32,
                   help="requests run at once (more wait; with ipMasq most of a request is iptables)")
    p.add_argument("--metrics-bind-address", default=None,
                   help="host:port for /metrics and /healthz (default: none)")
    daemon.add_logging_arguments(p)
    args = p.parse_args(argv)
    logs.setup("cni-agent", args.log_level, fmt=args.logging_format)
    agent = Agent(args.socket, args.concurrency)
    main_pid = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:  # a forked child (iptables-restore) inherited the handler
            os._exit(0)
        log.info("signal %d: shutting down", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.metrics_bind_address:
        metrics.serve(agent.registry, args.metrics_bind_address, agent.health)
    agent.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
