"""A mixed overlay in the lab (`knet lab up --flannel real:N`): upstream flanneld (scripts/install-anchors)
on the last N nodes, flannel-py on the others, one subnet manager.

- `mixed_lab` (module): 3 nodes with the control plane and the kube subnet manager, vxlan, flanneld
  on node3: each daemon reads the Node annotations the other writes and programs its VTEP, pods on
  every node reach each other in both directions without masquerade, and both say on their Node
  that the network is up (NetworkUnavailable False: flannel-py did not before this mix showed it).
  node3 switches to flannel-py and back in place, keeping its subnet, VTEP and annotations.
- `test_etcd_host_gw_mix_and_down` (its own small lab, no control plane): the other subnet manager
  (leases flanneld and flannel-py write to the lab's etcd, read by each other) and the other
  backend (host-gw) with N=2, and `knet lab down` ending flanneld by pid with its namespace.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import os
import subprocess

import pytest

from knet import netns
from knet_testing.anchors import missing
from lab import api
from lab.bringup import launch, overlay
from lab.net import topology
from tests.integration.lab.conftest import _up
from tests.integration.lab.lab_helpers import tcp_exchange, udp_both_ways
from tests.integration.lab.test_lab_kube_subnets import ANNOTATION, wait_for
from tests.integration.lab.test_lab_kube_subnets import nodes as kube_nodes

pytestmark = pytest.mark.integration
NODES = ("node1", "node2", "node3")


def _need_flanneld() -> None:
    if why := missing("flanneld"):
        pytest.skip(f"the mixed overlay needs upstream flanneld: {why}")


@pytest.fixture(scope="module")
def mixed_lab(request: pytest.FixtureRequest) -> api.Lab:
    _need_flanneld()
    return _up(request, control_plane=True, subnet_manager="kube", flannel="real:1")


@pytest.fixture(scope="module")
def mixed_pods(mixed_lab: api.Lab) -> dict[str, dict]:
    """One pod per node: m1 on node1 ... m3 on node3 (added through each node's CNI conflist)."""
    return {node: mixed_lab.add_pod(node, f"m{node[-1]}") for node in NODES}


def daemon_of(lab: api.Lab, node: str) -> str:
    """"flanneld" or "flannel-py": what runs at the node's recorded flannel pid, in its namespace."""
    pid = lab.node(node)["flannel_pid"]
    assert pid in netns.pids(lab.node(node)["netns"]), f"flannel pid {pid} is not in {node}'s namespace"
    if os.path.basename(os.readlink(f"/proc/{pid}/exe")) == "flanneld":
        return "flanneld"
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert any(os.path.basename(a) == b"flannel-py" for a in argv), argv
    return "flannel-py"


def vtep_mac(lab: api.Lab, node: str) -> str:
    return json.loads(lab.exec(node, ["ip", "-j", "link", "show", "flannel.1"]).stdout)[0]["address"]


def programs_vxlan_peer(lab: api.Lab, node: str, subnet: str, peer_ip: str, mac: str) -> bool:
    """node routes `subnet` via flannel.1 to the peer's VTEP (.0 of its subnet), with the
    neighbour entry for it and the FDB entry to the peer's underlay address."""
    gw = str(ipaddress.ip_network(subnet).network_address)
    route = json.loads(lab.exec(node, ["ip", "-j", "route", "show", subnet]).stdout or "[]")
    neigh = json.loads(lab.exec(node, ["ip", "-j", "neigh", "show", "dev", "flannel.1"]).stdout or "[]")
    fdb = json.loads(lab.exec(node, ["bridge", "-j", "fdb", "show", "dev", "flannel.1"]).stdout or "[]")
    return (any(r.get("dev") == "flannel.1" and r.get("gateway") == gw for r in route)
            and any(n.get("dst") == gw and n.get("lladdr") == mac for n in neigh)
            and any(f.get("mac") == mac and f.get("dst") == peer_ip for f in fdb))


def test_flanneld_on_the_last_node_flannel_py_on_the_others(mixed_lab: api.Lab) -> None:
    assert mixed_lab.data()["flanneld_nodes"] == ["node3"]
    assert {n: daemon_of(mixed_lab, n) for n in NODES} == {
        "node1": "flannel-py", "node2": "flannel-py", "node3": "flanneld"}
    assert os.path.getsize(os.path.join(mixed_lab.node("node3")["dir"], "flannel.log")) > 0  # beside the others
    r = subprocess.run([launch.binary("knet"), "lab", "status", "--name", mixed_lab.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "(kube subnet manager) flanneld on node3" in r.stdout, r.stdout + r.stderr


def test_subnet_files_say_the_same(mixed_lab: api.Lab) -> None:
    """What the CNI plugin reads (subnetFile of each node's conflist): the same keys and meaning
    from both daemons, each node's podCIDR."""
    podcidrs = {name: n["spec"]["podCIDR"] for name, n in kube_nodes(mixed_lab).items()}
    envs = {n: overlay.read_subnet_env(os.path.join(mixed_lab.node(n)["dir"], "subnet.env")) for n in NODES}
    assert {n: set(e) for n, e in envs.items()} == {n: {"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU",
                                                        "FLANNEL_IPMASQ"} for n in NODES}
    for n, env in envs.items():
        assert env["FLANNEL_NETWORK"] == topology.POD_CIDR and env["FLANNEL_MTU"] == "1450"
        assert env["FLANNEL_IPMASQ"] == "true"
        assert env["FLANNEL_SUBNET"] == f"{ipaddress.ip_network(podcidrs[n])[1]}/24", (n, env)
        assert mixed_lab.node(n)["pod_subnet"] == podcidrs[n]


def test_each_reads_the_annotations_the_other_writes(mixed_lab: api.Lab) -> None:
    """Node annotations in flanneld's names and formats from both; flannel-py (node1, node2)
    programs node3 from flanneld's, flanneld (node3) programs node1 and node2 from flannel-py's."""
    got = kube_nodes(mixed_lab)
    macs = {n: vtep_mac(mixed_lab, n) for n in NODES}
    for name in NODES:
        annotations = {k[len(ANNOTATION):]: v for k, v in got[name]["metadata"]["annotations"].items()
                       if k.startswith(ANNOTATION)}
        assert annotations == {
            "kube-subnet-manager": "true", "backend-type": "vxlan", "public-ip": mixed_lab.node(name)["ip"],
            "backend-data": json.dumps({"VNI": 1, "VtepMAC": macs[name]}, separators=(",", ":"))}, name
    for node, peer in itertools.permutations(NODES, 2):
        if "node3" not in (node, peer):
            continue  # flannel-py with flannel-py: test_lab_dataplane.py
        wait_for(lambda node=node, peer=peer: programs_vxlan_peer(
            mixed_lab, node, got[peer]["spec"]["podCIDR"], mixed_lab.node(peer)["ip"], macs[peer]),
            f"{node} programming {peer}'s VTEP from its annotations")


def test_pods_reach_each_other_across_the_mix(mixed_lab: api.Lab, mixed_pods: dict[str, dict]) -> None:
    """TCP between every ordered pair of nodes' pods and UDP both ways across every pair: the server
    sees the client pod's own address (neither daemon's masquerade rules touch pod-to-pod traffic)."""
    pods = mixed_pods
    for i, (server, client) in enumerate(itertools.permutations(NODES, 2)):
        s, c = pods[server], pods[client]
        port = 7100 + i
        wait_for(lambda s=s, c=c: netns.run(c["netns"], ["ping", "-c1", "-W1", s["ip"]]).returncode == 0,
                 f"{client} pod -> {server} pod (ping)")
        peer, data, reply = tcp_exchange(s["netns"], s["ip"], c["netns"], s["ip"], port)
        assert (peer, data, reply) == (c["ip"], b"hello knet", b"echo:hello knet"), (client, server)
    for i, (a, b) in enumerate(itertools.combinations(NODES, 2)):
        from_a, got_b, from_b, got_a = udp_both_ways(pods[a]["netns"], pods[a]["ip"], pods[b]["netns"],
                                                     pods[b]["ip"], 7200 + i)
        assert (from_a[0], got_b, from_b[0], got_a) == (pods[a]["ip"], b"ping from a", pods[b]["ip"], b"pong from b")


def test_every_node_says_its_network_is_up(mixed_lab: api.Lab) -> None:
    """flanneld sets its Node's NetworkUnavailable condition False once its subnet file is
    written (--set-node-network-unavailable); flannel-py does the same, with flanneld's words."""
    def conditions() -> dict[str, dict]:
        return {name: {c["type"]: c for c in n["status"].get("conditions") or []}
                for name, n in kube_nodes(mixed_lab).items()}

    wait_for(lambda: all("NetworkUnavailable" in c for c in conditions().values()), "NetworkUnavailable on every Node")
    for name, c in conditions().items():
        assert (c["NetworkUnavailable"]["status"], c["NetworkUnavailable"]["reason"]) == ("False", "FlannelIsUp"), name
        assert c["Ready"]["status"] == "True", name  # the agents' heartbeats keep it beside theirs


def test_a_node_switches_daemon_in_place(mixed_lab: api.Lab, mixed_pods: dict[str, dict]) -> None:
    """node3 from flanneld to flannel-py and back (`overlay.switch`), as a cluster moves node by
    node: each daemon takes over what the other left (device, routes, Node annotations), so the
    subnet, the VTEP MAC and the annotations stay, and pods talk across after each switch."""
    lab, pods = mixed_lab, mixed_pods

    def flannel_annotations() -> dict[str, str]:
        return {k: v for k, v in kube_nodes(lab)["node3"]["metadata"]["annotations"].items()
                if k.startswith(ANNOTATION)}

    subnet, mac, annotations = lab.node("node3")["pod_subnet"], vtep_mac(lab, "node3"), flannel_annotations()
    for i, daemon in enumerate(("flannel-py", "flanneld")):
        overlay.switch(lab.name, "node3", daemon, lab.root)
        assert daemon_of(lab, "node3") == daemon
        assert lab.data()["flanneld_nodes"] == (["node3"] if daemon == "flanneld" else [])
        env = overlay.read_subnet_env(os.path.join(lab.node("node3")["dir"], "subnet.env"))
        assert env["FLANNEL_SUBNET"] == f"{ipaddress.ip_network(subnet)[1]}/24"
        assert vtep_mac(lab, "node3") == mac
        assert flannel_annotations() == annotations
        for j, (server, client) in enumerate((("node1", "node3"), ("node3", "node1"))):
            s, c = pods[server], pods[client]
            peer, data, _reply = tcp_exchange(s["netns"], s["ip"], c["netns"], s["ip"], 7400 + 2 * i + j)
            assert (peer, data) == (c["ip"], b"hello knet"), (daemon, client, server)


def test_etcd_host_gw_mix_and_down(request: pytest.FixtureRequest) -> None:
    """flanneld on node2 and node3, flannel-py on node1, leases in the lab's etcd, host-gw: every
    lease is in etcd in the one format, every node routes to every other's subnet via its
    address, pods talk across; `knet lab down` ends flanneld (its pid) and leaves no namespace."""
    _need_flanneld()
    lab = _up(request, overlay="host-gw", subnet_manager="etcd", flannel="real:2")
    assert lab.data()["flanneld_nodes"] == ["node2", "node3"]
    daemons = {n: daemon_of(lab, n) for n in NODES}
    assert daemons == {"node1": "flannel-py", "node2": "flanneld", "node3": "flanneld"}
    r = lab.exec("ctl", ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix",
                         "/coreos.com/network/subnets/", "-w", "json"])
    assert r.returncode == 0, r.stderr
    leases = {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
              for kv in json.loads(r.stdout).get("kvs", [])}
    by_ip = {v["PublicIP"]: (k, v) for k, v in leases.items()}
    assert sorted(by_ip) == sorted(lab.node(n)["ip"] for n in NODES)
    for n in NODES:
        key, value = by_ip[lab.node(n)["ip"]]
        assert key.rsplit("/", 1)[1] == lab.node(n)["pod_subnet"].replace("/", "-"), (n, key)
        assert value["BackendType"] == "host-gw", (n, value)
    for node, peer in itertools.permutations(NODES, 2):
        subnet, via = lab.node(peer)["pod_subnet"], lab.node(peer)["ip"]
        wait_for(lambda node=node, subnet=subnet, via=via: any(
            r.get("gateway") == via and r.get("dev") == "eth0"
            for r in json.loads(lab.exec(node, ["ip", "-j", "route", "show", subnet]).stdout or "[]")),
            f"{node} routing {peer}'s {subnet} via {via}")
    pods = {n: lab.add_pod(n, f"e{n[-1]}") for n in NODES}
    for i, (server, client) in enumerate(itertools.permutations(NODES, 2)):
        s, c = pods[server], pods[client]
        peer, data, _reply = tcp_exchange(s["netns"], s["ip"], c["netns"], s["ip"], 7300 + i)
        assert (peer, data) == (c["ip"], b"hello knet"), (client, server)

    pids = {n: lab.node(n)["flannel_pid"] for n in NODES}
    api.down(lab.name)
    assert not [n for n in netns.list_names() if n.startswith(f"{lab.name}-")]
    for n, pid in pids.items():
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), f"{daemons[n]} on {n} (pid {pid}) survived down"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
