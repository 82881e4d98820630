"""A real etcd and an API server on 127.0.0.1 (random free ports, temp dirs), killed at the end
whatever happened; a `kubernetes` client and a kubectl 1.20 runner bound to them. The server is
knet-apiserver ("lab") and, when scripts/install-anchors has built them, the real kube-apiserver
with kube-controller-manager ("real"): every test runs against both, and a difference between
them is a finding (see `lab_only`).

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
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from knet_testing import anchors
from knet_testing.apiserver_env import REPO, Etcd, start_apiserver, start_etcd, stop
from lab.apiserver import auth

KUBECTL_DIR = os.path.join(REPO, ".venv", "kubectl-1.20")
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
OTHER_TOKEN = "kproxy-" + uuid.uuid4().hex
# A user bound to nothing (no groups of its own): what RBAC tests grant things to.
JANE_TOKEN = "jane-" + uuid.uuid4().hex
KCM_TOKEN = "kcm-" + uuid.uuid4().hex
# Upstream kube-proxy's identity (kubeadm's): what the bootstrap role system:node-proxier grants.
KUBE_PROXY_TOKEN = "kube-proxy-" + uuid.uuid4().hex


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
    flavour: str = "lab"  # "lab": knet-apiserver; "real": kube-apiserver (+ kube-controller-manager)
    controllers: subprocess.Popen | None = None
    etcd: Etcd | None = None


def start_server(etcd: Etcd, tmp: str, prefix: str, extra: list[str] = (), flavour: str = "lab",
                 controllers: bool = False) -> Server:
    # Both servers authorize with RBAC: admin and kproxy in system:masters, jane in no group.
    tokens = f'# test tokens\n{ADMIN_TOKEN},admin,admin\n{OTHER_TOKEN},kproxy,kproxy\n{JANE_TOKEN},jane,jane,""\n' \
        f'{KUBE_PROXY_TOKEN},system:kube-proxy,system:kube-proxy,""\n'
    if flavour == "real":
        p = anchors.start_kube_apiserver(tmp, etcd.url, prefix, tokens + f"{KCM_TOKEN},{anchors.KCM_USER}\n",
                                         *extra)
    else:
        p = start_apiserver(tmp, etcd.url, prefix, anchors.kube_tokens(tokens), "--authorization-mode", "RBAC",
                            *extra)
    url = p.urls[0]
    kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "admin.kubeconfig"), url, "admin", ADMIN_TOKEN, "test",
                                       p.certs.ca_pem())
    srv = Server(url, prefix, kubeconfig, p.certs.ca_cert, tmp, p.proc, p.log, p.argv, flavour, etcd=etcd)
    if controllers:
        try:
            srv.controllers = anchors.start_kube_controller_manager(tmp, p, KCM_TOKEN).proc
        except BaseException:
            stop(p.proc)
            raise
    return srv


@pytest.fixture(scope="session", params=["lab", "real"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The API server with its own etcd: Debian's for the lab's server (as the lab runs it), the
    one kube-apiserver is paired with (scripts/install-anchors) for the real one."""
    real = request.param == "real"
    with running_server(request.param, controllers=real) as srv:
        if real:  # kube-apiserver makes default/kubernetes a moment after it is ready
            _wait_kubernetes_service(srv)
        yield srv


@contextlib.contextmanager
def running_server(flavour: str, extra: list[str] = (), controllers: bool = False) -> Iterator[Server]:
    """An API server of `flavour` with its own etcd in a temp dir (skips when they are not
    there); on exit its controllers (`srv.controllers`, which the caller may set), the server and
    etcd are stopped and the server must have exited cleanly on SIGTERM."""
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    real = flavour == "real"
    if real and (why := anchors.missing("kube-apiserver", "kube-controller-manager", "etcd")):
        pytest.skip(why)
    tmp = tempfile.mkdtemp(prefix="knet-apiserver-")
    etcd = srv = None
    try:
        etcd = start_etcd(tmp, binary=anchors.binary("etcd") if real else "etcd")
        srv = start_server(etcd, tmp, "/registry-" + uuid.uuid4().hex[:8], extra, flavour=flavour,
                           controllers=controllers)
        yield srv
    finally:
        code = None
        if srv is not None:
            stop(srv.controllers)
            code = stop(srv.proc)
        if etcd is not None:
            stop(etcd.proc)
        shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"{flavour} API server did not exit cleanly on SIGTERM (exit {code})"


def _wait_kubernetes_service(srv: Server) -> None:
    from kubernetes import client, config
    api = config.new_client_from_config(config_file=srv.kubeconfig)
    try:
        deadline = time.monotonic() + 60
        while not client.CoreV1Api(api).list_namespaced_service("default",
                                                                field_selector="metadata.name=kubernetes").items:
            assert time.monotonic() < deadline, "no default/kubernetes Service"
            time.sleep(0.2)
    finally:
        api.close()


def stored_keys(etcd: Etcd, server: Server, ns: str) -> list[str]:
    """The server's keys in etcd, for "a rejected request wrote nothing": without other tests'
    namespaces, which the controller manager may still be emptying, and without what it writes on
    its own (events, leases)."""
    def quiet(key: str) -> bool:
        rest = key[len(server.prefix):]
        return not (rest.startswith(("/events/", "/leases/")) or ("/t-" in rest and f"/{ns}" not in rest))
    return [k for k in etcd.keys(server.prefix + "/") if quiet(k)]


@pytest.fixture(scope="session")
def etcd(server: Server) -> Etcd:
    return server.etcd


@pytest.fixture
def lab_only(server: Server) -> None:
    """For a test of something only the lab API server does (it stands in for controllers and
    conventions a real cluster has elsewhere); the reason is in the test's docstring."""
    if server.flavour != "lab":
        pytest.skip("lab API server behaviour")


@pytest.fixture(scope="session")
def api(server: Server):
    from kubernetes import client, config
    c = config.new_client_from_config(config_file=server.kubeconfig)
    yield c
    c.close()
    del client


@pytest.fixture
def ns(api, server: Server) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards)."""
    from kubernetes import client
    name = "t-" + uuid.uuid4().hex[:8]
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    if server.flavour == "real":
        # kube-apiserver refuses pods until the namespace's `default` ServiceAccount exists, which
        # the controller manager makes a moment later (a real cluster's new namespace does that too).
        deadline = time.monotonic() + 60
        while not [a for a in core.list_namespaced_service_account(name).items if a.metadata.name == "default"]:
            assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
            time.sleep(0.1)
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
