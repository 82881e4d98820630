"""knet.kube.recorder: client-go's event correlation (aggregation, dedup with counts, spam filter)."""

from __future__ import annotations

from typing import Any

import pytest

from knet.kube import recorder
from knet.kube.models import Pod
from knet.kube.recorder import Correlator, EventRecorder


def event(message: str = "Started container web", reason: str = "Started", name: str = "web-1",
          type_: str = "Normal", component: str = "kubelet") -> dict[str, Any]:
    return {"involvedObject": {"kind": "Pod", "namespace": "default", "name": name, "uid": f"u-{name}",
                               "apiVersion": "v1"},
            "reason": reason, "message": message, "type": type_, "source": {"component": component, "host": "node1"}}


def names(_obj: str, t: float) -> str:
    return f"{_obj}.{int(t)}"


def test_first_event_is_created_repeats_patch_its_count_and_series() -> None:
    c = Correlator()
    first = c.observe(event(), 1000.0, names)
    assert first is not None and first.patch is None
    assert first.body["count"] == 1 and first.name == "web-1.1000" and first.namespace == "default"
    assert first.body["firstTimestamp"] == first.body["lastTimestamp"] == "1970-01-01T00:16:40Z"
    again = c.observe(event(), 1060.0, names)
    assert again is not None and again.name == first.name
    assert again.patch == {"count": 2, "lastTimestamp": "1970-01-01T00:17:40Z", "message": "Started container web",
                           "series": {"count": 2, "lastObservedTime": "1970-01-01T00:17:40.000000Z"}}
    assert again.body["firstTimestamp"] == "1970-01-01T00:16:40Z"
    # another message, reason, object or source is another event
    for other in (event("Started container db"), event(reason="Created"), event(name="web-2"),
                  event(component="default-scheduler")):
        w = c.observe(other, 1061.0, names)
        assert w is not None and w.patch is None


def test_more_than_ten_similar_messages_are_combined() -> None:
    c = Correlator()
    writes = [c.observe(event(f"Readiness probe failed: try {i}", "Unhealthy", type_="Warning"), 100.0 + i, names)
              for i in range(13)]
    assert all(w is not None for w in writes)
    assert [w.patch is None for w in writes[:11]] == [True] * 11
    assert writes[10].body["message"] == "(combined from similar events): Readiness probe failed: try 10"
    # the combined event then counts up instead of new ones appearing
    assert writes[11].name == writes[10].name and writes[11].patch["count"] == 2
    assert writes[12].patch["count"] == 3
    # after the window the messages count from zero again
    later = c.observe(event("Readiness probe failed: later", "Unhealthy", type_="Warning"), 100.0 + 13 + 601, names)
    assert later is not None and later.body["message"] == "Readiness probe failed: later"


def test_spam_filter_bucket_per_object() -> None:
    c = Correlator(burst=3, refill=0.1)
    got = [c.observe(event(f"m{i}", reason=f"r{i}"), 0.0, names) for i in range(5)]
    assert [w is not None for w in got] == [True, True, True, False, False]
    assert c.observe(event("other", name="web-2"), 0.0, names) is not None  # another object: its own bucket
    assert c.observe(event("m8", reason="r8"), 5.0, names) is None            # half a token after 5 s
    assert c.observe(event("m9", reason="r9"), 10.0, names) is not None       # refilled: 0.1/s for 10 s
    assert c.observe(event("m10", reason="r10"), 10.0, names) is None


def test_forget_starts_over_with_a_create() -> None:
    c = Correlator()
    w = c.observe(event(), 1.0, names)
    c.forget(w.key)
    assert c.observe(event(), 2.0, names).patch is None


def test_reference_and_namespace_of_cluster_scoped_objects() -> None:
    pod = Pod.model_validate({"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}})
    assert recorder.reference(pod, field_path="spec.containers{c}") == {
        "kind": "Pod", "namespace": "ns", "name": "p", "uid": "u1", "apiVersion": "v1", "resourceVersion": "7",
        "fieldPath": "spec.containers{c}"}
    node_event = {**event(), "involvedObject": {"kind": "Node", "name": "node1", "uid": "node1"}}
    assert Correlator().observe(node_event, 1.0, names).namespace == "default"
    assert recorder.event_name("web", 1.5) == "web." + format(1_500_000_000, "x")


def test_recorder_writes_from_its_thread_and_recreates_an_expired_event(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, dict]] = []

    def create(api: Any, kind: str, body: dict, ns: str) -> dict:
        calls.append(("create", body["metadata"]["name"], body))
        return body

    def patch(api: Any, kind: str, name: str, body: dict, ns: str) -> dict:
        calls.append(("patch", name, body))
        raise recorder.client.ApiException(status=404, reason="Not Found")

    monkeypatch.setattr(recorder.client, "create", create)
    monkeypatch.setattr(recorder.client, "patch", patch)
    clock = iter([10.0, 20.0])
    rec = EventRecorder(object(), "kubelet", "node1", clock=lambda: next(clock))
    pod = {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "default", "uid": "u"}}
    rec.event(pod, "Normal", "Pulled", "Container image \"nginx\" already present on machine")
    rec.event(pod, "Normal", "Pulled", "Container image \"nginx\" already present on machine")
    rec.stop()
    assert [c[0] for c in calls] == ["create", "patch", "create"]
    assert calls[0][2]["source"] == {"component": "kubelet", "host": "node1"} and calls[0][2]["count"] == 1
    assert calls[2][1] == calls[0][1] and calls[2][2]["count"] == 1 and "series" not in calls[2][2]
    assert rec.written == 2 and rec.dropped == 0
