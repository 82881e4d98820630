"""End to end through the lab's API server: Deployments, Services, an IngressClass, the whale
Ingress (S21, with its TLS variant) and a kuard-tls Secret are created with the Kubernetes
client; the `knet-ingress` daemon runs in node1's namespace with its own kubeconfig and serves
what it watches: hosts, default backend, TLS, status.loadBalancer, /metrics, /healthz, and a
scale-up that reaches nginx through EndpointSlices."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
import time

import pytest

from ingress import tls
from knet import netns
from knet.kube import client as kube
from lab import api
from lab.bringup import controlplane
from tests.promtext import value

pytestmark = pytest.mark.integration


def _deployment(name: str, version: str, replicas: int = 1) -> dict:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": f"example/whale:{version}",
                                                           "ports": [{"containerPort": 80}]}]}}}}


def _service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 80}]}}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    name = "kt" + secrets.token_hex(2)
    request.addfinalizer(lambda: api.down(name))
    lab = api.up(name, nodes=2, control_plane=True)
    cp = lab.data()["control_plane"]
    controlplane.loopback_only(cp["kubeconfig"])        # the admin kubeconfig dials the host loopback only
    k = kube.new_api_client(cp["kubeconfig"])
    request.addfinalizer(k.close)
    for app, version in (("whale-a", "type-a"), ("whale-b", "type-b"), ("whale-default", "default")):
        kube.create(k, "Deployment", _deployment(app, version), "default")
        kube.create(k, "Service", _service(app), "default")
    crt, key = tls.self_signed("a.whale.hey", ["a.whale.hey"])
    kube.create(k, "Secret", {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                              "metadata": {"name": "kuard-tls", "namespace": "default"},
                              "data": {"tls.crt": base64.b64encode(crt).decode(),
                                       "tls.key": base64.b64encode(key).decode()}}, "default")
    kube.create(k, "IngressClass", {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                                    "metadata": {"name": "knet", "annotations": {
                                        "ingressclass.kubernetes.io/is-default-class": "true"}},
                                    "spec": {"controller": "knet.io/ingress"}})
    be = lambda svc: {"service": {"name": svc, "port": {"number": 80}}}  # noqa: E731
    kube.create(k, "Ingress", {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "whale", "namespace": "default"},
        "spec": {"defaultBackend": be("whale-default"),       # no class: knet is the default class
                 "tls": [{"hosts": ["a.whale.hey"], "secretName": "kuard-tls"}],
                 "rules": [{"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": be(s)}]}}
                           for h, s in (("a.whale.hey", "whale-a"), ("b.whale.hey", "whale-b"))]}}, "default")
    node_ip = lab.node("node1")["ip"]
    run_dir = os.path.join(lab.state_dir, "knet-ingress")
    daemon = netns.spawn(lab.netns("node1"), [
        os.path.join(os.path.dirname(sys.executable), "knet-ingress"), "--kubeconfig", cp["kubeconfigs"]["ingress"],
        "--publish-address", node_ip, "--run-dir", run_dir, "--metrics-bind-address", "127.0.0.1:10254",
        "--sync-period", "10"], log_path=os.path.join(lab.state_dir, "knet-ingress.log"))

    def stop() -> None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    request.addfinalizer(stop)
    return lab, k, node_ip, daemon


def _curl(lab, node_ip: str, host: str, scheme: str = "http") -> tuple[int, str]:
    port = 443 if scheme == "https" else 80
    r = lab.exec("client", ["curl", "-sk", "-m", "5", "-w", "\n%{http_code}", "--resolve", f"{host}:{port}:{node_ip}",
                            f"{scheme}://{host}/"])
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def _eventually(fn, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: last {last!r}")


def test_whale_ingress_through_the_api_server(cluster) -> None:
    lab, k, node_ip, daemon = cluster
    _eventually(lambda: _curl(lab, node_ip, "b.whale.hey")[1].endswith("type-b"), what="b.whale.hey")
    code, body = _curl(lab, node_ip, "b.whale.hey")
    assert code == 200 and body.startswith("whale-b-") and body.endswith(" type-b")
    assert _curl(lab, node_ip, "nobody.whale.hey")[1].endswith(" default")   # the default backend
    code, body = _curl(lab, node_ip, "a.whale.hey", "https")                 # TLS from kuard-tls
    assert code == 200 and body.endswith(" type-a")
    assert _curl(lab, node_ip, "a.whale.hey")[0] == 308                      # http -> https
    status = _eventually(lambda: (kube.get(k, "Ingress", "whale", "default") or {}).get("status", {})
                         .get("loadBalancer", {}).get("ingress"), what="Ingress status")
    assert status == [{"ip": node_ip}]
    health = lab.exec("node1", ["curl", "-s", "http://127.0.0.1:10254/healthz"]).stdout
    assert health.startswith("ok config=")
    series = {"ingress": "default/whale", "host": "b.whale.hey", "status": "200"}
    text = _eventually(lambda: (t := lab.exec("node1", ["curl", "-s", "http://127.0.0.1:10254/metrics"]).stdout)
                       and value(t, "knet_ingress_requests_total", **series) and t, timeout=10,
                       what="request metrics")  # log flush + tail: ~2 s
    assert "knet_ingress_upstream_latency_seconds_bucket" in text
    assert daemon.poll() is None


def test_scale_up_reaches_nginx(cluster) -> None:
    lab, k, node_ip, _ = cluster
    kube.patch(k, "Deployment", "whale-b", {"spec": {"replicas": 3}}, "default")

    def three_pods() -> bool:
        seen = {_curl(lab, node_ip, "b.whale.hey")[1].split(" ")[0] for _ in range(9)}
        return len(seen) == 3
    _eventually(three_pods, timeout=90, what="three whale-b pods behind b.whale.hey")
