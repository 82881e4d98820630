"""The ingress test environment: a lab, backend pods, a controller whose nginx runs in node1's
network namespace (host-network style, as ingress-nginx often runs), objects kept in memory,
and clients in the lab's client namespace (curl --resolve, Python sockets, request streams).

No socket or request here originates in the root namespace: curl runs through `ip netns exec`
in the client namespace and Python sockets are created inside lab namespaces.
"""

from __future__ import annotations

import contextlib
import http.client
import json
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
NODE_V6, CLIENT_V6 = "fd00:33::11", "fd00:33::100"  # the underlay fd00:33::/64
POD_GATEWAY_V6 = "fd00:10:244:1::1"  # node1's pod /64 in fd00:10:244::/56


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

    # -- IPv6 (the lab's --ip-family dual is not there yet: the addresses are added here)
    def enable_ipv6(self) -> None:
        """IPv6 beside IPv4 on the underlay (node1 NODE_V6, the client CLIENT_V6) and on node1's
        pod bridge (POD_GATEWAY_V6/64), with nodad: usable at once. Idempotent."""
        _add_v6(self.node_ns, _ifname_of(self.node_ns, self.ip), f"{NODE_V6}/64")
        _add_v6(self.client_ns, _ifname_of(self.client_ns, self.lab.data()["client"]["ip"]), f"{CLIENT_V6}/64")
        _add_v6(self.node_ns, "cni0", f"{POD_GATEWAY_V6}/64")

    def backend_pod_v6(self, pod: str, display: str, v6: str) -> str:
        """A backend pod on node1 listening on both families, with `v6` beside its IPv4 address."""
        self.backend_pod(pod, display, "node1", "--dual-stack")
        pod_ns = self.pods[pod]["netns"]
        _add_v6(pod_ns, _ifname_of(pod_ns, self.pods[pod]["ip"]), f"{v6}/64")
        _wait_listening(self.node_ns, v6, pod)
        return v6

    # -- backends
    def backend_pod(self, pod: str, display: str, node: str = "node1", *extra: str) -> str:
        cmd = f"exec python3 {shlex.quote(BACKEND)} --name {shlex.quote(display)} --port 80 {shlex.join(extra)}"
        rec = self.lab.add_pod(node, pod, cmd=cmd)
        self.pods[pod] = rec
        _wait_listening(self.node_ns, rec["ip"], pod)
        return rec["ip"]

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
                port_name: str = "", v6: list[str] = ()) -> None:
        """A Service of `pods` (IPv4 slice); `v6`: IPv6 endpoint addresses, in a slice of their own."""
        ips = [self.pods[p]["ip"] for p in pods]
        term = [self.pods[p]["ip"] for p in terminating]
        self.put(service(name, (port_name, port)))
        self.remove("EndpointSlice", f"{name}-a")
        self.remove("EndpointSlice", f"{name}-v6")
        if ips or term or not v6:
            self.put(endpoint_slice(name, ips, port=80, port_name=port_name, terminating=term))
        if v6:
            self.put(endpoint_slice(name, list(v6), port=80, port_name=port_name, suffix="v6"))

    # -- clients in the client namespace
    def curl(self, host: str, path: str = "/", *args: str, scheme: str = "http", port: int | None = None,
             timeout: float = 10, address: str | None = None) -> tuple[int, str]:
        """`host` resolved to node1's address (`address`: another one, e.g. NODE_V6); a bracketed
        IPv6 literal as `host` is asked as it is."""
        port = port or (443 if scheme == "https" else 80)
        to = address or self.ip
        resolve = [] if host.startswith("[") else ["--resolve", f"{host}:{port}:{f'[{to}]' if ':' in to else to}"]
        argv = ["curl", "-g", "-s", "-S", "-o", "-", "-w", "\n%{http_code}", "-m", str(timeout),
                *resolve, *args, f"{scheme}://{host}:{port}{path}"]
        r = self.lab.exec("client", argv)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def who(self, host: str, path: str = "/") -> str:
        """The backend that answered (first line), or "<status> <body>" when it was not 200."""
        code, body = self.curl(host, path)
        return body.split("\n", 1)[0] if code == 200 else f"{code} {body.strip()}"

    def close(self) -> None:
        self.nginx.stop()


def _ifname_of(ns: str, ip: str) -> str:
    """The interface of `ns` that holds `ip`."""
    out = netns.run(ns, ["ip", "-j", "addr", "show"], check=True).stdout
    for link in json.loads(out):
        if any(a.get("local") == ip for a in link.get("addr_info", [])):
            return link["ifname"]
    raise RuntimeError(f"no interface of {ns} holds {ip}")


def _add_v6(ns: str, ifname: str, cidr: str) -> None:
    r = netns.run(ns, ["ip", "-6", "addr", "replace", cidr, "dev", ifname, "nodad"])
    if r.returncode != 0:
        raise RuntimeError(f"ip -6 addr replace {cidr} dev {ifname} in {ns}: {r.stderr.strip()}")


def _wait_listening(ns: str, ip: str, what: str, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    while time.monotonic() < end:
        with netns.enter(ns):
            s = socket.socket(family, socket.SOCK_STREAM)
        with contextlib.suppress(OSError), s:
            s.settimeout(0.5)
            s.connect((ip, 80))
            return
        time.sleep(0.05)
    raise RuntimeError(f"backend {what} did not start on {ip}")


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
