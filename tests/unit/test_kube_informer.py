"""The informer's pure parts: the relist diff, backoff, splitting a watch stream into lines."""

from __future__ import annotations

import asyncio

from knet.kube.events import ADD, DELETE, UPDATE, Backoff, lines, relist_diff, threadsafe
from knet.kube.models import Service


def svc(name: str, rv: str | None = "1", uid: str | None = None, port: int = 80, ns: str = "default") -> Service:
    return Service.model_validate({"metadata": {"name": name, "namespace": ns, "resourceVersion": rv,
                                                "uid": uid or f"uid-{name}"},
                                   "spec": {"ports": [{"port": port}]}})


def cache(*objs: Service) -> dict[str, Service]:
    return {o.key: o for o in objs}


def summary(events):
    return [(e.type, e.obj.key, e.old.metadata.resource_version if e.old else None,
             e.new.metadata.resource_version if e.new else None) for e in events]


def test_relist_diff_empty_to_full_is_adds_in_order():
    new = cache(svc("a"), svc("b"), svc("c"))
    assert summary(relist_diff({}, new)) == [(ADD, "default/a", None, "1"), (ADD, "default/b", None, "1"),
                                             (ADD, "default/c", None, "1")]


def test_relist_diff_nothing_changed_is_no_events():
    old = cache(svc("a", "5"), svc("b", "6"))
    assert relist_diff(old, cache(svc("a", "5"), svc("b", "6"))) == []


def test_relist_diff_deletes_first_then_updates_and_adds():
    old = cache(svc("a", "5"), svc("gone", "6"), svc("same", "7"), svc("b", "8"))
    new = cache(svc("b", "12"), svc("a", "9"), svc("same", "7"), svc("new", "11"))
    assert summary(relist_diff(old, new)) == [
        (DELETE, "default/gone", "6", None),
        (UPDATE, "default/b", "8", "12"),
        (UPDATE, "default/a", "5", "9"),
        (ADD, "default/new", None, "11"),
    ]


def test_relist_diff_everything_vanished():
    old = cache(svc("a"), svc("b", ns="other"))
    assert summary(relist_diff(old, {})) == [(DELETE, "default/a", "1", None), (DELETE, "other/b", "1", None)]


def test_relist_diff_recreated_with_new_uid_is_delete_and_add():
    old = cache(svc("a", "5", uid="u1"))
    new = cache(svc("a", "9", uid="u2"))
    assert summary(relist_diff(old, new)) == [(DELETE, "default/a", "5", None), (ADD, "default/a", None, "9")]


def test_relist_diff_without_resource_versions_compares_content():
    old = cache(svc("a", None, port=80), svc("b", None, port=80))
    new = cache(svc("a", None, port=81), svc("b", None, port=80))
    assert summary(relist_diff(old, new)) == [(UPDATE, "default/a", None, None)]


def test_relist_diff_namespaces_are_distinct_keys():
    old = cache(svc("a", "1", ns="x"))
    new = cache(svc("a", "1", ns="y"))
    assert [(e.type, e.obj.key) for e in relist_diff(old, new)] == [(DELETE, "x/a"), (ADD, "y/a")]


def test_backoff_grows_caps_jitters_and_resets():
    lows = Backoff(initial=1, maximum=8, rng=lambda: 0.0)
    assert [lows.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]  # half the step at minimum
    highs = Backoff(initial=1, maximum=8, rng=lambda: 1.0)
    assert [highs.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    highs.reset()
    assert highs.next() == 1


class _Chunks:
    def __init__(self, chunks):
        self.chunks = list(chunks)

    def read1(self, n):
        return self.chunks.pop(0) if self.chunks else b""


def test_lines_reassembles_events_split_across_chunks():
    resp = _Chunks([b'{"type":"ADD', b'ED"}\n{"a":1}\n\n{"b"', b":2}\n", b'{"tail":true}'])
    assert list(lines(resp)) == [b'{"type":"ADDED"}', b'{"a":1}', b"", b'{"b":2}', b'{"tail":true}']


def test_threadsafe_runs_callback_on_the_loop():
    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Queue()
        cb = threadsafe(loop, got.put_nowait)
        await asyncio.to_thread(cb, "from another thread")
        return await asyncio.wait_for(got.get(), 2)

    assert asyncio.run(main()) == "from another thread"
