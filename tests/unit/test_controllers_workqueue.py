"""The controllers' work queue and expectations."""

from __future__ import annotations

from lab.controllers.workqueue import Expectations, WorkQueue


def test_queue_dedups_and_requeues_keys_changed_while_processing() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(0) == "a"
    q.add("a")  # changed while being synced
    assert q.get(0) == "b"
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"


def test_delayed_add() -> None:
    q = WorkQueue()
    q.add_after("x", 0.05)
    assert q.get(0.01) is None
    assert q.get(1.0) == "x"


def test_expectations_wait_for_the_cache_or_time_out() -> None:
    now = [0.0]
    e = Expectations(timeout=5, clock=lambda: now[0])
    seen: set[str] = set()
    e.expect("rs", adds=["p1", "p2"])
    assert not e.satisfied("rs", lambda n: n in seen)
    seen.add("p1")
    assert not e.satisfied("rs", lambda n: n in seen)
    seen.add("p2")
    assert e.satisfied("rs", lambda n: n in seen)
    e.expect("rs", deletes=["p1"])
    assert not e.satisfied("rs", lambda n: n in seen)
    now[0] = 6.0  # the event was lost: act again after the timeout
    assert e.satisfied("rs", lambda n: n in seen)
    assert e.satisfied("other", lambda n: False)
