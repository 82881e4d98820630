"""Events as kube-apiserver stores them: one key space served as core/v1 and events.k8s.io/v1
(each written through one, read and watched through the other, selected by either's field
names), and the event TTL (`--event-ttl`: etcd removes an Event that long after its last write,
and nothing else). Against both flavours: a difference from kube-apiserver is a finding."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException


def _v1_event(ns: str, name: str, pod: str, note: str) -> dict:
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
            "eventTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": "example.com/tester", "reportingInstance": "tester-1", "action": "Probe",
            "reason": "Checked", "type": "Normal", "note": note,
            "regarding": {"kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1"}}


def _v1(call, *args, **kwargs) -> dict:
    """An events.k8s.io answer as JSON: the Python client's EventsV1Event model refuses a null
    eventTime, which every Event written through core/v1 without one has (kube-apiserver's too)."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


def test_one_event_through_both_apis(api, ns):
    core, ev1 = client.CoreV1Api(api), client.EventsV1Api(api)
    ev1.create_namespaced_event(ns, _v1_event(ns, "via-v1", "web", "written through events.k8s.io"))
    stored = core.read_namespaced_event("via-v1", ns)
    assert (stored.involved_object.name, stored.message, stored.reporting_component) == \
        ("web", "written through events.k8s.io", "example.com/tester")

    core.create_namespaced_event(ns, {"metadata": {"name": "via-core"}, "reason": "Started", "type": "Normal",
                                      "message": "written through v1", "count": 3,
                                      "involvedObject": {"kind": "Pod", "namespace": ns, "name": "db"},
                                      "source": {"component": "kubelet", "host": "node1"}})
    seen = _v1(ev1.read_namespaced_event, "via-core", ns)
    assert (seen["apiVersion"], seen["regarding"]["name"], seen["note"], seen["deprecatedCount"],
            seen["deprecatedSource"]["component"]) == ("events.k8s.io/v1", "db", "written through v1", 3, "kubelet")
    assert "involvedObject" not in seen and "message" not in seen

    # field selectors in each API's own names
    listed = _v1(ev1.list_namespaced_event, ns, field_selector="regarding.name=db")
    assert (listed["kind"], [e["metadata"]["name"] for e in listed["items"]]) == ("EventList", ["via-core"])
    assert [e.metadata.name for e in core.list_namespaced_event(ns, field_selector="involvedObject.name=web").items] \
        == ["via-v1"]

    # an update through events.k8s.io may change the series only (the note is immutable there, as
    # in kube-apiserver), and core/v1 sees it in step
    with pytest.raises(ApiException) as e:
        ev1.patch_namespaced_event("via-v1", ns, {"note": "patched"})
    assert e.value.status == 422 and "field is immutable" in e.value.body
    series = {"count": 4, "lastObservedTime": "2026-12-04T10:00:00.000000Z"}
    ev1.patch_namespaced_event("via-v1", ns, {"series": series})
    assert core.read_namespaced_event("via-v1", ns).series.count == 4
    assert core.read_namespaced_event("via-v1", ns).message != "patched"
    ev1.delete_namespaced_event("via-core", ns)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_event("via-core", ns)
    assert e.value.status == 404


def test_events_k8s_io_create_needs_its_required_fields(api, ns, server):
    from tests.integration.apiserver.conftest import ADMIN_TOKEN
    from tests.integration.apiserver.test_client import raw
    # (raw: the Python client checks the required fields itself before it sends anything)
    code, status = raw(server, f"/apis/events.k8s.io/v1/namespaces/{ns}/events", "POST", ADMIN_TOKEN,
                       json.dumps({"metadata": {"name": "bare"}, "reason": "R"}).encode())
    assert code == 422, status
    # kube-apiserver's checks: without an eventTime only the namespace agreement of the legacy ones
    assert isinstance(status, dict) and {c["field"] for c in status["details"]["causes"]} == \
        {"eventTime", "type", "involvedObject.namespace"}, json.dumps(status)
    assert not client.CoreV1Api(api).list_namespaced_event(ns).items


def test_events_k8s_io_watch_sees_core_writes(api, ns):
    ev1 = client.EventsV1Api(api)
    rv = _v1(ev1.list_namespaced_event, ns)["metadata"]["resourceVersion"]
    got: list = []

    def follow() -> None:
        w = watch.Watch()
        for item in w.stream(ev1.list_namespaced_event, ns, resource_version=rv, timeout_seconds=30):
            got.append((item["type"], item["object"].note))
            w.stop()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    client.CoreV1Api(api).create_namespaced_event(ns, {
        "metadata": {"name": "watched"}, "reason": "Pulled", "message": "seen through the other API",
        "eventTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),  # (the client's model needs it)
        "reportingComponent": "kubelet", "reportingInstance": "node1", "action": "Pull",
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web"}})
    t.join(60)
    assert got == [("ADDED", "seen through the other API")]


def test_events_expire_after_the_event_ttl(server, etcd, ns, tmp_path):
    """A second server over the same store with --event-ttl 2s: its Events go (etcd's lease), a
    ConfigMap written with them stays."""
    from knet_testing.apiserver_env import stop
    from tests.integration.apiserver.conftest import start_server
    second = start_server(etcd, str(tmp_path), server.prefix, ["--event-ttl", "2s"], flavour=server.flavour)
    other = config.new_client_from_config(config_file=second.kubeconfig)
    try:
        core = client.CoreV1Api(other)
        name = "short-" + uuid.uuid4().hex[:6]
        core.create_namespaced_event(ns, {"metadata": {"name": name}, "reason": "Started", "message": "m",
                                          "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web"}})
        core.create_namespaced_config_map(ns, {"metadata": {"name": "stays"}})
        deadline = time.monotonic() + 120
        while name in {e.metadata.name for e in core.list_namespaced_event(ns).items}:
            assert time.monotonic() < deadline, "the Event outlived its TTL by far"
            time.sleep(0.5)
        assert core.read_namespaced_config_map("stays", ns).metadata.name == "stays"
    finally:
        other.close()
        assert stop(second.proc) == 0
