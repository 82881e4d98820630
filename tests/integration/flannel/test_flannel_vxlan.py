"""flannel-py over VXLAN with real etcd, real daemons in node namespaces and real packets.

The tests share one module cluster and run in file order: node 3 joins, leaves, etcd restarts,
daemons restart. Each test asserts its own preconditions so a failure points at itself.
"""

from __future__ import annotations

import json
import time

import pytest
from scapy.all import AsyncSniffer, conf
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN

from knet import links, netns
from knet_testing.flannel import PREFIX, Node, Topo, wait_for
from tests.integration.flannel.kernel import DEV, entries, has_remote, knows_nothing_of, ping, vtep_mac
from tests.netutil import tcp_request, tcp_server, udp_exchange

pytestmark = pytest.mark.integration

GHOST = {"subnet": "10.244.200.0/24", "key": f"{PREFIX}/subnets/10.244.200.0-24", "ip": "192.168.33.99",
         "mac": "02:42:c0:a8:21:63"}


def lease(topo: Topo, node: Node) -> dict:
    subnet = node.subnet()
    return json.loads(topo.subnet_keys()[f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"])


def assert_pods_talk(a: Node, b: Node) -> None:
    assert ping(a.pod, b.pod_ip), f"ICMP {a.pod_ip} -> {b.pod_ip}"
    with tcp_server(b.pod, b.pod_ip) as port:
        assert tcp_request(a.pod, b.pod_ip, port, b"hi") == f"from {a.pod_ip}:hi".encode()
    reply, seen = udp_exchange(a.pod, b.pod, b.pod_ip, b"dgram")
    assert (reply, seen) == (b"dgram", a.pod_ip)


def put_ghost(topo: Topo, **override) -> None:
    g = {**GHOST, **override}
    value = {"PublicIP": g["ip"], "PublicIPv6": None, "BackendType": "vxlan",
             "BackendData": {"VNI": 7, "VtepMAC": g["mac"]}}
    topo.put(g["key"], json.dumps(value))


def test_simultaneous_start_gets_distinct_subnets(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    s1, s2 = n1.subnet(), n2.subnet()
    assert s1 != s2
    assert {str(s1), str(s2)} == {"10.244.1.0/24", "10.244.2.0/24"}
    for node in (n1, n2):
        value = lease(vxlan_cluster, node)
        assert value["PublicIP"] == node.ip and value["BackendType"] == "vxlan"
        assert value["BackendData"] == {"VNI": 7, "VtepMAC": vtep_mac(node)}
    env = n1.env()
    assert env == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": f"{s1.network_address + 1}/24",
                   "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    assert n2.env()["FLANNEL_IPMASQ"] == "false"


def test_vxlan_device_and_remote_entries(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    with links.iproute(n1.name) as ipr:
        link = links.get_link(ipr, DEV)
        attrs = links.vxlan_attrs(link)
        assert attrs["IFLA_VXLAN_ID"] == 7 and attrs["IFLA_VXLAN_PORT"] == 4789
        assert attrs["IFLA_VXLAN_LEARNING"] == 0 and attrs["IFLA_VXLAN_LOCAL"] == n1.ip
        assert attrs["IFLA_VXLAN_LINK"] == links.index(ipr, "eth0")
        assert link.get("IFLA_MTU") == 1500 - 50
        assert links.addresses(ipr, DEV)[0] == f"{n1.subnet().network_address}/32"
    wait_for(lambda: has_remote(n1, str(n2.subnet()), n2.ip, vtep_mac(n2)), what="n2's entries on n1")
    wait_for(lambda: has_remote(n2, str(n1.subnet()), n1.ip, vtep_mac(n1)), what="n1's entries on n2")


def test_pod_to_pod_icmp_tcp_udp(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    wait_for(lambda: ping(n1.pod, n2.pod_ip), what="first ping")
    # n1 runs with --ip-masq: pod-to-pod traffic must still keep the pod source address.
    assert_pods_talk(n1, n2)
    assert_pods_talk(n2, n1)


def test_underlay_capture_shows_vxlan(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    with netns.enter(vxlan_cluster.ul):
        sock = conf.L2listen(iface="br0")
    sniffer = AsyncSniffer(opened_socket=sock, store=True, lfilter=lambda p: UDP in p)
    sniffer.start()
    try:
        time.sleep(0.2)
        assert ping(n1.pod, n2.pod_ip)
        time.sleep(0.3)
    finally:
        packets = sniffer.stop() or []
        sock.close()
    vx = [p for p in packets if p[UDP].dport == 4789 and VXLAN in p]
    assert vx, f"no VXLAN on UDP 4789 among {[p.summary() for p in packets]}"
    flows = {(p[IP].src, p[IP].dst, p[VXLAN].vni, p[VXLAN][IP].src, p[VXLAN][IP].dst) for p in vx}
    assert (n1.ip, n2.ip, 7, n1.pod_ip, n2.pod_ip) in flows
    assert (n2.ip, n1.ip, 7, n2.pod_ip, n1.pod_ip) in flows


def test_node_joining_later_is_reached_by_everyone(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    n3 = vxlan_cluster.add_node(3)
    # A short TTL so that a later test can watch this node's lease expire.
    vxlan_cluster.start_daemon(n3, "--subnet-lease-ttl", "3")
    s3 = vxlan_cluster.wait_subnet(n3)
    assert s3 not in (n1.subnet(), n2.subnet())
    vxlan_cluster.add_pod(n3)
    for node in (n1, n2):
        wait_for(lambda node=node: has_remote(node, str(s3), n3.ip, vtep_mac(n3)), timeout=30, what="n3 entries")
    wait_for(lambda: ping(n1.pod, n3.pod_ip), what="n1 pod -> n3 pod")
    assert ping(n2.pod, n3.pod_ip) and ping(n3.pod, n1.pod_ip) and ping(n3.pod, n2.pod_ip)
    assert_pods_talk(n3, n1)


def test_lease_appears_and_disappears_everywhere(vxlan_cluster: Topo):
    nodes = list(vxlan_cluster.nodes.values())
    put_ghost(vxlan_cluster)
    for node in nodes:
        wait_for(lambda node=node: has_remote(node, GHOST["subnet"], GHOST["ip"], GHOST["mac"]), timeout=30,
                 what=f"ghost on {node.name}")
    # A changed lease (the node came back with a new VTEP MAC) replaces neighbour and FDB entries.
    put_ghost(vxlan_cluster, mac="02:42:c0:a8:21:64")
    for node in nodes:
        wait_for(lambda node=node: has_remote(node, GHOST["subnet"], GHOST["ip"], "02:42:c0:a8:21:64")
                 and (GHOST["mac"], GHOST["ip"]) not in entries(node)[2], timeout=30, what="ghost moved")
    vxlan_cluster.etcdctl("del", GHOST["key"])
    for node in nodes:
        wait_for(lambda node=node: knows_nothing_of(node, GHOST["subnet"])
                 and all(f[1] != GHOST["ip"] for f in entries(node)[2]), timeout=30, what=f"ghost gone on {node.name}")


def test_corrupt_lease_is_logged_and_skipped(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    vxlan_cluster.put(f"{PREFIX}/subnets/10.244.201.0-24", "{not json")
    vxlan_cluster.put(f"{PREFIX}/subnets/10.244.202.0-24", '{"PublicIP": "192.168.33.98", "BackendType": "vxlan"}')
    vxlan_cluster.put(f"{PREFIX}/subnets/garbage", "{}")
    wait_for(lambda: "skipping corrupt lease" in Topo.read(n1.log) and "not a subnet key" in Topo.read(n1.log),
             timeout=30, what="corrupt lease logged")
    for node in vxlan_cluster.nodes.values():
        assert node.proc.poll() is None, f"{node.name} died"
        assert knows_nothing_of(node, "10.244.201.0/24") and knows_nothing_of(node, "10.244.202.0/24")
    assert ping(n1.pod, n2.pod_ip)
    vxlan_cluster.etcdctl("del", "--prefix", f"{PREFIX}/subnets/10.244.20")
    vxlan_cluster.etcdctl("del", f"{PREFIX}/subnets/garbage")


def test_node_leaving_expired_lease_is_dropped(vxlan_cluster: Topo):
    n1, n2, n3 = (vxlan_cluster.nodes[i] for i in (1, 2, 3))
    s3 = str(n3.subnet())
    vxlan_cluster.stop_daemon(n3, kill=True)  # a crashed node: nobody renews or deletes its lease
    started = time.monotonic()
    for node in (n1, n2):
        wait_for(lambda node=node: knows_nothing_of(node, s3) and all(f[1] != n3.ip for f in entries(node)[2]),
                 timeout=30, what=f"n3 gone on {node.name}")
    assert time.monotonic() - started < 6
    assert f"{PREFIX}/subnets/{s3.replace('/', '-')}" not in vxlan_cluster.subnet_keys()


def test_etcd_restart_keeps_traffic_and_watch_resumes(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    keys_before = set(vxlan_cluster.subnet_keys())
    vxlan_cluster.stop_etcd()
    try:
        time.sleep(1.0)
        assert ping(n1.pod, n2.pod_ip) and ping(n2.pod, n1.pod_ip), "data path must not depend on etcd"
        assert n1.proc.poll() is None and n2.proc.poll() is None
    finally:
        vxlan_cluster.start_etcd()
    assert set(vxlan_cluster.subnet_keys()) == keys_before, "no lease may be lost across the restart"
    put_ghost(vxlan_cluster)
    for node in (n1, n2):
        wait_for(lambda node=node: has_remote(node, GHOST["subnet"], GHOST["ip"], GHOST["mac"]), timeout=30,
                 what=f"watch resumed on {node.name}")
    vxlan_cluster.etcdctl("del", GHOST["key"])
    for node in (n1, n2):
        wait_for(lambda node=node: knows_nothing_of(node, GHOST["subnet"]), timeout=30, what="ghost gone")
    assert "watch resumed" in Topo.read(n1.log)
    assert_pods_talk(n1, n2)


def test_daemon_restart_keeps_subnet_and_data_path(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    subnet, mac = n2.subnet(), vtep_mac(n2)
    vxlan_cluster.stop_daemon(n2)  # SIGTERM: the data path stays
    assert n2.proc.returncode == 0
    assert has_remote(n2, str(n1.subnet()), n1.ip, vtep_mac(n1))
    assert ping(n1.pod, n2.pod_ip) and ping(n2.pod, n1.pod_ip), "pods keep talking while the daemon is down"
    vxlan_cluster.start_daemon(n2)
    wait_for(lambda: Topo.read(n2.log).count("how=reused") == 1, timeout=30, what="restarted daemon")
    assert n2.subnet() == subnet and vtep_mac(n2) == mac
    assert lease(vxlan_cluster, n2)["BackendData"]["VtepMAC"] == mac
    assert_pods_talk(n1, n2)


def test_restart_after_lease_loss_takes_subnet_from_subnet_env(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    subnet = n2.subnet()
    vxlan_cluster.stop_daemon(n2)
    vxlan_cluster.etcdctl("del", f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}")
    wait_for(lambda: knows_nothing_of(n1, str(subnet)), timeout=30, what="n2 dropped on n1")
    vxlan_cluster.start_daemon(n2)
    wait_for(lambda: "how=previous" in Topo.read(n2.log), timeout=30, what="lease from subnet.env")
    assert n2.subnet() == subnet
    wait_for(lambda: has_remote(n1, str(subnet), n2.ip, vtep_mac(n2)), timeout=30, what="n2 back on n1")
    assert_pods_talk(n1, n2)


def test_ip_masq_for_traffic_leaving_the_cluster(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    rules = netns.run(n1.name, ["iptables", "-t", "nat", "-S"]).stdout
    assert "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG" in rules
    assert f"-A FLANNEL-POSTRTG -s {n1.subnet()} -d 10.244.0.0/16" in rules
    assert "FLANNEL-POSTRTG" not in netns.run(n2.name, ["iptables", "-t", "nat", "-S"]).stdout
    # Pod -> outside the cluster Network (the etcd host on the LAN): source becomes the node's.
    with tcp_server(vxlan_cluster.ctl, "192.168.33.2") as port:
        assert tcp_request(n1.pod, "192.168.33.2", port, b"x") == f"from {n1.ip}:x".encode()


def test_own_lease_deleted_while_running_is_taken_back(vxlan_cluster: Topo):
    n1, n2 = vxlan_cluster.nodes[1], vxlan_cluster.nodes[2]
    subnet = n1.subnet()
    key = f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"
    vxlan_cluster.etcdctl("del", key)
    # The daemon notices through its watch and writes the same subnet back under a new etcd lease.
    wait_for(lambda: key in vxlan_cluster.subnet_keys(), timeout=30, what="lease re-acquired")
    assert n1.subnet() == subnet and lease(vxlan_cluster, n1)["PublicIP"] == n1.ip
    wait_for(lambda: has_remote(n2, str(subnet), n1.ip, vtep_mac(n1)), timeout=30, what="n1 back on n2")
    assert_pods_talk(n2, n1)
