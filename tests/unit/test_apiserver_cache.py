"""The watch cache as pure logic (changes are fed in as etcd would send them; nothing connects):
indexes stay equal to a scan through every kind of change, selects read an index and answer what
a scan would, watchers get each change once (selector transitions as ADDED/DELETED, deletions at
the deletion's resourceVersion), the encoded line is shared, progress never runs ahead."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from lab.apiserver.cache import OWNER_INDEX, KindCache, WatchCache
from lab.apiserver.query import Query
from lab.apiserver.resources import RESOURCES, by_kind
from lab.apiserver.storage import Event, Store

PODS, SLICES, SVCS = by_kind("", "Pod"), by_kind("discovery.k8s.io", "EndpointSlice"), by_kind("", "Service")
STORE = Store("http://127.0.0.1:1", "/registry")  # keys only: never contacted


def cache() -> WatchCache:
    c = WatchCache(STORE, RESOURCES)
    c.ready.set()
    return c


def put(c: WatchCache, rt, obj: dict, rev: int) -> None:
    meta = obj["metadata"]
    key = STORE.key(rt.plural, meta.get("namespace"), meta["name"])
    c._apply(Event("PUT", key, json.dumps(obj).encode(), None, rev))
    c.revision = rev


def delete(c: WatchCache, rt, ns: str, name: str, rev: int) -> None:
    c._apply(Event("DELETE", STORE.key(rt.plural, ns, name), None, None, rev))
    c.revision = rev


def pod(name: str, ns: str = "a", node: str = "", labels: dict | None = None, owner: str = "") -> dict:
    meta: dict = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner}]
    return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": node} if node else {}}


def scan_index(kind: KindCache, name: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, obj in kind.items.items():
        for v in kind._index_values(name, obj):
            out.setdefault(v, set()).add(key)
    return out


def test_indexes_equal_a_scan_through_adds_updates_and_deletes():
    c, rnd = cache(), random.Random(7)
    kind = c.kind(PODS)
    rev = 1
    for _ in range(400):
        rev += 1
        name, ns = f"p{rnd.randrange(30)}", rnd.choice(["a", "b"])
        if rnd.random() < 0.25:
            delete(c, PODS, ns, name, rev)
        else:
            put(c, PODS, pod(name, ns, node=rnd.choice(["", "n1", "n2"]), labels={"app": rnd.choice("xyz")},
                             owner=rnd.choice(["", "u1", "u2"])), rev)
    assert set(kind.index_names) >= {OWNER_INDEX, "field:spec.nodeName", "field:metadata.name"}
    for name in kind.index_names:
        assert kind.indexes[name] == scan_index(kind, name), name
    for ns in ("a", "b"):
        assert set(kind.by_ns.get(ns, {})) == {k for k, o in kind.items.items() if o["metadata"]["namespace"] == ns}


@pytest.mark.parametrize("params", [
    {}, {"fieldSelector": "spec.nodeName=n1"}, {"fieldSelector": "spec.nodeName="},
    {"fieldSelector": "metadata.name=p3"}, {"labelSelector": "app=x"}, {"labelSelector": "app in (x,y)"},
    {"labelSelector": "app!=x", "fieldSelector": "spec.nodeName=n2"}, {"fieldSelector": "metadata.namespace=b"},
])
def test_select_answers_what_a_scan_answers(params):
    c, rnd = cache(), random.Random(3)
    for i in range(200):
        put(c, PODS, pod(f"p{i % 40}", rnd.choice("ab"), node=rnd.choice(["", "n1", "n2"]),
                         labels={"app": rnd.choice("xyz")}), i + 2)
    q = Query(PODS, params)
    kind = c.kind(PODS)
    for ns in (None, "a"):
        want = sorted((k, o) for k, o in kind.items.items()
                      if (ns is None or o["metadata"]["namespace"] == ns) and q.matches(o))
        assert kind.select(ns, q) == [o for _, o in want]


def test_slices_by_service_name_and_owner_index():
    c = cache()
    for i in range(5):
        put(c, SLICES, {"metadata": {"name": f"web-{i}", "namespace": "a", "labels": {
            "kubernetes.io/service-name": "web" if i < 2 else "db"},
            "ownerReferences": [{"uid": f"svc-{'web' if i < 2 else 'db'}"}]}, "addressType": "IPv4"}, i + 2)
    kind = c.kind(SLICES)
    assert [o["metadata"]["name"] for o in kind.by_index("label:kubernetes.io/service-name", "web", "a")] == \
        ["web-0", "web-1"]
    assert len(kind.by_index(OWNER_INDEX, "svc-db", "a")) == 3
    assert kind.by_index(OWNER_INDEX, "svc-db", "other") == []


def drain(w) -> list[tuple[str, str, str]]:
    out = []
    while w.queue:
        etype, ch = w.queue.popleft()
        obj = ch.obj(etype)
        out.append((etype, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
    return out


def test_watchers_get_selector_transitions_and_deletions_once():
    c = cache()
    kind = c.kind(PODS)
    everything = kind.subscribe(None, Query(PODS, {}), since=None)
    picked = kind.subscribe("a", Query(PODS, {"labelSelector": "pick=yes"}), since=None)
    other_ns = kind.subscribe("b", Query(PODS, {}), since=None)
    put(c, PODS, pod("w", labels={"pick": "no"}), 10)
    put(c, PODS, pod("w", labels={"pick": "yes"}), 11)
    put(c, PODS, pod("w", labels={"pick": "yes", "x": "1"}), 12)
    put(c, PODS, pod("w", labels={"pick": "no"}), 13)
    put(c, PODS, pod("w", labels={"pick": "yes"}), 14)
    delete(c, PODS, "a", "w", 15)
    assert drain(everything) == [("ADDED", "w", "10"), ("MODIFIED", "w", "11"), ("MODIFIED", "w", "12"),
                                 ("MODIFIED", "w", "13"), ("MODIFIED", "w", "14"), ("DELETED", "w", "15")]
    assert drain(picked) == [("ADDED", "w", "11"), ("MODIFIED", "w", "12"), ("DELETED", "w", "13"),
                             ("ADDED", "w", "14"), ("DELETED", "w", "15")]
    assert drain(other_ns) == []


def test_one_encoding_per_change_for_all_watchers_and_resume_from_the_window():
    c = cache()
    kind = c.kind(SVCS)
    watchers = [kind.subscribe(None, Query(SVCS, {}), since=None) for _ in range(3)]
    put(c, SVCS, {"metadata": {"name": "s", "namespace": "a"}}, 5)
    lines = [w.queue[0][1].line(w.queue[0][0]) for w in watchers]
    assert lines[0] is lines[1] is lines[2]  # encoded once, the same bytes sent to each
    assert json.loads(lines[0]) == {"type": "ADDED", "object": {"metadata": {
        "name": "s", "namespace": "a", "resourceVersion": "5"}}}
    put(c, SVCS, {"metadata": {"name": "t", "namespace": "a"}}, 6)
    resumed = kind.subscribe(None, Query(SVCS, {}), since=5)
    assert drain(resumed) == [("ADDED", "t", "6")]
    assert kind.covers(5) and not kind.covers(-1)


def test_snapshot_then_changes_and_progress_never_ahead_of_what_was_handed_out():
    async def run() -> None:
        c = cache()
        kind = c.kind(PODS)
        put(c, PODS, pod("old"), 3)
        c.revision = 7
        w = kind.subscribe("a", Query(PODS, {"labelSelector": "app=x"}), since=None)
        assert w.progress() == 7  # nothing matched: everything up to now is "handed out"
        put(c, PODS, pod("new", labels={"app": "x"}), 8)
        put(c, PODS, pod("noise"), 9)
        assert w.progress() == 7  # the ADDED at 8 is still queued
        events = w.events(tick=0.05)
        first = await anext(events)
        assert first[0] == "ADDED" and first[1]["metadata"]["name"] == "new"
        tick = await anext(events)  # idle: a TICK, and all dispatched changes are handed out
        assert tick == ("TICK", None, None) and w.progress() == 9
        w.end()
        with pytest.raises(StopAsyncIteration):
            await anext(events)
        assert not kind.watchers.get("a")  # unsubscribed at the end
    asyncio.run(run())
