"""A real etcd and a knet-apiserver on 127.0.0.1 (random free ports, temp dirs), killed at the end
whatever happened; a `kubernetes` client and a kubectl 1.20 runner bound to them.

kubectl: $KNET_KUBECTL, else a kubectl 1.20 found on PATH or unpacked in .venv/kubectl-1.20,
else Debian's kubernetes-client package (1.20) is fetched with `apt-get download` and unpacked
there (a machine may already have another package's /usr/bin/kubectl, which that package
conflicts with, so it is not installed system-wide), else any kubectl on PATH.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.apiserver import auth, pki

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KUBECTL_DIR = os.path.join(REPO, ".venv", "kubectl-1.20")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
OTHER_TOKEN = "kproxy-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: str) -> str:
    if not log:
        return ""
    with open(log, errors="replace") as f:
        return f.read()[-3000:]


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s: {_tail(log)}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Etcd:
    url: str
    proc: subprocess.Popen
    log: str

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(["etcdctl", "--endpoints", self.url, *args], capture_output=True, text=True, env=env,
                              timeout=20)

    def keys(self, prefix: str) -> list[str]:
        out = self.etcdctl("get", "--prefix", "--keys-only", prefix).stdout
        return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    tmp = tempfile.mkdtemp(prefix="knet-apiserver-etcd-")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    log = os.path.join(tmp, "etcd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["etcd", "--name", "t", "--data-dir", os.path.join(tmp, "data"),
                                 "--listen-client-urls", url, "--advertise-client-urls", url,
                                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                                 "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    e = Etcd(url, proc, log)
    try:
        _wait(lambda: e.etcdctl("endpoint", "health").returncode == 0, 20, "etcd", proc, log)
        yield e
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Server:
    url: str
    prefix: str
    kubeconfig: str
    ca: str
    tmp: str
    proc: subprocess.Popen
    log: str
    argv: list[str]


def start_server(etcd: Etcd, tmp: str, prefix: str, extra: list[str] = ()) -> Server:
    os.makedirs(tmp, exist_ok=True)
    tokens = os.path.join(tmp, "tokens.csv")
    with open(tokens, "w") as f:
        f.write(f"# test tokens\n{ADMIN_TOKEN},admin,admin\n{OTHER_TOKEN},kproxy,kproxy\n")
    certs = pki.ensure(os.path.join(tmp, "pki"), ["127.0.0.1"])
    ready = os.path.join(tmp, "ready.json")
    argv = [sys.executable, "-m", "lab.apiserver.main", "--etcd", etcd.url, "--etcd-prefix", prefix,
            "--tokens", tokens, "--listen", "127.0.0.1:0", "--ready-file", ready,
            "--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key, *extra]
    log = os.path.join(tmp, "apiserver.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    _wait(lambda: os.path.exists(ready), 20, "knet-apiserver", proc, log)
    with open(ready) as f:
        url = json.load(f)["listen"][0]
    kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "admin.kubeconfig"), url, "admin", ADMIN_TOKEN, "test",
                                       certs.ca_pem())
    return Server(url, prefix, kubeconfig, certs.ca_cert, tmp, proc, log, argv)


@pytest.fixture(scope="session")
def server(etcd: Etcd) -> Iterator[Server]:
    tmp = tempfile.mkdtemp(prefix="knet-apiserver-")
    srv = start_server(etcd, tmp, "/registry-" + uuid.uuid4().hex[:8])
    try:
        yield srv
    finally:
        code = _stop(srv.proc)
        shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"knet-apiserver did not exit cleanly on SIGTERM (exit {code})"


@pytest.fixture(scope="session")
def api(server: Server):
    from kubernetes import client, config
    c = config.new_client_from_config(config_file=server.kubeconfig)
    yield c
    c.close()
    del client


@pytest.fixture
def ns(api) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards)."""
    from kubernetes import client
    name = "t-" + uuid.uuid4().hex[:8]
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    with contextlib.suppress(Exception):
        core.delete_namespace(name)
    # Namespace deletion finishes in the background; wait, so the next test sees a quiet store.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and name in {n.metadata.name for n in core.list_namespace().items}:
        time.sleep(0.05)


def _kubectl_version(path: str) -> str:
    try:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout)["clientVersion"]["gitVersion"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return ""


def find_kubectl() -> str | None:
    candidates = [os.environ.get("KNET_KUBECTL", ""), os.path.join(KUBECTL_DIR, "usr", "bin", "kubectl"),
                  shutil.which("kubectl") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK) and _kubectl_version(c).startswith("v1.20"):
            return c
    if os.environ.get("KNET_KUBECTL"):
        return os.environ["KNET_KUBECTL"]
    # Debian's package via apt's own client, unpacked privately (see the module docstring).
    with tempfile.TemporaryDirectory() as d:
        got = subprocess.run(["apt-get", "download", "kubernetes-client"], cwd=d, capture_output=True, timeout=300)
        debs = glob.glob(os.path.join(d, "kubernetes-client_*.deb"))
        if got.returncode == 0 and debs:
            subprocess.run(["dpkg-deb", "-x", debs[0], KUBECTL_DIR], check=True, timeout=120)
            path = os.path.join(KUBECTL_DIR, "usr", "bin", "kubectl")
            if _kubectl_version(path).startswith("v1.20"):
                return path
    # Last resort: whatever kubectl there is (the server works with current ones too).
    other = shutil.which("kubectl")
    return other if other and _kubectl_version(other) else None


@dataclass
class Kubectl:
    path: str
    kubeconfig: str
    cache: str

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        argv = [self.path, "--kubeconfig", kubeconfig or self.kubeconfig, "--cache-dir", self.cache, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def kubectl(server: Server) -> Kubectl:
    path = find_kubectl()
    if path is None:
        pytest.skip("kubectl 1.20 (Debian kubernetes-client) is not available")
    return Kubectl(path, server.kubeconfig, os.path.join(server.tmp, "kubectl-cache"))
