"""A real etcd and the lab's knet-apiserver on 127.0.0.1 (free ports, temp dirs, HTTPS with a
bearer token), restartable on the same port, for the informer tests. Everything started here is
stopped at the end whatever happens. Only loopback sockets in the root namespace."""

from __future__ import annotations

import contextlib
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

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOKEN = "kube-informer-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-3000:]
    except FileNotFoundError:
        return ""


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s: {_tail(log)}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Cluster:
    """etcd + knet-apiserver; `restart_apiserver()` keeps the port, etcd and the key prefix."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.prefix = "/registry-" + uuid.uuid4().hex[:8]
        self.etcd_port, self.peer_port, self.api_port = free_port(), free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.url = f"https://127.0.0.1:{self.api_port}"
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.api_log = os.path.join(tmp, "apiserver.log")
        self.kubeconfig = os.path.join(tmp, "kubeconfig")

    def start_etcd(self) -> None:
        log = os.path.join(self.tmp, "etcd.log")
        peer = f"http://127.0.0.1:{self.peer_port}"
        with open(log, "ab") as out:
            self.etcd = subprocess.Popen(
                ["etcd", "--name", "k", "--data-dir", os.path.join(self.tmp, "etcd"),
                 "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"k={peer}", "--log-level", "error"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait(lambda: self.etcdctl("endpoint", "health", check=False).returncode == 0, 20, "etcd", self.etcd, log)

    def etcdctl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["etcdctl", "--endpoints", self.etcd_url, "--dial-timeout", "2s", *args],
                              capture_output=True, text=True, input=stdin, timeout=20,
                              env=dict(os.environ, ETCDCTL_API="3"))
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdctl {args}: {proc.stderr}")
        return proc

    def revision(self) -> int:
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        return int(out[0]["Status"]["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd at its current revision: every older resourceVersion is gone (410)."""
        rev = self.revision()
        self.etcdctl("compact", str(rev))
        return rev

    def start_apiserver(self) -> None:
        from lab.apiserver import pki

        tokens = os.path.join(self.tmp, "tokens.csv")
        with open(tokens, "w") as f:
            f.write(f"{TOKEN},informer-test,informer-test\n")
        certs = pki.ensure(os.path.join(self.tmp, "pki"), ["127.0.0.1"])
        ready = os.path.join(self.tmp, "ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        argv = [sys.executable, "-m", "lab.apiserver.main", "--etcd", self.etcd_url, "--etcd-prefix", self.prefix,
                "--tokens", tokens, "--listen", f"127.0.0.1:{self.api_port}", "--ready-file", ready,
                "--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key]
        with open(self.api_log, "ab") as out:
            self.apiserver = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              cwd=REPO)
        _wait(lambda: os.path.exists(ready), 30, "knet-apiserver", self.apiserver, self.api_log)
        # A kubeconfig as kubectl would have it (CA file + bearer token): the informer is configured
        # exactly as on a real cluster.
        with open(self.kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "lab",
                       "clusters": [{"name": "lab", "cluster": {"server": self.url,
                                                                "certificate-authority": certs.ca_cert}}],
                       "users": [{"name": "u", "user": {"token": TOKEN}}],
                       "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "u"}}]}, f)

    def stop_apiserver(self) -> None:
        _stop(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def put_raw(self, plural_key: str, namespace: str, name: str, obj: dict) -> None:
        """Write an object into etcd behind the server's back (`plural_key`: the server's etcd
        name, e.g. services/specs)."""
        self.etcdctl("put", f"{self.prefix}/{plural_key}/{namespace}/{name}", stdin=json.dumps(obj))

    def stop(self) -> None:
        self.stop_apiserver()
        _stop(self.etcd)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    tmp = tempfile.mkdtemp(prefix="knet-kube-it-")
    c = Cluster(tmp)
    try:
        c.start_etcd()
        c.start_apiserver()
        yield c
    finally:
        c.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def api(cluster: Cluster):
    from knet.kube import new_api_client

    client = new_api_client(cluster.kubeconfig)
    yield client
    client.close()


@pytest.fixture
def ns(api) -> Iterator[str]:
    from knet.kube import client as kc

    name = "it-" + uuid.uuid4().hex[:8]
    kc.create(api, "Namespace", {"metadata": {"name": name}})
    yield name
    # The server may be down after a failed restart test; the module teardown stops everything.
    with contextlib.suppress(Exception):
        kc.delete(api, "Namespace", name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(cluster, Cluster):
        report.sections.append(("knet-apiserver log (tail)", _tail(cluster.api_log)))
