"""`knet-node-agent`: the kubelet's network part, one per node, run inside the node's namespace.

    knet-node-agent --kubeconfig node-agent.kubeconfig --node-name node1 --lab knet
    knet-node-agent --kubeconfig ... --node-name n1 --conflist /etc/cni/net.d/10-knet.conflist \\
                    --state-dir /var/lib/knet-agent --netns-prefix knet      # outside a lab

It registers its Node (InternalIP = eth0's address, Ready with a heartbeat; as a kubelet, it leaves
spec.podCIDR to the node IPAM controller: lab.controllers.nodeipam), watches the pods bound to it
(`fieldSelector=spec.nodeName=<node>`) and runs one `PodWorker` per pod. It serves the kubelet's
API on <node IP>:10250 (exec, attach, port-forward, container logs, stats, cAdvisor's network
counters; HTTPS, only the API server's kubelet-client certificate let in, checked against
--client-ca-file or else the kubeconfig's CA), samples its pods' cgroups, and records events
(Pulled, Created, Started, Killing, Unhealthy, BackOff) as the kubelet does.

Deletion: the lab API server deletes a pod at once (no grace period, no finalizer); the agent
learns it from the DELETE event (or from the pod no longer being listed) and then stops the
processes, runs CNI DEL and removes the namespace. After an agent restart, pods still bound here
are adopted from their state files (no second ADD, processes left running, readiness kept);
state of pods deleted meanwhile is cleaned up.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from knet import logs, metrics
from knet.kube import InformerFactory, add_arguments, api_client_from_args, client
from knet.kube.models import Pod, Service
from knet.kube.recorder import EventRecorder
from lab.agent import stats
from lab.agent.containers import Process
from lab.agent.nodeapi import tls
from lab.agent.nodeapi.server import KUBELET_PORT, NodeApi, tls_context
from lab.agent.podview import WorkerView
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
    p.add_argument("--service-cidr", default=topology.SERVICE_CIDR)
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between Node status updates")
    p.add_argument("--metrics", default="", metavar="ADDR:PORT")
    p.add_argument("--port", type=int, default=KUBELET_PORT,
                   help="the node API (exec, logs, port-forward, stats) on the node IP; 0: none")
    p.add_argument("--client-ca-file", help="CA of the API server's client certificate (default: the kubeconfig's)")
    p.add_argument("--service-account-tokens", metavar="FILE",
                   help="tokens file (token,user,... lines) whose system:serviceaccount:<ns>:<name> tokens go "
                        "into projected serviceAccountToken volumes (the lab has no TokenRequest API)")
    p.add_argument("--stats-period", type=float, default=5.0, help="seconds between cgroup samples")
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


def node_facts(args: argparse.Namespace) -> tuple[dict[str, Any], str, str | None]:
    """(node_info for the runtime, state dir, node IP)."""
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
    return info, state_dir, args.node_ip or eth0_address() or info.get("ip")


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node = args.node_name
        info, state_dir, self.node_ip = node_facts(args)
        self.api = api_client_from_args(args)
        self.factory = InformerFactory(self.api)
        self.pods = self.factory.informer(Pod, field_selector=f"spec.nodeName={self.node}")
        self.services = self.factory.informer(Service)
        prefix = args.netns_prefix or args.lab or "knet"
        self.recorder = EventRecorder(self.api, "kubelet", host=self.node)
        self.rt = Runtime(self.api, prefix, self.node, info, state_dir, self.node_ip, args.service_cidr,
                          args.cluster_domain, args.lab_root if args.lab else None, self.services,
                          cgroup=args.cgroup or (kernel.node_cgroup(args.lab, self.node) if args.lab else None),
                          recorder=self.recorder, sa_tokens=args.service_account_tokens)
        self.sampler = stats.Sampler(self.node, self.rt.cgroup, self.stats_targets, args.stats_period)
        self.node_api: NodeApi | None = None
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
        # The annotation kubelet registers every Node with (controller attach/detach, its default).
        # Upstream flanneld (v0.28) panics on a Node without any annotation (a nil map).
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node,
                             "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                             "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64"}},
                "spec": {}, "status": self.node_status()}

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
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.args.port}},
            "capacity": {"pods": "110", "cpu": str(os.cpu_count() or 1), "memory": "4Gi"},
            "allocatable": {"pods": "110", "cpu": str(os.cpu_count() or 1), "memory": "4Gi"},
        }

    # --- what the node API and the sampler see ----------------------------------------------------

    def find(self, namespace: str, name: str) -> WorkerView | None:
        with self.lock:
            w = self.workers.get(f"{namespace}/{name}")
        return WorkerView(w) if w is not None and not w.done.is_set() else None

    def stats_targets(self) -> list[stats.PodTarget]:
        with self.lock:
            workers = list(self.workers.values())
        return [stats.PodTarget(w.ns, w.name, w.uid, w.start_time,
                                {c.name: cg for c in w.pod.spec.containers
                                 if (cg := self.rt.container_cgroup(w.uid, c.name)) is not None},
                                ((w.record or {}).get("pids") or {}).get("pause"))
                for w in workers if not w.done.is_set()]

    def cadvisor(self) -> metrics.Registry:
        """kubelet's /metrics/cadvisor: only cAdvisor's families."""
        reg = metrics.Registry(process_metrics=False)
        reg.register(stats.CadvisorCollector(self.stats_targets, self.sampler.last))
        return reg

    def serve_node_api(self, registry: metrics.Registry) -> None:
        """The kubelet's :10250 on the node IP (not started without a client CA to check)."""
        if not self.args.port or not self.node_ip:
            return
        ca = self.args.client_ca_file or getattr(self.api.configuration, "ssl_ca_cert", None)
        if not ca or not os.path.exists(ca):
            log.error("node API not served: no client CA (--client-ca-file, or a kubeconfig with a CA)")
            return
        cert, key = tls.ensure_self_signed(os.path.join(self.rt.state_dir, "pki"), self.node, [self.node_ip])
        try:
            sock = socket.create_server((self.node_ip, self.args.port), reuse_port=False)
        except OSError as e:
            log.error("node API not served: cannot listen on %s:%d: %s", self.node_ip, self.args.port, e)
            return
        cadvisor = self.cadvisor()
        self.node_api = NodeApi(self, self.sampler.summary, registry.render, cadvisor.render)
        self.node_api.start(sock, tls_context(cert, key, ca))
        log.info("node API on https://%s:%d (client CA %s)", self.node_ip, self.args.port, ca)

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
                log.info("registered node %s (%s)", self.node, self.node_ip)
                return
            except client.ApiException as e:
                if e.status != 409:
                    raise
        client.patch(self.api, "Node", self.node, {"metadata": {"labels": body["metadata"]["labels"]}})
        client.patch_status(self.api, "Node", self.node, body["status"])
        log.info("updated node %s (%s)", self.node, self.node_ip)

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
        self.rt.forget_pod(ns, name, data.get("uid", ""))
        log.info("pod %s/%s: deleted while the agent was away: cleaned up%s", ns, name, f" ({err})" if err else "")

    def run(self, registry: metrics.Registry | None = None) -> int:
        self.saved = self.rt.saved_pods()
        self.register()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.sampler.run, args=(self.stop,), name="stats", daemon=True).start()
        self.serve_node_api(registry or metrics.Registry())
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
        if self.node_api is not None:
            self.node_api.stop()
        self.recorder.stop(2.0)
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
    reg = metrics.Registry()
    gauge = reg.gauge("knet_agent_pods", "pods this agent runs")
    reg.register(stats.CadvisorCollector(agent.stats_targets, agent.sampler.last))

    def health() -> tuple[bool, str]:
        gauge.set(len(agent.workers))
        return agent.pods.synced.is_set(), "ok"
    if args.metrics:
        metrics.serve(reg, args.metrics, health)
    return agent.run(reg)


if __name__ == "__main__":
    sys.exit(main())
