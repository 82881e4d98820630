"""`knet-node-agent`: the kubelet's network part, one per node, run inside the node's namespace.

    knet-node-agent --kubeconfig node-agent.kubeconfig --node-name node1 --lab knet
    knet-node-agent --kubeconfig ... --node-name n1 --conflist /etc/cni/net.d/10-knet.conflist \\
                    --state-dir /var/lib/knet-agent --netns-prefix knet      # outside a lab

It registers its Node (InternalIP = eth0's address, podCIDR, Ready with a heartbeat), watches the
pods bound to it (`fieldSelector=spec.nodeName=<node>`) and runs one `PodWorker` per pod.

Deletion: the lab API server deletes a pod at once (no grace period, no finalizer); the agent
learns it from the DELETE event (or from the pod no longer being listed) and then stops the
processes, runs CNI DEL and removes the namespace. After an agent restart, pods still bound here
are adopted from their state files (no second ADD, processes left running, readiness kept);
state of pods deleted meanwhile is cleaned up.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any

from knet import logs, metrics
from knet.kube import InformerFactory, add_arguments, api_client_from_args, client
from knet.kube.models import Pod, Service
from lab.agent.containers import Process
from lab.agent.podworker import PodWorker, finish_deletion
from lab.agent.runtime import Runtime
from lab.agent.status import now
from lab.net import kernel, state, topology

log = logging.getLogger("lab.agent")
VERSION = "v1.29.0-knet"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet-node-agent", description="the knet lab's per-node agent")
    add_arguments(p)
    p.add_argument("--node-name", required=True)
    p.add_argument("--lab", help="lab name: node facts and the CNI conflist come from its lab.json")
    p.add_argument("--cgroup", default=None,
                   help="cgroup v2 directory for the pods' processes (default with --lab: the lab's node cgroup)")
    p.add_argument("--lab-root", default=topology.STATE_ROOT)
    p.add_argument("--conflist", help="CNI conflist (default: the lab node's)")
    p.add_argument("--state-dir", help="pod state and logs (default: <lab node dir>/agent)")
    p.add_argument("--netns-prefix", help="pod namespaces are <prefix>-pod-<ns>-<name> (default: the lab name)")
    p.add_argument("--node-ip", help="InternalIP (default: eth0's IPv4 address)")
    p.add_argument("--pod-cidr", help="the node's pod subnet (default: the lab's or subnet.env's)")
    p.add_argument("--service-cidr", default=topology.SERVICE_CIDR)
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between Node status updates")
    p.add_argument("--metrics", default="", metavar="ADDR:PORT")
    p.add_argument("--log-level", default="info")
    return p


def eth0_address() -> str | None:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
    try:
        for link in json.loads(out.stdout or "[]"):
            for a in link.get("addr_info", []):
                return a["local"]
    except (ValueError, KeyError):
        pass
    return None


def node_facts(args: argparse.Namespace) -> tuple[dict[str, Any], str, str | None, str | None]:
    """(node_info for the runtime, state dir, node IP, pod CIDR)."""
    info: dict[str, Any] = {}
    if args.lab:
        data = state.load(args.lab, args.lab_root)
        info = dict(data["nodes"].get(args.node_name) or {})
        if not info:
            raise SystemExit(f"knet-node-agent: lab {args.lab} has no node {args.node_name}")
    if args.conflist:
        info["conflist"] = args.conflist
    if not info.get("conflist"):
        raise SystemExit("knet-node-agent: no CNI conflist (--lab or --conflist)")
    info.setdefault("netns", None)
    state_dir = args.state_dir or (os.path.join(info["dir"], "agent") if info.get("dir") else None)
    if not state_dir:
        raise SystemExit("knet-node-agent: no state dir (--lab or --state-dir)")
    cidr = args.pod_cidr or info.get("pod_subnet") or None
    subnet_env = os.path.join(info.get("dir", ""), "subnet.env")
    if not cidr and os.path.exists(subnet_env):
        with open(subnet_env) as f:
            for line in f:
                if line.startswith("FLANNEL_SUBNET="):
                    cidr = str(ipaddress.ip_interface(line.split("=", 1)[1].strip()).network)
    return info, state_dir, args.node_ip or eth0_address() or info.get("ip"), cidr


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node = args.node_name
        info, state_dir, self.node_ip, self.pod_cidr = node_facts(args)
        self.api = api_client_from_args(args)
        self.factory = InformerFactory(self.api)
        self.pods = self.factory.informer(Pod, field_selector=f"spec.nodeName={self.node}")
        self.services = self.factory.informer(Service)
        prefix = args.netns_prefix or args.lab or "knet"
        self.rt = Runtime(self.api, prefix, self.node, info, state_dir, self.node_ip, args.service_cidr,
                          args.cluster_domain, args.lab_root if args.lab else None, self.services,
                          cgroup=args.cgroup or (kernel.node_cgroup(args.lab, self.node) if args.lab else None))
        self.workers: dict[str, PodWorker] = {}
        self.finishing: set[str] = set()  # terminating pods without a worker, being finished
        self.saved: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.kick = threading.Event()
        self.stop = threading.Event()
        self._ready_since: str | None = None
        self.pods.add_handler(on_add=lambda _p: self.kick.set(), on_update=lambda _o, _n: self.kick.set(),
                              on_delete=lambda _p: self.kick.set())

    # --- the Node --------------------------------------------------------------------------------

    def node_object(self) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if self.pod_cidr:
            spec = {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]}
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64"}},
                "spec": spec, "status": self.node_status()}

    def node_status(self) -> dict[str, Any]:
        t = now()
        return {
            "addresses": self.addresses(),
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "knet-node-agent is posting ready status", "lastHeartbeatTime": t,
                            "lastTransitionTime": self._ready_since or t}],
            "nodeInfo": {"kubeletVersion": VERSION, "kubeProxyVersion": VERSION, "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "knet-lab://0.1.0",
                         "osImage": "knet lab node", "kernelVersion": platform.release(),
                         "machineID": "", "systemUUID": "", "bootID": ""},
            "capacity": {"pods": "110", "cpu": str(os.cpu_count() or 1), "memory": "4Gi"},
            "allocatable": {"pods": "110", "cpu": str(os.cpu_count() or 1), "memory": "4Gi"},
        }

    def addresses(self) -> list[dict[str, str]]:
        out = [{"type": "Hostname", "address": self.node}]
        if self.node_ip:
            out.insert(0, {"type": "InternalIP", "address": self.node_ip})
        return out

    def register(self) -> None:
        self._ready_since = now()
        body = self.node_object()
        existing = client.get(self.api, "Node", self.node)
        if existing is None:
            try:
                client.create(self.api, "Node", body)
                log.info("registered node %s (%s, podCIDR %s)", self.node, self.node_ip, self.pod_cidr or "-")
                return
            except client.ApiException as e:
                if e.status != 409:
                    raise
        patch: dict[str, Any] = {"metadata": {"labels": body["metadata"]["labels"]}}
        if self.pod_cidr and not (existing or {}).get("spec", {}).get("podCIDR"):
            patch["spec"] = body["spec"]
        client.patch(self.api, "Node", self.node, patch)
        client.patch_status(self.api, "Node", self.node, body["status"])
        log.info("updated node %s (%s, podCIDR %s)", self.node, self.node_ip, self.pod_cidr or "-")

    def heartbeat(self) -> None:
        while not self.stop.wait(self.args.heartbeat):
            try:
                client.patch_status(self.api, "Node", self.node, self.node_status())
            except Exception as e:
                log.warning("node heartbeat failed: %s", e)
                if isinstance(e, client.ApiException) and e.status == 404:
                    try:
                        self.register()
                    except Exception as e2:
                        log.warning("re-registering node failed: %s", e2)

    # --- pods ------------------------------------------------------------------------------------

    def sync(self) -> None:
        desired = {p.key: p for p in self.pods.list() if p.spec.node_name == self.node}
        with self.lock:
            for key, w in list(self.workers.items()):
                if w.done.is_set():
                    del self.workers[key]
                    continue
                p = desired.get(key)
                if p is not None and p.metadata.uid == w.uid and p.is_terminating:
                    w.terminate(p)
                elif p is None or p.metadata.uid != w.uid:
                    w.stop()
                else:
                    w.update(p)
            for key, p in desired.items():
                if key in self.workers:
                    continue
                if p.is_terminating:
                    # Being deleted and not running here (never started, or the agent restarted
                    # meanwhile): clean up what is left and finish the deletion.
                    if key not in self.finishing:
                        self.finishing.add(key)
                        threading.Thread(target=self.finish_terminating, args=(p, self.saved.pop(key, None)),
                                         daemon=True).start()
                    continue
                saved = self.saved.pop(key, None)
                if saved is None and p.status.phase in ("Succeeded", "Failed"):
                    continue  # finished before we came: nothing to run
                w = PodWorker(self.rt, p, saved)
                self.workers[key] = w
                w.start()
            for key, data in list(self.saved.items()):
                if key not in desired:
                    del self.saved[key]
                    threading.Thread(target=self.cleanup_orphan, args=(data,), daemon=True).start()

    def finish_terminating(self, pod: Pod, saved: dict[str, Any] | None) -> None:
        try:
            if saved is not None:
                self.cleanup_orphan(saved)
            finish_deletion(self.api, pod.namespace or "default", pod.name, pod.metadata.uid or "")
        finally:
            with self.lock:
                self.finishing.discard(pod.key)

    def cleanup_orphan(self, data: dict[str, Any]) -> None:
        """A pod deleted while no agent was running: stop what is left of it and free its address."""
        ns, name = data["namespace"], data["name"]
        for info in (data.get("containers") or {}).values():
            proc = Process.adopt(info.get("pid", 0), info.get("started"))
            if proc is not None:
                proc.stop(1.0)
        err = self.rt.sandbox_del(ns, name, data.get("record"))
        shutil.rmtree(os.path.join(self.rt.etc_netns, self.rt.pod_netns(ns, name)), ignore_errors=True)
        self.rt.forget_pod(ns, name)
        log.info("pod %s/%s: deleted while the agent was away: cleaned up%s", ns, name, f" ({err})" if err else "")

    def run(self) -> int:
        self.saved = self.rt.saved_pods()
        self.register()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        self.factory.start()
        while not self.factory.wait_synced(1.0):
            if self.stop.is_set():
                return 0
        log.info("node %s: %d pod(s) bound here, %d to adopt", self.node, len(self.pods), len(self.saved))
        while not self.stop.is_set():
            self.sync()
            self.kick.wait(1.0)
            self.kick.clear()
        # Like a kubelet restart, stopping the agent leaves the pods running: the next one adopts them.
        self.factory.stop()
        return 0


def host_mount_namespace() -> None:
    """Join the host's mount namespace if we were started in another one.

    `ip netns exec` (how the lab starts us in the node's network namespace) also gives the process
    a private mount namespace that is only a *slave* of the host's: a pod namespace that we (or
    `ip netns add`, our child) bind-mount under /run/netns would then be invisible to everyone
    else, the node's knet-cni-agent included. Only the mount namespace changes: the network
    namespace stays the node's. Must run before any thread exists (setns(CLONE_NEWNS) refuses a
    process whose threads share its filesystem context)."""
    try:
        if os.stat("/proc/self/ns/mnt").st_ino == os.stat("/proc/1/ns/mnt").st_ino:
            return
    except OSError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/proc/1/ns/mnt", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x00020000) != 0:  # CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "setns(mnt) failed")
    finally:
        os.close(fd)
    os.chdir("/")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host_mount_namespace()
    logs.setup(f"node-agent/{args.node_name}", args.log_level)
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    agent = Agent(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (agent.stop.set(), agent.kick.set()))
    if args.metrics:
        reg = metrics.Registry()
        gauge = reg.gauge("knet_agent_pods", "pods this agent runs")

        def health() -> tuple[bool, str]:
            gauge.set(len(agent.workers))
            return agent.pods.synced.is_set(), "ok"
        metrics.serve(reg, args.metrics, health)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
