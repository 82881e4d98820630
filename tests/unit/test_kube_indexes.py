"""The informer's secondary indexes: after every kind of event (add, update, delete, malformed
update, relist with its diff) each index equals a scan of the cache; lookups do not scan; the
standard index functions file what they should."""

from __future__ import annotations

import random

import pytest

from knet.kube.indexes import NAMESPACE, NODE, SERVICE, STANDARD, Store, by_namespace, by_node, by_service
from knet.kube.informer import Informer
from knet.kube.models import EndpointSlice, Namespace, Pod, parse

SLICE_INDEXES = {NAMESPACE: by_namespace, SERVICE: by_service}
POD_INDEXES = {NAMESPACE: by_namespace, NODE: by_node}


def slice_raw(name: str, ns: str, service: str | None, rv: int, addresses: int = 1) -> dict:
    labels = {"kubernetes.io/service-name": service} if service else {}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": str(rv),
                         "uid": f"uid-{ns}-{name}"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"]} for i in range(addresses)],
            "ports": [{"name": "http", "port": 8080}]}


def pod_raw(name: str, ns: str, node: str | None, rv: int) -> dict:
    spec = {"nodeName": node} if node else {}
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv), "uid": f"uid-{ns}-{name}"},
            "spec": {**spec, "containers": [{"name": "c", "image": "x"}]}}


def malformed(raw: dict) -> dict:
    """The same object made invalid (an IPv6 address in an IPv4 slice / a bad pod IP)."""
    if "addressType" in raw:
        return {**raw, "endpoints": [{"addresses": ["fd00::1"]}]}
    return {**raw, "status": {"podIP": "not-an-ip"}}


def informer(kind, indexers) -> Informer:
    # No API client: the tests drive the cache through the informer's own event entry points
    # (_apply for watch events, _list_and_replace for a relist), as the watch loop does.
    return Informer(None, kind, indexers=indexers)  # type: ignore[arg-type]


def relist(inf: Informer, raws: list[dict]) -> None:
    inf._list = lambda: (raws, "999")  # type: ignore[method-assign]
    inf._list_and_replace()


def assert_indexes_match_scan(inf: Informer, indexers) -> None:
    objects = dict(inf._store.objects)
    for name, fn in indexers.items():
        expected: dict[str, list[str]] = {}
        for key, obj in objects.items():
            for value in dict.fromkeys(fn(obj)):
                expected.setdefault(value, []).append(key)
        assert sorted(inf.index_values(name)) == sorted(expected), name
        for value, keys in expected.items():
            assert sorted(inf.index_keys(name, value)) == sorted(keys), (name, value)
            assert sorted(o.key for o in inf.by_index(name, value)) == sorted(keys), (name, value)
            assert all(inf.get_by_key(o.key) is o for o in inf.by_index(name, value))  # the cached objects
        assert inf.by_index(name, "no-such-value") == []


def random_raw(kind, rng: random.Random, name: str, rv: int) -> dict:
    ns = rng.choice(["a", "b", "c"])
    if kind is EndpointSlice:
        return slice_raw(name, ns, rng.choice([None, "web", "db", "api"]), rv, rng.randint(1, 3))
    return pod_raw(name, ns, rng.choice([None, "node1", "node2"]), rv)


@pytest.mark.parametrize("kind,indexers", [(EndpointSlice, SLICE_INDEXES), (Pod, POD_INDEXES)],
                         ids=["slices", "pods"])
@pytest.mark.parametrize("seed", range(12))
def test_every_event_kind_keeps_indexes_equal_to_a_scan(kind, indexers, seed):
    rng = random.Random(seed)
    inf = informer(kind, indexers)
    known: dict[str, dict] = {}  # name -> the raw object the server has now
    names = [f"o{i}" for i in range(8)]
    for rv in range(1, 121):
        op = rng.choice(["put", "put", "put", "delete", "malformed", "relist"])
        name = rng.choice(names)
        if op == "put":
            raw = random_raw(kind, rng, name, rv)
            # A rename across namespaces is a different key: delete the old one first, as the
            # server's event stream would have it.
            prev = known.get(name)
            if prev is not None and prev["metadata"]["namespace"] != raw["metadata"]["namespace"]:
                inf._apply("DELETED", f"{prev['metadata']['namespace']}/{name}", prev)
            known[name] = raw
            inf._apply("MODIFIED" if prev else "ADDED", f"{raw['metadata']['namespace']}/{name}", raw)
        elif op == "delete" and name in known:
            raw = known.pop(name)
            inf._apply("DELETED", f"{raw['metadata']['namespace']}/{name}", raw)
        elif op == "malformed" and name in known:
            raw = known.pop(name)  # the informer drops it: it is no longer "known good"
            inf._apply("MODIFIED", f"{raw['metadata']['namespace']}/{name}", malformed(raw))
            assert inf.get_by_key(f"{raw['metadata']['namespace']}/{name}") is None
        elif op == "relist":
            # The server's state moved on while we were not watching: some objects changed,
            # some vanished, some are new, one may be malformed (never cached).
            for n in names:
                r = rng.random()
                if r < 0.2:
                    known.pop(n, None)
                elif r < 0.5:
                    known[n] = random_raw(kind, rng, n, rv)
            raws = list(known.values())
            if rng.random() < 0.3:
                raws.append(malformed(random_raw(kind, rng, "bad", rv)))
            relist(inf, raws)
        assert sorted(inf._store.objects) == sorted(f"{r['metadata']['namespace']}/{n}" for n, r in known.items())
        assert_indexes_match_scan(inf, indexers)


def test_relist_diff_moves_an_object_between_index_entries():
    inf = informer(EndpointSlice, SLICE_INDEXES)
    relist(inf, [slice_raw("s1", "a", "web", 1), slice_raw("s2", "a", "web", 2), slice_raw("s3", "b", "db", 3)])
    assert inf.index_keys(SERVICE, "a/web") == ["a/s1", "a/s2"]
    events = []
    inf.add_handler(on_update=lambda old, new: events.append(("update", new.key, inf.index_keys(SERVICE, "a/db"))),
                    on_delete=lambda old: events.append(("delete", old.key, inf.index_keys(SERVICE, "a/web"))))
    relist(inf, [slice_raw("s1", "a", "db", 4), slice_raw("s3", "b", "db", 3)])
    assert inf.index_keys(SERVICE, "a/web") == [] and inf.index_keys(SERVICE, "a/db") == ["a/s1"]
    assert "a/web" not in inf.index_values(SERVICE)
    # Callbacks see the indexes already updated (as they see the cache).
    assert ("update", "a/s1", ["a/s1"]) in events
    assert ("delete", "a/s2", []) in events


def test_lookups_and_namespace_list_do_not_scan_but_list_and_keys_count():
    inf = informer(Pod, POD_INDEXES)
    for i, (ns, node) in enumerate([("a", "n1"), ("a", "n2"), ("b", "n1")]):
        inf._apply("ADDED", f"{ns}/p{i}", pod_raw(f"p{i}", ns, node, i + 1))
    assert inf.scans == 0
    assert [p.key for p in inf.by_index(NODE, "n1")] == ["a/p0", "b/p2"]
    assert [p.key for p in inf.list(namespace="a")] == ["a/p0", "a/p1"]  # through the namespace index
    assert inf.get("p1", "a") is not None and len(inf) == 3
    assert inf.scans == 0
    inf.list()
    inf.keys()
    assert inf.scans == 2
    plain = informer(Pod, {NODE: by_node})
    plain.list(namespace="a")  # no namespace index: a filtered scan
    assert plain.scans == 1


def test_indexes_added_later_file_existing_objects_and_names_are_guarded():
    inf = informer(EndpointSlice, None)
    inf._apply("ADDED", "a/s1", slice_raw("s1", "a", "web", 1))
    with pytest.raises(KeyError, match="no index 'service'"):
        inf.by_index(SERVICE, "a/web")
    inf.add_indexers({SERVICE: by_service})
    assert [s.key for s in inf.by_index(SERVICE, "a/web")] == ["a/s1"]
    inf.add_indexers({SERVICE: by_service})  # the same function again: fine (shared informers)
    with pytest.raises(ValueError, match="already registered"):
        inf.add_indexers({SERVICE: lambda obj: ()})


def test_a_failing_index_function_indexes_nothing_and_the_informer_goes_on(caplog):
    def explode(obj):
        if obj.name == "bad":
            raise RuntimeError("boom")
        return (obj.name,)

    store: Store = Store({"name": explode})
    store.put("a/good", parse(Pod, pod_raw("good", "a", None, 1)))
    store.put("a/bad", parse(Pod, pod_raw("bad", "a", None, 2)))
    assert store.values("name") == ["good"] and "index name failed for a/bad" in caplog.text
    store.pop("a/bad")
    assert store.values("name") == ["good"]


@pytest.mark.parametrize("index,raw,values", [
    (NAMESPACE, pod_raw("p", "team-a", "n1", 1), ("team-a",)),
    (NODE, pod_raw("p", "team-a", "n1", 1), ("n1",)),
    (NODE, pod_raw("p", "team-a", None, 1), ()),  # not scheduled yet
    (SERVICE, slice_raw("s", "team-a", "web", 1), ("team-a/web",)),  # == the Service's key
    (SERVICE, slice_raw("s", "team-a", None, 1), ()),  # a slice of no Service
    (NAMESPACE, {"metadata": {"name": "team-a"}}, ()),  # cluster-scoped
])
def test_standard_index_functions(index, raw, values):
    kind = Namespace if "spec" not in raw and "addressType" not in raw else EndpointSlice if "addressType" in raw \
        else Pod
    assert tuple(STANDARD[index](parse(kind, raw))) == values
