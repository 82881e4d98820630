"""One sync: snapshot -> routing table -> certificate files -> nginx.conf -> (reload) -> status.

The controller is synchronous and does not know where its objects come from: the daemon feeds it
snapshots backed by informers, the integration tests feed it model objects. `sync` compiles
everything (an Ingress or IngressClass changed, or the periodic sync); `update` re-resolves only
the backends of the Services (and the certificates of the Secrets) that changed, in the servers
that use them (`compiler.retarget`). Either way nginx reloads only when the rendered
configuration differs, so an event that changes nothing visible (a Service's unrelated field, a
resync) costs no reload.

Endpoint churn does reload nginx: open-source nginx 1.22 cannot change an upstream's servers at
run time without a reload (that API is nginx Plus; the `resolve` parameter came to open source in
1.27.3), and the issue rules out Lua. A reload drops nothing (see ingress/nginx.py); the daemon
batches bursts of changes into one reload (`--min-sync-period`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ingress import tls
from ingress.accesslog import RequestMetrics
from ingress.compiler import Options, Snapshot, compile_table, retarget
from ingress.model import RoutingTable
from ingress.nginx import Nginx, NginxError
from ingress.nginxconf import Settings, config_digest, render
from knet import metrics

log = logging.getLogger("knet.ingress")

# (namespace, name, status.loadBalancer.ingress entries) -> None; raises on failure
StatusWriter = Callable[[str, str, list[dict]], None]


class ControllerMetrics:
    def __init__(self, registry: metrics.Registry | None = None) -> None:
        self.registry = registry or metrics.Registry()
        r = self.registry
        self.requests = RequestMetrics(r)
        self.reloads = r.counter("knet_ingress_reloads_total", "nginx configuration reloads", ["result"])
        self.reload_seconds = r.histogram("knet_ingress_reload_duration_seconds",
                                          "From writing a configuration to nginx serving it")
        self.last_reload = r.gauge("knet_ingress_last_reload_success_timestamp_seconds",
                                   "Unix time of the last successful reload")
        self.reload_ok = r.gauge("knet_ingress_config_last_reload_successful",
                                 "1 when the newest configuration is the one nginx serves")
        self.ingresses = r.gauge("knet_ingress_served_ingresses", "Ingresses of our class")
        self.servers = r.gauge("knet_ingress_servers", "Virtual hosts (incl. the default server)")
        self.problems = r.gauge("knet_ingress_problems", "Conflicts and invalid rules or secrets being ignored")
        self.endpoints = r.gauge("knet_ingress_upstream_endpoints", "Endpoints per backend service port",
                                 ["service"])


@dataclass
class SyncResult:
    reloaded: bool = False
    digest: str = ""
    error: str | None = None
    problems: list[str] = field(default_factory=list)


def status_entries(addresses: list[str]) -> list[dict]:
    out = []
    for a in addresses:
        try:
            ipaddress.ip_address(a)
            out.append({"ip": a})
        except ValueError:
            out.append({"hostname": a})
    return out


class Controller:
    def __init__(self, settings: Settings, options: Options, nginx: Nginx, *,
                 publish: list[str] | None = None, publish_service: str | None = None,
                 status_writer: StatusWriter | None = None, registry: metrics.Registry | None = None) -> None:
        self.settings = settings
        self.options = options
        self.nginx = nginx
        self.publish = list(publish or [])
        self.publish_service = publish_service
        self.status_writer = status_writer
        self.metrics = ControllerMetrics(registry)
        self.table = RoutingTable()
        self.problems: set[str] = set()
        self.written_status: dict[str, tuple[list[dict], float]] = {}
        self.last_ok = 0.0
        tls.ensure_default_certificate(settings.cert_dir)

    # -- the pieces
    def build(self, snap: Snapshot) -> tuple[RoutingTable, str]:
        return self._finish(compile_table(snap, self.options))

    def _finish(self, table: RoutingTable) -> tuple[RoutingTable, str]:
        for p in sorted(set(table.problems) - self.problems):
            log.warning("%s", p)
        self.problems = set(table.problems)
        certs = [s.tls for s in table.servers.values() if s.tls is not None]
        tls.write_certificates(self.settings.cert_dir, certs)
        return table, render(table, self.settings)

    def _record(self, table: RoutingTable) -> None:
        self.table = table
        m = self.metrics
        m.ingresses.set(len(table.ingresses))
        m.servers.set(len(table.servers))
        m.problems.set(len(table.problems))
        with m.endpoints.lock:
            m.endpoints.values = {(u.service,): float(len(u.servers)) for u in table.upstreams.values()}
        keep = [s.tls.file_name for s in table.servers.values() if s.tls is not None and s.tls.file_name]
        tls.prune(self.settings.cert_dir, keep)

    def start(self, snap: Snapshot) -> SyncResult:
        table, text = self.build(snap)
        self.nginx.start(text)
        self._record(table)
        self.metrics.reloads.inc(1, "start")
        self.metrics.reload_ok.set(1)
        self.metrics.last_reload.set(time.time())
        self.last_ok = time.time()
        self.update_status(snap)
        return SyncResult(True, self.nginx.digest, None, table.problems)

    def sync(self, snap: Snapshot) -> SyncResult:
        """Compile everything, apply, and write the Ingresses' status."""
        table, text = self.build(snap)
        return self._apply(table, text, snap, status=True)

    def update(self, snap: Snapshot, services: Iterable[str], secrets: Iterable[str] = ()) -> SyncResult:
        """Only Services/EndpointSlices (`services`, "ns/name") or Secrets changed since the last
        sync: re-resolve what uses them and apply. The Ingresses' status does not depend on them
        (the publish Service's addresses are a full sync's)."""
        table, text = self._finish(retarget(self.table, snap, services, secrets))
        return self._apply(table, text, snap, status=False)

    def _apply(self, table: RoutingTable, text: str, snap: Snapshot, status: bool) -> SyncResult:
        digest = config_digest(text)
        result = SyncResult(False, digest, None, table.problems)
        m = self.metrics
        try:
            if not self.nginx.alive():
                log.error("nginx is not running; starting it again")
                self.nginx.start(text)
                result.reloaded = True
            elif digest != self.nginx.digest:
                t0 = time.monotonic()
                self.nginx.reload(text)
                m.reload_seconds.observe(time.monotonic() - t0)
                log.info("reloaded nginx config=%s ingresses=%d servers=%d upstreams=%d seconds=%.3f", digest,
                         len(table.ingresses), len(table.servers), len(table.upstreams), time.monotonic() - t0)
                result.reloaded = True
        except NginxError as e:
            m.reloads.inc(1, "error")
            m.reload_ok.set(0)
            log.error("configuration %s not applied: %s", digest, e)
            result.error = str(e)
            return result
        if result.reloaded:
            m.reloads.inc(1, "ok")
            m.last_reload.set(time.time())
        m.reload_ok.set(1)
        self._record(table)
        self.last_ok = time.time()
        if status:
            self.update_status(snap)
        return result

    # -- status.loadBalancer
    def addresses(self, snap: Snapshot) -> list[str]:
        if self.publish_service:
            ns, _, name = self.publish_service.rpartition("/")
            svc = snap.service(ns or "default", name)
            if svc is not None:
                found = [i.ip or i.hostname for i in svc.status.load_balancer.ingress if i.ip or i.hostname]
                if found:
                    return [a for a in found if a]
        return self.publish

    def update_status(self, snap: Snapshot) -> None:
        if self.status_writer is None:
            return
        desired = status_entries(self.addresses(snap))
        if not desired:
            return  # nothing to publish (yet): leave every status as it is rather than blank it
        served = set(self.table.ingresses)
        for ing in snap.ingresses:
            ns, key = ing.namespace or "default", f"{ing.namespace or 'default'}/{ing.name}"
            current = [e.model_dump(by_alias=True, exclude_none=True, include={"ip", "hostname"})
                       for e in ing.status.load_balancer.ingress]
            if key in served:
                want = desired
            elif desired and current == desired:
                want = []  # no longer ours (class changed): take our address back
            else:
                continue
            if current == want:
                self.written_status.pop(key, None)
                continue
            # Written but not yet seen by the informer: do not write again for a while.
            last = self.written_status.get(key)
            if last is not None and last[0] == want and time.monotonic() - last[1] < 30:
                continue
            try:
                self.status_writer(ns, ing.name, want)
                self.written_status[key] = (want, time.monotonic())
                log.info("status of Ingress %s: loadBalancer.ingress=%s", key, want)
            except Exception as e:  # the API may be away; the next sync retries
                log.warning("cannot update status of Ingress %s: %s", key, e)

    def healthy(self) -> tuple[bool, str]:
        if not self.nginx.alive():
            return False, "nginx is not running"
        if not self.last_ok:
            return False, "no configuration applied yet"
        return True, f"ok config={self.nginx.digest} ingresses={len(self.table.ingresses)}"
