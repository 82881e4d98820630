"""Upstream kube-proxy in the lab, as a peer of kproxy: `knet lab up --proxy-mode
kube-proxy-iptables|kube-proxy-nftables` runs `.anchors/bin/kube-proxy` (scripts/install-anchors)
on every node, in the node's network namespace, as lab.bringup.proxy runs kproxy.

Each node's kube-proxy gets a KubeProxyConfiguration (`<node dir>/kube-proxy.yaml`: the mode, the
lab's pod range, metrics and healthz on the node's address, hostnameOverride = the node's name)
and runs as the lab API server's `kube-proxy` user. Its client-go lists through streaming watches
(WatchListClient, on by default), which knet-apiserver serves as kube-apiserver does.

What kube-proxy writes under /proc/sys and /sys (v1.37, cmd/kube-proxy and pkg/proxy): the
conntrack settings (`net/netfilter/nf_conntrack_*` timeouts and tcp_be_liberal: per network
namespace; `nf_conntrack_max` and /sys/module/nf_conntrack/parameters/hashsize when
conntrack.maxPerCore > 0: one value for the whole machine) and, in iptables mode with node ports
on localhost, `net/ipv4/conf/all/route_localnet` (per network namespace; not asked for here:
node ports are on the node's address). A process sees and writes the
`net/` sysctls of its own network namespace, so in a node's namespace the per-namespace ones are
the node's; the machine-wide ones are never asked for (maxPerCore 0, min 0), and `check_writes`
refuses a configuration that would ask, as `start` refuses to run kube-proxy in the root
network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from collections.abc import Iterable
from typing import Any

from knet import netns
from lab.bringup import launch
from lab.errors import LabError
from lab.net import topology

MODES = ("kube-proxy-iptables", "kube-proxy-nftables")
METRICS_PORT = 10249  # kube-proxy's default, as kproxy's
HEALTHZ_PORT = 10256
USER = "kube-proxy"  # the lab API server's user (lab.apiserver.auth.DEFAULT_USERS)
BINARY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      ".anchors", "bin", "kube-proxy")
# Sysctls kube-proxy may write that hold one value for the whole machine, by the configuration
# fields that make it write them.
MACHINE_WIDE = {"conntrack.maxPerCore": ("net/netfilter/nf_conntrack_max",
                                         "/sys/module/nf_conntrack/parameters/hashsize")}


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an http_proxy of the environment


class KubeProxyError(LabError):
    pass


def upstream_mode(mode: str) -> str:
    """kube-proxy's own mode name of a lab proxy mode ("kube-proxy-nftables" -> "nftables")."""
    if mode not in MODES:
        raise KubeProxyError(f"upstream proxy mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode.removeprefix("kube-proxy-")


def configuration(n: topology.Node, mode: str, kubeconfig: str) -> dict[str, Any]:
    """The KubeProxyConfiguration of node `n` (pure)."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": upstream_mode(mode),
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": n.short,
        "clusterCIDR": topology.POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "bindAddress": n.ip,
        "metricsBindAddress": f"{n.ip}:{METRICS_PORT}",
        "healthzBindAddress": f"{n.ip}:{HEALTHZ_PORT}",
        # Node ports on the node's own address (its Node's InternalIP), as kproxy serves them.
        "nodePortAddresses": ["primary"],
        # maxPerCore 0: nf_conntrack_max and the hashsize (machine-wide) are left alone. The
        # timeouts are set in the node's namespace only (nf_conntrack_tcp_timeout_* are per netns).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "24h0m0s",
                      "tcpCloseWaitTimeout": "1h0m0s"},
        "oomScoreAdj": 0,  # leave the machine's OOM choices as they are (kube-proxy's default: -999)
        "enableProfiling": False,
    }


def check_writes(config: dict[str, Any]) -> None:
    """Refuse a configuration that would make kube-proxy write a machine-wide sysctl."""
    per_core = (config.get("conntrack") or {}).get("maxPerCore")
    if per_core is None or per_core > 0:  # None: kube-proxy's default, 32768 per core
        raise KubeProxyError("kube-proxy with conntrack.maxPerCore > 0 (or unset) would write "
                             + " and ".join(MACHINE_WIDE["conntrack.maxPerCore"])
                             + ", which are the whole machine's: refusing to start it in the lab")


def argv(config_path: str) -> list[str]:
    return [BINARY, "--config", config_path, "--v=1"]


def start(p: topology.Plan, mode: str, kubeconfig: str, progress=print, wait: float = 60.0,
          nodes: Iterable[str] | None = None) -> dict[str, dict]:
    """Start kube-proxy on every node (or on `nodes`, short names) and wait until each has
    programmed the node once (its sync metric says so)."""
    upstream_mode(mode)
    if not os.access(BINARY, os.X_OK):
        raise KubeProxyError(f"{BINARY} is not built (scripts/install-anchors kube-proxy)")
    wanted = set(nodes) if nodes is not None else None
    own_netns = netns.inode()  # the caller runs in the root namespace (the lab is built from there)
    daemons = {}
    for n in p.nodes:
        if wanted is not None and n.short not in wanted:
            continue
        if netns.inode(n.netns) == own_netns:
            raise KubeProxyError(f"{n.netns} is the root network namespace: kube-proxy would set its sysctls")
        config = configuration(n, mode, kubeconfig)
        check_writes(config)
        path = os.path.join(n.dir, "kube-proxy.yaml")
        with open(path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML
            f.write("\n")
        daemons[n.short] = launch.spawn(f"kube-proxy ({upstream_mode(mode)}) on {n.short}", n.netns, argv(path),
                                        os.path.join(n.dir, "kube-proxy.log"), KubeProxyError, keep_mounts=True)
    pending = {n.short: n for n in p.nodes if n.short in daemons}

    def synced() -> bool:
        for short, n in list(pending.items()):
            if last_sync(n.netns, n.ip) > 0:
                del pending[short]
        return not pending

    if not launch.wait_until(synced, daemons.values(), wait, interval=0.3):
        raise KubeProxyError(f"kube-proxy ({mode}) did not sync within {wait:.0f}s on {', '.join(sorted(pending))} "
                             f"(see kube-proxy.log in the node's state dir)")
    pids = ", ".join(f"{k} pid {d.pid}" for k, d in sorted(daemons.items()))
    progress(f"kube-proxy ({upstream_mode(mode)}): {pids}")
    return {k: {"pid": d.pid, "log": d.log, "mode": mode} for k, d in daemons.items()}


def last_sync(netns_name: str, ip: str) -> float:
    """kube-proxy's kubeproxy_sync_proxy_rules_last_timestamp_seconds on a node (0: none yet or
    not answering), read from inside the node's namespace."""
    with netns.enter(netns_name), contextlib.suppress(OSError), \
            _DIRECT.open(f"http://{ip}:{METRICS_PORT}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("kubeproxy_sync_proxy_rules_last_timestamp_seconds"):
                return float(line.split()[-1])
    return 0.0

