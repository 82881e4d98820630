"""`knet-cni-agent`: the node-side server the thin `knet-cni` executable hands requests to.

It runs in the node's network namespace with the plugin (and pyroute2) already imported, so a
request costs only its netlink work. Each connection carries one request: the runtime's
environment, the stdin bytes and the caller's netns inode; the answer is the exit status and
stdout the plugin would have produced. Concurrency is bounded; IPAM locking is the same
file lock the direct path uses, so both can run at once safely.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socketserver
import threading

from cni import plugin
from knet import daemon, logs

log = logging.getLogger("knet.cni.agent")
MAX_REQUEST = 4 * 1024 * 1024


class Handler(socketserver.StreamRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        data = self.rfile.read(MAX_REQUEST + 1)
        if len(data) > MAX_REQUEST:
            self._reply({"exit": 1, "stdout": json.dumps({"cniVersion": "1.1.0", "code": 6,
                                                           "msg": "request too large"})})
            return
        try:
            req = json.loads(data)
            env = {str(k): str(v) for k, v in req["env"].items()}
            stdin = str(req["stdin"]).encode("latin-1")
            caller_ns = int(req["netns_inode"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
            log.warning("malformed agent request (%d bytes) ignored", len(data))
            self._reply({"wrong_netns": False, "error": "malformed request"})
            return
        if caller_ns != self.server.netns_inode:
            self._reply({"wrong_netns": True})
            return
        with self.server.slots:
            code, out = plugin.run(env, stdin)
        log.info("request command=%s container=%s exit=%d", env.get("CNI_COMMAND"),
                 env.get("CNI_CONTAINERID", "-"), code)
        self._reply({"exit": code, "stdout": out})

    def _reply(self, obj: dict) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(obj).encode())


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, concurrency: int) -> None:
        self.netns_inode = os.stat("/proc/self/ns/net").st_ino
        self.slots = threading.BoundedSemaphore(concurrency)
        super().__init__(path, Handler)


def serve(path: str, concurrency: int = 16) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from a previous run
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    server = AgentServer(tmp, concurrency)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)  # appear only when ready to serve

    main_pid = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:  # a forked helper (e.g. of a library) inherited the handler
            os._exit(0)
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening socket=%s netns_inode=%d", path, server.netns_inode)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knet-cni-agent", description=__doc__.splitlines()[0])
    p.add_argument("--socket", default="/run/knet/cni.sock")
    p.add_argument("--concurrency", type=int, default=16)
    daemon.add_logging_arguments(p)
    args = p.parse_args(argv)
    logs.setup("cni-agent", args.log_level, fmt=args.logging_format)
    serve(args.socket, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
