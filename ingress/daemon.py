"""`knet-ingress`: watch Ingresses (+ IngressClasses, Services, EndpointSlices, Secrets) and keep an
nginx in line with them.

    knet-ingress --kubeconfig FILE --ingress-class knet --http-port 80 --https-port 443 \\
        --publish-address 192.168.33.240 --metrics-bind-address 0.0.0.0:10254

Sync model (kproxy's): nothing is served before every informer has listed; then changes are
batched (`--min-sync-period`) and each batch is at most one reload. An Ingress or IngressClass
change compiles the whole table; a Service, EndpointSlice or Secret change counts only when an
Ingress refers to it (found through the Ingress informer's indexes, never a scan) and re-resolves
only that Service's backends or that Secret's certificate (`Controller.update`). Every
`--sync-period` a full sync runs regardless (retries failed status writes, restarts a dead nginx).
SIGTERM/SIGINT: informers stop, nginx quits gracefully (in-flight requests finish).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable

from ingress.accesslog import AccessLogReader
from ingress.compiler import BACKEND_SERVICES, TLS_SECRETS, Options, Snapshot, backend_services, tls_secrets
from ingress.controller import Controller
from ingress.nginx import Nginx
from ingress.nginxconf import Settings
from knet import aio, daemon
from knet.kube import client as kube_client
from knet.kube import threadsafe
from knet.kube.indexes import SERVICE, by_service
from knet.kube.informer import Informer
from knet.kube.models import EndpointSlice, Ingress, IngressClass, Secret, Service, object_key

log = logging.getLogger("knet.ingress")


class IngressDaemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings(run_dir=args.run_dir, http_port=args.http_port, https_port=args.https_port,
                                 status_port=args.status_port, worker_processes=args.worker_processes,
                                 max_body_size=args.max_body_size, header_buffer=args.max_header_size,
                                 access_log=not args.no_access_log, rlimit_nofile=_nofile_limit(),
                                 ipv6=not args.disable_ipv6 and _ipv6_available(),
                                 listen_addresses=tuple(args.listen_address))
        self.options = Options(ingress_class=args.ingress_class, default_backend=args.default_backend_service,
                               ssl_redirect=not args.no_ssl_redirect)
        self.nginx = Nginx(args.run_dir, args.status_port, binary=args.nginx_binary)
        self.api = None
        self.controller = Controller(self.settings, self.options, self.nginx, publish=args.publish_address,
                                     publish_service=args.publish_service, status_writer=self._write_status)
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.informers: dict[str, Informer] = {}
        # What the next sync must do (set by the callbacks, on the loop):
        self.full = True  # compile everything
        self.changed_services: set[str] = set()  # "ns/name": re-resolve their backends
        self.changed_secrets: set[str] = set()  # "ns/name": reload their certificates
        default = args.default_backend_service
        self.default_backend = default.rpartition(":")[0] if default else None
        if self.default_backend and "/" not in self.default_backend:
            self.default_backend = f"default/{self.default_backend}"

    # -- informer callbacks (on the loop); `objs` is (new,), (old, new) or (old,)
    def _ingresses_changed(self, *_: object) -> None:
        self.full = True
        self.wake.set()

    def _service_changed(self, *objs: Service) -> None:
        self._services_changed({o.key for o in objs})

    def _slice_changed(self, *objs: EndpointSlice) -> None:
        self._services_changed({key for o in objs for key in by_service(o)})  # its Service, before and after

    def _services_changed(self, keys: set[str]) -> None:
        ingresses = self.informers["ingress"]
        for key in keys:
            if key == self.args.publish_service:
                self.full = True  # its addresses go into every Ingress's status
                self.wake.set()
            if key == self.default_backend or ingresses.index_keys(BACKEND_SERVICES, key):
                self.changed_services.add(key)
                self.wake.set()

    def _secret_changed(self, *objs: Secret) -> None:
        for key in {o.key for o in objs}:
            if self.informers["ingress"].index_keys(TLS_SECRETS, key):
                self.changed_secrets.add(key)
                self.wake.set()

    def snapshot(self, full: bool = True) -> Snapshot:
        """Lookups into the informers' caches. Only a full sync reads every Ingress and class."""
        i = self.informers
        return Snapshot(
            ingresses=i["ingress"].list() if full else [], classes=i["class"].list() if full else [],
            service=lambda ns, n: i["service"].get(n, ns),
            slices=lambda ns, n: i["slice"].by_index(SERVICE, object_key(ns, n)),
            secret=lambda ns, n: i["secret"].get(n, ns))

    def make_informers(self, loop: asyncio.AbstractEventLoop) -> None:
        """The informers with their indexes and callbacks (not started)."""
        def on(fn: Callable[..., None]) -> dict[str, Callable[..., None]]:
            cb = threadsafe(loop, fn)
            return dict(on_add=cb, on_update=cb, on_delete=cb)

        kinds = {  # (a plain dict literal: tests/unit/test_deploy_rbac.py reads the kinds from it)
            "ingress": (Ingress, on(self._ingresses_changed),
                        {BACKEND_SERVICES: backend_services, TLS_SECRETS: tls_secrets}),
            "class": (IngressClass, on(self._ingresses_changed), {}),
            "service": (Service, on(self._service_changed), {}),
            "slice": (EndpointSlice, on(self._slice_changed), {SERVICE: by_service}),
            "secret": (Secret, on(self._secret_changed), {}),
        }
        for name, (model, callbacks, indexers) in kinds.items():
            self.informers[name] = Informer(self.api, model, indexers=indexers, **callbacks)

    def take_pending(self) -> tuple[bool, set[str], set[str]]:
        """What the callbacks collected (full?, services, secrets), cleared for the next batch."""
        pending = self.full, self.changed_services, self.changed_secrets
        self.full, self.changed_services, self.changed_secrets = False, set(), set()
        return pending

    async def sync_once(self, force_full: bool = False) -> None:
        """Apply what the callbacks collected: a full sync, or only the changed Services/Secrets."""
        full, services, secrets = self.take_pending()
        full = full or force_full
        try:
            if full:
                result = await asyncio.to_thread(self.controller.sync, self.snapshot())
            elif services or secrets:
                result = await asyncio.to_thread(self.controller.update, self.snapshot(full=False), services, secrets)
            else:
                return
            if result.error:  # nginx kept the previous config: the next sync starts from a full compile
                self.full = True
        except Exception:
            log.exception("sync failed; retrying")
            self.full = True
            await asyncio.sleep(1)
            self.wake.set()

    def _write_status(self, namespace: str, name: str, entries: list[dict]) -> None:
        kube_client.patch_status(self.api, "Ingress", name, {"loadBalancer": {"ingress": entries}}, namespace)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.api = kube_client.api_client_from_args(self.args)
        self.make_informers(loop)
        for inf in self.informers.values():
            inf.start()
        if not await daemon.wait_synced(self.informers.values(), self.stopping):
            return
        await asyncio.sleep(0)  # the callbacks of the initial lists, queued on this loop
        # The first config reads the caches as they are now: what the callbacks collected so
        # far is in it; what arrives while it is built is collected for the next sync.
        self.take_pending()
        result = await asyncio.to_thread(self.controller.start, self.snapshot())
        log.info("serving config=%s ingresses=%d", result.digest, len(self.controller.table.ingresses))
        reader = AccessLogReader(self.settings.access_log_path, self.controller.metrics.requests.observe,
                                 reopen=self.nginx.reopen_logs)
        tail_stop = threading.Event()
        tail = threading.Thread(target=reader.run, args=(tail_stop,), name="access-log", daemon=True)
        tail.start()
        next_full = time.monotonic() + self.args.sync_period
        try:
            while not self.stopping.is_set():
                await aio.wait_any(self.wake, self.stopping, timeout=max(0.0, next_full - time.monotonic()))
                if self.stopping.is_set():
                    break
                # Batch: let a burst of changes (a rollout's endpoint updates) land in one reload.
                await asyncio.sleep(self.args.min_sync_period)
                self.wake.clear()
                periodic = time.monotonic() >= next_full
                await self.sync_once(force_full=periodic)
                if periodic:
                    next_full = time.monotonic() + self.args.sync_period
        finally:
            tail_stop.set()

    def stop(self) -> None:
        self.stopping.set()
        for inf in self.informers.values():
            inf.stop(timeout=0)


def _nofile_limit() -> int:
    """worker_rlimit_nofile: as high as our hard limit allows (workers, not root, cannot raise it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _ipv6_available() -> bool:
    """Can nginx listen on [::] here (a kernel or namespace without IPv6 cannot)? As
    ingress-nginx, which turns IPv6 off on such nodes instead of failing to start."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        log.info("no IPv6 here: listening on IPv4 only")
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="knet-ingress", description="knet's ingress controller (drives nginx)")
    kube_client.add_arguments(p)
    p.add_argument("--ingress-class", default="knet", help="IngressClass name served (default: knet)")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=443)
    p.add_argument("--listen-address", action="append", default=[], type=_address,
                   help="IPv4 or IPv6 address nginx listens on (repeatable; default: every address of both "
                        "families)")
    p.add_argument("--disable-ipv6", action="store_true",
                   help="listen on IPv4 only (ingress-nginx's disable-ipv6; automatic without IPv6 here)")
    p.add_argument("--publish-address", action="append", default=[],
                   help="address written to status.loadBalancer.ingress of served Ingresses (repeatable)")
    p.add_argument("--publish-service", default=None,
                   help="ns/name of a LoadBalancer Service whose addresses to publish instead")
    p.add_argument("--default-backend-service", default=None,
                   help="ns/name:port answering requests no Ingress claims (default: a built-in 404)")
    p.add_argument("--metrics-bind-address", default="0.0.0.0:10254", help="/metrics and /healthz")
    p.add_argument("--run-dir", default="/run/knet-ingress", help="nginx config, pid, logs, certificates")
    p.add_argument("--status-port", type=int, default=10246, help="nginx's internal status port on 127.0.0.1")
    p.add_argument("--nginx-binary", default="nginx")
    p.add_argument("--worker-processes", default="auto")
    p.add_argument("--max-body-size", default="1m", help="larger request bodies get 413")
    p.add_argument("--max-header-size", default="8k", help="a larger request header line gets 431")
    p.add_argument("--no-ssl-redirect", action="store_true", help="do not redirect TLS hosts from http to https")
    p.add_argument("--no-access-log", action="store_true", help="no access log (and no per-request metrics)")
    p.add_argument("--sync-period", type=float, default=60.0, help="seconds between unconditional syncs")
    p.add_argument("--min-sync-period", type=float, default=0.2, help="batching window for changes")
    daemon.add_logging_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ingress_daemon: IngressDaemon | None = None

    async def amain() -> None:
        nonlocal ingress_daemon
        ingress_daemon = IngressDaemon(args)
        daemon.serve(ingress_daemon.stop, ingress_daemon.controller.metrics.registry, ingress_daemon.controller.healthy,
                     args.metrics_bind_address)
        log.info("starting class=%s http=%d https=%d", args.ingress_class, args.http_port, args.https_port)
        await ingress_daemon.run()

    try:
        return daemon.run("knet-ingress", args.log_level, amain, logging_format=args.logging_format)
    finally:
        if ingress_daemon is not None:
            ingress_daemon.nginx.stop()
            log.info("stopped")


if __name__ == "__main__":
    raise SystemExit(main())
