"""`kproxy`: watch Services and EndpointSlices and keep one data path in line with them.

    kproxy --mode iptables|nftables|userspace|ebpf --kubeconfig FILE --node-name node1 --cluster-cidr 10.244.0.0/16

Sync model (as kube-proxy's): nothing is programmed before both informers have listed; after
that, changes are batched (`--min-sync-period`) and applied incrementally — only the services
whose objects changed are recomputed, and the backend writes only what differs; every
`--sync-period` a full sync rewrites everything, which repairs drift (rules or map entries
removed by hand). SIGTERM leaves the data path in place, so traffic keeps flowing while the
daemon restarts; the restarted daemon's first (full) sync rewrites identical state. The daemon
knows the mode only to construct the backend (kproxy.backend); every backend is driven the same
way, from a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from knet import aio, daemon, metrics
from knet.kube import client as kube_client
from knet.kube import threadsafe
from knet.kube.informer import Informer
from knet.kube.models import EndpointSlice, Service
from kproxy import backend as backends
from kproxy.build import service_ports
from kproxy.model import Config, ServicePort

log = logging.getLogger("knet.kproxy")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class Metrics:
    def __init__(self) -> None:
        self.registry = metrics.Registry()
        self.sync_seconds = self.registry.histogram(
            "kproxy_sync_proxy_rules_duration_seconds", "Time to apply one sync to the data path", ["mode", "kind"])
        self.entries = self.registry.gauge("kproxy_programmed_entries", "Rules or map entries programmed", ["mode"])
        self.services = self.registry.gauge("kproxy_service_ports", "Service ports being proxied", ["mode"])
        self.last_sync = self.registry.gauge("kproxy_sync_proxy_rules_last_timestamp_seconds",
                                             "Unix time of the last successful sync", ["mode"])
        self.errors = self.registry.counter("kproxy_sync_errors_total", "Failed syncs", ["mode"])


def make_backend(args: argparse.Namespace, cfg: Config, loop: asyncio.AbstractEventLoop) -> backends.Backend:
    return backends.create(args.mode, cfg, backends.Options(
        udp_idle_timeout=args.udp_idle_timeout, loop=loop, cgroup=args.cgroup,
        external_ifaces=args.external_iface))


class Proxier:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cfg = Config(node_name=args.node_name, cluster_cidr=args.cluster_cidr,
                          masquerade_all=args.masquerade_all)
        self.backend: backends.Backend | None = None  # made in run(): off the event loop (see there)
        self.metrics = Metrics()
        self.ports: dict[str, list[ServicePort]] = {}  # service "ns/name" -> its ports
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.last_ok = 0.0
        self.services: Informer[Service] | None = None
        self.slices: Informer[EndpointSlice] | None = None

    # -- informer callbacks (run on the loop via threadsafe)
    def _touch_service(self, svc: Service, *_: object) -> None:
        self.dirty.add(f"{svc.metadata.namespace}/{svc.metadata.name}")
        self.wake.set()

    def _touch_slice(self, sl: EndpointSlice, *_: object) -> None:
        name = sl.metadata.labels.get(SERVICE_NAME_LABEL) if sl.metadata.labels else None
        if name:
            self.dirty.add(f"{sl.metadata.namespace}/{name}")
            self.wake.set()

    def _recompute(self, keys: set[str]) -> None:
        assert self.services is not None and self.slices is not None
        for key in keys:
            ns, _, name = key.partition("/")
            svc = self.services.get(name, ns)
            if svc is None:
                self.ports.pop(key, None)
                continue
            slices = self.slices.list(namespace=ns, selector={SERVICE_NAME_LABEL: name})
            self.ports[key] = service_ports(svc, slices)

    async def _apply(self, full: bool) -> None:
        ports = [p for plist in self.ports.values() for p in plist]
        start = time.monotonic()
        assert self.backend is not None
        mode = self.backend.name
        try:
            result = await asyncio.to_thread(self.backend.sync, ports, full)
        except Exception:
            self.metrics.errors.inc(1, mode)
            log.exception("sync failed (full=%s); retrying", full)
            await asyncio.sleep(1)
            raise
        took = time.monotonic() - start
        self.last_ok = time.time()
        self.metrics.sync_seconds.observe(took, mode, "full" if full else "partial")
        self.metrics.entries.set(self.backend.entries(), mode)
        self.metrics.services.set(len(ports), mode)
        self.metrics.last_sync.set(self.last_ok, mode)
        log.info("sync full=%s service_ports=%d written=%d rules=%d seconds=%.3f", full, len(ports),
                 result.services_written, result.rules, took)

    def health(self) -> tuple[bool, str]:
        if not self.last_ok:
            return False, "no sync yet"
        age = time.time() - self.last_ok
        limit = 2 * self.args.sync_period + 30
        return (age < limit, f"last sync {age:.1f}s ago")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Made on a worker thread, as every backend call is: the eBPF backend drives pyroute2's
        # synchronous API, which runs an event loop of its own and cannot from a thread whose
        # loop is already running. (The userspace backend's listeners live on this loop.)
        self.backend = await asyncio.to_thread(make_backend, self.args, self.cfg, loop)
        api = kube_client.api_client_from_args(self.args)
        svc_cb, sl_cb = threadsafe(loop, self._touch_service), threadsafe(loop, self._touch_slice)
        self.services = Informer(api, Service, on_add=svc_cb, on_update=svc_cb, on_delete=svc_cb).start()
        self.slices = Informer(api, EndpointSlice, on_add=sl_cb, on_update=sl_cb, on_delete=sl_cb).start()
        if not await daemon.wait_synced((self.services, self.slices), self.stopping):
            return
        self.dirty = set(self.services.keys())
        next_full = 0.0
        while not self.stopping.is_set():
            full = time.monotonic() >= next_full
            keys, self.dirty = self.dirty, set()
            self.wake.clear()
            self._recompute(keys if not full else keys | set(self.ports) | set(self.services.keys()))
            try:
                await self._apply(full)
            except Exception:
                self.dirty |= keys
                continue
            if full:
                next_full = time.monotonic() + self.args.sync_period
            # Batch: let changes arriving in a burst accumulate, then sync once.
            await asyncio.sleep(self.args.min_sync_period)
            timeout = max(0.0, next_full - time.monotonic())
            await aio.wait_any(self.wake, self.stopping, timeout=timeout)

    def stop(self) -> None:
        self.stopping.set()
        for inf in (self.services, self.slices):
            if inf is not None:
                inf.stop(timeout=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kproxy", description="knet's kube-proxy")
    p.add_argument("--mode", choices=backends.MODES, default="iptables")
    kube_client.add_arguments(p)
    p.add_argument("--node-name", required=True, help="this node's name (for Local traffic policies)")
    p.add_argument("--cluster-cidr", default=None, help="pod network; off-cluster traffic to ClusterIPs is masqueraded")
    p.add_argument("--masquerade-all", action="store_true")
    p.add_argument("--sync-period", type=float, default=30.0, help="seconds between full syncs")
    p.add_argument("--min-sync-period", type=float, default=0.1, help="batching window for changes")
    p.add_argument("--udp-idle-timeout", type=float, default=60.0, help="userspace: idle UDP flow lifetime")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop"], default=None,
                   help="event loop (default: uvloop in userspace mode, where the loop carries the traffic)")
    p.add_argument("--cgroup", default=None, help="ebpf: cgroup v2 directory of this node's pods")
    p.add_argument("--external-iface", action="append", default=[], help="ebpf: node interface(s) facing clients")
    p.add_argument("--metrics-bind-address", default="0.0.0.0:10249")
    daemon.add_logging_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    event_loop = args.event_loop or backends.EVENT_LOOPS.get(args.mode, "asyncio")

    async def amain() -> None:
        proxier = Proxier(args)
        daemon.serve(proxier.stop, proxier.metrics.registry, proxier.health, args.metrics_bind_address)
        log.info("starting mode=%s node=%s", args.mode, args.node_name)
        await proxier.run()
        if proxier.backend is not None:
            await asyncio.to_thread(proxier.backend.close)
        log.info("stopped; data path left in place")

    return daemon.run("kproxy", args.log_level, amain, event_loop=event_loop, logging_format=args.logging_format)


if __name__ == "__main__":
    raise SystemExit(main())
