"""Patch semantics: what kubectl apply/edit/label/scale and the kubernetes client send."""

from __future__ import annotations

import pytest

from lab.apiserver import patch as p
from lab.apiserver.resources import by_kind

DEPLOY = {
    "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
    "spec": {"replicas": 3, "template": {"spec": {
        "containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "busybox"},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }}},
}


def containers(doc: dict) -> dict:
    return {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}


def test_merge_patch_rfc7386():
    out = p.merge_patch(DEPLOY, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"replicas": 1}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"} and out["spec"]["replicas"] == 1
    # lists are replaced whole
    out = p.merge_patch(DEPLOY, {"spec": {"template": {"spec": {"containers": [{"name": "only"}]}}}})
    assert list(containers(out)) == ["only"]
    assert DEPLOY["spec"]["replicas"] == 3  # input untouched


def test_smp_merges_containers_by_name_and_nested_lists_by_key():
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 8080}],
         "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]},
        {"name": "new", "image": "x"},
    ]}}}}
    out = p.strategic_merge_patch(DEPLOY, patch)
    cs = containers(out)
    assert list(cs) == ["web", "side", "new"]
    assert cs["web"]["image"] == "nginx:2" and cs["side"]["image"] == "busybox"
    assert [x["containerPort"] for x in cs["web"]["ports"]] == [80, 8080]
    assert {e["name"]: e["value"] for e in cs["web"]["env"]} == {"A": "1", "B": "20", "C": "3"}


def test_smp_directives_kubectl_apply_sends():
    patch = {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "labels": {"a": None}},
        "spec": {
            "replicas": 2,
            "template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                "containers": [{"name": "web", "env": [{"name": "A", "$patch": "delete"}],
                                "$setElementOrder/env": [{"name": "B"}]}],
                "volumes": [{"name": "data", "$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}}],
            }},
        },
    }
    out = p.strategic_merge_patch(DEPLOY, patch)
    assert out["metadata"]["finalizers"] == ["y"] and out["metadata"]["labels"] == {"b": "2"}
    assert out["spec"]["replicas"] == 2
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["side", "web"]
    assert [e["name"] for e in containers(out)["web"]["env"]] == ["B"]
    assert out["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "configMap": {"name": "cm"}}]


def test_smp_replace_and_delete_directives():
    out = p.strategic_merge_patch(DEPLOY, {"metadata": {"labels": {"$patch": "replace", "z": "9"}}})
    assert out["metadata"]["labels"] == {"z": "9"}
    out = p.strategic_merge_patch(DEPLOY, {"spec": {"template": {"spec": {"containers": [
        {"$patch": "replace"}, {"name": "solo", "image": "i"}]}}}})
    assert list(containers(out)) == ["solo"]
    out = p.strategic_merge_patch(DEPLOY, {"spec": {"template": {"$patch": "delete"}}})
    assert "template" not in out["spec"]
    out = p.strategic_merge_patch(DEPLOY, {"metadata": {"finalizers": ["z"]}})
    assert out["metadata"]["finalizers"] == ["x", "y", "z"]  # primitive merge list: union


def test_smp_atomic_lists_and_service_ports():
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}], "externalIPs": ["1.1.1.1"]}}
    out = p.strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}],
                                                 "externalIPs": ["2.2.2.2"]}},
                                  by_kind("", "Service").strategy.merge_keys)
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]
    assert out["spec"]["externalIPs"] == ["2.2.2.2"]  # no merge strategy: replaced
    node = {"status": {"addresses": [{"type": "InternalIP", "address": "a"}], "conditions": [
        {"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}]}}
    out = p.strategic_merge_patch(node, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                                  by_kind("", "Node").strategy.merge_keys)
    assert [c["status"] for c in out["status"]["conditions"]] == ["True", "False"]


def test_smp_errors():
    with pytest.raises(p.PatchError):
        p.strategic_merge_patch(DEPLOY, ["not", "a", "map"])
    with pytest.raises(p.PatchError):  # merge key missing in an element
        p.strategic_merge_patch(DEPLOY, {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})


def test_json_patch():
    out = p.json_patch(DEPLOY, [
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "add", "path": "/metadata/labels/c~1d", "value": "x"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "z"},
        {"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"},
        {"op": "move", "from": "/metadata/generateName", "path": "/metadata/other"},
        {"op": "test", "path": "/spec/replicas", "value": 5},
    ])
    assert out["spec"]["replicas"] == 5 and out["metadata"]["labels"] == {"b": "2", "c/d": "x"}
    assert out["metadata"]["finalizers"] == ["x", "y", "z"] and out["metadata"]["other"] == "d"
    with pytest.raises(p.PatchConflict):
        p.json_patch(DEPLOY, [{"op": "test", "path": "/spec/replicas", "value": 1}])
    with pytest.raises(p.PatchConflict):
        p.json_patch(DEPLOY, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(p.PatchError):
        p.json_patch(DEPLOY, [{"op": "frobnicate", "path": "/a"}])
    with pytest.raises(p.PatchError):
        p.json_patch(DEPLOY, {"op": "add"})
