"""flannel_py's kube subnet manager in the lab (`knet lab up`'s default): each node's subnet is its
Node's podCIDR from the node IPAM controller, flannel's leases are Node annotations, nothing goes
into etcd, and a node that leaves the cluster and joins again gets a new block, which every other
node routes to; with the lab's control plane and with the upstream one (kube-controller-manager's
node IPAM, flannel_py with only deploy/rbac.yaml's rights). Packets between pods on these labs:
test_lab_dataplane.py (overlay_lab "kube" and "real")."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from lab import api
from lab.apiserver.main import stop_pid
from lab.bringup import controlplane, overlay
from lab.net import state, topology

pytestmark = pytest.mark.integration
WAIT = 60.0  # generous: the machine is shared
ANNOTATION = "flannel.alpha.coreos.com/"


def kubectl(lab: api.Lab, *args: str) -> str:
    kubeconfig = controlplane.kubeconfig_path(lab.name, lab.root)
    controlplane.loopback_only(kubeconfig)  # we are in the root namespace
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def nodes(lab: api.Lab) -> dict[str, dict]:
    return {n["metadata"]["name"]: n for n in json.loads(kubectl(lab, "get", "nodes", "-o", "json"))["items"]}


def subnet_env(lab: api.Lab, node: str) -> dict[str, str]:
    return overlay.read_subnet_env(os.path.join(lab.node(node)["dir"], "subnet.env"))


def routes(lab: api.Lab, node: str) -> set[str]:
    return {r["dst"] for r in json.loads(lab.exec(node, ["ip", "-j", "-4", "route", "show"]).stdout or "[]")}


def wait_for(cond: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)


@pytest.fixture(scope="module", params=("kube", "real"))
def lab(request: pytest.FixtureRequest) -> api.Lab:
    return request.getfixturevalue(f"{request.param}_lab")


def test_subnets_are_the_podcidrs_and_every_node_carries_flannels_annotations(lab: api.Lab) -> None:
    assert lab.data()["subnet_manager"] == "kube"
    got = nodes(lab)
    assert sorted(got) == ["node1", "node2", "node3"]
    cidrs = set()
    for name, node in got.items():
        cidr = node["spec"]["podCIDR"]
        assert node["spec"]["podCIDRs"] == [cidr]
        net = ipaddress.ip_network(cidr)
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.ip_network(topology.POD_CIDR))
        cidrs.add(cidr)
        env = subnet_env(lab, name)
        assert str(ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network) == cidr, (name, env)
        assert env["FLANNEL_NETWORK"] == topology.POD_CIDR
        assert lab.node(name)["pod_subnet"] == cidr
        link = json.loads(lab.exec(name, ["ip", "-j", "link", "show", "flannel.1"]).stdout)[0]
        annotations = {k[len(ANNOTATION):]: v for k, v in node["metadata"].get("annotations", {}).items()
                       if k.startswith(ANNOTATION)}
        assert annotations == {
            "kube-subnet-manager": "true", "backend-type": "vxlan", "public-ip": lab.node(name)["ip"],
            "backend-data": json.dumps({"VNI": 1, "VtepMAC": link["address"]}, separators=(",", ":"))}, name
    assert len(cidrs) == 3


def test_flannel_writes_nothing_to_etcd(lab: api.Lab) -> None:
    r = lab.exec("ctl", ["etcdctl", "--endpoints", "http://127.0.0.1:2379", "get", "--prefix", "/",
                              "--keys-only"])
    assert r.returncode == 0, r.stderr
    keys = [k for k in r.stdout.splitlines() if k]
    assert any(k.startswith("/registry/") for k in keys)  # the API server's objects: the query sees the data
    assert not [k for k in keys if k.startswith("/coreos.com/")]


def test_node_leaves_and_joins_again_with_a_new_block(lab: api.Lab, lab_pods: dict[str, dict]) -> None:
    """node3's agent stops and its Node is deleted (a node removed from the cluster): the others
    forget its subnet. The agent starts again and registers the Node: the node IPAM controller
    gives it the next free block (never the one it just released), flannel on node3 takes it, the
    others route to it, and a new pod there reaches pods on the other nodes."""
    old = nodes(lab)["node3"]["spec"]["podCIDR"]
    assert old in routes(lab, "node1")
    stop_pid(lab.data()["control_plane"]["agents"]["node3"]["pid"])
    kubectl(lab, "delete", "node", "node3")
    for other in ("node1", "node2"):
        wait_for(lambda other=other: old not in routes(lab, other), f"{other} forgetting node3's {old}")
    if lab.data()["control_plane"].get("kind") != "real":  # (kube-controller-manager logs it otherwise)
        with open(os.path.join(lab.state_dir, "controllers.log")) as f:
            assert f"node node3: podCIDR {old} released (node deleted)" in f.read()

    controlplane.restart_agent(lab.name, "node3", lab.root)
    wait_for(lambda: (nodes(lab).get("node3") or {}).get("spec", {}).get("podCIDR"), "node3 registered with a podCIDR")
    new = nodes(lab)["node3"]["spec"]["podCIDR"]
    assert new != old
    with state.update(lab.name, lab.root) as d:  # the lab's record follows (later tests read it)
        d["nodes"]["node3"]["pod_subnet"] = new
    wait_for(lambda: subnet_env(lab, "node3").get("FLANNEL_SUBNET") == str(ipaddress.ip_network(new)[1]) + "/24",
             "flannel on node3 taking the new block")
    for other in ("node1", "node2"):
        wait_for(lambda other=other: new in routes(lab, other), f"{other} routing to node3's {new}")
    pod = lab.add_pod("node3", "c3")
    try:
        assert ipaddress.ip_address(pod["ip"]) in ipaddress.ip_network(new)
        for peer in ("a1", "b1"):
            r = lab.exec("c3", ["ping", "-c1", "-W2", lab_pods[peer]["ip"]])
            assert r.returncode == 0, f"c3 -> {peer}: {r.stdout}"
        assert lab.exec("a1", ["ping", "-c1", "-W2", pod["ip"]]).returncode == 0
    finally:
        lab.del_pod("c3")
