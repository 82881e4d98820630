"""A session-wide 2-node lab with the control plane (`kt` + 4 hex), always torn down; a
`kubernetes` ApiClient and kubectl (Debian's 1.20) bound to its host kubeconfig (a loopback URL:
nothing here ever dials a lab address from the root namespace)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from knet.kube import client
from lab import api
from lab.bringup import controlplane
from tests.integration.controlplane.cp_helpers import ControlPlaneLab
from tests.integration.lab_names import new_lab_name, sweep_crashed_labs


def _find_kubectl() -> str | None:
    # The API server's test suite knows how to get Debian's kubectl 1.20 without installing it
    # system-wide; reuse it rather than a second copy of that logic.
    from tests.integration.apiserver.conftest import find_kubectl
    return find_kubectl()


@pytest.fixture(scope="session")
def cp(request: pytest.FixtureRequest) -> Iterator[ControlPlaneLab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    sweep_crashed_labs()
    name = new_lab_name(request)
    lab = api.up(name, nodes=2, overlay="static", control_plane=True)
    kubeconfig = controlplane.kubeconfig_path(name)
    controlplane.loopback_only(kubeconfig)
    c = client.new_api_client(kubeconfig)
    try:
        yield ControlPlaneLab(lab, kubeconfig, c, _find_kubectl())
    finally:
        c.close()
