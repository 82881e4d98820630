"""`netpolicy`: enforce NetworkPolicies for the pods of one node.

    netpolicy --kubeconfig FILE --node-name node1 [--metrics-bind-address 0.0.0.0:9641]

Informers on Pods (all namespaces: peers can be anywhere; indexed by namespace, node and
container port name), Namespaces and NetworkPolicies. Nothing is programmed before all three have
listed (a partial view would isolate pods without their allowed peers). Then the compiled model is
built once and kept up to date event by event (`netpolicy.incremental`): a changed pod or
namespace re-evaluates only the rules whose peers it enters or leaves and the local pods their
policies select, found through indexes, never by scanning a cache. After a short batching window
the backend applies only the difference to the kernel (`netpolicy.backend`). Every
`--sync-period` the table is checked against what was applied and fully re-synced when it
drifted. SIGTERM leaves the rules in place, so pods stay protected while the daemon restarts; the
next start syncs against them.

Metrics (/metrics; /healthz): netpol_sync_duration_seconds, netpol_programming_latency_seconds
(first change seen -> kernel updated), netpol_programmed{what=chains|sets|set_elements|rules|...},
netpol_pods{state=local|isolated_ingress|isolated_egress}, netpol_policies,
netpol_dropped_packets_total{policy,direction}, netpol_sync_errors_total.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient

from knet import aio, daemon, logs, metrics
from knet.kube import client as kube_client
from knet.kube import threadsafe
from knet.kube.indexes import NAMESPACE, NODE, by_namespace, by_node
from knet.kube.informer import Informer
from knet.kube.models import Namespace, NetworkPolicy, Pod
from netpolicy.backend import NftBackend
from netpolicy.compiler import PORT_NAMES, container_port_names
from netpolicy.incremental import IncrementalCompiler, InformerWorld
from netpolicy.model import Compiled

log = logging.getLogger("knet.netpolicy")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = metrics.Registry()
        self.sync_seconds = r.histogram("netpol_sync_duration_seconds", "Compile + apply time of one sync", ["kind"])
        self.latency = r.histogram("netpol_programming_latency_seconds",
                                   "From the first object change of a batch to the kernel being updated",
                                   buckets=LATENCY_BUCKETS)
        self.programmed = r.gauge("netpol_programmed", "Objects programmed in the node's nftables table", ["what"])
        self.pods = r.gauge("netpol_pods", "Pods of this node by isolation", ["state"])
        self.policies = r.gauge("netpol_policies", "NetworkPolicies known")
        self.drops = r.counter("netpol_dropped_packets_total", "Packets dropped, per isolating policy and direction",
                               ["policy", "direction"])
        self.errors = r.counter("netpol_sync_errors_total", "Failed syncs")
        self.last_sync = r.gauge("netpol_last_sync_timestamp_seconds", "Unix time of the last successful sync")


class DropTotals:
    """Monotonic totals from kernel counters that restart at zero when a policy's counter is
    deleted (policy gone) and created again."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.base: dict[str, int] = {}

    def update(self, current: dict[str, int]) -> dict[str, int]:
        for name, value in current.items():
            if value < self.last.get(name, 0):
                self.base[name] = self.base.get(name, 0) + self.last[name]
            self.last[name] = value
        return {n: self.base.get(n, 0) + v for n, v in self.last.items()}


class Enforcer:
    def __init__(self, args: argparse.Namespace, backend: NftBackend | None = None) -> None:
        self.args = args
        self.backend = backend or NftBackend(args.netns)
        self.metrics = Metrics()
        self.totals = DropTotals()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.first_change: float | None = None
        self.last_ok = 0.0
        self.compiled: Compiled | None = None
        self.informers: list[Informer] = []
        self.incremental: IncrementalCompiler | None = None  # made with the informers
        self.ready = False  # events count once the compiler was built from the listed caches

    def _touch(self, *_: object) -> None:
        if self.first_change is None:
            self.first_change = time.monotonic()
        self.wake.set()

    def make_informers(self, api: ApiClient | None, loop: asyncio.AbstractEventLoop) -> None:
        """The informers (not started) and the compiler fed by their events on `loop` (api None:
        a test feeds them)."""
        def on(apply: Callable[[Any, Any], None]) -> dict[str, Callable[..., None]]:
            def changed(old: Any, new: Any) -> None:
                if self.ready:  # before: the caches are read whole by reset()
                    apply(old, new)
                self._touch()
            return dict(on_add=threadsafe(loop, lambda new: changed(None, new)), on_update=threadsafe(loop, changed),
                        on_delete=threadsafe(loop, lambda old: changed(old, None)))

        def event(name: str) -> Callable[[Any, Any], None]:
            return lambda old, new: getattr(self.incremental, name)(old, new)

        pods = Informer(api, Pod, indexers={NAMESPACE: by_namespace, NODE: by_node, PORT_NAMES: container_port_names},
                        **on(event("pod_changed")))
        namespaces = Informer(api, Namespace, **on(event("namespace_changed")))
        policies = Informer(api, NetworkPolicy, **on(event("policy_changed")))
        self.informers = [pods, namespaces, policies]
        self.incremental = IncrementalCompiler(InformerWorld(pods, namespaces, policies, self.args.node_name))

    def start_compiling(self) -> None:
        """Build the compiled model from the listed caches; from now on events update it."""
        assert self.incremental is not None
        self.incremental.reset()
        self.ready = True

    def compile(self) -> Compiled:
        assert self.incremental is not None
        return self.incremental.compiled()

    async def sync(self, full: bool = False) -> None:
        changed_at, self.first_change = self.first_change, None
        self.wake.clear()
        start = time.monotonic()
        try:
            compiled = self.compile()
            result = await asyncio.to_thread(self.backend.apply, compiled, full)
        except Exception:
            self.metrics.errors.inc()
            log.exception("sync failed; retrying")
            self.first_change = changed_at or time.monotonic()
            self.backend.current = None  # next attempt is a full sync
            if self.ready:  # and starts from a model rebuilt from the caches
                self.start_compiling()
            await asyncio.sleep(1)
            return
        now = time.monotonic()
        self.compiled = compiled
        self.last_ok = time.time()
        self.metrics.sync_seconds.observe(now - start, "full" if result.full else "partial")
        if changed_at is not None:
            self.metrics.latency.observe(now - changed_at)
        self._gauges(compiled)
        log.info("sync full=%s local_pods=%d policies=%d commands=%d seconds=%.3f", result.full,
                 len(compiled.pods), len(compiled.policies), result.commands, now - start)

    def _gauges(self, compiled: Compiled) -> None:
        m = self.metrics
        assert self.backend.current is not None
        for what, n in self.backend.current.stats().items():
            m.programmed.set(n, what)
        m.pods.set(len(compiled.pods), "local")
        m.pods.set(sum(p.ingress.isolated for p in compiled.pods.values()), "isolated_ingress")
        m.pods.set(sum(p.egress.isolated for p in compiled.pods.values()), "isolated_egress")
        m.policies.set(len(compiled.policies))
        m.last_sync.set(self.last_ok)

    def read_drops(self) -> None:
        if self.backend.current is None:
            return
        names = self.backend.current.counter_policy
        totals = self.totals.update(self.backend.drops())
        with self.metrics.drops.lock:
            for name, value in totals.items():
                if name in names:
                    policy, direction = names[name]
                    self.metrics.drops.values[(policy, direction)] = float(value)

    def health(self) -> tuple[bool, str]:
        if not self.last_ok:
            return False, "not synced yet"
        age = time.time() - self.last_ok
        return age < 2 * self.args.sync_period + 30, f"last sync {age:.1f}s ago"

    async def run(self) -> None:
        self.make_informers(kube_client.api_client_from_args(self.args), asyncio.get_running_loop())
        for inf in self.informers:
            inf.start()
        if not self.backend.ensure_bridge_netfilter():
            log.warning("bridged same-node pod traffic will bypass the policies")
        if not await daemon.wait_synced(self.informers, self.stopping):
            return
        self.start_compiling()
        await self.sync(full=True)
        next_check = time.monotonic() + self.args.sync_period
        next_drops = 0.0
        while not self.stopping.is_set():
            if self.first_change is not None or self.backend.current is None:
                await asyncio.sleep(self.args.min_sync_period)  # batch a burst of changes
                await self.sync(full=self.backend.current is None)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + self.args.sync_period
                if not await asyncio.to_thread(self.backend.in_sync):
                    log.warning("nftables table drifted from what was applied; full sync")
                    await self.sync(full=True)
                else:
                    self.last_ok = time.time()
            if now >= next_drops:
                next_drops = now + self.args.counter_period
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.read_drops)
            timeout = max(0.05, min(next_check, next_drops) - time.monotonic())
            await aio.wait_any(self.wake, self.stopping, timeout=timeout)

    def stop(self) -> None:
        self.stopping.set()
        for inf in self.informers:
            inf.stop(timeout=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="netpolicy", description="knet's NetworkPolicy enforcer (one per node)")
    kube_client.add_arguments(p)
    p.add_argument("--node-name", required=True, help="enforce for the pods whose spec.nodeName is this")
    p.add_argument("--metrics-bind-address", default="0.0.0.0:9641", help="host:port of /metrics and /healthz")
    p.add_argument("--min-sync-period", type=float, default=0.1, help="seconds to batch changes before a sync")
    p.add_argument("--sync-period", type=float, default=30.0, help="seconds between drift checks")
    p.add_argument("--counter-period", type=float, default=5.0, help="seconds between drop-counter reads")
    p.add_argument("--netns", default=None, help="program this named network namespace instead of our own")
    p.add_argument("--cleanup", action="store_true", help="remove the rules (stop enforcing) and exit")
    daemon.add_logging_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cleanup:
        logs.setup("netpolicy", args.log_level, fmt=args.logging_format)
        NftBackend(args.netns).remove()
        log.info("removed the netpolicy table; pods are no longer isolated")
        return 0

    async def amain() -> None:
        enforcer = Enforcer(args)
        daemon.serve(enforcer.stop, enforcer.metrics.registry, enforcer.health, args.metrics_bind_address)
        log.info("starting node=%s", args.node_name)
        await enforcer.run()
        log.info("stopped; rules left in place")

    return daemon.run("netpolicy", args.log_level, amain, logging_format=args.logging_format)


if __name__ == "__main__":
    raise SystemExit(main())
