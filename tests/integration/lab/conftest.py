"""A session-wide 3-node lab (`kt` + 4 hex chars), always torn down; packet helpers are in
lab_helpers.py."""

from __future__ import annotations

import os
import re
import secrets

import pytest

from lab import api
from lab.net import state

NAME_RE = re.compile(r"^kt[0-9a-f]{4}$")
CNI_TYPE = os.environ.get("KNET_LAB_CNI", "knet-cni")  # "bridge": the reference plugin, to compare


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")


def sweep_test_labs() -> None:
    """Leftovers of crashed test sessions: labs named kt<hex4> whose creating process is gone."""
    for name in api.list_labs():
        if NAME_RE.match(name) and not state.owner_alive(name):  # alive: a concurrent session's lab
            api.down(name)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> api.Lab:
    _require_root()
    sweep_test_labs()
    name = "kt" + secrets.token_hex(2)
    # Registered before anything is made: whatever happens, the lab goes.
    request.addfinalizer(lambda: api.down(name))
    return api.up(name, nodes=3, cni_type=CNI_TYPE)


@pytest.fixture(scope="session")
def pods(lab: api.Lab) -> dict[str, dict]:
    """a1, a2 on node1 and b1 on node2."""
    return {pod: lab.add_pod(node, pod) for node, pod in (("node1", "a1"), ("node1", "a2"), ("node2", "b1"))}
