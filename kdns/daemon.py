"""`kdns`: cluster DNS for knet (and for a real cluster), per the Kubernetes DNS specification.

    kdns --kubeconfig FILE --listen 10.96.0.10:53 [--listen ...] [--cluster-domain cluster.local]
         [--upstream IP[:port] ...] [--metrics-bind-address 0.0.0.0:9153]

Services, EndpointSlices (and Pods with `--pods verified`) come through `knet.kube` informers.
Their callbacks hop onto the event loop, mark the service dirty, and one flush per loop turn
recomputes the dirty services (each from its Service and its slices, looked up by the slice
informer's SERVICE index: no scans) into the record store and drops the cached answers of every name
that changed: a change is answered within one loop turn of the watch event, and nothing stale
survives a delete. The listeners open only once the informers have listed (or after
`--sync-timeout`), so a starting kdns does not hand out NXDOMAINs that clients would cache.

Upstreams default to the nameservers of /etc/resolv.conf as seen where kdns runs (`ip netns exec`
substitutes /etc/netns/<ns>/resolv.conf), less kdns's own addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import Callable

from kubernetes.client import ApiClient

from kdns.forward import Forwarder, Upstream
from kdns.metrics import Stats
from kdns.records import Config, RecordStore
from kdns.server import Server
from knet import daemon
from knet.kube import client as kube_client
from knet.kube import threadsafe
from knet.kube.indexes import SERVICE, by_service
from knet.kube.informer import Informer
from knet.kube.models import EndpointSlice, Pod, Service

log = logging.getLogger("knet.kdns")


def parse_listen(text: str) -> tuple[str, int]:
    up = Upstream.parse(text)
    return up.host, up.port


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.append(Upstream(parts[1].split("%")[0]))
    except OSError:
        pass
    return out


class Kdns:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.listen = [parse_listen(a) for a in (args.listen or ["0.0.0.0:53"])]
        own = {h for h, _ in self.listen if h not in ("0.0.0.0", "::")}
        self.cfg = Config(zone=args.cluster_domain, ttl=args.ttl, negative_ttl=args.negative_ttl, pods=args.pods,
                          ns_addresses=tuple(sorted(own)))
        self.store = RecordStore(self.cfg)
        ups = [Upstream.parse(u) for u in args.upstream] if args.upstream else resolv_conf_upstreams()
        listen_set = set(self.listen)
        ups = [u for u in ups if (u.host, u.port) not in listen_set and not (u.port == 53 and u.host in own)]
        self.forwarder = Forwarder(ups, timeout=args.forward_timeout, max_ttl=args.max_cache_ttl)
        self.stats = Stats()
        self.server = Server(self.store, self.forwarder, self.stats, cache_size=args.cache_size,
                             udp_mode=args.udp_mode)
        self.services: Informer[Service] | None = None
        self.slices: Informer[EndpointSlice] | None = None  # indexed by their Service (SERVICE)
        self.dirty: set[str] = set()
        self.flush_scheduled = False
        self.listening = False
        self.stopping: asyncio.Event | None = None
        self.informers: list[Informer] = []

    # --- informer callbacks, on the loop ------------------------------------------------------

    def _service(self, svc: Service, new: Service | None = None, deleted: bool = False) -> None:
        self._mark(svc.key)

    def _slice(self, sl: EndpointSlice, new: EndpointSlice | None = None, deleted: bool = False) -> None:
        for key in {*by_service(sl), *(by_service(new) if new is not None else ())}:  # its Service, before and after
            self._mark(key)

    def _pod(self, pod: Pod, new: Pod | None = None, deleted: bool = False) -> None:
        obj = new if new is not None else pod
        with self.server.lock:
            self.server.invalidate(self.store.update_pod(obj.key, None if deleted else obj))
        self.stats.store_updates.inc(1, "pod")

    def _mark(self, key: str) -> None:
        self.dirty.add(key)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Recompute the dirty services (a burst of events costs one recompute per service)."""
        self.flush_scheduled = False
        dirty, self.dirty = self.dirty, set()
        assert self.services is not None and self.slices is not None
        for key in dirty:
            svc, slices = self.services.get_by_key(key), self.slices.by_index(SERVICE, key)
            with self.server.lock:  # update and invalidation as one step for the UDP threads
                self.server.invalidate(self.store.update_service(key, svc, slices))
            self.stats.store_updates.inc(1, "service")

    def make_informers(self, api: ApiClient | None, loop: asyncio.AbstractEventLoop) -> None:
        """The informers with their callbacks on `loop` (not started; api None: fed by a test)."""
        def cbs(fn: Callable[..., None]) -> dict[str, Callable[..., None]]:
            return dict(on_add=threadsafe(loop, fn),
                        on_update=threadsafe(loop, lambda old, new: fn(old, new)),
                        on_delete=threadsafe(loop, lambda obj: fn(obj, None, True)))

        self.services = Informer(api, Service, **cbs(self._service))
        self.slices = Informer(api, EndpointSlice, indexers={SERVICE: by_service}, **cbs(self._slice))
        self.informers = [self.services, self.slices]
        if self.cfg.pods == "verified":
            self.informers.append(Informer(api, Pod, **cbs(self._pod)))

    def health(self) -> tuple[bool, str]:
        if not self.listening:
            return False, "not listening yet (informers syncing)"
        if not all(i.synced.is_set() for i in self.informers):
            return True, "serving; informers not synced"
        return True, f"ok: {len(self.store.names)} names, {len(self.services or ())} services"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.args.udp_mode == "thread":
            # The UDP threads wait for the GIL whenever the loop or an informer thread computes;
            # a short switch interval bounds that wait (default 5 ms: a latency spike).
            sys.setswitchinterval(0.0005)
        self.stopping = asyncio.Event()
        self.make_informers(kube_client.api_client_from_args(self.args), loop)
        for inf in self.informers:
            inf.start()
        log.info("waiting up to %ss for the informers to list", self.args.sync_timeout)
        deadline = loop.time() + self.args.sync_timeout
        for inf in self.informers:
            while not await inf.wait_synced_async(0.5):
                if self.stopping.is_set():
                    return
                if loop.time() > deadline:
                    log.warning("informer %s not synced after %ss; serving anyway", inf.name, self.args.sync_timeout)
                    break
        await asyncio.sleep(0)  # let the callbacks queued by the initial lists run
        self.flush()
        # Everything alive now (modules, the kubernetes client, the first records) lives for
        # good: take it out of the collector's sight, or each full collection walks it all
        # (~30 ms with the kubernetes client loaded: a latency spike for every query in flight).
        gc.collect()
        gc.freeze()
        await self.server.listen(self.listen)
        self.listening = True
        log.info("serving zone %s: %d names; upstreams %s", self.cfg.zone, len(self.store.names),
                 ", ".join(u.label for u in self.forwarder.upstreams) or "none")
        await self.stopping.wait()

    def stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()
        for inf in self.informers:
            inf.stop(timeout=0)
        self.server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kdns", description="knet's cluster DNS")
    kube_client.add_arguments(p)
    p.add_argument("--listen", action="append", default=[], metavar="IP[:PORT]",
                   help="address to serve on, UDP and TCP (repeatable; default 0.0.0.0:53)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="resolver for names outside the cluster (repeatable; default: /etc/resolv.conf)")
    p.add_argument("--pods", choices=["insecure", "verified", "disabled"], default="insecure",
                   help="a-b-c-d.<ns>.pod records: for any address, only for existing pods, or none")
    p.add_argument("--ttl", type=int, default=5, help="TTL of cluster records")
    p.add_argument("--negative-ttl", type=int, default=5, help="SOA minimum: how long clients cache a miss")
    p.add_argument("--cache-size", type=int, default=100_000, help="answer cache entries")
    p.add_argument("--max-cache-ttl", type=int, default=3600, help="cap on forwarded answers' cache time")
    p.add_argument("--forward-timeout", type=float, default=2.0, help="seconds per upstream")
    p.add_argument("--sync-timeout", type=float, default=30.0, help="wait this long for the first list")
    p.add_argument("--udp-mode", choices=["loop", "thread"], default="thread",
                   help="UDP fast path on the event loop, or a blocking-socket thread per listen address")
    p.add_argument("--metrics-bind-address", default="0.0.0.0:9153")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def amain() -> None:
        kdns = Kdns(args)
        kdns.stats.loop = asyncio.get_running_loop()
        daemon.serve(kdns.stop, kdns.stats.registry, kdns.health, args.metrics_bind_address or None)
        try:
            await kdns.run()
        finally:
            kdns.stop()
        log.info("stopped")

    return daemon.run("kdns", args.log_level, amain)


if __name__ == "__main__":
    raise SystemExit(main())
