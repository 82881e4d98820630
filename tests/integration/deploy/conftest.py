"""A 2-node lab with the control plane (`kt` + 4 hex, no overlay daemons, no CNI agents, no kproxy:
the DaemonSet's start-up provides them) and, on it, the knet-node DaemonSet's start-up sequence
run as the manifests say: the init container's command, then the four containers' commands, in
node1's network namespace; kdns and knet-ingress with their Deployments' arguments in node2.

What differs from a cluster, on purpose: the host root is a temp dir (every host path of the
manifests under it, the ConfigMaps' files too); the Nodes are created here with the podCIDRs the
lab's static overlay uses (no kubelet registers them, no node IPAM controller assigns podCIDRs
yet); each daemon gets the lab's kubeconfig of its component instead of the in-cluster service
account, and the environment the manifest gives it (NODE_NAME from the downward API). Everything
is torn down at the end whatever happens (the lab by name, every process we started by pid)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from knet import netns
from knet.kube import client
from lab import api
from lab.bringup import controlplane
from lab.net import state, topology
from tests.integration.deploy import manifests as m
from tests.integration.lab_names import new_lab_name, sweep_crashed_labs

BIN = os.path.dirname(sys.executable)  # the venv's bin: every console script of the image is there
HOST_PATH_FLAGS = ("--subnet-file=", "--socket=", "--run-dir=", "--net-config-path=", "--config=")
HOST_PATH_OPTIONS = ("-conf",)  # a path in the next argument (CoreDNS's spelling kdns keeps)


@dataclass
class Deployed:
    name: str
    root: str
    docs: list[dict]
    kubeconfigs: dict[str, str]
    admin_kubeconfig: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def node1(self) -> str:
        return f"{self.name}-node1"

    @property
    def node2(self) -> str:
        return f"{self.name}-node2"

    def host(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def log(self, what: str) -> str:
        with open(self.logs[what], errors="replace") as f:
            return f.read()

    def apiserver_log(self) -> str:
        with open(os.path.join(topology.state_dir(self.name), "apiserver", "apiserver.log"), errors="replace") as f:
            return f.read()


def http_get(ns: str, url: str, timeout: float = 2.0) -> tuple[int, str]:
    """A GET made from inside a lab namespace (its loopback), never from the root namespace."""
    with netns.enter(ns):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""


def wait_for(cond, timeout: float, what: str, logs: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s\n{logs[-3000:]}")
        time.sleep(0.2)


def _adapt(argv: list[str], d: Deployed, kubeconfig: str | None) -> list[str]:
    """The manifest's argv, mapped onto the lab (see the module docstring)."""
    out = [os.path.join(BIN, argv[0])]
    for prev, a in itertools.pairwise(argv):
        for flag in HOST_PATH_FLAGS:
            if a.startswith(flag):
                a = flag + d.host(a[len(flag):])
        if prev in HOST_PATH_OPTIONS:
            a = d.host(a)
        out.append(a)
    if kubeconfig:
        out.append(f"--kubeconfig={kubeconfig}")
    return out


def _start(d: Deployed, key: str, ns: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    d.logs[key] = os.path.join(d.root, f"{key}.log")
    # keep_mounts: like hostNetwork pods, the daemons see the host's /run/netns and cgroups.
    d.procs[key] = netns.spawn(ns, argv, log_path=d.logs[key], keep_mounts=True,
                               env={**os.environ, **(env or {})})


def _container(d: Deployed, kind: str, name: str, cname: str, init: bool = False) -> dict:
    spec = m.pod_spec(d.docs, kind, name)
    return next(c for c in spec["initContainers" if init else "containers"] if c["name"] == cname)


def _install(d: Deployed) -> None:
    data = m.by_kind(d.docs, "ConfigMap")["knet-config"]["data"]
    conf = json.loads(data["cni-conflist.json"])
    plugin = conf["plugins"][0]
    for key in ("subnetFile", "agentSocket"):
        plugin[key] = d.host(plugin[key])
    plugin["ipam"]["dataDir"] = d.host(plugin["ipam"]["dataDir"])
    os.makedirs(d.host("/etc/knet"))
    with open(d.host("/etc/knet/cni-conflist.json"), "w") as f:
        json.dump(conf, f)
    os.makedirs(d.host("/etc/coredns"))  # the coredns ConfigMap's volume
    with open(d.host("/etc/coredns/Corefile"), "w") as f:
        f.write(m.corefile(d.docs))
    os.makedirs(d.host("/var/lib/kube-proxy"))  # the kube-proxy ConfigMap's volume
    with open(d.host("/var/lib/kube-proxy/config.conf"), "w") as f:
        f.write(m.by_kind(d.docs, "ConfigMap")["kube-proxy"]["data"]["config.conf"])
    os.makedirs(d.host("/etc/kube-flannel"))  # the kube-flannel-cfg ConfigMap's volume
    with open(d.host("/etc/kube-flannel/net-conf.json"), "w") as f:
        f.write(m.by_kind(d.docs, "ConfigMap")["kube-flannel-cfg"]["data"]["net-conf.json"])
    argv = m.argv(_container(d, "DaemonSet", "knet-node", "install-cni", init=True), d.docs)
    assert [a.split("=")[0] for a in argv[1:]] == ["--host-root", "--conflist"], argv  # no etcd, no net-conf
    # The host root is /, the host's dirs are under the temp root: the launcher then names its
    # library by the path it really has, as on a node.
    argv = [sys.executable, os.path.join(m.DEPLOY, "image", "knet_install_cni.py"), "--host-root=/",
            f"--bin-dir={d.host('/opt/cni/bin')}", f"--conf-dir={d.host('/etc/cni/net.d')}",
            f"--conflist={d.host('/etc/knet/cni-conflist.json')}"]
    r = netns.run(d.node1, argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    d.logs["install-cni"] = r.stdout


def _node_podcidrs(d: Deployed) -> None:
    """The Nodes' podCIDRs as kube-controller-manager's node IPAM would set them (the lab's static
    overlay subnets), where the lab has not set one."""
    api = client.new_api_client(d.admin_kubeconfig)
    try:
        for i in (1, 2):
            node, cidr = client.get(api, "Node", f"node{i}"), topology.pod_subnet(i)
            spec = {"podCIDR": cidr, "podCIDRs": [cidr]}
            if node is None:
                client.create(api, "Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node{i}"},
                                            "spec": spec})
            elif not node.get("spec", {}).get("podCIDR"):
                client.patch(api, "Node", f"node{i}", {"spec": spec})
            else:
                assert node["spec"]["podCIDR"] == cidr, node["spec"]
    finally:
        api.close()


@pytest.fixture(scope="module")
def deployed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    sweep_crashed_labs()
    name = new_lab_name(request)
    api.up(name, nodes=2, overlay="static", control_plane=True, agents=False)
    info = state.load(name)["control_plane"]
    admin = controlplane.kubeconfig_path(name)
    controlplane.loopback_only(admin)
    d = Deployed(name, str(tmp_path_factory.mktemp("hostroot")), m.render(), info["kubeconfigs"], admin)
    try:
        _install(d)
        _node_podcidrs(d)
        node = {c: _container(d, "DaemonSet", "knet-node", c) for c in ("flannel-py", "knet-cni-agent", "kproxy",
                                                                        "netpolicy")}
        flannel = _adapt(m.argv(node["flannel-py"], d.docs, "node1"), d, d.kubeconfigs["flannel"])
        _start(d, "flannel-py", d.node1, flannel, env=m.container_env(node["flannel-py"], d.docs, "node1"))
        _start(d, "knet-cni-agent", d.node1, _adapt(m.argv(node["knet-cni-agent"], d.docs), d, None))
        for c in ("kproxy", "netpolicy"):
            _start(d, c, d.node1, _adapt(m.argv(node[c], d.docs, "node1"), d, d.kubeconfigs[c]))
        kdns = m.pod_spec(d.docs, "Deployment", "kdns")["containers"][0]
        _start(d, "kdns", d.node2, _adapt(m.argv(kdns, d.docs), d, d.kubeconfigs["kdns"]))
        ing = m.pod_spec(d.docs, "Deployment", "knet-ingress")["containers"][0]
        _start(d, "knet-ingress", d.node2, _adapt(m.argv(ing, d.docs), d, d.kubeconfigs["ingress"]))
        yield d
    finally:
        for proc in d.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in d.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with contextlib.suppress(Exception):
            shutil.rmtree(d.root, ignore_errors=True)
