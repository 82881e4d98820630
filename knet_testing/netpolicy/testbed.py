"""The netpolicy testbed (tests and `bench.netpol`): the matrix lab and a loopback control plane.

- `matrix_lab(name)`: a lab (`lab.api`) with namespaces x, y, z x pods a, b, c spread over its
  nodes, the matrix servers running in every pod and an `NftBackend` per node (programming only
  the lab's node namespaces). Always torn down.
- `control_plane()`: a private etcd + knet-apiserver on loopback ports, admin kubeconfig.
- `Daemon.start(...)`: a `netpolicy` daemon talking to it and programming a lab node (--netns).
Nothing here sends traffic from the caller's namespace except to loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from knet import netns
from knet.kube import client as kube
from knet_testing.netpolicy import matrix, probe, scenarios
from lab import api
from lab.apiserver import auth, pki
from netpolicy.backend import NftBackend
from netpolicy.compiler import compile_policies

BIN = os.path.dirname(sys.executable)


@dataclass
class MatrixLab:
    lab: api.Lab
    pods: dict[str, tuple[str, str]]  # key -> (netns, ip)
    nodes: dict[str, str]  # pod key -> node
    backends: dict[str, NftBackend]
    last: dict = field(default_factory=dict)

    @property
    def ctx(self) -> scenarios.Ctx:
        return scenarios.Ctx({k: ip for k, (_, ip) in self.pods.items()})

    def node_ns(self, node: str) -> str:
        return self.lab.netns(node)

    def program(self, step: scenarios.Step, full: bool = False, flush: bool = True) -> tuple[list, list, list]:
        """Compile the step for each node and apply it there; then (flush) forget conntrack entries:
        a UDP probe of the previous step may leave an entry that a new probe reusing the same source
        port would ride on as an established flow (clusters keep such flows too)."""
        policies, pods, namespaces = scenarios.build(step, self.ctx, self.nodes)
        for node, backend in self.backends.items():
            backend.apply(compile_policies(policies, pods, namespaces, node=node), full=full)
            if flush:
                netns.run(self.node_ns(node), ["conntrack", "-F"])
        self.last = {"policies": policies, "pods": pods, "namespaces": namespaces}
        return policies, pods, namespaces

    def check(self, step: scenarios.Step, ports=matrix.PORTS) -> tuple[matrix.Table, matrix.Table]:
        policies, pods, namespaces = self.program(step)
        want = matrix.expected(policies, pods, namespaces, matrix.cells(ports=ports))
        return want, probe.probe_until_settled(want, self.pods)


@contextlib.contextmanager
def matrix_lab(name: str, nodes: int = 2) -> Iterator[MatrixLab]:
    try:
        lab = api.up(name, nodes=nodes)
        node_names = [f"node{i + 1}" for i in range(nodes)]
        placement = {}
        for i, key in enumerate(matrix.pod_keys()):
            ns, pod = key.split("/")
            placement[key] = node_names[i % nodes]
            lab.add_pod(placement[key], pod, namespace=ns)
        records = lab.pods()
        pods = {key: (records[key]["netns"], records[key]["ip"]) for key in placement}
        backends = {}
        for node in node_names:
            backend = NftBackend(lab.netns(node))
            if not (backend.netns or "").startswith(name + "-"):  # never anything but the lab's node
                raise RuntimeError(f"refusing to program {backend.netns}")
            if not backend.ensure_bridge_netfilter():
                raise RuntimeError("br_netfilter is not available: same-node traffic cannot be filtered")
            backends[node] = backend
        with probe.Servers({k: ns for k, (ns, _) in pods.items()}):
            yield MatrixLab(lab, pods, placement, backends)
    finally:
        api.down(name)


# --- loopback control plane and daemons ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(log, errors="replace") as f:
                raise RuntimeError(f"{what} did not come up: {f.read()[-2000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class ControlPlane:
    kubeconfig: str
    tmp: str


@contextlib.contextmanager
def control_plane() -> Iterator[ControlPlane]:
    tmp = tempfile.mkdtemp(prefix="kt-netpol-cp-")
    procs: list[subprocess.Popen] = []
    try:
        client, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{client}"
        log = os.path.join(tmp, "etcd.log")
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                ["etcd", "--name", "t", "--data-dir", os.path.join(tmp, "etcd"), "--listen-client-urls", url,
                 "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait(lambda: _http_ok(url + "/health"), 20, "etcd", procs[0], log)
        token = secrets.token_hex(16)
        tokens = os.path.join(tmp, "tokens.csv")
        with open(tokens, "w") as f:
            f.write(f"{token},admin,admin\n")
        certs = pki.ensure(os.path.join(tmp, "pki"), ["127.0.0.1"])
        ready = os.path.join(tmp, "ready.json")
        log = os.path.join(tmp, "apiserver.log")
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lab.apiserver.main", "--etcd", url, "--tokens", tokens,
                 "--listen", "127.0.0.1:0", "--ready-file", ready, "--tls-cert-file", certs.cert,
                 "--tls-private-key-file", certs.key], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait(lambda: os.path.exists(ready), 30, "knet-apiserver", procs[1], log)
        with open(ready) as f:
            server = json.load(f)["listen"][0]
        kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "admin.kubeconfig"), server, "admin", token, "kt",
                                           certs.ca_pem())
        yield ControlPlane(kubeconfig, tmp)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def register_pods(api, ml: MatrixLab) -> None:
    """The matrix namespaces and pods as API objects (pods bound to their node, with their IPs)."""
    for ns in matrix.NAMESPACES:
        kube.create(api, "Namespace", matrix.make_namespace(ns).to_dict())
    for key, (_, ip) in ml.pods.items():
        ns, name = key.split("/")
        body = matrix.make_pod(ns, name, ip, ml.nodes[key]).to_dict()
        body.pop("status")
        for c in body["spec"]["containers"]:
            c["image"] = "registry.k8s.io/e2e-test-images/agnhost:2.47"
        kube.create(api, "Pod", body, ns)
        kube.patch_status(api, "Pod", name, {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}, ns)


@dataclass
class Daemon:
    proc: subprocess.Popen
    metrics_url: str
    log: str

    @classmethod
    def start(cls, kubeconfig: str, node: str, node_netns: str, tmp: str, *extra: str) -> Daemon:
        port = free_port()
        log = os.path.join(tmp, f"netpolicy-{node}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [os.path.join(BIN, "netpolicy"), "--kubeconfig", kubeconfig, "--node-name", node,
                 "--netns", node_netns, "--metrics-bind-address", f"127.0.0.1:{port}", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return cls(proc, f"http://127.0.0.1:{port}", log)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_healthy(self, timeout: float = 30) -> None:
        _wait(lambda: self.get("/healthz")[0] == 200, timeout, "netpolicy", self.proc, self.log)

    def logs(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()
