"""flannel-py dual-stack (EnableIPv6): IPv6 pod traffic crosses nodes over the IPv6 VXLAN device
flannel-v6.<VNI> (over the IPv6 underlay, as flanneld does) and over host-gw routes via the nodes'
IPv6 addresses, next to the IPv4 overlay; etcd leases (or, with the kube subnet manager, the Node's
IPv6 podCIDR and flannel's v6 annotations), subnet.env and ip6tables carry the IPv6 side."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

import pytest

from knet import links, netns
from knet_testing.flannel import PREFIX, Node, Topo, wait_for
from tests.integration.flannel.kube_env import NET_CONF, KubeTopo
from tests.netutil import tcp_request, tcp_server

pytestmark = pytest.mark.integration

V6_NETWORK = "fd00:10:244::/56"
VXLAN_DUAL = {"Network": "10.247.0.0/16", "EnableIPv6": True, "IPv6Network": V6_NETWORK,
              "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}
HOSTGW_DUAL = {"Network": "10.248.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:245::/56",
               "Backend": {"Type": "host-gw"}}


def _cluster(request: pytest.FixtureRequest, tag: str, config: dict, masq_on_first: bool = False) -> Topo:
    topo = Topo(tag)
    request.addfinalizer(topo.cleanup)
    topo.start_etcd()
    topo.put(f"{PREFIX}/config", json.dumps(config))
    n1, n2 = topo.add_node(1), topo.add_node(2)
    topo.start_daemon(n1, *(["--ip-masq"] if masq_on_first else []))
    topo.start_daemon(n2)
    for n in (n1, n2):
        topo.wait_subnet(n, timeout=60)
        topo.add_pod(n)
    return topo


@pytest.fixture(scope="module")
def vxlan_dual(request: pytest.FixtureRequest) -> Topo:
    return _cluster(request, "d", VXLAN_DUAL, masq_on_first=True)


@pytest.fixture(scope="module")
def hostgw_dual(request: pytest.FixtureRequest) -> Topo:
    return _cluster(request, "g", HOSTGW_DUAL)


def ping6(src: str, dst: str) -> bool:
    return netns.run(src, ["ping", "-6", "-c", "1", "-W", "2", dst]).returncode == 0


def tx_packets(node: Node, device: str) -> int:
    shown = json.loads(netns.run(node.name, ["ip", "-s", "-j", "link", "show", "dev", device], check=True).stdout)
    return shown[0]["stats64"]["tx"]["packets"]


def lease_key(node: Node) -> str:
    """flanneld's key of a dual-stack lease: both subnets."""
    s4, s6 = node.subnet(), node.ipv6_subnet()
    assert s4 is not None and s6 is not None
    return f"{PREFIX}/subnets/{s4.network_address}-{s4.prefixlen}&{s6.network_address}-{s6.prefixlen}"


def v6_routes(node: Node, device: str) -> set[tuple[str, str]]:
    with links.iproute(node.name) as ipr:
        return {(r["dst"], r["gw"]) for r in links.routes_via(ipr, device, 10) if r["gw"]}


def test_dual_stack_lease_subnet_env_and_ipv6_device(vxlan_dual: Topo):
    n1, n2 = vxlan_dual.nodes[1], vxlan_dual.nodes[2]
    s1, s1_6 = n1.subnet(), n1.ipv6_subnet()
    assert s1 is not None and s1_6 is not None and s1_6 != n2.ipv6_subnet()
    assert s1_6.prefixlen == 64 and s1_6.subnet_of(ipaddress.IPv6Network(V6_NETWORK))
    env = n1.env()
    assert env["FLANNEL_IPV6_NETWORK"] == V6_NETWORK and env["FLANNEL_IPV6_SUBNET"] == f"{s1_6.network_address + 1}/64"
    assert env["FLANNEL_MTU"] == "1430"  # the IPv6 underlay's 70 bytes of VXLAN overhead bound both families
    # flanneld's key layout and value for a dual-stack lease
    value = json.loads(vxlan_dual.subnet_keys()[lease_key(n1)])
    with links.iproute(n1.name) as ipr:
        mac6 = links.mac_of(links.get_link(ipr, "flannel-v6.7")).lower()
        mac4 = links.mac_of(links.get_link(ipr, "flannel.7")).lower()
        vx6 = links.vxlan_attrs(links.get_link(ipr, "flannel-v6.7"))
        assert f"{s1_6.network_address}/128" in links.addresses(ipr, "flannel-v6.7")
    assert value == {"PublicIP": n1.ip, "PublicIPv6": n1.ipv6, "BackendType": "vxlan",
                     "BackendData": {"VNI": 7, "VtepMAC": mac4}, "BackendV6Data": {"VNI": 7, "VtepMAC": mac6}}
    assert vx6["IFLA_VXLAN_LOCAL6"] == n1.ipv6 and vx6["IFLA_VXLAN_ID"] == 7 and vx6["IFLA_VXLAN_PORT"] == 4789


def test_ipv6_pod_traffic_crosses_nodes_over_the_ipv6_vxlan_device(vxlan_dual: Topo):
    n1, n2 = vxlan_dual.nodes[1], vxlan_dual.nodes[2]
    s2_6 = n2.ipv6_subnet()
    assert s2_6 is not None and n1.pod and n2.pod and n1.pod_ip6 and n2.pod_ip6
    wait_for(lambda: (str(s2_6), str(s2_6.network_address)) in v6_routes(n1, "flannel-v6.7"), timeout=30,
             what="route to n2's IPv6 subnet via flannel-v6.7")
    with links.iproute(n1.name) as ipr:
        fdb = links.fdb_entries(ipr, "flannel-v6.7")
    n2_mac6 = json.loads(vxlan_dual.subnet_keys()[lease_key(n2)])["BackendV6Data"]["VtepMAC"]
    assert fdb == [(n2_mac6, n2.ipv6)]  # encapsulated towards n2's IPv6 underlay address
    before = tx_packets(n1, "flannel-v6.7")
    wait_for(lambda: ping6(n1.pod, n2.pod_ip6), timeout=30, what="ping6 n1 pod -> n2 pod")
    assert ping6(n2.pod, n1.pod_ip6)
    with tcp_server(n2.pod, "::") as port:
        # pod to pod keeps the source address (no masquerade inside the IPv6Network, --ip-masq on n1)
        assert tcp_request(n1.pod, n2.pod_ip6, port, b"v6", timeout=10) == f"from {n1.pod_ip6}:v6".encode()
    assert tx_packets(n1, "flannel-v6.7") > before
    # and IPv4 still crosses on flannel.7
    wait_for(lambda: netns.run(n1.pod, ["ping", "-c", "1", "-W", "2", n2.pod_ip]).returncode == 0, timeout=30,
             what="ping n1 pod -> n2 pod over IPv4")


def test_ip_masq_and_forward_rules_in_ip6tables(vxlan_dual: Topo):
    n1 = vxlan_dual.nodes[1]
    s1_6 = n1.ipv6_subnet()
    nat = netns.run(n1.name, ["ip6tables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]).stdout
    assert f"-s {s1_6} -d {V6_NETWORK}" in nat and f"-s {V6_NETWORK} ! -d ff00::/8" in nat, nat
    assert "FLANNEL-FWD" in netns.run(n1.name, ["ip6tables", "-S", "FORWARD"]).stdout
    assert "FLANNEL-POSTRTG" not in netns.run(vxlan_dual.nodes[2].name, ["ip6tables", "-t", "nat", "-S"]).stdout


def test_dual_stack_without_an_ipv6_underlay_address_is_refused(vxlan_dual: Topo):
    """flanneld's rule: EnableIPv6 needs an IPv6 address on the underlay interface."""
    n3 = vxlan_dual.add_node(3, ipv6=False)
    proc = vxlan_dual.start_daemon(n3)
    try:
        assert proc.wait(60) == 1
    except subprocess.TimeoutExpired:
        pytest.fail("flannel-py kept running without an IPv6 underlay address:\n" + vxlan_dual.read(n3.log))
    assert "failed to find IPv6 address for interface eth0" in vxlan_dual.read(n3.log)
    assert not any(k.startswith(f"{PREFIX}/subnets/") and n3.ip in v for k, v in vxlan_dual.subnet_keys().items())


def test_host_gw_routes_ipv6_via_each_nodes_ipv6_address(hostgw_dual: Topo):
    n1, n2 = hostgw_dual.nodes[1], hostgw_dual.nodes[2]
    s1_6, s2_6 = n1.ipv6_subnet(), n2.ipv6_subnet()
    wait_for(lambda: v6_routes(n1, "eth0") == {(str(s2_6), n2.ipv6)}, timeout=30, what="IPv6 route to n2 on n1")
    wait_for(lambda: v6_routes(n2, "eth0") == {(str(s1_6), n1.ipv6)}, timeout=30, what="IPv6 route to n1 on n2")
    value = json.loads(hostgw_dual.subnet_keys()[lease_key(n1)])
    assert value == {"PublicIP": n1.ip, "PublicIPv6": n1.ipv6, "BackendType": "host-gw"}
    assert n1.env()["FLANNEL_MTU"] == "1500"
    wait_for(lambda: ping6(n1.pod, n2.pod_ip6), timeout=30, what="ping6 n1 pod -> n2 pod over host-gw")
    with tcp_server(n1.pod, "::") as port:
        assert tcp_request(n2.pod, n1.pod_ip6, port, b"hg6", timeout=10) == f"from {n2.pod_ip6}:hg6".encode()


@pytest.fixture(scope="module")
def kube_dual(request: pytest.FixtureRequest) -> KubeTopo:
    """The kube subnet manager, dual-stack: Nodes with an IPv4 and an IPv6 podCIDR."""
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (scripts/install-deps installs it)")
    topo = KubeTopo("kd")
    request.addfinalizer(topo.cleanup)
    topo.start_control_plane({**NET_CONF, "EnableIPv6": True, "IPv6Network": V6_NETWORK})
    for i in (1, 2):
        node = topo.add_node(i)
        topo.create_node(i, f"10.246.{i}.0/24", f"fd00:10:244:{i}::/64")
        topo.start_kube_daemon(node, i)
    for node in topo.nodes.values():
        topo.wait_subnet(node, timeout=60)
        topo.add_pod(node)
    return topo


def test_kube_manager_publishes_v6_annotations_and_routes_ipv6_across_nodes(kube_dual: KubeTopo):
    n1, n2 = kube_dual.nodes[1], kube_dual.nodes[2]
    assert n1.env()["FLANNEL_IPV6_SUBNET"] == "fd00:10:244:1::1/64"  # the IPv6 entry of spec.podCIDRs
    with links.iproute(n1.name) as ipr:
        mac6 = links.mac_of(links.get_link(ipr, "flannel-v6.7")).lower()
    ann = wait_for(lambda: (a := kube_dual.annotations(1)).get("public-ipv6") and a, timeout=30,
                   what="node1's IPv6 annotations")
    assert ann["public-ipv6"] == n1.ipv6
    assert json.loads(ann["backend-v6-data"]) == {"VNI": 7, "VtepMAC": mac6}
    wait_for(lambda: ("fd00:10:244:2::/64", "fd00:10:244:2::") in v6_routes(n1, "flannel-v6.7"), timeout=30,
             what="route to node2's IPv6 podCIDR")
    wait_for(lambda: ping6(n1.pod, n2.pod_ip6), timeout=30, what="ping6 node1 pod -> node2 pod")
    with tcp_server(n2.pod, "::") as port:
        assert tcp_request(n1.pod, n2.pod_ip6, port, b"k6", timeout=10) == f"from {n1.pod_ip6}:k6".encode()
