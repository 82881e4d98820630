"""`kproxy`: kube-proxy's job with kube-proxy's interface — watch Services and EndpointSlices and
keep one data path (iptables, nftables, userspace or ebpf) in line with them.

    kproxy --config /var/lib/kube-proxy/config.conf --hostname-override node1
    kproxy --proxy-mode nftables --kubeconfig FILE --hostname-override node1 --cluster-cidr 10.244.0.0/16

Settings come from kube-proxy's configuration file (`--config`, a KubeProxyConfiguration as
kubeadm ships it; kproxy.config) and from kube-proxy's flags, which override the file. The old
spellings `--mode` and `--node-name` still work. Metrics under kube-proxy's names on
metricsBindAddress (default 127.0.0.1:10249), `/healthz` and `/livez` with kube-proxy's JSON on
healthzBindAddress (default 0.0.0.0:10256), and a health check server per LoadBalancer Service
with externalTrafficPolicy Local on its healthCheckNodePort (kproxy.health). The sync model and
threads: kproxy.proxier. SIGTERM leaves the data path in place, so traffic keeps flowing while
the daemon restarts; the successor's first (full) sync adopts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

from knet import daemon
from knet.kube import client as kube_client
from kproxy import backend as backends
from kproxy import config as kpconfig
from kproxy import conntrack
from kproxy.health import serve_healthz
from kproxy.proxier import Proxier

log = logging.getLogger("knet.kproxy")


def _duration(text: str) -> float:
    """A flag's duration: Go's form ("30s", "1h0m0s") or plain seconds ("30", "0.5")."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return kpconfig.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kproxy", description="knet's kube-proxy")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1); flags override it")
    p.add_argument("--proxy-mode", "--mode", dest="mode", default=None, metavar="MODE",
                   help=f"one of {', '.join(backends.MODES)} (default iptables)")
    kube_client.add_arguments(p)
    p.add_argument("--hostname-override", "--node-name", dest="hostname_override", default=None, metavar="NAME",
                   help="this node's name (Local traffic policies); default: the hostname")
    p.add_argument("--cluster-cidr", default=None, help="pod network; off-cluster traffic to ClusterIPs is masqueraded")
    p.add_argument("--masquerade-all", action="store_const", const=True, default=None)
    p.add_argument("--bind-address", default=None, help="the node's IP family is taken from it (default 0.0.0.0)")
    p.add_argument("--metrics-bind-address", default=None, metavar="HOST:PORT",
                   help=f"metrics (default 127.0.0.1:{kpconfig.METRICS_PORT}; empty: none)")
    p.add_argument("--healthz-bind-address", default=None, metavar="HOST:PORT",
                   help=f"/healthz and /livez (default 0.0.0.0:{kpconfig.HEALTHZ_PORT}; empty: none)")
    p.add_argument("--sync-period", type=_duration, default=None,
                   help="periodic sync and retry after a failure (default 30s)")
    p.add_argument("--min-sync-period", type=_duration, default=None,
                   help="at most one sync per this period after a burst of two (default 1s)")
    p.add_argument("--full-sync-period", type=_duration, default=None,
                   help="kproxy's: between full syncs that rewrite everything (default 1h, kube-proxy's)")
    p.add_argument("--nodeport-addresses", default=None, metavar="CIDRS",
                   help='comma-separated CIDRs (or "primary") where node ports are served')
    p.add_argument("--conntrack-max-per-core", type=int, default=None)
    p.add_argument("--conntrack-min", type=int, default=None)
    p.add_argument("--conntrack-tcp-timeout-established", type=_duration, default=None)
    p.add_argument("--conntrack-tcp-timeout-close-wait", type=_duration, default=None)
    p.add_argument("--conntrack-tcp-be-liberal", action="store_const", const=True, default=None)
    p.add_argument("--conntrack-udp-timeout", type=_duration, default=None)
    p.add_argument("--conntrack-udp-timeout-stream", type=_duration, default=None)
    p.add_argument("--oom-score-adj", type=int, default=None)
    p.add_argument("--udp-idle-timeout", type=_duration, default=None, help="userspace: idle UDP flow lifetime")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop"], default=None,
                   help="event loop (default: uvloop in userspace mode, where the loop carries the traffic)")
    p.add_argument("--iptables-backend", choices=["auto", "nft", "legacy"], default="auto",
                   help="iptables variant (iptables, userspace, ebpf modes); auto: the node's, as kube-proxy's image")
    p.add_argument("--cgroup", default=None, help="ebpf: cgroup v2 directory of this node's pods")
    p.add_argument("--external-iface", action="append", default=[], help="ebpf: node interface(s) facing clients")
    daemon.add_logging_arguments(p)
    return p


def settings_from(args: argparse.Namespace) -> kpconfig.Effective:
    """The file, overridden by the flags, completed with kube-proxy's defaults (ConfigError: one line)."""
    file = kpconfig.load(args.config) if args.config else kpconfig.Settings()
    flags: dict[str, Any] = {
        "mode": kpconfig.check_mode(args.mode) if args.mode else None,
        "hostname_override": args.hostname_override,
        "cluster_cidr": kpconfig.check_cidr(args.cluster_cidr, "--cluster-cidr") if args.cluster_cidr else None,
        "masquerade_all": args.masquerade_all,
        "bind_address": args.bind_address,
        "metrics_bind_address": _address(args.metrics_bind_address, "--metrics-bind-address", kpconfig.METRICS_PORT),
        "healthz_bind_address": _address(args.healthz_bind_address, "--healthz-bind-address", kpconfig.HEALTHZ_PORT),
        "sync_period": args.sync_period,
        "min_sync_period": args.min_sync_period,
        "node_port_addresses": kpconfig.check_node_port_addresses(args.nodeport_addresses.split(","))
        if args.nodeport_addresses else None,
        "kubeconfig": args.kubeconfig,
        "oom_score_adj": args.oom_score_adj,
        "udp_idle_timeout": args.udp_idle_timeout,
        "conntrack_max_per_core": args.conntrack_max_per_core,
        "conntrack_min": args.conntrack_min,
        "conntrack_tcp_established_timeout": args.conntrack_tcp_timeout_established,
        "conntrack_tcp_close_wait_timeout": args.conntrack_tcp_timeout_close_wait,
        "conntrack_tcp_be_liberal": args.conntrack_tcp_be_liberal,
        "conntrack_udp_timeout": args.conntrack_udp_timeout,
        "conntrack_udp_stream_timeout": args.conntrack_udp_timeout_stream,
    }
    if args.oom_score_adj is not None and not -1000 <= args.oom_score_adj <= 1000:
        raise kpconfig.ConfigError(f"--oom-score-adj: {args.oom_score_adj} is not from -1000 to 1000")
    merged = kpconfig.merge(file, flags)
    return kpconfig.with_defaults(merged, socket.gethostname(), args.full_sync_period)


def _address(value: str | None, what: str, port: int) -> str | None:
    if value is None:
        return None
    return kpconfig.check_address(value, what, port) if value else ""  # "": switched off


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, kpconfig.Effective]:
    p = parser()
    args = p.parse_args(argv)
    try:
        return args, settings_from(args)
    except kpconfig.ConfigError as e:
        print(f"kproxy: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _prepare_node(s: kpconfig.Effective) -> None:
    """What kube-proxy does to the node at start: its OOM score, the conntrack sysctls."""
    if s.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(s.oom_score_adj))
        except OSError as e:
            log.warning("oom_score_adj=%d not set: %s", s.oom_score_adj, e.strerror or e)
    for problem in conntrack.apply_sysctls(conntrack.sysctl_plan(s.conntrack, os.cpu_count() or 1)):
        log.info("conntrack: %s", problem)


def main(argv: list[str] | None = None) -> int:
    args, s = parse_args(argv)
    event_loop = args.event_loop or backends.EVENT_LOOPS.get(s.mode, "asyncio")

    async def amain() -> None:
        opts = backends.Options(udp_idle_timeout=s.udp_idle_timeout, cgroup=args.cgroup,
                                external_ifaces=args.external_iface,
                                iptables=args.iptables_backend if args.iptables_backend == "auto"
                                else f"iptables-{args.iptables_backend}")
        proxier = Proxier(s, opts)
        daemon.serve(proxier.stop, proxier.metrics.registry, proxier.health_text, s.metrics_bind_address)
        if s.healthz_bind_address:
            serve_healthz(proxier.health, s.healthz_bind_address,
                          lambda path, code: (proxier.metrics.healthz if path == "/healthz"
                                              else proxier.metrics.livez).inc(1, str(code)))
        log.info("starting mode=%s node=%s metrics=%s healthz=%s", s.mode, s.node_name,
                 s.metrics_bind_address or "-", s.healthz_bind_address or "-")
        if s.ignored:
            log.info("config fields kproxy does not use: %s", ", ".join(s.ignored))
        _prepare_node(s)
        api = kube_client.new_api_client(s.kubeconfig, context=args.context)
        try:
            await proxier.run(api)
        finally:
            await proxier.close()
        log.info("stopped; data path left in place")

    return daemon.run("kproxy", args.log_level, amain, event_loop=event_loop, logging_format=args.logging_format)


if __name__ == "__main__":
    raise SystemExit(main())
