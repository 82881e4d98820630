"""The reachability matrix: for every scenario step, all 9 x 9 pod pairs x {TCP, UDP} x {80, 81}
probed with real packets through the nftables data path must equal the reference evaluator's
truth table, cell for cell. A failure prints both matrices side by side."""

from __future__ import annotations

import pytest

from knet_testing.netpolicy import matrix, randomized, scenarios

pytestmark = pytest.mark.integration

CATALOGUE = scenarios.catalogue()
RANDOM = randomized.scenarios(range(1, 21))


def _run(harness, sc: scenarios.Scenario) -> None:
    for i, step in enumerate(sc.steps):
        want, got = harness.check(step)
        bad = matrix.mismatches(want, got)
        assert not bad, "\n" + matrix.render(want, got, f"{sc.name} step {i + 1}/{len(sc.steps)}: {len(bad)} cell(s) "
                                                         f"disagree") + "\npolicies: " + \
            "\n".join(str(p.to_dict()) for p in harness.last["policies"])


def test_catalogue_is_big_enough():
    assert len(CATALOGUE) >= 40
    names = [s.name for s in CATALOGUE]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("sc", CATALOGUE, ids=[s.name for s in CATALOGUE])
def test_scenario(harness, sc):
    _run(harness, sc)


@pytest.mark.parametrize("sc", RANDOM, ids=[s.name for s in RANDOM])
def test_random(harness, sc):
    _run(harness, sc)


def test_no_policies_everything_reachable(harness):
    """Last, after every scenario: removing all policies restores full reachability, and the
    backends' incremental updates left no chain or set behind."""
    want, got = harness.check(scenarios.Step(lambda c: []))
    assert all(got.values()), matrix.render(want, got)
    for backend in harness.backends.values():
        assert backend.in_sync()
        assert not backend.current.chains and not backend.current.sets
