"""The lab runtime: pod delete frees everything, concurrent adds, failures clean up after themselves."""

from __future__ import annotations

import ipaddress
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from knet import links, netns
from lab import api
from lab.net import cniexec, kernel, topology
from lab.net import pods as runtime  # `pods` is the fixture of the session's pods

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=("etcd", "real"))
def lab(request: pytest.FixtureRequest) -> api.Lab:
    """The lab runtime without a control plane, and beside the upstream one (`--control-plane
    real`: its node agents and controllers must leave the runtime's own pods alone)."""
    return request.getfixturevalue(f"{request.param}_lab")


@pytest.fixture(scope="module")
def pods(lab_pods: dict[str, dict]) -> dict[str, dict]:
    return lab_pods


def ipam_files(lab: api.Lab, node: str) -> set[str]:
    d = os.path.join(lab.node(node)["dir"], "ipam", topology.CNI_NETWORK)
    return {f for f in os.listdir(d) if f[0].isdigit()} if os.path.isdir(d) else set()


def host_links(lab: api.Lab, node: str) -> set[str]:
    with kernel.ns_iproute(lab.node(node)["netns"]) as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def nat_rules(lab: api.Lab, node: str) -> str:
    return lab.exec(node, ["iptables", "-t", "nat", "-S"]).stdout


def test_pod_delete_removes_netns_veth_ip_and_rules(lab: api.Lab) -> None:
    rec = lab.add_pod("node3", "gone", cmd="echo started; exec sleep 60")
    assert rec["host_veth"] in host_links(lab, "node3")
    assert rec["ip"] in ipam_files(lab, "node3")
    # with the overlay, flanneld masquerades (FLANNEL_IPMASQ=true) so the plugin adds no chain
    masq_by_plugin = lab.data().get("overlay", "static") == "static"
    assert (rec["container_id"] in nat_rules(lab, "node3")) == masq_by_plugin
    assert netns.exists(rec["netns"])
    cmd_pid = rec["pids"]["cmd"]
    # The processes join the node's cgroup, then enter the pod namespace (ip netns exec) and exec:
    # wait for them to get there.
    deadline = time.monotonic() + 30  # a loaded machine: wait for it, do not time it
    while time.monotonic() < deadline and not {cmd_pid, rec["pids"]["pause"]} <= set(netns.pids(rec["netns"])):
        time.sleep(0.02)
    assert cmd_pid in netns.pids(rec["netns"]) and rec["pids"]["pause"] in netns.pids(rec["netns"])
    deadline = time.monotonic() + 30
    log = Path(rec["log"])
    while "started" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "started" in log.read_text()

    lab.del_pod("gone")
    assert not netns.exists(rec["netns"])
    assert rec["host_veth"] not in host_links(lab, "node3")
    assert rec["ip"] not in ipam_files(lab, "node3")
    assert rec["container_id"] not in nat_rules(lab, "node3")
    assert "default/gone" not in lab.pods()
    assert not alive(cmd_pid), "the pod's processes die with it"
    with pytest.raises(runtime.PodError, match="not found"):
        lab.del_pod("gone")


def test_concurrent_pod_adds_and_deletes(lab: api.Lab) -> None:
    names = [f"c{i}" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as ex:
        recs = list(ex.map(lambda n: lab.add_pod("node3", n, namespace="conc"), names))
    ips = {r["ip"] for r in recs}
    assert len(ips) == len(names)
    recorded = lab.pods()
    assert all(f"conc/{n}" in recorded for n in names)  # no lost update of lab.json
    assert ips <= ipam_files(lab, "node3")
    with ThreadPoolExecutor(len(names)) as ex:
        list(ex.map(lambda n: lab.del_pod(n, namespace="conc"), names))
    assert not any(k.startswith("conc/") for k in lab.pods())
    assert not ips & ipam_files(lab, "node3")
    assert not netns.list_names(f"{lab.name}-pod-conc-")


def test_duplicate_and_bad_requests(lab: api.Lab, pods: dict[str, dict]) -> None:
    with pytest.raises(runtime.PodError, match="already exists"):
        lab.add_pod("node2", "a1")
    with pytest.raises(runtime.PodError, match="no node"):
        lab.add_pod("node9", "x")
    with pytest.raises(topology.PlanError):
        lab.add_pod("node1", "Bad_Name")
    with pytest.raises(api.LabError, match="already exists"):
        api.up(lab.name, 1)


def test_failed_add_is_undone(lab: api.Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin failing mid-list: the runtime DELs what was done and removes the pod namespace."""
    before_ips, before_links = ipam_files(lab, "node3"), host_links(lab, "node3")
    real = runtime._conflist

    def broken(node: dict) -> dict:
        conf = real(node)
        conf["plugins"].append({"type": "no-such-plugin"})
        return conf

    monkeypatch.setattr(runtime, "_conflist", broken)
    with pytest.raises(runtime.PodError, match="failed to find plugin 'no-such-plugin'"):
        lab.add_pod("node3", "broken")
    assert not netns.exists(topology.pod_netns(lab.name, "default", "broken"))
    assert "default/broken" not in lab.pods()
    assert ipam_files(lab, "node3") == before_ips, "the address reserved by ADD must be released"
    assert host_links(lab, "node3") == before_links


def test_plugin_error_message_is_surfaced(lab: api.Lab) -> None:
    """knet-cni's error JSON (code + msg) reaches the caller; here: CNI_NETNS does not exist."""
    conflist = runtime._conflist(lab.node("node1"))
    rt = cniexec.RuntimeConf("deadbeef", "/run/netns/" + topology.pod_netns(lab.name, "default", "nope"))
    with pytest.raises(cniexec.CniExecError) as exc:
        cniexec.add_list(conflist, rt, exec_netns=lab.node("node1")["netns"])
    assert exc.value.plugin == conflist["plugins"][0]["type"]
    assert exc.value.code != 0 and exc.value.msg


def test_veth_lives_on_the_node_bridge(lab: api.Lab, pods: dict[str, dict]) -> None:
    with kernel.ns_iproute(lab.node("node1")["netns"]) as ipr:
        bridge = links.index(ipr, "cni0")
        veth = links.get_link(ipr, pods["a1"]["host_veth"])
        assert veth is not None and veth.get("IFLA_MASTER") == bridge
        gateway = ipaddress.ip_network(lab.node("node1")["pod_subnet"]).network_address + 1
        assert f"{gateway}/24" in links.addresses(ipr, "cni0")
