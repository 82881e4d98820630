"""The etcd subnet manager (flanneld without --kube-subnet-mgr): the network config at
<prefix>/config, a subnet lease per node under <prefix>/subnets/ (manager.py: acquire, renew,
watch), everyone's leases as the routing input.

Start-up waits for etcd and for the config key (logged every 10 s); afterwards an outage only
delays renewals and watch events: the data path stays as it is.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from typing import TypeVar

from flannel_py.config import NetworkConfig, parse_config
from flannel_py.lease import Lease, LeaseAttrs, LeaseError
from flannel_py.manager import Acquired, LeaseLost, Renewer, Snapshot, Watcher, acquire, parse_entries, parse_entry
from flannel_py.registry import EtcdUnavailable, Registry, WatchEvent
from flannel_py.subnets import is_allocatable

log = logging.getLogger("flannel_py.etcd")
T = TypeVar("T")


class EtcdSubnetManager:
    def __init__(self, args: argparse.Namespace, out: queue.Queue, stop: threading.Event) -> None:
        self.args = args
        self.out = out
        self.stop = stop
        self.leases: dict[str, Lease] = {}  # etcd key -> lease
        self.synced = False
        self.need_reacquire = False
        self.own: Acquired | None = None
        self.cfg: NetworkConfig | None = None
        self.renewer: Renewer | None = None
        self._reg = self.registry()

    def describe(self) -> dict[str, object]:
        return {"subnet_manager": "etcd", "etcd": self.args.etcd_endpoints, "prefix": self.args.etcd_prefix}

    def registry(self) -> Registry:
        a = self.args
        return Registry(a.etcd_endpoints, a.etcd_prefix, ca_cert=a.etcd_cafile, cert=a.etcd_certfile,
                        key=a.etcd_keyfile)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run fn until etcd answers (start-up must survive etcd starting after us)."""
        warned = 0.0
        while not self.stop.is_set():
            try:
                return fn()
            except EtcdUnavailable as e:
                if time.monotonic() - warned > 10:
                    log.warning("etcd unavailable, retrying", extra={"doing": what, "error": str(e)})
                    warned = time.monotonic()
                self.stop.wait(0.5)
        raise SystemExit(0)

    def network_config(self) -> NetworkConfig:
        warned = 0.0
        while True:
            raw = self._retry("reading config", self._reg.get_config)
            if raw is not None:
                self.cfg = parse_config(raw)
                return self.cfg
            if time.monotonic() - warned > 10:
                log.warning("no network config yet, waiting", extra={"key": self._reg.config_key})
                warned = time.monotonic()
            if self.stop.wait(0.5):
                raise SystemExit(0)

    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None, wait: bool = True,
                previous_v6: IPv6Network | None = None) -> Lease:
        """Get (or get back) our lease; with wait, ride out etcd outages (start-up only: the event
        loop must keep reconciling during an outage, so there it is one try per loop turn)."""
        cfg, a = self.cfg, self.args
        assert cfg is not None
        if self.own is not None:
            previous, previous_v6 = self.own.lease.subnet, self.own.lease.ipv6_subnet
        if previous is not None and not is_allocatable(cfg, previous):
            previous = None
        if previous_v6 is not None and (cfg.ipv6 is None or not is_allocatable(cfg.ipv6, previous_v6)):
            previous_v6 = None

        def attempt() -> Acquired:
            return acquire(self._reg, cfg, attrs, a.subnet_lease_ttl, previous, previous_v6=previous_v6)

        got = self._retry("acquiring lease", attempt) if wait else attempt()
        self.own = got
        log.info("lease acquired", extra={"subnet": str(got.lease.subnet), "key": got.key, "how": got.how,
                                          "ipv6_subnet": str(got.lease.ipv6_subnet or "-"),
                                          "etcd_lease": f"{got.etcd_lease:x}", "ttl": a.subnet_lease_ttl})
        if self.renewer is not None:
            self.renewer.set_lease(got.etcd_lease)
        self.need_reacquire = False
        return got.lease

    def start(self) -> None:
        assert self.own is not None
        self.renewer = Renewer(self.registry, self.args.subnet_lease_ttl, self.out, self.stop)
        self.renewer.set_lease(self.own.etcd_lease)
        self.renewer.start()
        Watcher(self.registry, self.out, self.stop, self.args.watch_idle_timeout).start()

    def handle(self, item: object) -> bool:
        """Apply one queue item to the lease map; True if the kernel may need changes."""
        assert self.own is not None
        own_key = self.own.key
        if isinstance(item, Snapshot):
            good, _ = parse_entries(item.kvs)
            self.leases = {key: lease for key, (lease, _kv) in good.items()}
            self.synced = True
            if own_key not in self.leases:
                log.warning("own lease missing from etcd, re-acquiring", extra={"key": own_key})
                self.need_reacquire = True
            return True
        if isinstance(item, WatchEvent):
            if item.kind == "delete":
                gone = self.leases.pop(item.key, None)
                log.info("lease removed", extra={"key": item.key})
                if item.key == own_key:
                    log.warning("own lease was deleted, re-acquiring", extra={"key": item.key})
                    self.need_reacquire = True
                return gone is not None
            try:
                lease = parse_entry(item.key, item.value)
            except (LeaseError, ValueError) as e:
                log.warning("skipping corrupt lease", extra={"key": item.key, "error": str(e)})
                return self.leases.pop(item.key, None) is not None
            if self.leases.get(item.key) != lease:
                log.info("lease added", extra={"key": item.key, "public_ip": str(lease.attrs.public_ip),
                                               "public_ipv6": str(lease.attrs.public_ipv6 or "-"),
                                               "backend": lease.attrs.backend_type,
                                               "vtep_mac": lease.attrs.vtep_mac or "-"})
            self.leases[item.key] = lease
            if item.key == own_key and lease.attrs != self.own.lease.attrs:
                log.warning("own lease was overwritten by someone else, re-acquiring", extra={"key": item.key})
                self.need_reacquire = True
            return True
        if isinstance(item, LeaseLost) and item.etcd_lease == self.own.etcd_lease:
            self.need_reacquire = True
        return False

    def close(self) -> None:
        self._reg.close()
