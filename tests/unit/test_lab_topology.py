"""The lab plan (pure): names, addresses, subnets, host-gw routes, conflists."""

from __future__ import annotations

import ipaddress

import pytest

from lab.net import topology
from lab.net.topology import PlanError


@pytest.mark.parametrize("name", ["knet", "a", "kt1a2b", "abcdefghijkl", "x9"])
def test_valid_names(name: str) -> None:
    assert topology.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Knet", "1lab", "my-lab", "abcdefghijklm", "a_b", "a.b", "lab ",
                                  "ü", None, 3])
def test_invalid_names(name: object) -> None:
    with pytest.raises(PlanError):
        topology.validate_name(name)  # type: ignore[arg-type]  # wrong types on purpose


@pytest.mark.parametrize("nodes", [0, -1, topology.MAX_NODES + 1, True, "3"])
def test_invalid_node_counts(nodes: object) -> None:
    with pytest.raises(PlanError):
        topology.plan("lab", nodes)  # type: ignore[arg-type]  # wrong types on purpose


def test_namespaces_all_carry_the_prefix() -> None:
    p = topology.plan("lab", 3)
    assert p.netns_names == ["lab-underlay", "lab-ctl", "lab-node1", "lab-node2", "lab-node3", "lab-client"]
    assert all(n.startswith("lab-") for n in p.netns_names)
    # Another lab's prefix can never match these: lab names have no hyphen.
    assert not any(n.startswith(topology.prefix("la")) for n in p.netns_names)


def test_addresses_and_subnets() -> None:
    p = topology.plan("knet", 3)
    assert (p.ctl.cidr, p.client.cidr) == ("192.168.33.2/24", "192.168.33.100/24")
    assert [n.cidr for n in p.nodes] == ["192.168.33.11/24", "192.168.33.12/24", "192.168.33.13/24"]
    assert [n.pod_subnet for n in p.nodes] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    underlay = ipaddress.ip_network(topology.UNDERLAY_CIDR)
    ips = [m.ip for m in p.members]
    assert len(set(ips)) == len(ips)
    assert all(ipaddress.ip_address(ip) in underlay for ip in ips)


def test_max_nodes_fit_below_the_client() -> None:
    p = topology.plan("knet", topology.MAX_NODES)
    assert ipaddress.ip_address(p.nodes[-1].ip) < ipaddress.ip_address(topology.CLIENT_IP)


def test_host_gw_routes() -> None:
    p = topology.plan("knet", 3)
    assert p.nodes[0].routes == [topology.Route("10.244.2.0/24", "192.168.33.12"),
                                 topology.Route("10.244.3.0/24", "192.168.33.13")]
    assert p.nodes[1].routes == [topology.Route("10.244.1.0/24", "192.168.33.11"),
                                 topology.Route("10.244.3.0/24", "192.168.33.13")]
    assert topology.plan("knet", 1).nodes[0].routes == []
    # Nothing routes anywhere else: no default route in the lab.
    assert not any(r.dst == "0.0.0.0/0" for m in p.members for r in m.routes)
    assert p.ctl.routes == [] and p.client.routes == []


def test_conflist_content() -> None:
    p = topology.plan("knet", 2)
    assert p.nodes[1].conflist == {
        "cniVersion": "1.0.0",
        "name": "knet",
        "plugins": [
            {"type": "knet-cni", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "agentSocket": "/run/knet/lab/knet/node2/cni.sock",
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.2.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/run/knet/lab/knet/node2/ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    assert p.nodes[1].conflist_path == "/run/knet/lab/knet/node2/cni/10-knet.conflist"
    assert p.nodes[1].agent_log == "/run/knet/lab/knet/node2/cni-agent.log"


def test_conflist_plugin_type_and_root_are_configurable() -> None:
    p = topology.plan("knet", 1, cni_type="bridge", root="/tmp/x")
    conf = p.nodes[0].conflist["plugins"][0]
    assert conf["type"] == "bridge"
    assert conf["ipam"]["dataDir"] == "/tmp/x/knet/node1/ipam"
    assert p.state_dir == "/tmp/x/knet"


def test_node_lookup() -> None:
    p = topology.plan("knet", 3)
    assert p.node(2) is p.node("2") is p.node("node2") is p.node("knet-node2")
    with pytest.raises(PlanError):
        p.node("node4")


def test_pod_names_and_container_ids() -> None:
    assert topology.pod_netns("knet", "default", "web") == "knet-pod-default-web"
    cid = topology.container_id("knet", "default", "web")
    assert len(cid) == 64 and int(cid, 16) >= 0
    assert cid == topology.container_id("knet", "default", "web")
    assert cid != topology.container_id("knet", "other", "web")
    assert cid != topology.container_id("knot", "default", "web")
    assert topology.validate_label("pod", "web-1.a") == "web-1.a"
    for bad in ("", "Web", "-a", "a-", "a/b", "a b", "x" * 64):
        with pytest.raises(PlanError):
            topology.validate_label("pod", bad)


def test_describe_is_json_shaped() -> None:
    d = topology.describe(topology.plan("knet", 2))
    assert d["pods"] == {}
    assert d["cni_type"] == "knet-cni"
    assert d["nodes"]["node2"]["routes"] == [{"dst": "10.244.1.0/24", "via": "192.168.33.11"}]
    assert d["underlay"] == {"netns": "knet-underlay", "bridge": "underlay", "cidr": "192.168.33.0/24"}
