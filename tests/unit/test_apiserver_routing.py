"""URL routing, Table negotiation, discovery documents and table cells (pure parts of the server)."""

from __future__ import annotations

import pytest

from lab.apiserver import discovery, tables
from lab.apiserver.errors import ApiError
from lab.apiserver.resources import by_kind
from lab.apiserver.server import Target, parse_path
from lab.apiserver.tables import table_version


@pytest.mark.parametrize("path,expected", [
    ("/api/v1/namespaces", ("namespaces", None, None, None, False)),
    ("/api/v1/namespaces/default", ("namespaces", None, "default", None, False)),
    ("/api/v1/namespaces/x/status", ("namespaces", None, "x", "status", False)),
    ("/api/v1/namespaces/default/pods", ("pods", "default", None, None, False)),
    ("/api/v1/namespaces/default/pods/p/status", ("pods", "default", "p", "status", False)),
    ("/api/v1/pods", ("pods", None, None, None, False)),
    ("/api/v1/watch/namespaces/default/services/s", ("services", "default", "s", None, True)),
    ("/api/v1/nodes/n1", ("nodes", None, "n1", None, False)),
    ("/apis/apps/v1/namespaces/d/deployments/x/scale", ("deployments", "d", "x", "scale", False)),
    ("/apis/discovery.k8s.io/v1/endpointslices", ("endpointslices", None, None, None, False)),
])
def test_parse_resource_paths(path, expected):
    t = parse_path(path)
    assert isinstance(t, Target)
    assert (t.rt.plural, t.namespace, t.name, t.sub, t.watch) == expected


def test_parse_discovery_paths_and_404s():
    assert parse_path("/api") == ("api",)
    assert parse_path("/apis") == ("apis",)
    assert parse_path("/apis/apps") == ("group", "apps")
    assert parse_path("/apis/apps/v1") == ("resources", "apps", "v1")
    for bad in ("/api/v1/foos", "/api/v1/namespaces/d/nodes/n", "/api/v1/namespaces/d/pods/p/scale",
                "/apis/apps/v1/namespaces/d/deployments/x/scale/more", "/nope", "/apis/apps/v2/deployments"):
        with pytest.raises(ApiError) as e:
            parse_path(bad)
        assert e.value.code == 404, bad


def test_table_negotiation():
    kubectl_120 = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
                   "g=meta.k8s.io,application/json")
    assert table_version(kubectl_120) == "v1"
    assert table_version("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    assert table_version("application/json") is None
    assert table_version("application/vnd.kubernetes.protobuf, */*") is None


def test_discovery_documents():
    core = discovery.resources("", "v1")
    names = {r["name"]: r for r in core["resources"]}
    assert names["pods"]["shortNames"] == ["po"] and "watch" in names["pods"]["verbs"]
    assert names["replicationcontrollers/scale"]["group"] == "autoscaling"
    assert names["bindings"]["verbs"] == ["create"]
    groups = {g["name"] for g in discovery.api_groups()["groups"]}
    assert {"apps", "discovery.k8s.io", "networking.k8s.io"} <= groups
    assert discovery.api_group("nope") is None and discovery.resources("apps", "v9") is None
    # the empty OpenAPI document kubectl 1.20 reads: field 1 "2.0", field 2 info{title, version}
    doc = discovery.openapi_protobuf()
    assert doc.startswith(b"\x0a\x032.0\x12")


@pytest.mark.parametrize("seconds,text", [(-5, "<invalid>"), (5, "5s"), (119, "119s"), (150, "2m30s"),
                                          (600, "10m"), (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"),
                                          (3 * 86400, "3d"), (400 * 86400, "400d"), (3 * 365 * 86400, "3y")])
def test_human_duration(seconds, text):
    assert tables.human_duration(seconds) == text


def test_service_and_pod_cells():
    svc = {"metadata": {"name": "node-js"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5", "ports": [
        {"port": 80, "nodePort": 30001, "protocol": "TCP"}], "selector": {"name": "node-js"}},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.33.200"}]}}}
    t = tables.table(by_kind("", "Service"), [svc], {"resourceVersion": "1"})
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)",
                                                         "Age", "Selector"]
    cells = t["rows"][0]["cells"]
    assert cells[:5] == ["node-js", "LoadBalancer", "10.96.0.5", "192.168.33.200", "80:30001/TCP"]
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
           "status": {"phase": "Running", "podIP": "10.244.1.2", "containerStatuses": [
               {"ready": True, "restartCount": 1}, {"ready": False, "restartCount": 2,
                                                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}
    cells = tables.table(by_kind("", "Pod"), [pod], {})["rows"][0]["cells"]
    assert cells[:4] == ["p", "1/2", "CrashLoopBackOff", 3] and cells[5:7] == ["10.244.1.2", "n1"]
