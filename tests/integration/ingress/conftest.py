"""One 2-node lab for the ingress tests (`kt` + 4 hex chars, always torn down), with the seed
scenario's backends (S21: whale A on node1, whale B on node2, the default backend on node1) and
a controller whose nginx runs in node1's namespace."""

from __future__ import annotations

import os
import re
import secrets
import shutil

import pytest

from knet_testing.ingress import backend, ingress, path, rule
from lab import api
from lab.net import state
from tests.integration.ingress.ingress_env import Env

NAME_RE = re.compile(r"^kt[0-9a-f]{4}$")

pytestmark = pytest.mark.integration


def _sweep() -> None:
    for name in api.list_labs():
        if NAME_RE.match(name) and not state.owner_alive(name):
            api.down(name)


def whale_ingress():
    return ingress("whale", rule("a.whale.hey", path("/", "whale-svc-a")),
                   rule("b.whale.hey", path("/", "whale-svc-b")), default=backend("whale-svc-default"))


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> Env:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (scripts/install-deps)")
    _sweep()
    name = "kt" + secrets.token_hex(2)
    request.addfinalizer(lambda: api.down(name))  # registered first: whatever happens, the lab goes
    lab = api.up(name, nodes=2)
    e = Env(lab)
    request.addfinalizer(e.close)
    e.backend_pod("whale-a", "Whale Type A", "node1")
    e.backend_pod("whale-b", "Whale Type B", "node2")
    e.backend_pod("whale-default", "Whale Default", "node1")
    for svc, pod in (("whale-svc-a", "whale-a"), ("whale-svc-b", "whale-b"), ("whale-svc-default", "whale-default")):
        e.service(svc, [pod])
    e.put(whale_ingress())
    e.sync()
    return e
