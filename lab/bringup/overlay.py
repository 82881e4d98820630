"""The overlay in the lab: flannel_py on every node, with one of its two subnet managers.

`knet lab up` (default `--overlay vxlan --subnet-manager kube`) starts `flannel-py` inside each
node namespace exactly as a node would run it, and waits for every node's subnet.env; the CNI
plugin (flannel mode) reads that file, so pods get addresses from the node's subnet with the
overlay's MTU.

- kube (`spawn_kube`, `wait_kube`; as kube-flannel runs flanneld): the node's subnet is its Node's
  spec.podCIDR, which the lab's node IPAM controller assigns (lab.controllers.nodeipam); flannel
  publishes its lease as Node annotations and reads everyone's from the Nodes. Started once the
  API server is up, together with the node agents (each daemon waits for its Node and podCIDR, as
  on a cluster), with the `flannel` identity's kubeconfig and the net-conf.json kube-flannel's
  ConfigMap carries (<state>/kube-flannel/net-conf.json).
- etcd (`start`): flannel leases subnets from the lab's etcd (/coreos.com/network); started before
  the control plane, which it does not need.

`flanneld_nodes` (`knet lab up --flannel real:N`): those nodes run upstream flanneld instead, on
the same subnet manager (lab.bringup.flanneld).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import time
from collections.abc import Collection

from lab.bringup import etcd, flanneld, launch
from lab.errors import LabError
from lab.net import state, topology

NETWORK_KEY = "/coreos.com/network/config"
SUBNET_MANAGERS = ("kube", "etcd")


class OverlayError(LabError):
    pass


def _ipv6(ip_family: str, subnet_len: bool) -> dict:
    """Dual-stack: flannel's EnableIPv6 with the pods' IPv6 range (a /64 per node)."""
    if not topology.dual(ip_family):
        return {}
    return {"EnableIPv6": True, "IPv6Network": topology.POD6_CIDR, **({"IPv6SubnetLen": 64} if subnet_len else {})}


def network_config(backend: str, ip_family: str = "ipv4") -> dict:
    return {"Network": topology.POD_CIDR, "SubnetLen": 24, **_ipv6(ip_family, True), "Backend": {"Type": backend}}


def net_conf(backend: str, ip_family: str = "ipv4") -> dict:
    """kube-flannel's net-conf.json: the Network (and IPv6Network) every podCIDR lies in (the
    node IPAM controller's --cluster-cidr); SubnetLen does not apply with the kube subnet manager."""
    return {"Network": topology.POD_CIDR, **_ipv6(ip_family, False), "Backend": {"Type": backend}}


def net_conf_path(p: topology.Plan) -> str:
    return os.path.join(p.state_dir, "kube-flannel", "net-conf.json")


def _public_ipv6(n: topology.Node) -> list[str]:
    return ["--public-ipv6", n.ip6] if n.ip6 else []


def flannel_argv(n: topology.Node) -> list[str]:
    return [launch.binary("flannel-py"), "--etcd-endpoints", topology.ETCD_URL, "--iface", "eth0",
            "--public-ip", n.ip, *_public_ipv6(n), "--subnet-file", n.subnet_file, "--ip-masq"]


def kube_flannel_argv(n: topology.Node, kubeconfig: str, conf: str) -> list[str]:
    # --node-name where the DaemonSet sets $NODE_NAME from the downward API.
    return [launch.binary("flannel-py"), "--kube-subnet-mgr", "--kubeconfig-file", kubeconfig,
            "--net-config-path", conf, "--node-name", n.short, "--iface", "eth0", "--public-ip", n.ip,
            *_public_ipv6(n), "--subnet-file", n.subnet_file, "--ip-masq"]


def read_subnet_env(path: str) -> dict[str, str]:
    """The node's subnet.env ({} while flannel-py has not written it; flannel-py replaces it
    atomically, so it is never half written)."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    out[key] = value
    except FileNotFoundError:
        pass
    return out


def leased(subnet_file: str) -> bool:
    return "FLANNEL_SUBNET" in read_subnet_env(subnet_file)


def start(p: topology.Plan, progress=print, wait: float = 20.0, flanneld_nodes: Collection[str] = ()
          ) -> dict[str, dict]:
    """Start flannel-py (etcd subnet manager) on every node; returns node -> {"pod_subnet", "mtu", "pid"}."""
    etcd.start(p, progress)
    etcd.put(p, NETWORK_KEY, json.dumps(network_config(p.overlay, p.ip_family)))
    out: dict[str, dict] = {}
    deadline = time.monotonic() + wait
    # One node after the other: flannel hands out the lowest free subnet, so node<i> gets
    # 10.244.<i>.0/24 in a fresh lab — addresses a person can read. (Concurrent starts are
    # race-free too; flannel_py's own tests prove that.)
    for n in p.nodes:
        daemon = _spawn(n, flanneld.etcd_argv(n) if n.short in flanneld_nodes else flannel_argv(n))
        if not launch.wait_until(functools.partial(leased, n.subnet_file), [daemon], deadline - time.monotonic(),
                                 interval=0.02):
            raise OverlayError(f"no subnet lease for {n.short} within {wait:.0f}s (see {daemon.log})")
        out[n.short] = _lease(n, daemon)
    _report(p, "etcd", out, progress)
    return out


def spawn_kube(p: topology.Plan, kubeconfig: str, flanneld_nodes: Collection[str] = ()) -> dict[str, launch.Daemon]:
    """Start flannel-py (kube subnet manager) on every node at once: each takes its own Node's
    podCIDR, so there is no order to keep, and each waits for it by itself. Started while the
    control plane comes up, the daemons' start-up (~1-3 s of imports and a Node list each) runs
    while the agents register and the node IPAM controller assigns (bench/lab_up.py)."""
    conf = net_conf_path(p)
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as f:
        json.dump(net_conf(p.overlay, p.ip_family), f, indent=2)
        f.write("\n")
    return {n.short: _spawn(n, kube_flannel_argv(n, kubeconfig, conf)) for n in p.nodes
            if n.short not in flanneld_nodes}


def spawn_flanneld_kube(p: topology.Plan, kubeconfig: str, nodes: Collection[str]) -> dict[str, launch.Daemon]:
    """Start flanneld (kube subnet manager) on `nodes`, with spawn_kube's net-conf: only once their
    Nodes have a podCIDR (flanneld exits without one; lab.bringup.flanneld)."""
    return {n.short: _spawn(n, flanneld.kube_argv(n, kubeconfig, net_conf_path(p))) for n in p.nodes
            if n.short in nodes}


def wait_kube(p: topology.Plan, daemons: dict[str, launch.Daemon], progress=print,
              wait: float = 30.0) -> dict[str, dict]:
    """Wait for every node's subnet.env; returns node -> {"pod_subnet", "mtu", "pid"}."""
    waiting = list(p.nodes)

    def all_leased() -> bool:
        waiting[:] = [n for n in waiting if not leased(n.subnet_file)]
        return not waiting

    if not launch.wait_until(all_leased, daemons.values(), wait, interval=0.02):
        raise OverlayError(f"no subnet for {', '.join(n.short for n in waiting)} within {wait:.0f}s "
                           f"(see {', '.join(daemons[n.short].log for n in waiting)})")
    out = {n.short: _lease(n, daemons[n.short]) for n in p.nodes}
    _report(p, "kube", out, progress)
    return out


def _spawn(n: topology.Node, argv: list[str]) -> launch.Daemon:
    os.makedirs(n.dir, exist_ok=True)
    what = "flanneld" if flanneld.BINARY in argv else "flannel-py"
    return launch.spawn(f"{what} on {n.short}", n.netns, argv, os.path.join(n.dir, "flannel.log"), OverlayError)


def _lease(n: topology.Node, daemon: launch.Daemon) -> dict:
    env = read_subnet_env(n.subnet_file)
    n.pod_subnet = str(ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network)
    out = {"pod_subnet": n.pod_subnet, "mtu": int(env.get("FLANNEL_MTU", "1500")), "pid": daemon.pid}
    if env.get("FLANNEL_IPV6_SUBNET"):
        out["pod_subnet6"] = str(ipaddress.ip_interface(env["FLANNEL_IPV6_SUBNET"]).network)
    return out


def _report(p: topology.Plan, manager: str, out: dict[str, dict], progress) -> None:
    progress(f"overlay {p.overlay} ({manager} subnet manager): " + ", ".join(
        f"{k} {v['pod_subnet']}{' ' + v['pod_subnet6'] if 'pod_subnet6' in v else ''} (mtu {v['mtu']})"
        for k, v in sorted(out.items())))


def switch(lab: str, node: str, daemon: str, root: str = topology.STATE_ROOT, wait: float = 30.0) -> int:
    """Replace a node's flannel in place by `daemon` ("flannel-py" or "flanneld"), as an operator
    moves a cluster node by node: SIGTERM to the recorded pid (both daemons leave the device,
    routes and lease behind), the other daemon with the same subnet manager, waiting until it has
    rewritten the node's subnet file. Records the new pid and the flanneld nodes; returns the pid."""
    from lab.apiserver.main import stop_pid  # the server's module imports aiohttp (~1 s): only when needed

    if daemon not in ("flannel-py", "flanneld"):
        raise OverlayError(f"daemon must be flannel-py or flanneld, got {daemon!r}")
    data = state.load(lab, root)
    p = topology.plan(lab, len(data["nodes"]), data.get("cni_type", "knet-cni"), root, data["overlay"],
                      data.get("ip_family", "ipv4"))
    n = p.node(node)
    manager, pid = data.get("subnet_manager"), data["nodes"][n.short].get("flannel_pid")
    if manager not in SUBNET_MANAGERS or not pid:
        raise OverlayError(f"lab {lab} runs no flannel on {n.short}")
    if daemon == "flanneld":
        flanneld.check_built(f"flanneld on {n.short}")
    kubeconfig = (data.get("control_plane") or {}).get("kubeconfigs", {}).get("flannel", "")
    if manager == "kube":
        argv = (flanneld.kube_argv(n, kubeconfig, net_conf_path(p)) if daemon == "flanneld"
                else kube_flannel_argv(n, kubeconfig, net_conf_path(p)))
    else:
        argv = flanneld.etcd_argv(n) if daemon == "flanneld" else flannel_argv(n)

    def written() -> tuple[int, int]:
        st = os.stat(n.subnet_file)
        return st.st_ino, st.st_mtime_ns

    before = written()
    stop_pid(pid)
    started = _spawn(n, argv)
    if not launch.wait_until(lambda: leased(n.subnet_file) and written() != before, [started], wait, interval=0.05):
        raise OverlayError(f"{daemon} on {n.short} did not write {n.subnet_file} within {wait:.0f}s "
                           f"(see {started.log})")
    with state.update(lab, root) as d:
        d["nodes"][n.short]["flannel_pid"] = started.pid
        others = [s for s in d.get("flanneld_nodes") or [] if s != n.short]
        d["flanneld_nodes"] = sorted(others + ([n.short] if daemon == "flanneld" else []), key=lambda s: (len(s), s))
    return started.pid
