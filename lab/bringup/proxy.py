"""kproxy in the lab: one daemon per node, in the node's network namespace, in the chosen mode.

Started with nsenter (network namespace only), not `ip netns exec`: the eBPF mode attaches to
the node's pod cgroup under /sys/fs/cgroup, which `ip netns exec`'s private /sys would hide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from knet import netns
from lab.bringup import launch
from lab.errors import LabError
from lab.net import kernel, topology

MODES = ("iptables", "userspace", "ebpf", "nftables")
METRICS_PORT = 10249
HEALTHZ_PORT = 10256
# kube-proxy's configuration file as kubeadm writes it into the kube-proxy ConfigMap (the lab's
# values; every other field at kubeadm's zero value, which means kube-proxy's default). One
# difference from kube-proxy's defaults: minSyncPeriod 100ms instead of 1s, so that a change is
# programmed about as soon as the API server has it (the lab's tests and seed scenarios send
# traffic the moment an EndpointSlice is ready; a cluster would trade that for fewer syncs).
CONFIG = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: {cluster_cidr}
conntrack:
  maxPerCore: null
  min: null
  tcpEstablishedTimeout: null
  tcpCloseWaitTimeout: null
healthzBindAddress: {node_ip}:{healthz_port}
hostnameOverride: {node}
iptables:
  masqueradeAll: false
  minSyncPeriod: 100ms
  syncPeriod: 0s
metricsBindAddress: {node_ip}:{metrics_port}
mode: {mode}
nftables:
  masqueradeAll: false
  minSyncPeriod: 100ms
  syncPeriod: 0s
nodePortAddresses: null
"""


class ProxyError(LabError):
    pass


def kproxy_argv(p: topology.Plan, n: topology.Node, mode: str, kubeconfig: str,
                sync_period: float | None = None) -> list[str]:
    """kproxy reads a KubeProxyConfiguration, as kube-proxy does on a kubeadm node (written to the
    node's directory). `sync_period`: seconds between syncs and full syncs (None: kproxy's
    defaults); tests of drift repair shorten it so they need not wait out the hour."""
    config = os.path.join(n.dir, "kube-proxy.conf")
    with open(config, "w") as f:
        f.write(CONFIG.format(kubeconfig=kubeconfig, cluster_cidr=topology.POD_CIDR, node_ip=n.ip, node=n.short,
                              mode=mode, metrics_port=METRICS_PORT, healthz_port=HEALTHZ_PORT))
    argv = [launch.binary("kproxy"), "--config", config]
    if sync_period is not None:
        argv += ["--sync-period", str(sync_period), "--full-sync-period", str(sync_period)]
    if mode == "ebpf":
        cg = kernel.node_cgroup(p.name, n.short)
        if not cg:
            raise ProxyError("ebpf mode needs cgroup v2 (/sys/fs/cgroup/unified or /sys/fs/cgroup)")
        argv += ["--cgroup", cg, "--external-iface", "eth0"]
    return argv


def start(p: topology.Plan, mode: str, kubeconfig: str, progress=print, wait: float = 30.0,
          sync_period: float | None = None, nodes: Iterable[str] | None = None) -> dict[str, dict]:
    """Start kproxy on every node (or on `nodes`, short names) and wait until each has done its
    first sync."""
    if mode not in MODES:
        raise ProxyError(f"proxy mode must be one of {', '.join(MODES)}")
    kernel.ensure_node_cgroups(p)
    wanted = set(nodes) if nodes is not None else None
    # The log is appended to: a restarted kproxy's first sync is looked for after what its
    # predecessor wrote (launch.Daemon.output), not found in the predecessor's lines.
    daemons = {n.short: launch.spawn(f"kproxy ({mode}) on {n.short}", n.netns,
                                     kproxy_argv(p, n, mode, kubeconfig, sync_period),
                                     os.path.join(n.dir, "kproxy.log"), ProxyError, keep_mounts=True)
               for n in p.nodes if wanted is None or n.short in wanted}
    pending = dict(daemons)

    def synced() -> bool:
        for short, d in list(pending.items()):
            if "msg=\"sync full=True" in d.output():
                del pending[short]
        return not pending

    if not launch.wait_until(synced, daemons.values(), wait, interval=0.1):
        raise ProxyError(f"kproxy ({mode}) did not sync within {wait:.0f}s on {', '.join(sorted(pending))}")
    progress(f"kproxy ({mode}): " + ", ".join(f"{k} pid {d.pid}" for k, d in sorted(daemons.items())))
    return {k: {"pid": d.pid, "log": d.log, "mode": mode} for k, d in daemons.items()}


def stop(p: topology.Plan, nodes: Iterable[str] | None = None, wait: float = 0.0) -> list[int]:
    """Stop every node's kproxy, or those of `nodes` (short names), with SIGTERM (the data path
    stays, as after a SIGTERM on a real node). `wait`: seconds to wait for them to exit (a
    restart must: the successor binds the same metrics address). Returns the pids signalled."""
    wanted = set(nodes) if nodes is not None else None
    pids = []
    for n in p.nodes:
        if wanted is not None and n.short not in wanted:
            continue
        for pid in netns.pids(n.netns):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"/kproxy") for part in cmd[:2]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                    pids.append(pid)
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") and not _zombie(pid)
                                                       for pid in pids):
        time.sleep(0.05)
    left = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
    if wait and left:
        raise ProxyError(f"kproxy pid(s) {', '.join(map(str, left))} still running {wait:.0f}s after SIGTERM")
    return pids


def _zombie(pid: int) -> bool:
    """Exited but not yet reaped (by the process that started it, possibly not this one)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
