"""`knet lab up --control-plane real`, its pure part: the static identities kube-apiserver gets,
what is applied from deploy/ (and that it covers every subject of deploy/rbac.yaml), the
ServiceAccounts of knet's daemons, the refusal to start without the anchors."""

from __future__ import annotations

import os

import pytest
import yaml

from lab.bringup import real_control_plane as real
from lab.errors import LabError


def test_token_file_lines() -> None:
    lines = real.token_lines({"admin": "t1", "kube-proxy": "t2", "kube-controller-manager": "t3"}).splitlines()
    assert lines == ['t1,admin,admin,"system:masters"',
                     "t2,system:kube-proxy,kube-proxy",  # bootstrap RBAC's system:node-proxier, no more
                     "t3,system:kube-controller-manager,kube-controller-manager"]


def test_knet_daemons_get_deploys_service_accounts() -> None:
    assert real.service_accounts() == {
        "kproxy": ("knet-system", "knet-node"), "netpolicy": ("knet-system", "knet-node"),
        "flannel": ("knet-system", "knet-node"), "kdns": ("kube-system", "kdns"),
        "ingress": ("knet-system", "knet-ingress")}
    # none of them is a static (system:masters) user of the real control plane
    assert not set(real.service_accounts()) & set(real.STATIC_USERS)


def test_deploy_documents_declare_every_subject_rbac_binds() -> None:
    docs = list(yaml.safe_load_all(real.deploy_documents()))
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"} <= kinds
    assert not kinds - {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    subjects = {(s["namespace"], s["name"]) for d in docs if d["kind"].endswith("Binding")
                for s in d["subjects"] if s["kind"] == "ServiceAccount"}
    assert subjects <= accounts
    assert set(real.service_accounts().values()) <= subjects


def test_apiserver_flags_reach_the_agents_and_keep_the_lab_ranges(tmp_path) -> None:
    from lab.apiserver import pki

    certs = pki.Pki(str(tmp_path / "ca.crt"), str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
    argv = real.apiserver_argv(str(tmp_path), certs, ("k.crt", "k.key"), ("sa.key", "sa.pub"))
    flags, rest = {}, iter(argv[1:])
    for arg in rest:
        name, eq, value = arg.partition("=")
        flags[name] = value if eq else next(rest)
    assert flags["--kubelet-client-certificate"] == "k.crt" and flags["--kubelet-client-key"] == "k.key"
    assert flags["--kubelet-preferred-address-types"] == "InternalIP"
    assert flags["--bind-address"] == "192.168.33.2" and flags["--authorization-mode"] == "RBAC"
    assert flags["--service-cluster-ip-range"] == "10.96.0.0/12" and flags["--allow-privileged"] == "true"


def test_missing_anchors_are_named_before_anything_is_made(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(real, "ANCHORS_BIN", str(tmp_path))
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "etcd", 0o755)
    with pytest.raises(LabError, match=r"needs kube-apiserver, kube-controller-manager in .*scripts/install-anchors"):
        real.check_anchors()


def test_an_unknown_control_plane_is_refused_before_anything_is_made(tmp_path) -> None:
    from lab import api

    with pytest.raises(LabError, match="control plane must be lab or real, got 'bogus'"):
        api.up("kxunit", 1, control_plane="bogus", root=str(tmp_path))
    assert not os.listdir(tmp_path)
