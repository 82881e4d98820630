"""The lab without an overlay: static subnets, host-gw routes by hand, no etcd."""

from __future__ import annotations

import secrets

import pytest

from lab import api

pytestmark = pytest.mark.integration


def test_static_lab_pods_talk_across_nodes() -> None:
    name = "kt" + secrets.token_hex(2)
    try:
        lab = api.up(name, nodes=2, overlay="static")
        assert lab.nodes["node2"]["pod_subnet"] == "10.244.2.0/24"
        a = lab.add_pod("node1", "sa")
        b = lab.add_pod("node2", "sb")
        assert a["ip"].startswith("10.244.1.") and b["ip"].startswith("10.244.2.")
        assert lab.exec("sa", ["ping", "-c1", "-W2", b["ip"]]).returncode == 0
    finally:
        api.down(name)
