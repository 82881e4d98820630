"""Subnet lease management against etcd: acquire (race-free), renew, watch everyone's leases.

Acquire, as flanneld does it:
  1. a lease already carrying our PublicIP is ours again (a restart keeps its subnet): rewrite it
     with our current attributes under a fresh etcd lease, guarded by its mod_revision;
  2. else the subnet from our previous subnet.env, if it is still free;
  3. else the lowest free subnet.
A new key is written only if absent (an etcd transaction on create_revision == 0), so two nodes
starting at the same moment cannot both get one subnet: the loser lists again and moves on.
Dual-stack (the config's `ipv6` plan): the key names both subnets (flanneld's
`<v4>-<len>&<v6>-<len>`), each picked the same way from its own plan; a lease of ours is reused
only if it has the families the config asks for.

The renewer and the watcher run in their own threads and report to the daemon's queue; both
survive etcd outages by retrying, and the watcher resumes from the last revision it has seen
(or lists again when that revision was compacted), so no event is lost across an outage.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from flannel_py.config import NetworkConfig
from flannel_py.lease import Lease, LeaseAttrs, LeaseError, decode
from flannel_py.registry import Compacted, Created, KeyValue, Progress, Registry, WatchEvent
from flannel_py.subnets import Subnet, allocate, is_allocatable, parse_key, subnet_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acquired:
    lease: Lease
    key: str
    etcd_lease: int
    how: str  # "reused", "previous" or "new"


@dataclass(frozen=True)
class Snapshot:
    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class LeaseLost:
    etcd_lease: int


def parse_entry(key: str, value: bytes) -> Lease:
    """The Lease stored at a key; ValueError (LeaseError) with the reason for a bad one."""
    subnet, ipv6_subnet = parse_key(key)
    return Lease(subnet, decode(value), ipv6_subnet)


def parse_entries(kvs: list[KeyValue]) -> tuple[dict[str, tuple[Lease, KeyValue]], set[Subnet]]:
    """Usable leases by key, plus every subnet (of either family) whose key exists, usable or
    not: those are taken."""
    good: dict[str, tuple[Lease, KeyValue]] = {}
    taken: set[Subnet] = set()
    for kv in kvs:
        try:
            subnet, ipv6_subnet = parse_key(kv.key)
        except ValueError as e:
            log.warning("skipping key with a bad name", extra={"key": kv.key, "error": str(e)})
            continue
        taken.add(subnet)
        if ipv6_subnet is not None:
            taken.add(ipv6_subnet)
        try:
            good[kv.key] = (Lease(subnet, decode(kv.value), ipv6_subnet), kv)
        except LeaseError as e:
            log.warning("skipping corrupt lease", extra={"key": kv.key, "error": str(e)})
    return good, taken


def fits(cfg: NetworkConfig, lease: Lease) -> bool:
    """Whether the lease's subnets are ones this config hands out, in exactly its families."""
    if not is_allocatable(cfg, lease.subnet):
        return False
    if cfg.ipv6 is None or lease.ipv6_subnet is None:
        return cfg.ipv6 is None and lease.ipv6_subnet is None
    return is_allocatable(cfg.ipv6, lease.ipv6_subnet)


def acquire(reg: Registry, cfg: NetworkConfig, attrs: LeaseAttrs, ttl: int,
            previous: IPv4Network | None = None, tries: int = 20,
            previous_v6: IPv6Network | None = None) -> Acquired:
    value = attrs.encode()
    lost: set[Subnet] = set()
    for _ in range(tries):
        kvs, _rev = reg.list_subnets()
        good, taken = parse_entries(kvs)
        mine = [(lease, kv) for lease, kv in good.values()
                if lease.attrs.public_ip == attrs.public_ip and fits(cfg, lease)]
        if mine:
            mine.sort(key=lambda item: (item[0].subnet != previous, item[0].subnet))
            lease, kv = mine[0]
            etcd_lease = reg.grant(ttl)
            if reg.replace_if_unchanged(kv.key, value, etcd_lease, kv.mod_revision):
                if kv.lease and kv.lease != etcd_lease:
                    # The key has moved to the new etcd lease; the old one holds nothing now.
                    with contextlib.suppress(Exception):
                        reg.revoke(kv.lease)
                return Acquired(Lease(lease.subnet, attrs, lease.ipv6_subnet), kv.key, etcd_lease, "reused")
            _quiet_revoke(reg, etcd_lease)
            continue
        subnet = allocate(cfg, taken, preferred=previous, exclude=lost)
        ipv6_subnet = allocate(cfg.ipv6, taken, preferred=previous_v6, exclude=lost) if cfg.ipv6 else None
        assert isinstance(subnet, IPv4Network) and (ipv6_subnet is None or isinstance(ipv6_subnet, IPv6Network))
        key = reg.subnet_key(subnet_key(subnet, ipv6_subnet))
        etcd_lease = reg.grant(ttl)
        if reg.create_if_absent(key, value, etcd_lease):
            return Acquired(Lease(subnet, attrs, ipv6_subnet), key, etcd_lease,
                            "previous" if subnet == previous else "new")
        log.info("subnet taken by another node meanwhile, trying again", extra={"subnet": str(subnet)})
        _quiet_revoke(reg, etcd_lease)
        lost.add(subnet)
        if ipv6_subnet is not None:
            lost.add(ipv6_subnet)
    raise RuntimeError(f"could not acquire a subnet lease after {tries} attempts (heavy contention?)")


def _quiet_revoke(reg: Registry, etcd_lease: int) -> None:
    with contextlib.suppress(Exception):
        reg.revoke(etcd_lease)


def renew_interval(ttl: int) -> float:
    """Renew at a third of the TTL (at most hourly): two renewals can fail before expiry."""
    return max(0.5, min(ttl / 3.0, 3600.0))


class Renewer(threading.Thread):
    """Keeps the etcd lease behind our subnet key alive; reports LeaseLost when it is gone."""

    def __init__(self, make_registry: Callable[[], Registry], ttl: int, out: queue.Queue,
                 stop: threading.Event) -> None:
        super().__init__(name="renewer", daemon=True)
        self.make_registry = make_registry
        self.ttl = ttl
        self.out = out
        self.stop = stop
        self.etcd_lease = 0
        self._lock = threading.Lock()

    def set_lease(self, etcd_lease: int) -> None:
        with self._lock:
            self.etcd_lease = etcd_lease

    def run(self) -> None:
        reg = self.make_registry()
        interval = renew_interval(self.ttl)
        wait, failing = interval, False
        while not self.stop.wait(wait):
            with self._lock:
                current = self.etcd_lease
            try:
                ttl = reg.keepalive(current)
            except Exception as e:  # an outage must never end renewal
                if not failing:
                    log.warning("lease renewal failed, retrying", extra={"etcd_lease": f"{current:x}", "error": str(e)})
                failing, wait = True, min(1.0, interval)
                continue
            if failing:
                log.info("lease renewal works again", extra={"etcd_lease": f"{current:x}", "ttl": ttl})
            failing, wait = False, interval
            if ttl < 0:
                log.error("etcd lease is gone (expired or revoked)", extra={"etcd_lease": f"{current:x}"})
                self.out.put(LeaseLost(current))
                wait = min(1.0, interval)


class Watcher(threading.Thread):
    """List once, then watch the subnets prefix forever, resuming from the last revision."""

    def __init__(self, make_registry: Callable[[], Registry], out: queue.Queue, stop: threading.Event,
                 idle_timeout: float = 30.0) -> None:
        super().__init__(name="watcher", daemon=True)
        self.make_registry = make_registry
        self.out = out
        self.stop = stop
        self.idle_timeout = idle_timeout
        self.revision: int | None = None

    def run(self) -> None:
        reg = self.make_registry()
        backoff, outage = 0.1, False
        while not self.stop.is_set():
            try:
                if self.revision is None:
                    kvs, rev = reg.list_subnets()
                    self.out.put(Snapshot(kvs, rev))
                    self.revision = rev
                    log.info("subnets listed", extra={"count": len(kvs), "revision": rev})
                for item in reg.watch(reg.subnets_prefix, self.revision + 1, self.idle_timeout):
                    if isinstance(item, Created):
                        if outage:
                            log.info("etcd reachable again, watch resumed", extra={"from_revision": self.revision + 1})
                        backoff, outage = 0.1, False
                    elif isinstance(item, Progress):
                        self.revision = max(self.revision, item.revision)
                    elif isinstance(item, WatchEvent):
                        self.out.put(item)
                        self.revision = max(self.revision, item.revision)
                    if self.stop.is_set():
                        return
            except Compacted as e:
                log.warning("watch revision compacted, listing again", extra={"error": str(e)})
                self.revision = None
            except Exception as e:  # the watcher must outlive any outage or bad response
                if not outage:
                    log.warning("etcd watch interrupted, retrying", extra={"error": str(e)})
                outage = True
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
