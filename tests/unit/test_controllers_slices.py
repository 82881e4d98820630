"""Service x Pods -> EndpointSlices / Endpoints (pure), and the LoadBalancer pool."""

from __future__ import annotations

import pytest

from knet.kube.models import EndpointSlice, Pod, Service
from lab.controllers import slices
from lab.controllers.loadbalancer import LBRequest, Pool, assign


def svc(name: str = "web", ports: list | None = None, selector: dict | None = None, **spec) -> Service:
    return Service.model_validate({
        "metadata": {"name": name, "namespace": "default", "uid": "svc-uid", "labels": {"team": "x"}},
        "spec": {"selector": {"app": "web"} if selector is None else selector,
                 "ports": ports or [{"name": "http", "port": 80, "targetPort": "www"}], **spec}})


def pod(name: str, ip: str | None, ready: bool = True, port: int = 8080, labels: dict | None = None,
        deleting: bool = False, phase: str = "Running", **spec) -> Pod:
    meta = {"name": name, "namespace": "default", "uid": f"u-{name}", "labels": labels or {"app": "web"}}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return Pod.model_validate({
        "metadata": meta,
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": [{"name": "www", "containerPort": port}]}],
                 **spec},
        "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]}})


def test_ready_and_not_ready_endpoints_with_named_ports_per_pod() -> None:
    want = slices.desired(svc(), [pod("a", "10.244.1.2"), pod("b", "10.244.2.2", ready=False),
                                  pod("c", "10.244.1.3", port=9090), pod("d", None), pod("e", "10.244.1.9",
                                                                                         labels={"app": "other"})])
    assert len(want) == 2  # two resolved port sets -> two slices
    by_port = {w["ports"][0]["port"]: w for w in want}
    assert [e["addresses"][0] for e in by_port[8080]["endpoints"]] == ["10.244.1.2", "10.244.2.2"]
    a, b = by_port[8080]["endpoints"]
    assert a["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert b["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert a["targetRef"] == {"kind": "Pod", "namespace": "default", "name": "a", "uid": "u-a"}
    assert a["nodeName"] == "node1"
    assert by_port[9090]["ports"] == [{"name": "http", "port": 9090, "protocol": "TCP"}]


def test_terminating_publish_not_ready_and_hostname() -> None:
    eps = slices.desired(svc(), [pod("t", "10.0.0.1", deleting=True)])[0]["endpoints"]
    assert eps[0]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    eps = slices.desired(svc(publishNotReadyAddresses=True), [pod("n", "10.0.0.2", ready=False)])[0]["endpoints"]
    assert eps[0]["conditions"]["ready"] is True
    eps = slices.desired(svc("sayhey-svc"), [pod("whaleset-1", "10.0.0.3", hostname="whaleset-1",
                                                 subdomain="sayhey-svc")])[0]["endpoints"]
    assert eps[0]["hostname"] == "whaleset-1"
    eps = slices.desired(svc("other"), [pod("w", "10.0.0.4", hostname="w", subdomain="sayhey-svc")])[0]["endpoints"]
    assert "hostname" not in eps[0]
    assert slices.desired(svc(), [pod("f", "10.0.0.5", phase="Failed")]) == [
        {"addressType": "IPv4", "endpoints": [], "ports": []}]


def test_numeric_target_port_and_which_services_are_managed() -> None:
    s = svc(ports=[{"port": 90, "targetPort": 80}, {"name": "admin", "port": 8888, "protocol": "UDP"}])
    w = slices.desired(s, [pod("a", "10.0.0.1")])[0]
    assert w["ports"] == [{"name": "", "port": 80, "protocol": "TCP"}, {"name": "admin", "port": 8888,
                                                                         "protocol": "UDP"}]
    assert not slices.manages(svc(selector={}))
    assert not slices.manages(svc(type="ExternalName", externalName="x.example"))


def existing(name: str, body: dict, labels: dict) -> EndpointSlice:
    return EndpointSlice.model_validate({"metadata": {"name": name, "namespace": "default", "labels": labels,
                                                      "resourceVersion": "7"}, **body})


def test_reconcile_writes_nothing_when_nothing_changed_and_reuses_slices() -> None:
    s = svc()
    labels = slices.labels_for(s)
    assert labels["kubernetes.io/service-name"] == "web" and labels["team"] == "x"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    owner = {"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "svc-uid", "controller": True}
    want = slices.desired(s, [pod("a", "10.0.0.1")])
    have = [existing("web-abc", want[0], labels)]
    assert slices.reconcile(want, have, labels, owner) == ([], [], [])
    want2 = slices.desired(s, [pod("a", "10.0.0.1"), pod("b", "10.0.0.2")])
    creates, updates, deletes = slices.reconcile(want2, have, labels, owner)
    assert creates == [] and deletes == [] and [n for n, _ in updates] == ["web-abc"]
    assert updates[0][1]["metadata"]["resourceVersion"] == "7"
    creates, updates, deletes = slices.reconcile(want, [*have, existing("web-old", want[0], labels)], labels, owner)
    assert (creates, updates, deletes) == ([], [], ["web-old"])


def test_endpoints_object() -> None:
    ep = slices.endpoints_object(svc(), [pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)])
    assert ep["metadata"]["name"] == "web"
    (subset,) = ep["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["10.0.0.1"]
    assert [a["ip"] for a in subset["notReadyAddresses"]] == ["10.0.0.2"]
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert slices.endpoints_object(svc(), [])["subsets"] == []


def test_pool_parsing() -> None:
    p = Pool("192.168.33.200-192.168.33.202, 10.0.0.0/30")
    assert list(p.addresses()) == ["192.168.33.200", "192.168.33.201", "192.168.33.202", "10.0.0.1", "10.0.0.2"]
    assert "192.168.33.201" in p and "192.168.33.203" not in p and "bogus" not in p
    with pytest.raises(ValueError):
        Pool("10.0.0.5-10.0.0.1")


def test_lb_assignment_keeps_honours_and_allocates() -> None:
    pool = Pool("192.168.33.200-192.168.33.202")
    reqs = [LBRequest("a", None, ("192.168.33.201",), 1), LBRequest("b", "192.168.33.200", (), 2),
            LBRequest("c", None, (), 3), LBRequest("d", "192.168.33.201", (), 4), LBRequest("e", "1.2.3.4", (), 5)]
    got = assign(reqs, pool)
    assert got == {"a": "192.168.33.201", "b": "192.168.33.200", "c": "192.168.33.202", "d": None, "e": None}
    # pool exhausted -> None; a released address is reused
    assert assign([LBRequest("x", None, (), 1)], pool) == {"x": "192.168.33.200"}
    # two services claiming one address in status (a restart after a bug): the older keeps it
    dup = assign([LBRequest("new", None, ("192.168.33.200",), 9), LBRequest("old", None, ("192.168.33.200",), 1)], pool)
    assert dup == {"old": "192.168.33.200", "new": "192.168.33.201"}
