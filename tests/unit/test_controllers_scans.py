"""The controllers' handling of one change reads the objects it concerns through informer indexes,
never a whole cache: the informers of `lab.controllers.main.build` are fed a few hundred objects
(without an API server), then one change at a time goes through the informer's own event entry
point, every queued key is synced (writes go to a recorder), and no informer's list() or keys()
was called meanwhile -- but the nodes' (a placement decision weighs every node)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from knet.kube import InformerFactory, client
from knet.kube import models as m
from lab.controllers import main as controllers_main
from lab.controllers import scheduler
from lab.controllers.loadbalancer import DEFAULT_POOL, Pool
from lab.controllers.workqueue import Controller
from tests.informer_feed import feed, remove

N = 300
NS = "default"


class Writes:
    """Stands in for the API server: records what the controllers write."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def record(self, verb: str) -> Any:
        def call(_api: Any, kind: Any, name_or_body: Any, *args: Any, **kw: Any) -> dict:
            name = name_or_body if isinstance(name_or_body, str) else \
                (name_or_body.get("metadata") or {}).get("name") or "generated"
            self.calls.append((verb, str(kind), name))
            return {"metadata": {"name": name}}
        return call


class Binder:
    calls: list[str] = []

    def __init__(self, _api: Any) -> None:
        pass

    def create_namespaced_pod_binding(self, name: str, ns: str, body: dict, **kw: Any) -> Any:
        Binder.calls.append(f"{ns}/{name}->{body['target']['name']}")
        return type("Resp", (), {"release_conn": lambda self: None})()


def meta(name: str, uid: str, **extra: Any) -> dict:
    return {"name": name, "namespace": NS, "uid": uid, "creationTimestamp": "2024-01-01T00:00:00Z", **extra}


def pod(i: int, node: str | None = "n1", ready: bool = True, owner: str | None = None) -> m.Pod:
    refs = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": f"rs-{owner}",
             "controller": True}] if owner else []
    return m.Pod.model_validate({
        "metadata": meta(f"p{i}", f"pod-{i}", labels={"app": f"s{i}"}, ownerReferences=refs),
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running" if node else "Pending", "podIP": f"10.244.{i // 250}.{i % 250 + 1}",
                   "podIPs": [{"ip": f"10.244.{i // 250}.{i % 250 + 1}"}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def service(i: int, stype: str = "ClusterIP") -> m.Service:
    return m.Service.model_validate({"metadata": meta(f"s{i}", f"svc-{i}"), "spec": {
        "type": stype, "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "selector": {"app": f"s{i}"},
        "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch):
    writes = Writes()
    for verb in ("create", "replace", "delete", "patch", "patch_status"):
        monkeypatch.setattr(client, verb, writes.record(verb))
    monkeypatch.setattr(client, "get", lambda *a, **kw: None)
    monkeypatch.setattr(scheduler, "CoreV1Api", Binder)
    Binder.calls = []
    factory = InformerFactory(None)  # type: ignore[arg-type]  # never started: fed below
    controllers = controllers_main.build(factory, None, Pool(DEFAULT_POOL), set(controllers_main.ALL))  # type: ignore[arg-type]
    informers = {inf.resource.kind: inf for inf in factory.informers}
    for name in ("n1", "n2"):
        feed(informers["Node"], m.Node.model_validate({"metadata": {"name": name, "uid": name}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}]}}))
    for i in range(N):
        feed(informers["ReplicaSet"], m.ReplicaSet.model_validate({
            "metadata": meta(f"rs{i}", f"rs-rs{i}"), "spec": {"replicas": 1, "selector": {"matchLabels": {
                "app": f"s{i}"}}, "template": {"metadata": {"labels": {"app": f"s{i}"}}}},
            "status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}))
        feed(informers["Service"], service(i))
        feed(informers["Pod"], pod(i, owner=f"rs{i}"))
        feed(informers["EndpointSlice"], m.EndpointSlice.model_validate({
            "metadata": meta(f"s{i}-abcde", f"slice-{i}", labels={
                "kubernetes.io/service-name": f"s{i}", "endpointslice.kubernetes.io/managed-by":
                "endpointslice-controller.k8s.io"}), "addressType": "IPv4", "endpoints": []}))
        feed(informers["Endpoints"], m.Endpoints.model_validate({"metadata": meta(f"s{i}", f"ep-{i}")}))
    feed(informers["Deployment"], m.Deployment.model_validate({"metadata": meta("d", "dep-d"), "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {
            "app": "d"}}}}}))
    feed(informers["DaemonSet"], m.DaemonSet.model_validate({"metadata": meta("ds", "ds-ds"), "spec": {
        "selector": {"matchLabels": {"app": "ds"}}, "template": {"metadata": {"labels": {"app": "ds"}}}}}))
    listed: Counter[str] = Counter()
    for kind, inf in informers.items():
        for method in ("list", "keys"):
            real = getattr(inf, method)
            setattr(inf, method, lambda *a, _real=real, _kind=kind, **kw: (listed.update([_kind]), _real(*a, **kw))[1])
    return controllers, informers, writes, listed


def settle(controllers: list[Controller]) -> list[tuple[str, str]]:
    """Sync every queued key of every controller, as their workers would; (controller, key)."""
    synced = []
    for c in controllers:
        while (key := c.queue.get(timeout=0)) is not None:
            c.sync(key)
            c.queue.done(key)
            synced.append((c.name, key))
    return synced


def test_one_change_reads_what_it_concerns_never_a_whole_cache(cluster):
    controllers, informers, writes, listed = cluster
    settle(controllers)  # the initial objects (reading everything once is fine here)
    writes.calls.clear()
    listed.clear()
    before = {kind: inf.scans for kind, inf in informers.items()}

    # A pod becomes not ready: its Service's slice and Endpoints change, its ReplicaSet's status.
    feed(informers["Pod"], pod(7, ready=False, owner="rs7"))
    synced = settle(controllers)
    assert ("endpointslice", f"{NS}/s7") in synced and ("replicaset", f"rs/{NS}/rs7") in synced
    assert ("replace", "EndpointSlice", "s7-abcde") in writes.calls
    assert {k for c, k in synced if c == "endpointslice"} == {f"{NS}/s7"}  # only the Service selecting it

    # A new pod without a node: the scheduler binds it, counting each node's pods from the index.
    feed(informers["Pod"], pod(N + 1, node=None))
    synced = settle(controllers)
    assert ("scheduler", f"{NS}/p{N + 1}") in synced and Binder.calls == [f"{NS}/p{N + 1}->n2"]

    # An owner goes: the garbage collector looks at its dependents only.
    remove(informers["ReplicaSet"], informers["ReplicaSet"].get("rs9", NS))
    synced = settle(controllers)
    assert ("garbagecollector", "owner/rs-rs9") in synced

    # A Service turns LoadBalancer: an address from the pool, looking at LoadBalancer Services only.
    feed(informers["Service"], service(3, "LoadBalancer"))
    synced = settle(controllers)
    assert ("loadbalancer", "*") in synced and ("patch_status", "Service", "s3") in writes.calls

    # A daemon pod becomes not ready: its DaemonSet (found through the pod's owner) counts again.
    daemon = pod(N + 2, node="n1", ready=False)
    daemon.metadata.owner_references = [m.OwnerReference.model_validate({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "ds-ds", "controller": True})]
    feed(informers["Pod"], daemon)
    synced = settle(controllers)
    assert ("daemonset", f"{NS}/ds") in synced

    assert {kind: n for kind, n in listed.items() if kind != "Node"} == {}, "list()/keys() during one change"
    assert {kind: inf.scans for kind, inf in informers.items() if kind != "Node"} == \
        {kind: n for kind, n in before.items() if kind != "Node"}
