"""The lab's control plane, started by `knet lab up` after the topology (and the overlay):

    <lab>-ctl    etcd            http://192.168.33.2:2379 and http://127.0.0.1:2379 (data <state>/etcd)
                 knet-apiserver  https://192.168.33.2:6443 on the lab LAN, and a loopback port of the
                                 root namespace for kubectl on the host (a listening socket only)
                 knet-controllers scheduler, ReplicaSet/RC, Deployment, EndpointSlice, LoadBalancer, GC,
                                  node IPAM (a podCIDR per Node from the cluster CIDR, /24 each)
    <lab>-node<i> knet-node-agent registers node<i>, runs the pods bound to it

With the static overlay the lab's routes fix node<i>'s pod subnet to 10.244.<i>.0/24: the Nodes
are then created with that podCIDR before the agents register them (as an administrator may
create Nodes), and the node IPAM controller adopts it.

Kubeconfigs (tokens inside, files mode 0600) in the lab's state dir: `kubeconfig` (admin, host
URL: what `knet lab kubeconfig` prints) and `apiserver/<user>.kubeconfig` (lab URL) for each
component. `knet lab down` kills every process in the lab's namespaces and removes the state dir,
so etcd's data and the kubeconfigs go with it.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import yaml

from lab.bringup import etcd, launch
from lab.errors import LabError
from lab.net import state, topology

Progress = Callable[[str], None]
LB_POOL = "192.168.33.200-192.168.33.250"


class ControlPlaneError(LabError):
    pass


def _quiet(_msg: str) -> None:
    pass


def spawn_agent(netns_name: str, node: str, kubeconfig: str, lab: str, root: str, service_cidr: str,
                log: str) -> launch.Daemon:
    """A node agent in its node's network namespace but in the caller's mount namespace (nsenter):
    `ip netns exec` would give it a private mount namespace, a slave of the host's, and the pod
    namespaces it bind-mounts under /run/netns would then exist only there (invisible to the
    node's knet-cni-agent and to everyone else)."""
    return launch.spawn(f"knet-node-agent on {node}", netns_name, [
        launch.binary("knet-node-agent"), "--kubeconfig", kubeconfig, "--node-name", node,
        "--lab", lab, "--lab-root", root, "--service-cidr", service_cidr,
    ], log, ControlPlaneError, keep_mounts=True)


def kubeconfig_path(lab: str, root: str = topology.STATE_ROOT) -> str:
    return os.path.join(topology.state_dir(lab, root), "kubeconfig")


def start_control_plane(p: topology.Plan, progress: Progress = _quiet, lb_pool: str = LB_POOL,
                        wait: float = 60.0, with_nodes: Callable[[dict[str, str]], None] | None = None
                        ) -> dict[str, Any]:
    """Start etcd, the API server, the controllers and a node agent per node; wait until every
    node is registered and Ready with a podCIDR. `with_nodes(kubeconfigs)` is called once the
    agents are started, to start what runs next to them on the nodes meanwhile (flannel's kube
    subnet manager, which waits for its Node's podCIDR itself). Returns what lab.json records
    under "control_plane"."""
    from lab.apiserver.main import start_in_lab  # the server's module imports aiohttp (~1 s): only when needed

    t0 = time.monotonic()
    etcd.start(p, progress)  # already running when the overlay started it
    try:
        srv = start_in_lab(p.name, "http://127.0.0.1:2379", state_dir=p.state_dir,
                           service_cidr=topology.SERVICE_CIDR)
    except RuntimeError as e:  # it did not start (the message has its log's tail)
        raise ControlPlaneError(str(e)) from e
    progress(f"apiserver: {srv.lab_url} in {p.ctl.netns}, {srv.host_url} on the host (pid {srv.pid})")
    # `<state>/kubeconfig` (the host URL). Not srv.kubeconfig: start_in_lab rewrites admin.kubeconfig
    # with the lab URL in its per-user loop, and the lab URL must never be dialled from here.
    kubeconfig = kubeconfig_path(p.name, os.path.dirname(p.state_dir))
    if p.overlay == "static":
        create_static_nodes(kubeconfig, p)
    ctl = launch.spawn("knet-controllers", p.ctl.netns, [
        launch.binary("knet-controllers"), "--kubeconfig", srv.kubeconfigs["controllers"], "--lb-pool", lb_pool,
        "--metrics", "127.0.0.1:10257", "--allocate-node-cidrs", "--cluster-cidr", topology.POD_CIDR,
        "--node-cidr-mask-size", "24", "--service-cluster-ip-range", topology.SERVICE_CIDR,
    ], os.path.join(p.state_dir, "controllers.log"), ControlPlaneError)
    agents = {n.short: spawn_agent(n.netns, n.short, srv.kubeconfigs["node-agent"], p.name,
                                   os.path.dirname(p.state_dir), topology.SERVICE_CIDR,
                                   os.path.join(n.dir, "node-agent.log")) for n in p.nodes}
    if with_nodes is not None:
        with_nodes(srv.kubeconfigs)
    wait_nodes_ready(kubeconfig, [n.short for n in p.nodes], wait, [ctl, *agents.values()])
    progress(f"controllers: pid {ctl.pid} in {p.ctl.netns} (LoadBalancer pool {lb_pool}); node agents: "
             + ", ".join(f"{k} pid {d.pid}" for k, d in sorted(agents.items()))
             + f"; {len(p.nodes)} node(s) Ready with a podCIDR in {time.monotonic() - t0:.1f}s")
    progress(f"kubectl: kubectl --kubeconfig {kubeconfig} get nodes,pods -o wide")
    progress(f"   (or: export KUBECONFIG=$(knet lab kubeconfig --name {p.name}))")
    return {
        "apiserver": {"pid": srv.pid, "host_url": srv.host_url, "lab_url": srv.lab_url},
        "kubeconfig": kubeconfig,
        "kubeconfigs": srv.kubeconfigs,
        "controllers": {"pid": ctl.pid, "log": ctl.log, "lb_pool": lb_pool},
        "agents": {k: {"pid": d.pid, "log": d.log} for k, d in agents.items()},
        "etcd": topology.ETCD_URL,
    }


def loopback_only(kubeconfig: str) -> None:
    """Refuse a kubeconfig whose server is not on loopback: this process runs in the root network
    namespace, which must never send traffic to a non-loopback address (lab addresses there are
    routed out of the machine)."""
    with open(kubeconfig) as f:
        cfg = yaml.safe_load(f)
    for cluster in cfg.get("clusters") or []:
        host = urllib.parse.urlsplit((cluster.get("cluster") or {}).get("server", "")).hostname or ""
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = host == "localhost"
        if not ok:
            raise ControlPlaneError(f"refusing to use {kubeconfig} from the root namespace: server {host!r} "
                                    "is not a loopback address")


def create_static_nodes(kubeconfig: str, p: topology.Plan) -> None:
    """The Nodes of a static-overlay lab, with the podCIDRs its routes were built for."""
    from knet.kube import client

    loopback_only(kubeconfig)
    api = client.new_api_client(kubeconfig)
    try:
        for n in p.nodes:
            client.create(api, "Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.short},
                                        "spec": {"podCIDR": n.pod_subnet, "podCIDRs": [n.pod_subnet]}})
    finally:
        api.close()


def wait_nodes_ready(kubeconfig: str, names: list[str], wait: float, daemons: list[launch.Daemon]) -> None:
    """Every node registered and Ready (its agent) with a podCIDR (the node IPAM controller)."""
    from knet.kube import client  # ~1 s to import: `knet lab exec/status` (which import this module) never need it

    loopback_only(kubeconfig)
    api = client.new_api_client(kubeconfig)
    not_ready, no_cidr, error = set(names), set(names), ""

    def all_ready() -> bool:
        nonlocal not_ready, no_cidr, error
        try:
            items = client.list_objects(api, "Node")["items"]
        except Exception as e:  # not serving yet: reported if it never does
            items, error = [], f"{type(e).__name__}: {e}"
        ready = {n["metadata"]["name"] for n in items
                 if any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or [])}
        cidr = {n["metadata"]["name"] for n in items if (n.get("spec") or {}).get("podCIDR")}
        not_ready, no_cidr = set(names) - ready, set(names) - cidr
        return not not_ready and not no_cidr

    try:
        if not launch.wait_until(all_ready, daemons, wait):
            why = f"; last error: {error}" if error else ""
            problems = [f"node(s) {', '.join(sorted(not_ready))} not Ready (see node<i>/node-agent.log in the "
                        "lab's state dir)"] if not_ready else []
            if no_cidr:
                problems.append(f"node(s) {', '.join(sorted(no_cidr))} without podCIDR (see controllers.log)")
            raise ControlPlaneError(f"{'; '.join(problems)} within {wait:.0f}s{why}")
    finally:
        api.close()


def remove_leftovers(lab: str, etc_netns: str = "/etc/netns") -> list[str]:
    """The pods' /etc/netns/<lab>-pod-* directories (resolv.conf, hosts): outside the state dir, so
    `knet lab down` removes them here, also when the agents were killed before cleaning up."""
    topology.validate_name(lab)
    removed = []
    for d in glob.glob(os.path.join(etc_netns, f"{lab}-pod-*")):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def restart_agent(lab: str, node: str, root: str = topology.STATE_ROOT) -> int:
    """Stop a node's agent (SIGTERM: pods keep running) and start a new one; returns its pid.
    The new agent adopts the node's pods (tests and `knet lab agent-restart` use it)."""
    from lab.apiserver.main import stop_pid  # the server's module imports aiohttp (~1 s): only when needed

    data = state.load(lab, root)
    cp = data.get("control_plane") or {}
    agent = (cp.get("agents") or {}).get(node)
    n = data["nodes"].get(node)
    if not agent or not n:
        raise ControlPlaneError(f"lab {lab} has no node agent on {node!r}")
    stop_pid(agent["pid"])
    daemon = spawn_agent(n["netns"], node, cp["kubeconfigs"]["node-agent"], lab, root,
                         data.get("service_cidr", topology.SERVICE_CIDR), agent["log"])
    with state.update(lab, root) as d:
        d["control_plane"]["agents"][node]["pid"] = daemon.pid
    return daemon.pid
