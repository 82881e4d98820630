"""A real etcd and the lab's knet-apiserver on 127.0.0.1 (free ports, temp dirs, HTTPS with a
bearer token), restartable on the same port, for the informer tests. Everything started here is
stopped at the end whatever happens. Only loopback sockets in the root namespace."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from knet_testing import anchors
from knet_testing.apiserver_env import Etcd, free_port, start_apiserver, start_etcd, stop, tail

TOKEN = "kube-informer-" + uuid.uuid4().hex


class Cluster:
    """etcd + an API server; `restart_apiserver()` keeps the port, etcd and the key prefix."""

    def __init__(self, tmp: str, flavour: str = "lab") -> None:
        self.tmp = tmp
        self.flavour = flavour  # "lab": knet-apiserver; "real": kube-apiserver
        self.prefix = "/registry-" + uuid.uuid4().hex[:8]
        self.api_port = free_port()
        self.url = f"https://127.0.0.1:{self.api_port}"
        self.etcd: Etcd | None = None
        self.apiserver: subprocess.Popen | None = None
        self.api_log = os.path.join(tmp, "apiserver.log")
        self.kubeconfig = os.path.join(tmp, "kubeconfig")

    def start_etcd(self) -> None:
        # kube-apiserver on the etcd it is paired with (scripts/install-anchors), the lab's on Debian's
        binary = anchors.binary("etcd") if self.flavour == "real" else "etcd"
        self.etcd = start_etcd(self.tmp, "--log-level", "error", binary=binary)

    def etcdctl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        return self.etcd.etcdctl(*args, check=check, stdin=stdin)

    def revision(self) -> int:
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        return int(out[0]["Status"]["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd at its current revision: every older resourceVersion is gone (410)."""
        rev = self.revision()
        self.etcdctl("compact", str(rev))
        return rev

    def start_apiserver(self) -> None:
        tokens = f"{TOKEN},informer-test,informer-test\n"
        if self.flavour == "real":
            # --v=3: request lines in the log (requests() reads them); JSON in etcd, as the lab
            # server writes it, so tests can change objects there behind the server's back
            p = anchors.start_kube_apiserver(self.tmp, self.etcd.url, self.prefix, tokens,
                                             "--storage-media-type=application/json", port=self.api_port,
                                             verbosity=3)
        else:
            p = start_apiserver(self.tmp, self.etcd.url, self.prefix, tokens, listen=f"127.0.0.1:{self.api_port}")
        self.apiserver = p.proc
        # A kubeconfig as kubectl would have it (CA file + bearer token): the informer is configured
        # exactly as on a real cluster.
        with open(self.kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "lab",
                       "clusters": [{"name": "lab", "cluster": {"server": self.url,
                                                                "certificate-authority": p.certs.ca_cert}}],
                       "users": [{"name": "u", "user": {"token": TOKEN}}],
                       "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "u"}}]}, f)

    def stop_apiserver(self) -> None:
        stop(self.apiserver)
        self.apiserver = None

    def restart_apiserver(self) -> None:
        self.stop_apiserver()
        self.start_apiserver()

    def requests(self) -> list[str]:
        """The path and query of every request the server logged, in order."""
        with open(self.api_log, errors="replace") as f:
            log = f.read()
        if self.flavour == "real":  # httplog: "HTTP" verb="LIST" URI="/api/v1/...?limit=2" ...
            return re.findall(r'"HTTP" verb="\w+" URI="([^"]+)"', log)
        return re.findall(r"\b(?:GET|POST|PUT|PATCH|DELETE) (/\S*) user=", log)

    def put_raw(self, plural_key: str, namespace: str, name: str, obj: dict) -> None:
        """Write an object into etcd behind the server's back (`plural_key`: the server's etcd
        name, e.g. services/specs)."""
        self.etcdctl("put", f"{self.prefix}/{plural_key}/{namespace}/{name}", stdin=json.dumps(obj))

    def get_raw(self, plural_key: str, namespace: str, name: str) -> dict:
        out = self.etcdctl("get", "--print-value-only", f"{self.prefix}/{plural_key}/{namespace}/{name}").stdout
        return json.loads(out)

    def delete_raw(self, plural_key: str, namespace: str, name: str) -> None:
        self.etcdctl("del", f"{self.prefix}/{plural_key}/{namespace}/{name}")

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            stop(self.etcd.proc)


@pytest.fixture(scope="module", params=["lab", "real"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    if request.param == "real" and (why := anchors.missing("kube-apiserver", "etcd")):
        pytest.skip(why)
    tmp = tempfile.mkdtemp(prefix="knet-kube-it-")
    c = Cluster(tmp, request.param)
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
def ns(api, cluster: Cluster) -> Iterator[str]:
    from knet.kube import client as kc

    name = "it-" + uuid.uuid4().hex[:8]
    kc.create(api, "Namespace", {"metadata": {"name": name}})
    if cluster.flavour == "real":
        # kube-apiserver admits pods only with their ServiceAccount present; nothing here runs the
        # controller manager that makes `default` in every namespace, so do its part.
        from kubernetes import client
        client.CoreV1Api(api).create_namespaced_service_account(name, {"metadata": {"name": "default"}})
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
        report.sections.append((f"{cluster.flavour} API server log (tail)", tail(cluster.api_log)))
