"""The lab's Python API (what the CLI, the tests and the benchmarks call): its public entry point,
with `lab.cli` (the `knet lab` subcommands) and `lab.errors`.

    lab = up("kt1a2b", nodes=3)          # -> Lab
    pod = lab.add_pod("node1", "web")    # -> dict with ip, netns, container_id, result, pids
    lab.exec("web", ["ping", "-c1", ip])
    lab.del_pod("web")
    down("kt1a2b")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from knet import cgroups, netns
from lab.bringup import controlplane, dns, flanneld, kube_proxy, launch, netpol, proxy, real_control_plane
from lab.bringup import ingress as lab_ingress
from lab.bringup import overlay as lab_overlay
from lab.errors import LabError
from lab.net import kernel, pods, state, topology

__all__ = ["Lab", "LabError", "down", "exists", "get", "list_labs", "status", "sweep", "up"]
Progress = Callable[[str], None]


# Only names a lab makes count as leftovers, so a foreign "x-foo" namespace never looks like a lab.
_LAB_NETNS_RE = re.compile(r"^([a-z][a-z0-9]{0,11})-(underlay|ctl|client|node[0-9]+|pod-.+)$")


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Lab:
    name: str
    root: str = topology.STATE_ROOT

    @property
    def state_dir(self) -> str:
        return topology.state_dir(self.name, self.root)

    def data(self) -> dict:
        """The current lab.json (re-read every time: other processes add pods)."""
        return state.load(self.name, self.root)

    @property
    def nodes(self) -> dict[str, dict]:
        return self.data()["nodes"]

    def pods(self) -> dict[str, dict]:
        return self.data()["pods"]

    def node(self, ref: str | int) -> dict:
        nodes = self.nodes
        key = ref if ref in nodes else f"node{ref}"
        if key not in nodes:
            raise LabError(f"lab {self.name} has no node {ref!r}")
        return nodes[key]

    def pod(self, pod: str, namespace: str = "default") -> dict:
        found = pods.find(self.data(), pod, namespace)
        if found is None:
            raise LabError(f"pod {namespace}/{pod} not found in lab {self.name}")
        return found

    def add_pod(self, node: str | int, pod: str, namespace: str = "default", cmd: str | None = None,
                ports: Sequence[str | dict] = ()) -> dict:
        mappings = [p if isinstance(p, dict) else pods.parse_port(p) for p in ports]
        return pods.add(self.name, str(node), pod, namespace, cmd, mappings, self.root)

    def del_pod(self, pod: str, namespace: str = "default", node: str | None = None) -> dict | None:
        return pods.delete(self.name, pod, namespace, node, self.root)

    def netns(self, target: str, namespace: str = "default") -> str:
        """Namespace name of a target: node1 / 1, ctl, client, underlay, a pod name or ns/pod."""
        data = self.data()
        if target in ("ctl", "client"):
            return data[target]["netns"]
        if target == "underlay":
            return data["underlay"]["netns"]
        if target in data["nodes"]:
            return data["nodes"][target]["netns"]
        if target.isdigit() and f"node{target}" in data["nodes"]:
            return data["nodes"][f"node{target}"]["netns"]
        ns, _, pod = target.rpartition("/")
        record = pods.find(data, pod, ns or namespace)
        if record is None:
            raise LabError(f"no node, pod or role {target!r} in lab {self.name}")
        return record["netns"]

    def exec(self, target: str, argv: Sequence[str], namespace: str = "default",
             **kwargs) -> subprocess.CompletedProcess:
        """Run argv in the target's namespace; in a pod, also in its node's pod cgroup (as
        `kubectl exec` joins the container), so service traffic meets what pods meet."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.exec_argv(target, argv, namespace), **kwargs)

    def exec_argv(self, target: str, argv: Sequence[str], namespace: str = "default") -> list[str]:
        """The command line `exec` runs (for a caller that needs a long-running process)."""
        cmd = netns.exec_argv(self.netns(target, namespace), list(argv))
        record = self._pod_record(target, namespace)
        cg = kernel.node_cgroup(self.name, record["node"]) if record and record.get("node") else None
        if cg and os.path.isdir(cg):
            cmd = cgroups.join_argv(cg, cmd)
        return cmd

    def _pod_record(self, target: str, namespace: str) -> dict | None:
        if target in ("ctl", "client", "underlay") or target.isdigit():
            return None
        data = self.data()
        if target in data["nodes"]:
            return None
        ns, _, pod = target.rpartition("/")
        return pods.find(data, pod, ns or namespace)

    def down(self, progress: Progress = _quiet) -> list[str]:
        return down(self.name, self.root, progress)


def exists(name: str, root: str = topology.STATE_ROOT) -> bool:
    return state.exists(name, root) or bool(kernel.lab_netns(name))


def get(name: str = "knet", root: str = topology.STATE_ROOT) -> Lab:
    topology.validate_name(name)
    state.load(name, root)  # raises NoSuchLab (a LabError) with a hint when there is no such lab
    return Lab(name, root)


def up(name: str = "knet", nodes: int = 3, cni_type: str = "knet-cni", recreate: bool = False,
       progress: Progress = _quiet, root: str = topology.STATE_ROOT, agents: bool = True,
       overlay: str = "vxlan", control_plane: bool | str = False, proxy_mode: str | None = None,
       network_policy: bool = False, ingress: bool = False, subnet_manager: str | None = None,
       ip_family: str = "ipv4", flannel: str = "py") -> Lab:
    """Build the lab; on any failure everything made so far is removed again. `control_plane`:
    also etcd, the API server, the controllers and the node agents (lab.bringup.controlplane);
    "real": kube-apiserver and kube-controller-manager instead (lab.bringup.real_control_plane).
    `subnet_manager` (vxlan and host-gw overlays): "kube" (the Nodes' podCIDRs; needs the
    control plane) or "etcd"; None: kube with the control plane, else etcd. `ip_family`: "ipv4"
    (the default), or "dual" (IPv4 primary): an IPv6 underlay, pod and service range beside the
    IPv4 ones ("ipv6" alone is refused: flannel-py has no IPv6-only overlay). `flannel`: "py"
    (flannel-py on every node), "real" (upstream flanneld on every node) or "real:N" (flanneld on
    the last N nodes, flannel-py on the others; lab.bringup.flanneld)."""
    t0 = time.monotonic()
    p = topology.plan(name, nodes, cni_type, root, overlay, ip_family)
    manager = _subnet_manager(overlay, subnet_manager, bool(control_plane))
    if control_plane not in (False, True, "lab", "real"):
        raise LabError(f"control plane must be lab or real, got {control_plane!r}")
    if control_plane == "real":
        real_control_plane.check_anchors()
    real_flannel = flanneld.nodes(flannel, p, manager)
    if exists(name, root):
        if not recreate:
            raise LabError(f"lab {name} already exists (knet lab down --name {name}, or --recreate)")
        progress(f"lab {name} exists: recreating")
        down(name, root, progress)
    # A state dir without a lab is debris (e.g. of a killed `down`): stale IPAM reservations in it
    # would leak into the new lab.
    shutil.rmtree(p.state_dir, ignore_errors=True)
    os.makedirs(p.state_dir, exist_ok=True)
    state.write_owner(name, root)  # before any namespace: leftovers always have an owner record
    progress(f"lab {name}: {nodes} node(s), cni plugin {cni_type}, state in {p.state_dir}")
    if real_flannel:
        progress(f"flannel: {flanneld.describe(real_flannel)}, flannel-py on the other nodes")
    try:
        kernel.build(p, progress)
        if control_plane == "real":  # the anchors' etcd, before the overlay would start Debian's
            real_control_plane.start_etcd(p, progress)
        leases = lab_overlay.start(p, progress, flanneld_nodes=real_flannel) if manager == "etcd" else {}
        for n in p.nodes:
            os.makedirs(os.path.dirname(n.conflist_path), exist_ok=True)
            os.makedirs(n.ipam_dir, exist_ok=True)
            with open(n.conflist_path, "w") as f:
                json.dump(n.conflist, f, indent=2)
                f.write("\n")
        progress(f"cni: {', '.join(n.conflist_path for n in p.nodes)}")
        desc = topology.describe(p)
        desc["subnet_manager"] = manager
        desc["flanneld_nodes"] = real_flannel
        desc["agents"] = {}
        if agents and cni_type == "knet-cni":
            desc["agents"] = kernel.start_agents(p, progress)
        desc["created"] = time.time()
        state.save(desc, name, root)
        _record_leases(name, root, leases)
        if control_plane:  # after lab.json exists: the node agents read it
            flannel_daemons: dict[str, launch.Daemon] = {}

            def start_flannel(kubeconfigs: dict[str, str]) -> None:
                flannel_daemons.update(lab_overlay.spawn_kube(p, kubeconfigs["flannel"], real_flannel))

            start_cp = (real_control_plane.start_control_plane if control_plane == "real"
                        else controlplane.start_control_plane)
            cp = _record(name, root, "control_plane", start_cp(
                p, progress, with_nodes=start_flannel if manager == "kube" else None))
            kubeconfigs = cp["kubeconfigs"]
            if manager == "kube":  # every Node has its podCIDR now (flanneld exits without one)
                flannel_daemons.update(lab_overlay.spawn_flanneld_kube(p, kubeconfigs["flannel"], real_flannel))
                _record_leases(name, root, lab_overlay.wait_kube(p, flannel_daemons, progress))
            _record(name, root, "dns", dns.start(p, kubeconfigs, progress))
            if proxy_mode in kube_proxy.MODES:  # upstream kube-proxy as the peer of kproxy's modes
                _record(name, root, "proxy", {"mode": proxy_mode, "nodes": kube_proxy.start(
                    p, proxy_mode, kubeconfigs[kube_proxy.USER], progress)})
            elif proxy_mode:
                _record(name, root, "proxy", {"mode": proxy_mode,
                                              "nodes": proxy.start(p, proxy_mode, kubeconfigs["kproxy"], progress)})
            if network_policy:
                _record(name, root, "netpolicy", netpol.start(p, kubeconfigs["netpolicy"], progress))
            if ingress and proxy_mode:
                _record(name, root, "ingress", lab_ingress.start(p, kubeconfigs, progress))
    except BaseException:
        kernel.teardown(name, root)  # first: a failing progress callback must not stop it
        with contextlib.suppress(Exception):
            progress(f"lab {name}: setup failed, removed what was made")
        raise
    progress(f"lab {name} is up in {time.monotonic() - t0:.1f}s")
    return Lab(name, root)


def _subnet_manager(overlay: str, asked: str | None, control_plane: bool) -> str | None:
    """The overlay's subnet manager (None: the static overlay has none)."""
    if overlay == "static":
        return None
    manager = asked or ("kube" if control_plane else "etcd")
    if manager not in lab_overlay.SUBNET_MANAGERS:
        raise LabError(f"subnet manager must be one of {', '.join(lab_overlay.SUBNET_MANAGERS)}, got {manager!r}")
    if manager == "kube" and not control_plane:
        raise LabError("the kube subnet manager needs the control plane (the Nodes' podCIDRs are the subnets): "
                       "drop --no-control-plane, or use --subnet-manager etcd")
    return manager


def _record_leases(name: str, root: str, leases: dict[str, dict]) -> None:
    with state.update(name, root) as d:
        for short, lease in leases.items():
            d["nodes"][short]["pod_subnet"] = lease["pod_subnet"]
            d["nodes"][short]["mtu"] = lease["mtu"]
            if "pod_subnet6" in lease:
                d["nodes"][short]["pod_subnet6"] = lease["pod_subnet6"]
            if lease.get("pid"):  # flannel-py's (`knet lab status`)
                d["nodes"][short]["flannel_pid"] = lease["pid"]


def _record(name: str, root: str, key: str, info: dict) -> dict:
    """Put what a launcher started into lab.json under `key`; returns `info`."""
    with state.update(name, root) as d:
        d[key] = info
    return info


def down(name: str = "knet", root: str = topology.STATE_ROOT, progress: Progress = _quiet) -> list[str]:
    """Remove everything of the lab (found by prefix, so a crashed run is covered too)."""
    topology.validate_name(name)
    removed = kernel.teardown(name, root, progress)
    controlplane.remove_leftovers(name)  # the pods' /etc/netns dirs (the node agents' resolv.conf)
    return removed


def list_labs(root: str = topology.STATE_ROOT) -> list[str]:
    """Labs with a state dir or with lab-shaped namespaces (the latter: leftovers of a crash)."""
    names = set(state.list_labs(root))
    for ns in netns.list_names():
        m = _LAB_NETNS_RE.match(ns)
        if m:
            names.add(m[1])
    return sorted(names)


def sweep(name_prefix: str, root: str = topology.STATE_ROOT, progress: Progress = _quiet) -> list[str]:
    """Remove labs named `name_prefix*` whose creating process is gone (test sessions use this to
    clear leftovers of crashed runs without touching a lab a concurrent session is using)."""
    removed = []
    for lab in list_labs(root):
        if lab.startswith(name_prefix) and not state.owner_alive(lab, root):
            down(lab, root, progress)
            removed.append(lab)
    return removed


def status(name: str = "knet", root: str = topology.STATE_ROOT) -> dict:
    """lab.json plus what is actually alive (namespaces present, agent sockets reachable)."""
    data = state.load(name, root)
    present = set(kernel.lab_netns(name))
    for n in data["nodes"].values():
        n["up"] = n["netns"] in present
        n["agent"] = os.path.exists(n["agent_socket"])
    for p in data["pods"].values():
        p["up"] = p["netns"] in present
    return data
