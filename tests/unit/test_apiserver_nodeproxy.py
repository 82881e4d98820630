"""The API server's side of the node agents' subresources, pure parts: kubelet URLs, node
addresses, authorization attributes, metrics.k8s.io objects from Summary API answers."""

from __future__ import annotations

import pytest

from lab.apiserver import metricsapi, nodeproxy
from lab.apiserver.errors import ApiError

POD = {"metadata": {"name": "web", "namespace": "default"},
       "spec": {"nodeName": "node1", "containers": [{"name": "app"}, {"name": "side"}]}}


def path(sub: str, pod: dict, **query: str | list[str]) -> str:
    single = {k: v if isinstance(v, str) else v[0] for k, v in query.items()}
    multi = {k: [v] if isinstance(v, str) else v for k, v in query.items()}
    return nodeproxy.kubelet_path(sub, pod, single, multi)


def test_exec_and_attach_use_the_kubelets_parameter_names() -> None:
    assert path("exec", POD, container="app", command=["sh", "-c", "echo hi"], stdin="true", stdout="true",
                tty="false") == "/exec/default/web/app?command=sh&command=-c&command=echo+hi&input=1&output=1"
    assert path("attach", POD, container="side", stdout="1", stderr="1", tty="true") == \
        "/attach/default/web/side?output=1&error=1&tty=1"


@pytest.mark.parametrize("sub, query, message", [
    ("exec", {"container": "app", "command": ["ls"]}, "at least 1 of stdin, stdout, stderr"),
    ("exec", {"container": "app", "stdout": "true"}, "at least one command"),
    ("exec", {"command": ["ls"], "stdout": "true"}, "a container name must be specified for pod web, choose one of: "
                                                    "[app side]"),
    ("log", {"container": "nope"}, "container nope is not valid for pod web"),
    ("portforward", {"ports": ["0"]}, "invalid port"),
])
def test_what_kube_apiserver_refuses(sub: str, query: dict, message: str) -> None:
    with pytest.raises(ApiError) as e:
        path(sub, POD, **query)
    assert e.value.code == 400 and message in str(e.value)


def test_single_container_default_log_params_and_ports() -> None:
    one = {**POD, "spec": {"containers": [{"name": "only"}]}}
    assert path("log", one, follow="true", tailLines="5", ignored="x") == \
        "/containerLogs/default/web/only?follow=true&tailLines=5"
    assert path("portforward", one, ports=["80", "8080,9090"]) == "/portForward/default/web?port=80&port=8080&port=9090"
    assert path("portforward", one) == "/portForward/default/web"


def test_node_address_prefers_internal_ip_and_the_announced_port() -> None:
    node = {"metadata": {"name": "n"}, "status": {
        "addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "192.168.33.11"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}}}}
    assert nodeproxy.node_address(node) == ("192.168.33.11", 10251)
    assert nodeproxy.node_address({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}) == \
        ("10.0.0.1", nodeproxy.KUBELET_PORT)
    with pytest.raises(ApiError):
        nodeproxy.node_address({"metadata": {"name": "n"}, "status": {}})


SUMMARY_POD = {"podRef": {"name": "web", "namespace": "default", "uid": "u1"}, "window": 5.0, "containers": [
    {"name": "app", "cpu": {"time": "2024-01-01T00:00:05Z", "usageNanoCores": 1_500_000},
     "memory": {"workingSetBytes": 20 * 1024 * 1024}}]}


def test_pod_and_node_metrics_from_the_summary() -> None:
    m = metricsapi.pod_metrics(SUMMARY_POD, {"app": "web"})
    assert m == {"kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
                 "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                              "creationTimestamp": m["metadata"]["creationTimestamp"]},
                 "timestamp": "2024-01-01T00:00:05Z", "window": "5.000s",
                 "containers": [{"name": "app", "usage": {"cpu": "1500000n", "memory": "20480Ki"}}]}
    # a container without a rate yet (one sample): the pod is left out, as metrics-server does
    first = {**SUMMARY_POD, "containers": [{"name": "app", "cpu": {"usageCoreNanoSeconds": 5}, "memory": {}}]}
    assert metricsapi.pod_metrics(first, {}) is None
    node = metricsapi.node_metrics("node1", {}, {"cpu": {"usageNanoCores": 2_000_000_000}, "window": 5.0,
                                                 "memory": {"workingSetBytes": 1 << 30}})
    assert node["usage"] == {"cpu": "2000000000n", "memory": "1048576Ki"} and node["window"] == "5.000s"
    assert "metrics.k8s.io" in {g["name"] for g in [metricsapi.api_group()]}
    assert {r["name"] for r in metricsapi.resource_list()["resources"]} == {"nodes", "pods"}


def test_metrics_api_lists_pods_of_the_selection_from_their_nodes_only() -> None:
    import asyncio
    import json

    pods = [{"metadata": {"name": "web", "namespace": "default", "uid": "u1", "labels": {"app": "web"}},
             "spec": {"nodeName": "node1"}}]
    nodes = [{"metadata": {"name": "node1"}}, {"metadata": {"name": "node2"}}]
    fetched: list[str] = []

    async def list_objects(kind: str, ns: str | None, selector: str) -> list[dict]:
        return pods if kind == "Pod" else nodes

    async def fetch(node: dict, p: str) -> bytes:
        fetched.append(node["metadata"]["name"])
        other = {**SUMMARY_POD, "podRef": {"name": "gone", "namespace": "default", "uid": "u9"}}
        return json.dumps({"node": {}, "pods": [SUMMARY_POD, other]}).encode()

    api = metricsapi.MetricsApi(list_objects, fetch)
    got = asyncio.run(api.handle("GET", ["namespaces", "default", "pods"], {"labelSelector": "app=web"}))
    assert got["kind"] == "PodMetricsList" and [m["metadata"]["name"] for m in got["items"]] == ["web"]
    assert fetched == ["node1"]
    with pytest.raises(ApiError) as e:
        asyncio.run(api.handle("GET", ["namespaces", "default", "pods", "nope"], {}))
    assert e.value.code == 404
    with pytest.raises(ApiError):
        asyncio.run(api.handle("POST", ["nodes"], {}))


# --- events.k8s.io/v1 over core/v1 storage -------------------------------------------------------

CORE_EVENT = {"kind": "Event", "apiVersion": "v1", "metadata": {"name": "web.1", "namespace": "default"},
              "involvedObject": {"kind": "Pod", "name": "web"}, "reason": "Started", "message": "Started container",
              "source": {"component": "kubelet", "host": "node1"}, "firstTimestamp": "2024-01-01T00:00:00Z",
              "lastTimestamp": "2024-01-01T00:01:00Z", "count": 2, "type": "Normal",
              "series": {"count": 2, "lastObservedTime": "2024-01-01T00:01:00.000000Z"},
              "reportingComponent": "kubelet", "reportingInstance": "node1", "eventTime": None}


def test_events_v1_round_trip_through_core() -> None:
    from lab.apiserver.kinds import events as eventsv1

    v1 = eventsv1.to_v1(CORE_EVENT)
    assert v1 == {"kind": "Event", "apiVersion": "events.k8s.io/v1", "metadata": CORE_EVENT["metadata"],
                  "regarding": {"kind": "Pod", "name": "web"}, "reason": "Started", "note": "Started container",
                  "deprecatedSource": {"component": "kubelet", "host": "node1"},
                  "deprecatedFirstTimestamp": "2024-01-01T00:00:00Z",
                  "deprecatedLastTimestamp": "2024-01-01T00:01:00Z", "deprecatedCount": 2, "type": "Normal",
                  "series": CORE_EVENT["series"], "reportingController": "kubelet", "reportingInstance": "node1"}
    assert eventsv1.to_core(v1) == {k: v for k, v in CORE_EVENT.items() if v is not None}
    assert eventsv1.field_selector_to_core("regarding.name=web,reportingController!=kubelet,type=Normal") == \
        "involvedObject.name=web,reportingComponent!=kubelet,type=Normal"


def test_events_v1_creates_need_what_kube_apiserver_requires() -> None:
    from lab.apiserver.kinds import events as eventsv1
    from lab.apiserver.validation import Causes

    def fields(v1: dict) -> set[str]:
        c = Causes()
        eventsv1.validate_v1(c, {"metadata": {"namespace": "ns1"}, **v1})
        return {i["field"] for i in c.items}

    # As kube-apiserver's validateEventCreate: without an eventTime, the legacy checks are only the
    # namespace agreement; with one, the reporting fields and the note's length.
    assert fields({"note": "x" * 1025, "type": "Odd"}) == {"eventTime", "type", "involvedObject.namespace"}
    assert fields({"eventTime": "2024-01-01T00:00:00.000000Z", "note": "x" * 1025, "type": "Normal",
                   "regarding": {"namespace": "ns1"}, "deprecatedCount": 2}) == {
        "reportingController", "reportingInstance", "action", "reason", "message", "count"}
    assert not fields({"eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "x/y",
                       "reportingInstance": "i", "action": "Bound", "reason": "Scheduled", "type": "Normal",
                       "regarding": {"namespace": "ns1"}})


def test_event_leases_are_shared_within_the_reuse_window() -> None:
    """As kube-apiserver's lease manager: one lease per window, each with at least the TTL left."""
    import asyncio

    from lab.apiserver.registry import LeaseManager

    granted: list[int] = []

    class Store:
        async def grant_lease(self, ttl: int) -> int:
            granted.append(ttl)
            return len(granted)

    now = [1000.0]
    leases = LeaseManager(Store(), lambda: now[0])  # type: ignore[arg-type]

    async def run() -> list[int]:
        ids = [await leases.lease(3600)]
        now[0] += 59  # within the window: the same lease (it still has >= 3600 s left)
        ids.append(await leases.lease(3600))
        now[0] += 2  # past it: a new one
        ids.append(await leases.lease(3600))
        ids.append(await leases.lease(2))  # another TTL, another lease (short TTLs reuse for 1 s)
        return ids

    assert asyncio.run(run()) == [1, 1, 2, 3]
    assert granted == [3660, 3660, 3]
