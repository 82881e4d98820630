"""The proxier: Services and EndpointSlices in, one data path kept equal to them.

Sync model (kube-proxy's): nothing is programmed before both informers have listed. The informer
callbacks only note which Service changed (kproxy.changes); a sync takes that set, recomputes
those Services alone — their EndpointSlices found through the informer's SERVICE index, resolved
by `knet.kube.endpoints` — and hands the backend the service ports that differ. Syncs are paced
as kube-proxy's BoundedFrequencyRunner paces them (a burst of two, then one per minSyncPeriod); a
periodic sync runs every syncPeriod (partial: it rewrites what the mode always rewrites), and a
full sync, which rewrites everything and repairs drift, runs at start, hourly
(`full_sync_period`, kube-proxy's FullSyncPeriod) and after a failed sync.

Threads: the rebuild and the backend's kernel writes run on one dedicated sync thread (an
executor of one worker, in the node's network namespace like the rest of the process), never
on the event loop: in userspace mode the loop carries the proxied traffic, and a full rebuild
at 10,000 services must not stall it. The loop only waits for the sync thread's result.

Dual-stack (kube-proxy's meta proxier, in one process): one plan and one backend per IP family.
Each family's backend programs that family's tables only (iptables / ip6tables, `ip` / `ip6
kube-proxy`, AF_INET / AF_INET6 listeners, the v4 / v6 hooks), from that family's clusterIPs,
externalIPs, LoadBalancer IPs and EndpointSlices (kproxy.build); a Service with both families is in
both plans. The families share the informers, the change tracker and the sync thread: the tracker
is keyed by Service, and a changed Service is resolved for each family in the same pass, so one
event costs one rebuild per family and nothing is tracked twice (kube-proxy runs two complete
proxiers, with two trackers and two sync loops, because its proxiers predate dual-stack; here the
split is only where the data differs). The family is part of the plan (ServicePort.family,
Config.family), not of the keys: each family's backend sees only its own ports, so service port
keys and chain names are kube-proxy's in both families' tables. A family whose backend cannot be
made (no IPv6 in the kernel, no ip6tables) is left out with an error line, as kube-proxy falls
back to single-stack.

Metrics (kproxy.metrics, kube-proxy's names): a sync's duration covers the whole path, from
taking the changes through the rebuild to the programmed data path (both families, under the
primary family's label, once per sync); the rule and no-local-endpoint gauges carry each family's
label; the network programming duration runs from each change (the slice's
last-change-trigger-time, else the moment kproxy saw the event) to the end of the sync that
programmed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from knet import aio, daemon
from knet.kube.endpoints import resolve
from knet.kube.indexes import SERVICE, by_service
from knet.kube.informer import Informer
from knet.kube.models import EndpointSlice, Service
from kproxy import backend as backends
from kproxy.build import health_check_node_port, service_ports
from kproxy.changes import ChangeTracker
from kproxy.config import Effective, family_cidr
from kproxy.health import ProxyHealth, ServiceHealthServers
from kproxy.metrics import ProxyMetrics
from kproxy.model import FAMILIES, FAMILY_NAMES, Config, ServicePort, SyncResult, categorize

log = logging.getLogger("knet.kproxy")
BURST_SYNCS = 2  # kube-proxy's burstSyncs
RETRY_MAX = 10.0  # a failed sync is retried after syncPeriod (kube-proxy), at most this long


@dataclass
class ServiceState:
    """What a Service contributes besides its ports: its health check port and local endpoints."""
    ports: dict[int, list[ServicePort]]  # family -> its ports in that family's plan
    health_port: int | None = None
    local_ready: int = 0


class FamilyPlan:
    """One IP family's share: the service ports its backend programs, and that backend."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.label = FAMILY_NAMES[family]
        self.backend: backends.Backend | None = None
        self.ports: dict[str, ServicePort] = {}  # service port key -> port (what the backend programs)
        self.no_local: dict[str, tuple[bool, bool]] = {}  # key -> (internal, external) Local w/o local eps
        self.no_local_totals = [0, 0]


def ipv6_available() -> bool:
    """Whether this network namespace has IPv6 (the kernel may be booted without it)."""
    return os.path.exists("/proc/net/if_inet6")


class Proxier:
    def __init__(self, settings: Effective, options: backends.Options | None = None,
                 make_backend: Callable[[Config, backends.Options], backends.Backend] | None = None) -> None:
        self.settings = settings
        self.options = options or backends.Options()
        self.primary = settings.primary_family
        self.cfgs = {f: Config(node_name=settings.node_name, cluster_cidr=family_cidr(settings.cluster_cidr, f),
                               masquerade_all=settings.masquerade_all, family=f) for f in FAMILIES}
        self.cfg = self.cfgs[self.primary]
        self._make_backend = make_backend or (lambda cfg, opts: backends.create(settings.mode, cfg, opts))
        self.metrics = ProxyMetrics(settings.mode, ip_family=FAMILY_NAMES[self.primary])
        self.health = ProxyHealth(timeout=2 * settings.sync_period)
        self.health_checks = ServiceHealthServers(self.health)
        self.tracker = ChangeTracker(on_first=self._wake_soon)
        self.plans = {f: FamilyPlan(f) for f in FAMILIES}
        self.state: dict[str, ServiceState] = {}  # Service key -> what it contributes
        self.health_ports: dict[str, int] = {}  # Service key -> its healthCheckNodePort
        self.health_ports_changed = True
        self.local_counts: dict[str, int | None] = {}  # Service key -> local ready endpoints, changed since last sync
        self.need_full = True
        self.services: Informer[Service] | None = None
        self.slices: Informer[EndpointSlice] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="kproxy-sync")
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.synced_once = False
        self.last_parts = (0.0, 0.0)  # the last sync's (rebuild, backend) seconds

    # -- informers (callbacks on the informer threads: note the change, nothing else)
    def make_informers(self, api: Any) -> None:
        self.services = Informer(api, Service, on_add=self._service_event, on_update=self._service_event,
                                 on_delete=self._service_event)
        self.slices = Informer(api, EndpointSlice, indexers={SERVICE: by_service}, on_add=self._slice_event,
                               on_update=self._slice_event, on_delete=self._slice_event)

    def _service_event(self, *objs: Service) -> None:
        self.metrics.service_changes.inc()
        self._queued()
        self.tracker.service_changed(*objs)

    def _slice_event(self, *objs: EndpointSlice) -> None:
        self.metrics.endpoint_changes.inc()
        self._queued()
        self.tracker.slice_changed(*objs)

    def _queued(self) -> None:
        if self.tracker.recording:
            self.health.queued()
        self.metrics.last_queued.set(time.time(), self.metrics.ip_family)

    # -- the families
    @property
    def backend(self) -> backends.Backend | None:
        """The primary family's backend."""
        return self.plans[self.primary].backend

    @backend.setter
    def backend(self, value: backends.Backend | None) -> None:
        self.plans[self.primary].backend = value

    @property
    def ports(self) -> dict[str, ServicePort]:
        """The primary family's service ports."""
        return self.plans[self.primary].ports

    def served(self) -> list[FamilyPlan]:
        """The families with a backend, primary first."""
        return [p for p in sorted(self.plans.values(), key=lambda p: p.family != self.primary)
                if p.backend is not None]

    def families(self) -> list[int]:
        """The families to make backends for: both where the mode and the kernel serve them."""
        want = [self.primary] + [f for f in FAMILIES if f != self.primary]
        supported = backends.FAMILIES.get(self.settings.mode, FAMILIES)
        out = []
        for f in want:
            if f not in supported:
                log.warning("%s mode does not serve %s services on this node", self.settings.mode, FAMILY_NAMES[f])
            elif f == 6 and not ipv6_available():
                log.warning("no IPv6 in this network namespace: serving IPv4 services only")
            else:
                out.append(f)
        return out

    def _wake_soon(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake.set)

    # -- the model: only the Services that changed
    def rebuild(self, keys: Any) -> dict[int, set[str]]:
        """Recompute the Services `keys` in every served family; returns per family the service
        port keys whose port changed (added, removed or different)."""
        assert self.services is not None and self.slices is not None
        plans = self.served()
        changed: dict[int, set[str]] = {p.family: set() for p in plans}
        node = self.cfg.node_name
        for key in keys:
            svc = self.services.get_by_key(key)
            slices = self.slices.by_index(SERVICE, key) if svc else []
            new = {p.family: service_ports(svc, resolve(slices, family=p.family), p.family) if svc else []
                   for p in plans}
            old = self.state.get(key)
            health_port = health_check_node_port(svc) if svc else None
            # Per family, as each family's proxier counts them; a dual-stack pod is one endpoint.
            local_ready = max((len({e.ip for p in ports for e in p.endpoints if e.ready and e.node_name == node})
                               for ports in new.values()), default=0)
            if any(new.values()) or health_port:
                self.state[key] = ServiceState(new, health_port, local_ready)
            else:
                self.state.pop(key, None)
            if self.health_ports.get(key) != health_port:
                self.health_ports_changed = True
                if health_port:
                    self.health_ports[key] = health_port
                else:
                    del self.health_ports[key]
            if health_port:
                self.local_counts[key] = local_ready
            elif old is not None and old.health_port:
                self.local_counts[key] = None
            for plan in plans:
                before = old.ports.get(plan.family, []) if old is not None else []
                if before != new[plan.family]:
                    self._replace(plan, before, new[plan.family], changed[plan.family])
        return changed

    def _replace(self, plan: FamilyPlan, old: list[ServicePort], new: list[ServicePort], changed: set[str]) -> None:
        """One family's ports of a Service went from `old` to `new`: note the keys that differ."""
        new_keys = {p.key for p in new}
        for p in old:
            if p.key not in new_keys:
                del plan.ports[p.key]
                self._count_no_local(plan, p.key, None)
                changed.add(p.key)
        for p in new:
            if plan.ports.get(p.key) != p:
                plan.ports[p.key] = p
                self._count_no_local(plan, p.key, p)
                changed.add(p.key)

    def _count_no_local(self, plan: FamilyPlan, key: str, sp: ServicePort | None) -> None:
        """kube-proxy's no_local_endpoints_total: service ports with a Local policy and no local
        endpoint, per traffic policy (kept per port, so a sync costs only what changed)."""
        now = (False, False)
        if sp is not None and (sp.internal_local or sp.external_local):
            local = categorize(sp, self.cfg.node_name).local
            now = (sp.internal_local and not local, sp.external_local and sp.externally_accessible and not local)
        before = plan.no_local.pop(key, (False, False))
        if any(now):
            plan.no_local[key] = now
        for i in (0, 1):
            plan.no_local_totals[i] += int(now[i]) - int(before[i])

    # -- one sync, on the sync thread
    def sync_once(self, full: bool) -> SyncResult:
        """One sync of every served family; the result sums theirs."""
        plans = self.served()
        assert plans, "no backend"
        start = time.monotonic()
        taken = self.tracker.take()
        full = full or self.need_full
        results: dict[int, SyncResult] = {}
        try:
            changed = self.rebuild(taken)
            rebuilt = time.monotonic()
            for plan in plans:
                assert plan.backend is not None
                results[plan.family] = plan.backend.sync(plan.ports, changed[plan.family], full)
        except Exception:
            self.need_full = True  # the backends' view and ours may differ now: rewrite everything
            self.tracker.give_back(taken)
            self.metrics.sync_failed(partial=not full)
            raise
        self.need_full = False
        now, took = time.time(), time.monotonic() - start
        result = SyncResult(full=full, services_written=sum(r.services_written for r in results.values()),
                            rules=sum(r.rules for r in results.values()),
                            seconds=sum(r.seconds for r in results.values()))
        self.last_parts = (rebuilt - start, result.seconds)
        for at in taken.values():
            if at is not None:
                self.metrics.programming.observe(max(0.0, now - at), self.metrics.ip_family)
        self.health.updated(pending_left=len(self.tracker) > 0)
        self._sync_health_checks(full)
        self._sync_metrics(results, took, full, now)
        log.info("sync full=%s service_ports=%s changed=%s written=%d rules=%d seconds=%.3f rebuild=%.3f "
                 "apply=%.3f", full, "/".join(str(len(p.ports)) for p in plans),
                 "/".join(str(len(changed[p.family])) for p in plans), result.services_written, result.rules, took,
                 *self.last_parts)
        return result

    def _sync_health_checks(self, full: bool) -> None:
        """Open/close the health check servers that changed (all of them on a full sync: a port
        that was busy gets another try), then their local endpoint counts."""
        counts, self.local_counts = self.local_counts, {}
        self.health_checks.update_counts(counts)
        if full or self.health_ports_changed:
            self.health_ports_changed = False
            for error in self.health_checks.sync_services(self.health_ports):
                log.error("cannot serve %s", error)
                self.health_ports_changed = True  # retried at the next sync

    def _sync_metrics(self, results: dict[int, SyncResult], took: float, full: bool, now: float) -> None:
        m, mode = self.metrics, self.settings.mode
        m.observe_sync(took, full, now)
        m.service_pending.set(self.tracker.pending()[0])
        m.endpoint_pending.set(self.tracker.pending()[1])
        plans = self.served()
        for plan in plans:
            m.no_local.set(plan.no_local_totals[0], plan.label, "internal")
            m.no_local.set(plan.no_local_totals[1], plan.label, "external")
            result = results[plan.family]
            if m.rules_total is not None:
                for table, count in result.tables.items():
                    m.rules_total.set(count, plan.label, table)
                for table, count in result.written.items():
                    m.rules_last.set(count, plan.label, table)
        m.service_ports.set(sum(len(p.ports) for p in plans), mode)
        m.entries.set(sum(p.backend.entries() for p in plans if p.backend is not None), mode)

    # -- the loop's part: pacing and waiting
    async def run(self, api: Any) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.options.loop = loop
        # Made on the sync thread, as every backend call is: the eBPF backend drives pyroute2's
        # synchronous API, which runs an event loop of its own and cannot from a thread whose loop
        # is already running. (The userspace backend's listeners live on this loop.)
        for family in self.families():
            try:
                self.plans[family].backend = await loop.run_in_executor(
                    self.executor, self._make_backend, self.cfgs[family], self.options)
            except Exception as e:
                if family == self.primary:
                    raise
                log.error("cannot serve %s services (%s): single-stack", FAMILY_NAMES[family], e)
        self.make_informers(api)
        assert self.services is not None and self.slices is not None
        self.services.start()
        self.slices.start()
        if not await daemon.wait_synced((self.services, self.slices), self.stopping):
            return
        self.tracker.start_recording()
        s = self.settings
        tokens, refilled = float(BURST_SYNCS), time.monotonic()
        next_full = next_periodic = 0.0
        while not self.stopping.is_set():
            if s.min_sync_period > 0:  # BoundedFrequencyRunner: a burst, then one per minSyncPeriod
                now = time.monotonic()
                tokens = min(BURST_SYNCS, tokens + (now - refilled) / s.min_sync_period)
                refilled = now
                if tokens < 1:
                    await aio.wait_any(self.stopping, timeout=(1 - tokens) * s.min_sync_period)
                    continue
                tokens -= 1
            full = time.monotonic() >= next_full
            self.wake.clear()
            try:
                await loop.run_in_executor(self.executor, self.sync_once, full)
            except Exception:
                log.exception("sync failed (full=%s); a full sync follows", full)
                await aio.wait_any(self.stopping, timeout=min(s.sync_period, RETRY_MAX))
                continue
            self.synced_once = True
            now = time.monotonic()
            if full:
                next_full = now + s.full_sync_period
            next_periodic = now + s.periodic_sync
            await aio.wait_any(self.wake, self.stopping, timeout=max(0.0, min(next_full, next_periodic) - now))

    def health_text(self) -> tuple[bool, str]:
        """The metrics endpoint's /healthz: synced at least once, and no change waiting too long."""
        healthy, last, now = self.health.state()
        if not self.synced_once:
            return False, "no sync yet"
        return healthy, f"last sync {now - (last or now):.1f}s ago" + ("" if healthy else "; changes waiting")

    def stop(self) -> None:
        self.stopping.set()
        for inf in (self.services, self.slices):
            if inf is not None:
                inf.stop(timeout=0)

    async def close(self) -> None:
        """After run(): the health check servers go, the data path stays (SIGTERM: traffic keeps
        flowing while the daemon restarts; the successor adopts it)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.health_checks.close)
        for plan in self.served():
            assert plan.backend is not None
            await loop.run_in_executor(self.executor, plan.backend.close)
        self.executor.shutdown(wait=False)
