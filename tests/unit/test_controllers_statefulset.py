"""The StatefulSet controller's decisions (pure): ordinal order, scale-down from the top, one at a
time, replacement of failed pods, rolling update from the highest ordinal."""

from __future__ import annotations

from lab.controllers import statefulset as sts
from tests.unit.test_controllers_replicas import pod

REV = "web-abc"


def owned(*specs: tuple) -> dict[int, object]:
    """(ordinal, ready, phase, deleting, revision) -> pods by ordinal."""
    out = {}
    for i, ready, phase, deleting, rev in specs:
        out[i] = pod(f"web-{i}", ready=ready, phase=phase, deleting=deleting,
                     labels={"app": "web", sts.REVISION_LABEL: rev})
    return out


def test_ordinals_and_revision() -> None:
    assert sts.ordinal("web", "web-12") == 12
    assert sts.ordinal("web", "web-x") is None and sts.ordinal("web", "webby-1") is None
    assert sts.revision("web", {"a": 1}) == sts.revision("web", {"a": 1}) != sts.revision("web", {"a": 2})


def test_ordered_ready_creates_one_at_a_time_in_order() -> None:
    assert sts.plan(3, False, {}, REV, True).create == [0]
    not_ready = owned((0, False, "Running", False, REV))
    assert sts.plan(3, False, not_ready, REV, True) == sts.Plan()
    ready0 = owned((0, True, "Running", False, REV))
    assert sts.plan(3, False, ready0, REV, True).create == [1]
    assert sts.plan(3, True, {}, REV, True).create == [0, 1, 2]  # Parallel


def test_scale_down_from_the_top_one_at_a_time() -> None:
    pods = owned(*[(i, True, "Running", False, REV) for i in range(4)])
    assert sts.plan(2, False, pods, REV, True).delete == ["web-3"]
    pods[3] = pod("web-3", deleting=True, labels={"app": "web", sts.REVISION_LABEL: REV})
    assert sts.plan(2, False, pods, REV, True) == sts.Plan(), "waits until web-3 is gone"
    assert sts.plan(1, True, owned(*[(i, True, "Running", False, REV) for i in range(3)]), REV, True).delete == [
        "web-2", "web-1"]


def test_failed_pod_is_replaced_and_missing_one_recreated() -> None:
    pods = owned((0, True, "Running", False, REV), (1, False, "Failed", False, REV))
    assert sts.plan(2, False, pods, REV, True).delete == ["web-1"]
    del pods[1]
    assert sts.plan(2, False, pods, REV, True).create == [1]


def test_rolling_update_from_the_highest_ordinal_when_all_ready() -> None:
    pods = owned(*[(i, True, "Running", False, "old") for i in range(3)])
    assert sts.plan(3, False, pods, REV, True).delete == ["web-2"]
    assert sts.plan(3, False, pods, REV, False) == sts.Plan(), "OnDelete: nothing"
    pods[2] = pod("web-2", ready=False, labels={"app": "web", sts.REVISION_LABEL: REV})
    assert sts.plan(3, False, pods, REV, True) == sts.Plan(), "waits for the updated pod to be ready"
    pods[2] = pod("web-2", labels={"app": "web", sts.REVISION_LABEL: REV})
    assert sts.plan(3, False, pods, REV, True).delete == ["web-1"]
