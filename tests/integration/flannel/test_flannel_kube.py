"""flannel-py --kube-subnet-mgr: subnets from the Nodes' podCIDR, leases as flannel's Node
annotations, no etcd of its own. A real API server (the lab's, over its own etcd), real daemons in
node namespaces, real packets between pods.

The tests share one module cluster (conftest.kube_cluster: nodes 1-3) and run in file order: node 4
joins and leaves, node 5 waits for its podCIDR, node 2 restarts, node 1's annotations are tampered
with. Each test asserts its own preconditions so a failure points at itself.
"""

from __future__ import annotations

import json
import os

import pytest

from knet.kube import client as kc
from knet_testing.flannel import Topo, wait_for
from tests.integration.flannel.kernel import has_remote, knows_nothing_of, ping, vtep_mac
from tests.integration.flannel.kube_env import NETWORK, KubeTopo
from tests.netutil import tcp_request, tcp_server

pytestmark = pytest.mark.integration
WAIT = 30  # generous: the machine is shared


def since(path: str, offset: int) -> str:
    with open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()


def test_subnets_are_the_nodes_podcidrs(kube_cluster: KubeTopo):
    for i, node in kube_cluster.nodes.items():
        env = node.env()
        assert env["FLANNEL_NETWORK"] == NETWORK
        assert env["FLANNEL_SUBNET"] == f"10.246.{i}.1/24"
        assert env["FLANNEL_MTU"] == "1450"  # underlay 1500 - VXLAN 50


def test_annotations_are_flannels(kube_cluster: KubeTopo):
    for i, node in kube_cluster.nodes.items():
        ann = kube_cluster.annotations(i)
        assert ann == {"kube-subnet-manager": "true", "backend-type": "vxlan",
                       "backend-data": json.dumps({"VNI": 7, "VtepMAC": vtep_mac(node)}, separators=(",", ":")),
                       "public-ip": node.ip}, (node.name, ann)


def test_every_node_routes_to_every_other(kube_cluster: KubeTopo):
    nodes = kube_cluster.nodes
    for i, node in nodes.items():
        for j, other in nodes.items():
            if i != j:
                assert has_remote(node, f"10.246.{j}.0/24", other.ip, vtep_mac(other)), (node.name, other.name)


def test_cross_node_pod_traffic(kube_cluster: KubeTopo):
    nodes = list(kube_cluster.nodes.values())
    for src in nodes:
        for dst in nodes:
            if src is not dst:
                assert ping(src.pod, dst.pod_ip), f"{src.pod} -> {dst.pod_ip}"
    with tcp_server(nodes[2].pod) as port:
        assert tcp_request(nodes[0].pod, nodes[2].pod_ip, port) == f"from {nodes[0].pod_ip}:hello".encode()


def test_no_etcd_keys_written(kube_cluster: KubeTopo):
    keys = kube_cluster.etcd_keys()
    assert keys and all(k.startswith("/registry/") for k in keys), keys  # only the API server's objects
    assert not [k for k in keys if "coreos.com" in k or "subnets" in k]


def test_node_joins(kube_cluster: KubeTopo):
    topo = kube_cluster
    n4 = topo.add_node(4)
    topo.create_node(4, "10.246.4.0/24")
    topo.start_kube_daemon(n4, 4)
    assert str(topo.wait_subnet(n4, timeout=WAIT)) == "10.246.4.0/24"
    topo.add_pod(n4)
    for i in (1, 2, 3):
        node = topo.nodes[i]
        wait_for(lambda node=node: has_remote(node, "10.246.4.0/24", n4.ip, vtep_mac(n4)), timeout=WAIT,
                 what=f"{node.name} learning node4")
        assert has_remote(n4, f"10.246.{i}.0/24", node.ip, vtep_mac(node))
    assert ping(topo.nodes[1].pod, n4.pod_ip) and ping(n4.pod, topo.nodes[3].pod_ip)


def test_node_leaves(kube_cluster: KubeTopo):
    topo = kube_cluster
    n4 = topo.nodes[4]
    assert has_remote(topo.nodes[1], "10.246.4.0/24", n4.ip, vtep_mac(n4))
    topo.stop_daemon(n4)
    kc.delete(topo.api, "Node", "node4")  # the node is removed from the cluster
    for i in (1, 2, 3):
        node = topo.nodes[i]
        wait_for(lambda node=node: knows_nothing_of(node, "10.246.4.0/24"), timeout=WAIT,
                 what=f"{node.name} forgetting node4")
    assert not ping(topo.nodes[1].pod, n4.pod_ip)
    assert ping(topo.nodes[1].pod, topo.nodes[2].pod_ip)  # the others are untouched


def test_node_without_podcidr_waits_and_says_why(kube_cluster: KubeTopo):
    topo = kube_cluster
    n5 = topo.add_node(5)
    topo.create_node(5, None)
    topo.start_kube_daemon(n5, 5)
    wait_for(lambda: "spec.podCIDR is not set" in Topo.read(n5.log), timeout=WAIT, what="the waiting log line")
    assert n5.proc.poll() is None and n5.subnet() is None
    assert "kube-subnet-manager" not in str(topo.annotations(5))  # nothing published without a subnet
    # The node IPAM controller's part: assign the podCIDR.
    kc.patch(topo.api, "Node", "node5", {"spec": {"podCIDR": "10.246.5.0/24", "podCIDRs": ["10.246.5.0/24"]}})
    assert str(topo.wait_subnet(n5, timeout=WAIT)) == "10.246.5.0/24"
    wait_for(lambda: has_remote(topo.nodes[1], "10.246.5.0/24", n5.ip, vtep_mac(n5)), timeout=WAIT,
             what="node1 learning node5")
    topo.stop_daemon(n5)
    kc.delete(topo.api, "Node", "node5")
    wait_for(lambda: knows_nothing_of(topo.nodes[1], "10.246.5.0/24"), timeout=WAIT, what="node5 gone")


def test_restart_keeps_subnet_and_publishes_nothing_new(kube_cluster: KubeTopo):
    topo = kube_cluster
    n2 = topo.nodes[2]
    before = topo.node_object(2)
    topo.stop_daemon(n2)
    mark = os.path.getsize(n2.log)
    topo.start_kube_daemon(n2, 2)
    wait_for(lambda: "lease acquired" in since(n2.log, mark), timeout=WAIT, what="restarted daemon")
    assert str(n2.subnet()) == "10.246.2.0/24"
    after = topo.node_object(2)
    assert after["metadata"]["annotations"] == before["metadata"]["annotations"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # not even patched
    assert "node annotations published" not in since(n2.log, mark)
    assert ping(topo.nodes[1].pod, n2.pod_ip) and ping(n2.pod, topo.nodes[3].pod_ip)


def test_tampered_annotation_is_republished(kube_cluster: KubeTopo):
    topo = kube_cluster
    n1 = topo.nodes[1]
    kc.patch(topo.api, "Node", "node1", {"metadata": {"annotations": {
        "flannel.alpha.coreos.com/public-ip": "192.168.33.250"}}})
    wait_for(lambda: topo.annotations(1).get("public-ip") == n1.ip, timeout=WAIT, what="public-ip re-published")
    assert "changed behind us" in Topo.read(n1.log)
    for i in (2, 3):
        assert has_remote(topo.nodes[i], "10.246.1.0/24", n1.ip, vtep_mac(n1))
    assert ping(topo.nodes[3].pod, n1.pod_ip)
