"""Deployment rollout arithmetic: a rolling update run to completion step by step never drops
below replicas - maxUnavailable available pods nor exceeds replicas + maxSurge, and ends on the new
ReplicaSet only; Recreate waits for the old pods to be gone."""

from __future__ import annotations

import pytest

from lab.controllers.deployment import (
    RS,
    recreate_plan,
    rolling_plan,
    scaled_value,
    surge_and_unavailable,
    template_hash,
)


def test_int_or_percent() -> None:
    assert scaled_value("25%", 10, round_up=True) == 3
    assert scaled_value("25%", 10, round_up=False) == 2
    assert scaled_value(2, 10, round_up=False) == 2
    assert scaled_value(None, 4, round_up=True) == 1
    assert surge_and_unavailable(0, 0, 3) == (0, 1)  # progress must be possible
    assert surge_and_unavailable("25%", "25%", 3) == (1, 0)


def simulate(desired: int, surge: int, unavailable: int, old_replicas: int) -> list[tuple[int, int]]:
    """Run the plan against an ideal cluster (pods become available one step after they exist).
    Returns (new, old) spec replicas after every step."""
    new, old = RS("new", 0, 0), RS("old", old_replicas, old_replicas)
    history = []
    for _ in range(100):
        plan = rolling_plan(desired, surge, unavailable, new, [old])
        if not plan:
            # the cluster catches up: pods of the new RS become available
            if new.available < new.replicas:
                new.available = new.replicas
                continue
            break
        new.replicas = plan.get("new", new.replicas)
        old.replicas = plan.get("old", old.replicas)
        old.available = min(old.available, old.replicas)
        available = new.available + old.available
        assert available >= desired - unavailable, "availability dropped below the minimum"
        assert new.replicas + old.replicas <= desired + surge, "surged too far"
        history.append((new.replicas, old.replicas))
    return history


@pytest.mark.parametrize(("desired", "surge", "unavailable"), [(3, 1, 0), (3, 1, 1), (10, 3, 2), (1, 1, 0), (4, 0, 1)])
def test_rolling_update_completes_within_bounds(desired: int, surge: int, unavailable: int) -> None:
    history = simulate(desired, surge, unavailable, desired)
    assert history[-1] == (desired, 0)


def test_new_pods_ready_before_old_ones_go() -> None:
    # maxUnavailable 0: the old RS shrinks only after a new pod is available.
    assert rolling_plan(3, 1, 0, RS("new", 0, 0), [RS("old", 3, 3)]) == {"new": 1}
    assert rolling_plan(3, 1, 0, RS("new", 1, 0), [RS("old", 3, 3)]) == {}
    assert rolling_plan(3, 1, 0, RS("new", 1, 1), [RS("old", 3, 3)]) == {"old": 2}


def test_a_failing_new_replicaset_keeps_the_old_pods() -> None:
    # busybox:22-like: new pods never become available; the old ones stay.
    new, old = RS("new", 1, 0), RS("old", 3, 3)
    for _ in range(5):
        assert rolling_plan(3, 1, 0, new, [old]) == {}


def test_unhealthy_old_pods_go_first() -> None:
    # 4 pods, at least 2 available, 1 new one not yet: one may go, and it is an unhealthy old one.
    assert rolling_plan(3, 1, 1, RS("new", 1, 0), [RS("old", 3, 1)]) == {"old": 2}
    # two old ReplicaSets: the unready pods of either go before the ready ones
    assert rolling_plan(4, 0, 2, RS("new", 0, 0), [RS("a", 2, 2), RS("b", 2, 0)]) == {"b": 0}


def test_scale_down_of_the_new_replicaset() -> None:
    assert rolling_plan(2, 1, 0, RS("new", 5, 5), []) == {"new": 2}
    assert rolling_plan(5, 1, 0, RS("new", 2, 2), []) == {"new": 5}


def test_recreate_waits_for_old_pods() -> None:
    assert recreate_plan(3, RS("new", 0, 0), [RS("old", 3, 3, pods=3)]) == {"old": 0}
    assert recreate_plan(3, RS("new", 0, 0), [RS("old", 0, 0, pods=2)]) == {}
    assert recreate_plan(3, RS("new", 0, 0), [RS("old", 0, 0, pods=0)]) == {"new": 3}
    assert recreate_plan(3, RS("new", 3, 3), []) == {}


def test_template_hash_is_stable_and_sensitive() -> None:
    a = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}
    b = {"spec": {"containers": [{"image": "i:1", "name": "c"}]}, "metadata": {"labels": {"app": "x"}}}
    assert template_hash(a) == template_hash(b)
    assert len(template_hash(a)) == 10 and template_hash(a).isalnum()
    c = {**a, "spec": {"containers": [{"name": "c", "image": "i:2"}]}}
    assert template_hash(c) != template_hash(a)
