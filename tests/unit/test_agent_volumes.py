"""The node agent's volume plan and container environment from ConfigMaps and Secrets (pure):
keys and items as files with their modes, hostPath mapped to the lab node's root (shared system
paths excepted), projected sources, bind mounts with subPath, and env from key refs / envFrom."""

from __future__ import annotations

import base64

import pytest

from knet.kube.models import Container, Pod
from lab.agent import podenv, volumes

OBJECTS = {
    ("ConfigMap", "ns1", "cfg"): {"data": {"iface": "eth0", "proxy-mode": "iptables", "bad key": "x"}},
    ("Secret", "ns1", "creds"): {"data": {"password": base64.b64encode(b"s3cret").decode()}},
}


def lookup(kind: str, ns: str, name: str):
    return OBJECTS.get((kind, ns, name))


def pod(volumes_: list, **spec) -> Pod:
    return Pod.model_validate({"metadata": {"name": "p", "namespace": "ns1", "uid": "u1", "labels": {"a": "b"}},
                               "spec": {"nodeName": "node1", "serviceAccountName": "sa", "volumes": volumes_,
                                        "containers": [{"name": "c"}], **spec}})


def test_configmap_and_secret_files_with_modes() -> None:
    got = volumes.plan(pod([
        {"name": "config", "configMap": {"name": "cfg", "defaultMode": 0o600}},
        {"name": "one", "configMap": {"name": "cfg", "items": [{"key": "iface", "path": "sub/if", "mode": 0o400}]}},
        {"name": "sec", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
    ]), "/vol", "/root", lookup)
    assert got["config"].path == "/vol/config" and got["config"].files["iface"] == (b"eth0", 0o600)
    assert got["one"].files == {"sub/if": (b"eth0", 0o400)}
    assert got["sec"].files == {"password": (b"s3cret", 0o644)}
    assert got["scratch"].files == {} and got["scratch"].path == "/vol/scratch"


def test_missing_objects_and_keys() -> None:
    with pytest.raises(volumes.VolumeError, match='configmap "nope" not found'):
        volumes.plan(pod([{"name": "v", "configMap": {"name": "nope"}}]), "/vol", "/root", lookup)
    assert volumes.plan(pod([{"name": "v", "configMap": {"name": "nope", "optional": True}}]), "/vol", "/root",
                        lookup)["v"].files == {}
    with pytest.raises(volumes.VolumeError, match="couldn't find key x"):
        volumes.plan(pod([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "x", "path": "x"}]}}]),
                     "/vol", "/root", lookup)
    with pytest.raises(volumes.VolumeError, match="unsupported volume type nfs"):
        volumes.plan(pod([{"name": "v", "nfs": {"server": "x"}}]), "/vol", "/root", lookup)


def test_host_paths_are_the_nodes_but_system_paths_are_shared() -> None:
    got = volumes.plan(pod([{"name": "run", "hostPath": {"path": "/run/flannel", "type": "DirectoryOrCreate"}},
                            {"name": "mods", "hostPath": {"path": "/lib/modules"}},
                            {"name": "lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}]),
                       "/vol", "/nodes/node1", lookup)
    assert got["run"].path == "/nodes/node1/run/flannel" and got["run"].host
    assert got["mods"].path == "/lib/modules" and got["lock"].path == "/run/xtables.lock"
    assert volumes.host_path("/r", "/../etc/x") == "/r/etc/x"


def test_projected_token_configmap_and_downward_api() -> None:
    spec = {"name": "kube-api", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "cfg", "items": [{"key": "iface", "path": "iface"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                                   {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}
    tokens = []
    got = volumes.plan(pod([spec]), "/vol", "/root", lookup,
                       lambda ns, sa, aud, exp: tokens.append((ns, sa, exp)) or "tok")
    assert got["kube-api"].files == {"token": (b"tok", 0o644), "iface": (b"eth0", 0o644),
                                     "namespace": (b"ns1", 0o644), "labels": (b'a="b"', 0o644)}
    assert tokens == [("ns1", "sa", 3607)]
    with pytest.raises(volumes.VolumeError, match="no token for ServiceAccount ns1/sa"):
        volumes.plan(pod([spec]), "/vol", "/root", lookup, lambda *a: None)


def test_mounts_and_the_mount_namespace_command() -> None:
    vols = {"config": volumes.Volume("config", "/vol/config")}
    mounts = volumes.container_mounts([{"name": "config", "mountPath": "/etc/knet", "readOnly": True},
                                       {"name": "config", "mountPath": "/etc/iface", "subPath": "iface"}], vols)
    assert mounts == [volumes.Mount("/vol/config", "/etc/knet", True), volumes.Mount("/vol/config/iface",
                                                                                     "/etc/iface", False)]
    argv = volumes.mount_argv(mounts, ["kproxy", "--x"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "slave"] and argv[-3:] == ["sh", "kproxy", "--x"]
    assert "mount --bind /vol/config /etc/knet" in argv[6] and "remount,bind,ro /etc/knet" in argv[6]
    assert volumes.mount_argv([], ["x"]) == ["x"]
    with pytest.raises(volumes.VolumeError, match="no such volume"):
        volumes.container_mounts([{"name": "other", "mountPath": "/x"}], vols)
    with pytest.raises(volumes.VolumeError, match="subPath"):
        volumes.container_mounts([{"name": "config", "mountPath": "/x", "subPath": "../etc"}], vols)


def test_env_from_key_refs_and_env_from() -> None:
    c = Container.model_validate({"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "K_"}],
                                  "env": [{"name": "IFACE", "valueFrom": {"configMapKeyRef": {"name": "cfg",
                                                                                              "key": "iface"}}},
                                          {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                                        "key": "password"}}},
                                          {"name": "OPT", "valueFrom": {"secretKeyRef": {
                                              "name": "gone", "key": "k", "optional": True}}},
                                          {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                                          {"name": "ARG", "value": "--iface=$(IFACE)"}]})
    env = podenv.container_env(c, pod([]), {}, lookup=lookup)
    assert (env["IFACE"], env["PW"], env["NODE"], env["ARG"]) == ("eth0", "s3cret", "node1", "--iface=eth0")
    assert env["K_proxy-mode"] == "iptables" and "K_bad key" not in env and "OPT" not in env
    assert podenv.expand_argv(["--iface=$(IFACE)", "$$(IFACE)"], env) == ["--iface=eth0", "$(IFACE)"]
    missing = Container.model_validate({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {
        "name": "cfg", "key": "nope"}}}]})
    with pytest.raises(podenv.ConfigError, match="couldn't find key nope in ConfigMap ns1/cfg"):
        podenv.container_env(missing, pod([]), {}, lookup=lookup)


def test_projected_tokens_come_from_the_labs_tokens_file(tmp_path) -> None:
    from lab.agent.runtime import Runtime
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('# token,user,uid,"groups"\n'
                      't-admin,admin,admin,"system:masters"\n'
                      't-node,system:serviceaccount:knet-system:knet-node,kproxy\n')
    rt = Runtime(None, "kx", "node1", {"netns": "kx-node1"}, str(tmp_path / "agent"),  # type: ignore[arg-type]
                 sa_tokens=str(tokens))
    assert rt.token("knet-system", "knet-node", "", 3600) == "t-node"
    assert rt.token("default", "default", "", 3600) is None
    assert rt.node_root == str(tmp_path / "agent" / "hostroot")
    bare = Runtime(None, "kx", "node1", {}, str(tmp_path / "a2"))  # type: ignore[arg-type]
    assert bare.token("knet-system", "knet-node", "", 1) is None
