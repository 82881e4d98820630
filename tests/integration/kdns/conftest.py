"""kdns end to end on loopback: a private etcd, the lab's API server (HTTPS, a bearer token), a
fake upstream resolver and a `kdns` process fed through its informers; `dig` as the client. The
DNS specification's cases also run against CoreDNS (kubernetes plugin, configured as kdns is) on
the same API server when scripts/install-anchors has built it: the `dns` fixture.

Everything listens on 127.0.0.1 ports picked at random; every process is stopped at the end
whatever happened. Nothing leaves the machine: upstream forwarding goes to `FakeUpstream`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from knet import netns
from knet.kube import client as kc
from knet_testing import anchors
from knet_testing.apiserver_env import HOST, free_port, start, start_apiserver, start_etcd, stop, tail, wait_for
from knet_testing.kdns import FakeUpstream

OWNERS = "/run/knet/kdns-tests"  # namespace name -> pid of the test session that made it


@pytest.fixture(scope="session")
def workdir() -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="kt-kdns-")
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def dns_netns() -> Iterator[str]:
    """A network namespace of our own (`ktd` + hex) standing in for a pod's: the API server also
    listens on its loopback, kdns can run inside it on a ClusterIP-like address."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    sweep_netns()
    with own_netns() as name:
        yield name


@contextlib.contextmanager
def own_netns() -> Iterator[str]:
    """A new `ktd` + hex namespace, registered before it exists (a crashed session's sweep finds
    it) and removed afterwards whatever happens."""
    name = "ktd" + secrets.token_hex(3)
    os.makedirs(OWNERS, exist_ok=True)
    with open(os.path.join(OWNERS, name), "w") as f:  # registered before it exists: never leaked
        f.write(str(os.getpid()))
    try:
        netns.create(name)
        yield name
    finally:
        remove_netns(name)


def remove_netns(name: str) -> None:
    """Kill what runs inside, remove the namespace; retried, because `ip netns del` fails (EBUSY)
    while any process on the machine sits in a mount namespace that copied /run/netns (every
    `ip netns exec` makes one). The owner file goes only with the namespace, so a later session's
    sweep finishes what this one could not."""
    for _ in range(50):
        netns.delete(name)
        if not netns.exists(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(OWNERS, name))
            return
        time.sleep(0.1)


def sweep_netns() -> None:
    """Namespaces of earlier sessions that died before their teardown (their creator is gone)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(OWNERS):
            try:
                with open(os.path.join(OWNERS, name)) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                continue  # a live session's
            except (OSError, ValueError):
                pass
            if re.fullmatch(r"ktd[0-9a-f]{6}", name):
                remove_netns(name)


@dataclass
class ApiServer:
    kubeconfig: str  # reaches the server from the root namespace
    netns_kubeconfig: str  # from inside dns_netns


@pytest.fixture(scope="session")
def apiserver(workdir: str, dns_netns: str) -> Iterator[ApiServer]:
    """etcd + knet-apiserver (HTTPS: client-go, in CoreDNS, sends no token over plain HTTP),
    listening in the root namespace and in dns_netns."""
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    from lab.apiserver import auth
    etcd = start_etcd(workdir)
    try:
        token = uuid.uuid4().hex
        api = start_apiserver(workdir, etcd.url, "/registry", f"{token},admin,admin\n", "--listen-netns",
                              f"{dns_netns}={HOST}:0")
        try:
            root_url, ns_url = api.urls[:2]
            ca = api.certs.ca_pem()
            yield ApiServer(
                auth.write_kubeconfig(os.path.join(workdir, "admin.kubeconfig"), root_url, "admin", token, ca_pem=ca),
                auth.write_kubeconfig(os.path.join(workdir, "netns.kubeconfig"), ns_url, "admin", token, ca_pem=ca))
        finally:
            stop(api.proc)
    finally:
        stop(etcd.proc)


@pytest.fixture(scope="session")
def kube(apiserver: ApiServer):
    api = kc.new_api_client(apiserver.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    records = {"www.example.com": ["192.0.2.53"], "cached.example.com": ["192.0.2.54"],
               "big.example.test": [f"198.51.100.{i}" for i in range(1, 101)]}
    with FakeUpstream(HOST, records, ttl=60, negative_ttl=30) as up:
        yield up


@dataclass
class DnsServer:
    """A DNS server under test on 127.0.0.1:`port`, asked with dig."""
    port: int
    proc: subprocess.Popen
    log: str
    name: str = "kdns"  # or "coredns"

    def dig(self, *args: str, tcp: bool = False) -> str:
        argv = ["dig", f"@{HOST}", "-p", str(self.port), "+tries=1", "+time=3", "+nocookie", *args]
        if tcp:
            argv.append("+tcp")
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout

    def short(self, *args: str) -> list[str]:
        return sorted(line for line in self.dig("+short", *args).splitlines() if line and not line.startswith(";"))

    def status(self, *args: str) -> str:
        out = self.dig(*args)
        for line in out.splitlines():
            if "status:" in line:
                return line.split("status:")[1].split(",")[0].strip()
        raise AssertionError(f"no status in dig output:\n{out}")


@dataclass
class Kdns(DnsServer):
    metrics: str = ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.metrics}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="session")
def kdns_processes(apiserver: ApiServer, upstream: FakeUpstream, workdir: str) -> Iterator[Callable[[str], Kdns]]:
    """kdns processes by UDP mode (fast path on the event loop / on its own thread), each started
    once for the session when first asked for."""
    if not shutil.which("dig"):
        pytest.skip("dig is not installed (bind9-dnsutils)")
    started: dict[str, Kdns] = {}

    def get(mode: str) -> Kdns:
        if mode not in started:
            port, mport = free_port(), free_port()
            log = os.path.join(workdir, f"kdns-{mode}.log")
            proc = start([sys.executable, "-m", "kdns.daemon", "--kubeconfig", apiserver.kubeconfig,
                          "--listen", f"{HOST}:{port}", "--upstream", upstream.address, "--udp-mode", mode,
                          "--metrics-bind-address", f"{HOST}:{mport}", "--log-level", "debug"], log)
            k = started[mode] = Kdns(port, proc, log, metrics=f"{HOST}:{mport}")

            def healthy() -> bool:
                with contextlib.suppress(OSError):
                    return k.get("/health")[0] == 200
                return False
            wait_for(healthy, 40, "kdns", proc, log)
        return started[mode]

    try:
        yield get
    finally:
        codes = {mode: stop(k.proc) for mode, k in started.items()}
    for mode, k in started.items():
        # After everything the tests threw at it (garbage included): a clean exit, no error logged.
        text = tail(k.log, 10**7)
        assert codes[mode] == 0, f"kdns ({mode}) exit {codes[mode]}: {text[-3000:]}"
        assert "level=error" not in text and "Traceback" not in text, text[-5000:]


@pytest.fixture(scope="session", params=["loop", "thread"])
def kdns(request: pytest.FixtureRequest, kdns_processes: Callable[[str], Kdns]) -> Kdns:
    """A kdns process per UDP mode."""
    return kdns_processes(request.param)


@pytest.fixture(scope="session")
def coredns(apiserver: ApiServer, upstream: FakeUpstream, workdir: str) -> Iterator[DnsServer]:
    """CoreDNS with its kubernetes plugin on the same API server and upstream, configured as kdns
    runs (knet_testing.anchors.corefile)."""
    if why := anchors.missing("coredns"):
        pytest.skip(why)
    c = anchors.start_coredns(os.path.join(workdir, "coredns"), apiserver.kubeconfig, upstream.address)
    try:
        yield DnsServer(c.port, c.proc, c.log, "coredns")
    finally:
        code = stop(c.proc)
    assert code == 0, f"coredns exit {code}: {tail(c.log)}"


@pytest.fixture(scope="session", params=["kdns-loop", "kdns-thread", "coredns"])
def dns(request: pytest.FixtureRequest, kdns_processes: Callable[[str], Kdns]) -> DnsServer:
    """The DNS specification's cases run against kdns (both UDP modes) and CoreDNS alike: where
    they disagree, one of them is wrong (kdns/README.md says which, in the specification's words)."""
    if request.param == "coredns":
        return request.getfixturevalue("coredns")
    return kdns_processes(request.param.removeprefix("kdns-"))


# --- the cluster's objects ---------------------------------------------------------------------

def poll(fn: Callable[[], object], want: Callable[[object], bool], timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if want(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def make_service(kube, ns: str, name: str, ports=(), **spec) -> dict:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports], **spec}}
    return kc.create(kube, "Service", body, ns)


def make_slice(kube, ns: str, svc: str, endpoints: list[dict], ports=(), name: str | None = None) -> dict:
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-1", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports]}
    return kc.create(kube, "EndpointSlice", body, ns)


@pytest.fixture(scope="session")
def world(kube) -> dict[str, str]:
    """The seeds' objects: web (ClusterIP), redis-master in my-ns, headless node-js-none and the
    StatefulSet-style sayhey-svc, an ExternalName, and a headless service with many endpoints.
    EndpointSlices are written here as the EndpointSlice controller would."""
    if kc.get(kube, "Namespace", "my-ns") is None:
        kc.create(kube, "Namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "my-ns"}})
    web = make_service(kube, "default", "web", [("http", 80, "TCP")])
    redis = make_service(kube, "my-ns", "redis-master", [("http", 6379, "TCP")])
    make_service(kube, "default", "node-js-none", [("web", 80, "TCP")], clusterIP="None")
    make_slice(kube, "default", "node-js-none", [{"addresses": ["10.244.1.9"], "conditions": {"ready": True}},
                                                 {"addresses": ["10.244.2.3"], "conditions": {"ready": True}},
                                                 {"addresses": ["10.244.2.4"], "conditions": {"ready": False}}],
               [("web", 3000, "TCP")])
    make_service(kube, "default", "sayhey-svc", [("http", 80, "TCP")], clusterIP="None")
    make_slice(kube, "default", "sayhey-svc", [
        {"addresses": ["10.244.1.5"], "hostname": "whaleset-0", "conditions": {"ready": True}},
        {"addresses": ["10.244.2.6"], "hostname": "whaleset-1", "conditions": {"ready": True}}],
        [("http", 8080, "TCP")])
    make_service(kube, "default", "ext", [], type="ExternalName", externalName="www.example.com")
    make_service(kube, "default", "many", [("http", 80, "TCP")], clusterIP="None")
    make_slice(kube, "default", "many", [{"addresses": [f"10.244.9.{i}"]} for i in range(1, 121)],
               [("http", 8080, "TCP")])
    return {"web": web["spec"]["clusterIP"], "redis": redis["spec"]["clusterIP"]}
