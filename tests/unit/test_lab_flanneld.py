"""`knet lab up --flannel py|real|real:N` (lab.bringup.flanneld): which nodes run upstream
flanneld, the refusals (before anything is made), and flanneld's command line beside flannel-py's."""

from __future__ import annotations

import os

import pytest

from lab.bringup import flanneld, overlay
from lab.net import topology


@pytest.fixture
def built(tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A flanneld "binary" where the launcher looks (the choice only needs it to be executable)."""
    exe = tmp_path / "flanneld"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(flanneld, "BINARY", str(exe))
    return str(exe)


def plan(nodes: int = 3, overlay_: str = "vxlan") -> topology.Plan:
    return topology.plan("kxunit", nodes, overlay=overlay_)


@pytest.mark.parametrize("choice,expected", [
    ("py", []), ("real", ["node1", "node2", "node3"]), ("real:1", ["node3"]), ("real:2", ["node2", "node3"]),
    ("real:3", ["node1", "node2", "node3"]),
])
@pytest.mark.parametrize("manager", ["kube", "etcd"])
def test_the_last_n_nodes_run_flanneld(built: str, choice: str, expected: list[str], manager: str) -> None:
    assert flanneld.nodes(choice, plan(), manager) == expected


@pytest.mark.parametrize("choice,why", [
    ("real:4", "N must be 1..3"), ("real:0", "N must be 1..3"), ("real:-1", "must be py | real | real:N"),
    ("real:", "must be py | real | real:N"), ("py:1", "must be py | real | real:N"),
    ("flanneld", "must be py | real | real:N"), ("", "must be py | real | real:N"),
])
def test_bad_choices_are_refused(built: str, choice: str, why: str) -> None:
    with pytest.raises(flanneld.FlanneldError, match=why):
        flanneld.nodes(choice, plan(), "kube")


def test_static_overlay_runs_no_flannel(built: str) -> None:
    with pytest.raises(flanneld.FlanneldError, match="static overlay runs no flannel"):
        flanneld.nodes("real:1", plan(overlay_="static"), None)
    assert flanneld.nodes("py", plan(overlay_="static"), None) == []


def test_flanneld_not_built_names_the_installer(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flanneld, "BINARY", str(tmp_path / "absent" / "flanneld"))
    with pytest.raises(flanneld.FlanneldError, match="scripts/install-anchors"):
        flanneld.nodes("real:1", plan(), "etcd")
    assert flanneld.nodes("py", plan(), "etcd") == []  # flannel-py alone needs no anchor


def test_flanneld_is_configured_as_flannel_py(built: str) -> None:
    n = plan().nodes[2]
    kube = flanneld.kube_argv(n, "/s/flannel.kubeconfig", "/s/kube-flannel/net-conf.json")
    # env execs flanneld: the pid the lab records is flanneld's; NODE_NAME as kube-flannel's downward API
    assert kube[:3] == ["env", "NODE_NAME=node3", built]
    py = overlay.kube_flannel_argv(n, "/s/flannel.kubeconfig", "/s/kube-flannel/net-conf.json")
    for flag in ("--kube-subnet-mgr", "--kubeconfig-file", "--net-config-path", "--iface", "--public-ip",
                 "--subnet-file", "--ip-masq"):
        assert flag in py and any(a == flag or a.startswith(flag + "=") for a in kube), flag
    assert f"--subnet-file={n.subnet_file}" in kube  # where the node's CNI conflist reads it
    assert n.conflist["plugins"][0]["subnetFile"] == n.subnet_file
    assert "--net-config-path=/s/kube-flannel/net-conf.json" in kube and "--public-ip=192.168.33.13" in kube
    etcd = flanneld.etcd_argv(n)
    assert etcd[0] == built and f"--etcd-endpoints={topology.ETCD_URL}" in etcd
    assert not any(a.startswith("--etcd-prefix") for a in etcd)  # flanneld's default is the lab's /coreos.com/network
    assert overlay.NETWORK_KEY == "/coreos.com/network/config"


def test_describe() -> None:
    assert flanneld.describe([]) == ""
    assert flanneld.describe(["node10", "node2", "node9"]) == "flanneld on node2, node9, node10"
    assert os.path.basename(flanneld.BINARY) == "flanneld"
