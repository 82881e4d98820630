"""`kdns`: cluster DNS for knet (and for a real cluster), per the Kubernetes DNS specification.

    kdns --conf /etc/coredns/Corefile [--kubeconfig FILE]
    kdns --kubeconfig FILE --listen 10.96.0.10:53 [--listen ...] [--cluster-domain cluster.local]
         [--upstream IP[:port] ...] [--metrics-bind-address 0.0.0.0:9153] [--pods verified --autopath]

With `--conf` (or `-conf`, CoreDNS's spelling) kdns reads a Corefile: the subset of CoreDNS's
plugins config.py lists, so the `coredns` ConfigMap of a cluster drives it; `reload` re-reads the
file when it changes, without closing the sockets (a query in flight is answered, the next one
sees the new configuration). Without it, the flags describe one server block as before.

Services, EndpointSlices (and Pods with `pods verified`) come through `knet.kube` informers.
Their callbacks hop onto the event loop, mark the service dirty, and one flush per loop turn
recomputes the dirty services (each from its Service and its slices, looked up by the slice
informer's SERVICE index: no scans) into the record store and drops the cached answers of every name
that changed: a change is answered within one loop turn of the watch event, and nothing stale
survives a delete. The listeners open only once the informers have listed (or after the sync
timeout), so a starting kdns does not hand out NXDOMAINs that clients would cache.

Upstreams default to the nameservers of /etc/resolv.conf as seen where kdns runs (`ip netns exec`
substitutes /etc/netns/<ns>/resolv.conf), less kdns's own addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import logging
import random
import socket
import struct
import sys
from collections.abc import Callable

from kubernetes.client import ApiClient
from prometheus_client import exposition

from kdns import autopath, config, metrics, wire
from kdns.config import CorefileError, Settings
from kdns.endpoints import Endpoints, Route
from kdns.forward import Upstream
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
HINFO = 13


def parse_listen(text: str) -> tuple[str, int]:
    up = Upstream.parse(text)
    return up.host, up.port


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> list[Upstream]:
    try:
        return config.read_resolv_conf(path)
    except OSError:
        return []


def load_settings(args: argparse.Namespace) -> Settings:
    """The Corefile (--conf) or the flags, with kdns's own addresses removed from the upstreams
    (a forward to itself would loop) and --listen, when given, overriding where it listens."""
    if args.conf:
        with open(args.conf) as f:
            settings = config.from_corefile(f.read())
        if args.listen:
            listen = [parse_listen(a) for a in args.listen]
            ports = {p for _, p in listen}
            if len(ports) > 1:
                raise CorefileError("--listen on several ports: kdns serves one")
            port = ports.pop()
            settings = dataclasses.replace(settings, blocks=tuple(
                dataclasses.replace(b, port=port, bind=tuple(h for h, _ in listen)) for b in settings.blocks))
        if args.metrics_bind_address:
            settings = dataclasses.replace(settings, prometheus=args.metrics_bind_address)
    else:
        ups = [Upstream.parse(u) for u in args.upstream] if args.upstream else resolv_conf_upstreams()
        settings = config.from_flags(args, ups)
    own = set(settings.listen())
    own_hosts = {h for h, _ in own}
    blocks = []
    for b in settings.blocks:
        fwds = []
        for f in b.forwards:
            to = tuple(u for u in f.to
                       if (u.host, u.port) not in own and not (u.port == b.port and u.host in own_hosts))
            if to:
                fwds.append(dataclasses.replace(f, to=to))
        blocks.append(dataclasses.replace(b, forwards=tuple(fwds)))
    return dataclasses.replace(settings, blocks=tuple(blocks))


def records_config(settings: Settings) -> Config:
    k = settings.kubernetes
    own = tuple(sorted({h for h, _ in settings.listen() if h not in ("0.0.0.0", "::")}))
    if k is None:  # a pure forwarder: the store holds nothing but its own zone's SOA
        return Config(zone="cluster.local", pods="disabled", ns_addresses=own)
    return Config(zone=k.zone, ttl=k.ttl, negative_ttl=k.negative_ttl if k.negative_ttl is not None else k.ttl,
                  pods=k.pods, ns_addresses=own)


class Kdns:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = load_settings(args)
        self.digest = _digest(args.conf) if args.conf else b""
        self.cfg = records_config(self.settings)
        self.store = RecordStore(self.cfg)
        self.stats = Stats()
        self.server = Server(self.store, self.settings.blocks, self.stats, cache_size=args.cache_size,
                             udp_mode=args.udp_mode, host_search=autopath.resolv_conf_search())
        self.registry = metrics.registry(metrics.Collector(self.server.snapshot))
        self.endpoints = Endpoints()
        self.services: Informer[Service] | None = None
        self.slices: Informer[EndpointSlice] | None = None  # indexed by their Service (SERVICE)
        self.dirty: set[str] = set()
        self.flush_scheduled = False
        self.listening = False
        self.stopping: asyncio.Event | None = None
        self.informers: list[Informer] = []
        self.pod_informer: Informer | None = None
        self.api = None
        self.fatal: str | None = None

    @property
    def forwarder_upstreams(self) -> list[Upstream]:
        return [u for b in self.settings.blocks for f in b.forwards for u in f.to]

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
            self.server.pods.update(obj.key, None if deleted else obj)  # autopath: address -> namespace
        self.stats.store_updates["pod"] = self.stats.store_updates.get("pod", 0) + 1

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
            self.stats.store_updates["service"] = self.stats.store_updates.get("service", 0) + 1

    def make_informers(self, api: ApiClient | None, loop: asyncio.AbstractEventLoop) -> None:
        """The informers with their callbacks on `loop` (not started; api None: fed by a test)."""
        self.services = Informer(api, Service, **self._callbacks(self._service, loop))
        self.slices = Informer(api, EndpointSlice, indexers={SERVICE: by_service},
                               **self._callbacks(self._slice, loop))
        self.informers = [self.services, self.slices]
        if self.cfg.pods == "verified":
            self.pod_informer = Informer(api, Pod, **self._callbacks(self._pod, loop))
            self.informers.append(self.pod_informer)

    @staticmethod
    def _callbacks(fn: Callable[..., None], loop: asyncio.AbstractEventLoop) -> dict[str, Callable[..., None]]:
        return dict(on_add=threadsafe(loop, fn), on_update=threadsafe(loop, lambda old, new: fn(old, new)),
                    on_delete=threadsafe(loop, lambda obj: fn(obj, None, True)))

    # --- health ----------------------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        if not self.listening:
            return False, "not listening yet (informers syncing)"
        if not all(i.synced.is_set() for i in self.informers):
            return True, "serving; informers not synced"
        return True, f"ok: {len(self.store.names)} names, {len(self.services or ())} services"

    def ready(self) -> tuple[bool, str]:
        if self.listening and all(i.synced.is_set() for i in self.informers):
            return True, "OK"
        return False, "kubernetes"  # as CoreDNS's ready plugin: the plugins not ready yet

    def routes(self) -> dict[str, dict[str, Route]]:
        s = self.settings

        def text(fn: Callable[[], tuple[bool, str]]) -> Route:
            def route() -> tuple[int, bytes, str]:
                ok, why = fn()
                return (200 if ok else 503), (why + "\n").encode(), "text/plain; charset=utf-8"
            return route

        def scrape() -> tuple[int, bytes, str]:
            return 200, exposition.generate_latest(self.registry), exposition.CONTENT_TYPE_LATEST

        out: dict[str, dict[str, Route]] = {}
        if s.prometheus:
            out.setdefault(_bind(s.prometheus), {})["/metrics"] = scrape
        if s.source == "flags":  # as before: /health (and /healthz) 503 until listening
            if s.prometheus:
                out[_bind(s.prometheus)].update({"/health": text(self.health), "/healthz": text(self.health),
                                                 "/ready": text(self.ready)})
            return out
        if s.health:
            out.setdefault(_bind(s.health), {})["/health"] = text(lambda: (True, "OK"))  # liveness, as CoreDNS
        if s.ready:
            out.setdefault(_bind(s.ready), {})["/ready"] = text(self.ready)
        return out

    # --- running ---------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.args.udp_mode == "thread":
            # The UDP thread waits for the GIL whenever the loop or an informer thread computes;
            # a short switch interval bounds that wait (default 5 ms: a latency spike).
            sys.setswitchinterval(0.0005)
        self.stopping = asyncio.Event()
        self.endpoints.apply(self.routes())
        k = self.settings.kubernetes
        if k is not None:
            self.api = kube_client.new_api_client(k.kubeconfig or self.args.kubeconfig,
                                                  context=k.context or self.args.context)
            self.make_informers(self.api, loop)
            for inf in self.informers:
                inf.start()
            timeout = self.args.sync_timeout if k.startup_timeout is None else k.startup_timeout
            log.info("waiting up to %ss for the informers to list", timeout)
            deadline = loop.time() + timeout
            for inf in self.informers:
                while not await inf.wait_synced_async(0.5):
                    if self.stopping.is_set():
                        return
                    if loop.time() > deadline:
                        log.warning("informer %s not synced after %ss; serving anyway", inf.name, timeout)
                        break
            await asyncio.sleep(0)  # let the callbacks queued by the initial lists run
            self.flush()
        # Everything alive now (modules, the kubernetes client, the first records) lives for
        # good: take it out of the collector's sight, or each full collection walks it all
        # (~30 ms with the kubernetes client loaded: a latency spike for every query in flight).
        gc.collect()
        gc.freeze()
        await self.server.listen(self.settings.listen())
        self.listening = True
        log.info("serving zone %s (server blocks %s, from %s): %d names; upstreams %s", self.cfg.zone,
                 " ".join(b.label for b in self.settings.blocks), self.settings.source, len(self.store.names),
                 ", ".join(u.label for u in self.forwarder_upstreams) or "none")
        self._probe_loop()
        tasks = [asyncio.create_task(self._reload_loop())] if self.args.conf else []
        try:
            await self.stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
        if self.fatal:
            raise RuntimeError(self.fatal)

    def _pods_informer(self) -> None:
        """The pod informer runs while `pods verified` is configured (a reload may change that)."""
        if self.pod_informer is not None and self.cfg.pods != "verified":
            self.pod_informer.stop(timeout=0)
            self.informers.remove(self.pod_informer)
            self.pod_informer = None
            self.server.pods = autopath.PodAddresses()
        elif self.pod_informer is None and self.api is not None:  # noqa: SIM102
            if self.cfg.pods == "verified":  # (its own `if`: tests/unit/test_deploy_rbac.py reads this guard)
                loop = asyncio.get_running_loop()
                self.pod_informer = Informer(self.api, Pod, **self._callbacks(self._pod, loop)).start()
                self.informers.append(self.pod_informer)

    def _probe_loop(self) -> None:
        """The `loop` plugin: a query for a random name sent to ourselves; when it comes back to
        us through the upstreams (they forward to us), kdns stops: it would loop forever."""
        if not any(b.loop for b in self.settings.blocks):
            return
        name = f"{random.randrange(10**9)}.{random.randrange(10**9)}"
        self.server.loop_probe = name
        self.server.loop_probe_wire = wire.name_to_wire(name)
        self.server.on_loop_detected = lambda: self._die(f"Loop detected for zone \".\": {name} HINFO came back "
                                                         "through the upstreams (they forward to kdns)")
        host, port = self.settings.listen()[0]
        host = "127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host
        query = struct.pack("!HHHHHH", random.getrandbits(16), 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", HINFO, 1)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(query, (host, port))

    def _die(self, why: str) -> None:
        log.error("%s", why)
        self.fatal = why
        if self.stopping is not None and self.server.loop is not None:
            self.server.loop.call_soon_threadsafe(self.stopping.set)

    # --- reload ----------------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            if self.settings.reload is None:
                await asyncio.sleep(1.0)
                continue
            interval, jitter = self.settings.reload
            await asyncio.sleep(max(0.5, interval + random.uniform(-jitter, jitter)))
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the Corefile; apply it when it changed and is valid. True when applied."""
        try:
            digest = _digest(self.args.conf)
            if digest == self.digest:
                return False
            self.digest = digest
            settings = load_settings(self.args)
        except (OSError, CorefileError) as e:
            self.stats.reload_failed += 1
            log.error("reload of %s failed, keeping the running configuration: %s", self.args.conf, e)
            return False
        await self.apply(settings)
        log.info("reloaded %s", self.args.conf)
        return True

    async def apply(self, new: Settings) -> None:
        old, self.settings = self.settings, new
        k_old, k_new = old.kubernetes, new.kubernetes
        if ((k_old and k_new) and (k_old.kubeconfig, k_old.context) != (k_new.kubeconfig, k_new.context)) \
                or bool(k_old) != bool(k_new):
            log.warning("the kubernetes plugin's connection changed: restart kdns to apply that part")
        cfg = records_config(new)
        if cfg != self.cfg:
            self.cfg = cfg
            self._pods_informer()
            self._rebuild_store(cfg)
        old_addrs, new_addrs = set(self.server.addresses()), new.listen()
        await self.server.listen([a for a in new_addrs if a not in old_addrs])  # the new first
        await self.server.on_engine(self.server.configure, new.blocks)
        await self.server.unlisten([a for a in old_addrs if a not in set(new_addrs)])
        self.endpoints.apply(self.routes())

    def _rebuild_store(self, cfg: Config) -> None:
        """A new zone, TTL or pods mode: every record again, swapped in at once."""
        store = RecordStore(cfg)
        for svc in self.services.list() if self.services is not None else []:
            store.update_service(svc.key, svc, self.slices.by_index(SERVICE, svc.key) if self.slices else [])
        pods = self.pod_informer.list() if self.pod_informer is not None else []
        for pod in pods:
            store.update_pod(pod.key, pod)
        with self.server.lock:
            self.server.store = self.store = store
            self.cfg = cfg
            self.server.cache.clear()
            if self.pod_informer is not None:
                for pod in pods:
                    self.server.pods.update(pod.key, pod)

    def stop(self) -> None:
        if self.stopping is not None:
            self.stopping.set()
        for inf in self.informers:
            inf.stop(timeout=0)

    async def shutdown(self) -> None:
        if self.settings.lameduck and self.listening:
            log.info("lameduck: serving %ss more before closing", self.settings.lameduck)
            await asyncio.sleep(self.settings.lameduck)
        self.server.close()
        self.endpoints.close()


def _digest(path: str) -> bytes:
    with open(path, "rb") as f:
        return hashlib.sha512(f.read()).digest()


def _bind(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{'' if host in ('', '0.0.0.0') else host}:{port}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kdns", description="knet's cluster DNS")
    kube_client.add_arguments(p)
    p.add_argument("-conf", "--conf", default=None, metavar="COREFILE",
                   help="read this Corefile (CoreDNS's plugin subset; see kdns/config.py) instead of the flags below")
    p.add_argument("--listen", action="append", default=[], metavar="IP[:PORT]",
                   help="address to serve on, UDP and TCP (repeatable; default 0.0.0.0:53; overrides the Corefile)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="resolver for names outside the cluster (repeatable; default: /etc/resolv.conf)")
    p.add_argument("--pods", choices=["insecure", "verified", "disabled"], default="insecure",
                   help="a-b-c-d.<ns>.pod records: for any address, only for existing pods, or none")
    p.add_argument("--autopath", action="store_true",
                   help="walk known pods' search paths on the server (needs --pods verified)")
    p.add_argument("--ttl", type=int, default=5, help="TTL of cluster records")
    p.add_argument("--negative-ttl", type=int, default=5, help="SOA minimum: how long clients cache a miss")
    p.add_argument("--cache-size", type=int, default=100_000, help="answer cache entries")
    p.add_argument("--max-cache-ttl", type=int, default=3600, help="cap on forwarded answers' cache time")
    p.add_argument("--forward-timeout", type=float, default=2.0, help="seconds per upstream")
    p.add_argument("--sync-timeout", type=float, default=30.0, help="wait this long for the first list")
    p.add_argument("--udp-mode", choices=["loop", "thread"], default="thread",
                   help="UDP on a dedicated thread (epoll) or on the event loop")
    p.add_argument("--metrics-bind-address", default=None,
                   help="/metrics (and /health, /ready without a Corefile); default 0.0.0.0:9153")
    daemon.add_logging_arguments(p)
    args = p.parse_args(argv)
    if args.autopath and args.pods != "verified":
        p.error("--autopath needs --pods verified (the client's address must be a known pod)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def amain() -> None:
        kdns = Kdns(args)
        # Signals only: kdns serves its own endpoints (CoreDNS's /metrics, /health and /ready
        # addresses, endpoints.py), so no address for the shared one.
        daemon.serve(kdns.stop, kdns.registry, kdns.health, None)  # type: ignore[arg-type]
        try:
            await kdns.run()
        finally:
            kdns.stop()
            await kdns.shutdown()
        log.info("stopped")

    return daemon.run("kdns", args.log_level, amain, logging_format=args.logging_format)


if __name__ == "__main__":
    raise SystemExit(main())
