"""Session-wide 3-node labs (`kt` + 4 hex chars), always torn down; packet helpers are in
lab_helpers.py.

- `lab`: the network lab alone (no control plane), flannel_py with the etcd subnet manager;
- `kube_lab`: with the control plane and flannel_py's kube subnet manager (`knet lab up`'s
  default): the Nodes' podCIDRs from the node IPAM controller are the node subnets;
- `real_lab`: as `kube_lab` with the upstream control plane (`--control-plane real`:
  kube-apiserver, kube-controller-manager); skipped when scripts/install-anchors has not built them;
- `overlay_lab`: each of the three in turn, for the tests of traffic between pods and nodes (a module
  runs all its tests with each by overriding `lab` and `pods`: test_lab_dataplane.py).
`pods` / `overlay_pods` / `lab_pods` (the module's own `lab`): a1, a2 on node1 and b1 on node2 of the
lab they are asked for."""

from __future__ import annotations

import os
import re
import secrets

import pytest

from knet_testing import anchors
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


OVERLAY_LABS = ("etcd", "kube", "real")  # the <name>_lab fixtures
_PODS: dict[str, dict[str, dict]] = {}  # lab name -> its session pods


def _up(request: pytest.FixtureRequest, **kw) -> api.Lab:
    _require_root()
    sweep_test_labs()
    name = "kt" + secrets.token_hex(2)
    # Registered before anything is made: whatever happens, the lab goes.
    request.addfinalizer(lambda: api.down(name))
    return api.up(name, nodes=3, cni_type=CNI_TYPE, **kw)


@pytest.fixture(scope="session")
def etcd_lab(request: pytest.FixtureRequest) -> api.Lab:
    return _up(request, subnet_manager="etcd")


@pytest.fixture(scope="session")
def lab(etcd_lab: api.Lab) -> api.Lab:
    return etcd_lab


@pytest.fixture(scope="session")
def kube_lab(request: pytest.FixtureRequest) -> api.Lab:
    return _up(request, control_plane=True, subnet_manager="kube")


@pytest.fixture(scope="session")
def real_lab(request: pytest.FixtureRequest) -> api.Lab:
    if why := anchors.real_control_plane_missing():
        pytest.skip(f"--control-plane real: {why}")
    return _up(request, control_plane="real", subnet_manager="kube")


@pytest.fixture(scope="session", params=OVERLAY_LABS)
def overlay_lab(request: pytest.FixtureRequest) -> api.Lab:
    return request.getfixturevalue(f"{request.param}_lab")


def session_pods(lab: api.Lab) -> dict[str, dict]:
    """a1, a2 on node1 and b1 on node2, made once per lab."""
    if lab.name not in _PODS:
        _PODS[lab.name] = {pod: lab.add_pod(node, pod)
                           for node, pod in (("node1", "a1"), ("node1", "a2"), ("node2", "b1"))}
    return _PODS[lab.name]


@pytest.fixture(scope="session")
def pods(lab: api.Lab) -> dict[str, dict]:
    return session_pods(lab)


@pytest.fixture(scope="session")
def overlay_pods(overlay_lab: api.Lab) -> dict[str, dict]:
    return session_pods(overlay_lab)


@pytest.fixture(scope="module")
def lab_pods(lab: api.Lab) -> dict[str, dict]:
    """The session pods of whichever lab the module's `lab` is (a module that overrides `lab`)."""
    return session_pods(lab)


@pytest.fixture(scope="session")
def kube_pods(kube_lab: api.Lab) -> dict[str, dict]:
    return session_pods(kube_lab)
