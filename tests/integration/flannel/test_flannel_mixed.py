"""flannel-py beside the real flanneld (built by scripts/install-anchors) on one etcd, VXLAN: each
reads the other's lease, programs the other's VTEP, and pods on the two nodes talk across the mix.
A flanneld node joining later and a restarted flannel-py keep it so. This is the claim that
flannel-py can replace flanneld node by node in a running cluster."""

from __future__ import annotations

import pytest

from knet import netns
from knet_testing.anchors import binary, missing
from knet_testing.flannel import ETCD_URL, PREFIX, Node, Topo, wait_for
from tests.integration.flannel.conftest import VXLAN_CONFIG, _topo
from tests.integration.flannel.test_flannel_vxlan import assert_pods_talk, has_remote, lease, ping, vtep_mac

pytestmark = pytest.mark.integration


def start_flanneld(topo: Topo, node: Node, *extra: str) -> None:
    """The real flanneld in the node's namespace, configured as the testbed runs flannel-py (etcd
    subnet manager, same prefix, the underlay interface, the node's subnet file)."""
    argv = [binary("flanneld"), f"--etcd-endpoints={ETCD_URL}", f"--etcd-prefix={PREFIX}", "--iface=eth0",
            f"--subnet-file={node.subnet_file}", *extra]
    node.proc = netns.spawn(node.name, argv, log_path=node.log)


@pytest.fixture(scope="module")
def mixed_cluster(request: pytest.FixtureRequest) -> Topo:
    """Node 1 runs flannel-py, node 2 flanneld, started together; a pod on each."""
    if why := missing("flanneld"):
        pytest.skip(why)
    topo = _topo(request, "x", VXLAN_CONFIG)
    n1, n2 = topo.add_node(1), topo.add_node(2)
    topo.start_daemon(n1)
    start_flanneld(topo, n2)
    for n in (n1, n2):
        topo.wait_subnet(n, timeout=30)
        topo.add_pod(n)
    return topo


def test_both_leases_in_one_format(mixed_cluster: Topo):
    n1, n2 = mixed_cluster.nodes[1], mixed_cluster.nodes[2]
    assert n1.subnet() != n2.subnet()
    mine, theirs = lease(mixed_cluster, n1), lease(mixed_cluster, n2)
    assert mine["PublicIP"] == n1.ip and theirs["PublicIP"] == n2.ip
    assert mine["BackendType"] == theirs["BackendType"] == "vxlan"
    assert mine["BackendData"] == {"VNI": 7, "VtepMAC": vtep_mac(n1)}
    assert theirs["BackendData"]["VNI"] == 7 and theirs["BackendData"]["VtepMAC"] == vtep_mac(n2)
    # subnet.env: what the CNI plugin reads, the same keys and meaning from both daemons
    assert set(n1.env()) == set(n2.env()) >= {"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"}
    assert n1.env()["FLANNEL_MTU"] == n2.env()["FLANNEL_MTU"] == "1450"


def test_each_programs_the_other(mixed_cluster: Topo):
    n1, n2 = mixed_cluster.nodes[1], mixed_cluster.nodes[2]
    wait_for(lambda: has_remote(n1, str(n2.subnet()), n2.ip, vtep_mac(n2)), timeout=10, what="flanneld node on n1")
    wait_for(lambda: has_remote(n2, str(n1.subnet()), n1.ip, vtep_mac(n1)), timeout=10, what="flannel-py node on n2")


def test_pods_talk_across_the_mix(mixed_cluster: Topo):
    n1, n2 = mixed_cluster.nodes[1], mixed_cluster.nodes[2]
    wait_for(lambda: ping(n1.pod, n2.pod_ip), timeout=10, what="first ping")
    assert_pods_talk(n1, n2)
    assert_pods_talk(n2, n1)


def test_flanneld_joining_later_reaches_and_is_reached(mixed_cluster: Topo):
    n1, n2 = mixed_cluster.nodes[1], mixed_cluster.nodes[2]
    n3 = mixed_cluster.add_node(3)
    start_flanneld(mixed_cluster, n3)
    s3 = mixed_cluster.wait_subnet(n3, timeout=30)
    assert s3 not in (n1.subnet(), n2.subnet())
    mixed_cluster.add_pod(n3)
    wait_for(lambda: has_remote(n1, str(s3), n3.ip, vtep_mac(n3)), timeout=10, what="n3 on flannel-py's node")
    wait_for(lambda: ping(n3.pod, n1.pod_ip), timeout=10, what="n3 pod -> n1 pod")
    assert_pods_talk(n1, n3)
    assert_pods_talk(n3, n2)


def test_flannel_py_restart_keeps_its_lease_for_flanneld(mixed_cluster: Topo):
    n1, n2 = mixed_cluster.nodes[1], mixed_cluster.nodes[2]
    subnet, mac = n1.subnet(), vtep_mac(n1)
    mixed_cluster.stop_daemon(n1)
    mixed_cluster.start_daemon(n1)
    wait_for(lambda: Topo.read(n1.log).count("how=reused") == 1, timeout=15, what="restarted flannel-py")
    assert n1.subnet() == subnet and vtep_mac(n1) == mac
    assert lease(mixed_cluster, n1)["BackendData"]["VtepMAC"] == mac
    assert has_remote(n2, str(subnet), n1.ip, mac)
    assert_pods_talk(n2, n1)
