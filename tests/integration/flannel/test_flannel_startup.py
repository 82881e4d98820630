"""Start-up edge cases: late config, exhaustion, invalid config (etcd only, prefixes of their own)."""

from __future__ import annotations

import json

import pytest

from knet_testing.flannel import Topo, wait_for

pytestmark = pytest.mark.integration


def test_waits_for_config_then_starts(bare_cluster: Topo):
    node = bare_cluster.add_node(1)
    prefix = "/knet-test/late"
    proc = bare_cluster.start_daemon(node, prefix=prefix)
    wait_for(lambda: "no network config yet" in Topo.read(node.log), timeout=30, what="waiting log line")
    assert proc.poll() is None and node.subnet() is None
    bare_cluster.put(f"{prefix}/config", json.dumps({"Network": "10.246.0.0/16", "Backend": {"Type": "host-gw"}}))
    assert str(bare_cluster.wait_subnet(node)) == "10.246.1.0/24"
    assert f"{prefix}/subnets/10.246.1.0-24" in bare_cluster.subnet_keys(prefix)
    bare_cluster.stop_daemon(node)


def test_exhaustion_is_a_clear_error_and_exit(bare_cluster: Topo):
    prefix = "/knet-test/full"
    bare_cluster.put(f"{prefix}/config", json.dumps({"Network": "10.247.0.0/16", "SubnetMin": "10.247.5.0",
                                                       "SubnetMax": "10.247.5.0", "Backend": {"Type": "host-gw"}}))
    first, second = bare_cluster.add_node(2), bare_cluster.add_node(3)
    bare_cluster.start_daemon(first, prefix=prefix)
    assert str(bare_cluster.wait_subnet(first)) == "10.247.5.0/24"
    proc = bare_cluster.start_daemon(second, prefix=prefix)
    assert proc.wait(15) == 1
    log = Topo.read(second.log)
    assert "no free subnet: all 1 /24 subnets between 10.247.5.0 and 10.247.5.0" in log, log
    assert second.subnet() is None
    bare_cluster.stop_daemon(first)


def test_invalid_config_is_a_clear_error_and_exit(bare_cluster: Topo):
    prefix = "/knet-test/bad"
    bare_cluster.put(f"{prefix}/config", json.dumps({"Network": "10.248.0.0/16", "SubnetLen": 33}))
    node = bare_cluster.add_node(4)
    proc = bare_cluster.start_daemon(node, prefix=prefix)
    assert proc.wait(15) == 1
    assert "SubnetLen /33 must be /30 or shorter" in Topo.read(node.log)
