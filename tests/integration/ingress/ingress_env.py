"""The ingress test environment: a lab, backend pods, a controller whose nginx runs in node1's
network namespace (host-network style, as ingress-nginx often runs), objects kept in memory,
and clients in the lab's client namespace (curl --resolve, Python sockets, request streams).

No socket or request here originates in the root namespace: curl runs through `ip netns exec`
in the client namespace and Python sockets are created inside lab namespaces.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ingress.compiler import Options, Snapshot
from ingress.controller import Controller, SyncResult
from ingress.nginx import Nginx
from ingress.nginxconf import Settings
from knet import netns
from knet.kube.models import KubeObject
from knet_testing.ingress import endpoint_slice, service
from lab import api

BACKEND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend.py")
STATUS_PORT = 10246


def ns_socket(ns: str, timeout: float = 5.0) -> socket.socket:
    with netns.enter(ns):
        assert netns.inode() == netns.inode(ns)  # never a socket of the root namespace
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    return s


class Env:
    def __init__(self, lab: api.Lab) -> None:
        self.lab = lab
        self.node_ns = lab.netns("node1")
        self.client_ns = lab.netns("client")
        self.ip = lab.node("node1")["ip"]
        self.objects: dict[tuple[str, str, str], KubeObject] = {}
        self.pods: dict[str, dict] = {}
        run_dir = os.path.join(lab.state_dir, "ingress")
        self.settings = Settings(run_dir=run_dir, worker_processes="2", status_port=STATUS_PORT)
        self.nginx = Nginx(run_dir, STATUS_PORT, netns=self.node_ns)
        self.status: list[tuple[str, str, list]] = []
        self.controller = Controller(self.settings, Options(), self.nginx, publish=[self.ip],
                                     status_writer=lambda ns, n, e: self.status.append((ns, n, e)))
        self.started = False

    # -- objects
    def put(self, *objs: KubeObject) -> None:
        for o in objs:
            self.objects[(type(o).__name__, o.namespace or "default", o.name)] = o

    def remove(self, kind: str, name: str, namespace: str = "default") -> None:
        self.objects.pop((kind, namespace, name), None)

    def of(self, kind: str) -> list:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    def snapshot(self) -> Snapshot:
        return Snapshot.of(self.of("Ingress"), self.of("IngressClass"), self.of("Service"), self.of("EndpointSlice"),
                           self.of("Secret"))

    def sync(self) -> SyncResult:
        if not self.started:
            self.started = True
            return self.controller.start(self.snapshot())
        r = self.controller.sync(self.snapshot())
        assert r.error is None, r.error
        return r

    # -- backends
    def backend_pod(self, pod: str, display: str, node: str = "node1") -> str:
        cmd = f"exec python3 {shlex.quote(BACKEND)} --name {shlex.quote(display)} --port 80"
        rec = self.lab.add_pod(node, pod, cmd=cmd)
        self.pods[pod] = rec
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), ns_socket(self.node_ns, 0.5) as s:
                s.connect((rec["ip"], 80))
                return rec["ip"]
            time.sleep(0.05)
        raise RuntimeError(f"backend {pod} did not start")

    def kill(self, pod: str, graceful: bool = True) -> None:
        """Stop the pod's server process (SIGTERM: graceful; SIGKILL: a crash); the pod itself
        (its address) stays until `stop_pod`, as a crashed container's sandbox does."""
        pid = self.pods[pod]["pids"]["cmd"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.02)

    def stop_pod(self, pod: str, graceful: bool = True) -> None:
        self.kill(pod, graceful)
        self.pods.pop(pod)
        self.lab.del_pod(pod)

    def service(self, name: str, pods: list[str], terminating: list[str] = (), port: int = 80,
                port_name: str = "") -> None:
        ips = [self.pods[p]["ip"] for p in pods]
        term = [self.pods[p]["ip"] for p in terminating]
        self.put(service(name, (port_name, port)),
                 endpoint_slice(name, ips, port=80, port_name=port_name, terminating=term))

    # -- clients in the client namespace
    def curl(self, host: str, path: str = "/", *args: str, scheme: str = "http", port: int | None = None,
             timeout: float = 10) -> tuple[int, str]:
        port = port or (443 if scheme == "https" else 80)
        argv = ["curl", "-s", "-S", "-o", "-", "-w", "\n%{http_code}", "-m", str(timeout),
                "--resolve", f"{host}:{port}:{self.ip}", *args, f"{scheme}://{host}:{port}{path}"]
        r = self.lab.exec("client", argv)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def who(self, host: str, path: str = "/") -> str:
        """The backend that answered (first line), or "<status> <body>" when it was not 200."""
        code, body = self.curl(host, path)
        return body.split("\n", 1)[0] if code == 200 else f"{code} {body.strip()}"

    def close(self) -> None:
        self.nginx.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class StreamStats:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    backends: Counter = field(default_factory=Counter)
    keepalive_retries: int = 0


class Stream:
    """A steady request stream from the client namespace: `threads` loops opening a connection per
    request, plus `keepalive` loops reusing one connection (retrying once, as curl and browsers
    do, when a reused idle connection turns out closed before any response byte — nginx closes
    idle keep-alive connections of old workers on reload). Anything but a 200 is a failure."""

    def __init__(self, env: Env, host: str, path: str = "/", threads: int = 3, keepalive: int = 1,
                 pause: float = 0.01) -> None:
        self.env, self.host, self.path, self.pause = env, host, path, pause
        self.stats = StreamStats()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.workers = [threading.Thread(target=self._fresh, daemon=True) for _ in range(threads)]
        self.workers += [threading.Thread(target=self._keepalive, daemon=True) for _ in range(keepalive)]

    def __enter__(self) -> Stream:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(15)

    def _record(self, status: int | None, body: str, error: str = "") -> None:
        with self.lock:
            if status == 200:
                self.stats.ok += 1
                self.stats.backends[body.split("\n", 1)[0]] += 1
            else:
                self.stats.failures.append(f"{time.strftime('%X')} status={status} {error or body[:120]}")

    def _connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.env.ip, 80, timeout=20)
        conn.sock = ns_socket(self.env.client_ns, 20)
        conn.sock.connect((self.env.ip, 80))
        return conn

    def _fresh(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn = self._connection()
                conn.request("GET", self.path, headers={"Host": self.host, "Connection": "close"})
                resp = conn.getresponse()
                self._record(resp.status, resp.read().decode(errors="replace"))
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                self._record(None, "", repr(e))
            time.sleep(self.pause)

    def _keepalive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop_event.is_set():
            for attempt in (0, 1):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = self._connection()
                    conn.request("GET", self.path, headers={"Host": self.host})
                    resp = conn.getresponse()
                    self._record(resp.status, resp.read().decode(errors="replace"))
                    if resp.will_close:
                        conn.close()
                        conn = None
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    with contextlib.suppress(Exception):
                        conn.close()  # type: ignore[union-attr]
                    conn = None
                    if reused and attempt == 0:
                        with self.lock:
                            self.stats.keepalive_retries += 1
                        continue
                    self._record(None, "", repr(e))
                    break
                except (OSError, http.client.HTTPException) as e:
                    conn = None
                    self._record(None, "", repr(e))
                    break
            time.sleep(self.pause)
        if conn is not None:
            conn.close()
