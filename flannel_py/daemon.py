"""flannel-py: the per-node daemon (console script), flanneld's behaviour over etcd v3.

Start-up: wait for <prefix>/config, create the backend device, acquire a subnet lease, address
the device, write subnet.env, install the masquerade rules (--ip-masq). Then one loop applies
lease events from the watcher to the kernel (reconcile: diff desired vs actual), re-acquires the
lease if it is lost, and resyncs periodically to repair anything changed behind its back.

SIGTERM/SIGINT stop the daemon and leave the data path as it is (as flanneld does): pods keep
talking while it restarts, and the etcd lease outlives us until its TTL, so the restarted daemon
gets the same subnet back.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import TypeVar

from flannel_py import masq, subnet_env
from flannel_py.backend_hostgw import HostGwBackend
from flannel_py.backend_vxlan import VxlanBackend
from flannel_py.config import HOST_GW, ConfigError, NetworkConfig, parse_config
from flannel_py.lease import Lease, LeaseAttrs, LeaseError
from flannel_py.manager import Acquired, LeaseLost, Renewer, Snapshot, Watcher, acquire, parse_entries, parse_entry
from flannel_py.registry import DEFAULT_PREFIX, EtcdUnavailable, Registry, WatchEvent
from flannel_py.subnets import SubnetExhausted, is_allocatable
from knet import links, logs

log = logging.getLogger("flannel_py")

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_TTL = 24 * 3600
T = TypeVar("T")


class _Stop:
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flannel-py", description="flanneld-like overlay daemon (etcd v3 leases)")
    p.add_argument("--etcd-endpoints", default="http://127.0.0.1:2379", help="comma-separated etcd URLs")
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help="key root (config at <prefix>/config)")
    p.add_argument("--etcd-cafile", default=None)
    p.add_argument("--etcd-certfile", default=None)
    p.add_argument("--etcd-keyfile", default=None)
    p.add_argument("--iface", default=None,
                   help="underlay interface name or IP (default: the default route's, else the first non-lo)")
    p.add_argument("--public-ip", default=None, help="address other nodes reach us at (default: --iface's first IPv4)")
    p.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE)
    p.add_argument("--ip-masq", action="store_true", help="masquerade pod traffic leaving the cluster Network")
    p.add_argument("--iptables-forward-rules", default=True, action=argparse.BooleanOptionalAction,
                   help="accept forwarding to/from the Network in FORWARD (flanneld's default)")
    p.add_argument("--subnet-lease-ttl", type=int, default=DEFAULT_TTL, help="etcd lease TTL in seconds (24h)")
    p.add_argument("--resync", type=float, default=10.0, help="seconds between full kernel/iptables resyncs")
    p.add_argument("--watch-idle-timeout", type=float, default=30.0,
                   help="re-establish a watch stream idle this long (detects silently dead etcd peers)")
    p.add_argument("--log-level", default="info")
    return p


def find_underlay(iface: str | None, public_ip: str | None) -> tuple[str, IPv4Address]:
    """(interface name, public IP), the way flanneld picks them."""
    with links.iproute() as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.link("dump")}

        def v4(name: str) -> list[str]:
            return [a.split("/")[0] for a in links.addresses(ipr, name) if ":" not in a]

        name = None
        if iface:
            try:
                ip = str(ipaddress.IPv4Address(iface))
                name = next((n for n in names.values() if ip in v4(n)), None)
                if name is None:
                    raise ValueError(f"no interface has the address {iface}")
            except ipaddress.AddressValueError:
                if iface not in names.values():
                    raise ValueError(f"interface {iface} does not exist") from None
                name = iface
        else:
            name = links.default_route_ifname(ipr)
            if name is None:
                name = next((names[i] for i in sorted(names) if names[i] != "lo" and v4(names[i])), None)
            if name is None:
                raise ValueError("no interface with an IPv4 address besides lo; pass --iface")
        if public_ip:
            return name, IPv4Address(public_ip)
        addrs = v4(name)
        if not addrs:
            raise ValueError(f"interface {name} has no IPv4 address; pass --public-ip")
        return name, IPv4Address(addrs[0])


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.leases: dict[str, Lease] = {}
        self.synced = False
        self.own: Acquired | None = None
        self.cfg: NetworkConfig | None = None
        self.backend: VxlanBackend | HostGwBackend | None = None
        self.need_reacquire = False
        self.attrs: LeaseAttrs | None = None

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
                    log.warning("%s: etcd unavailable, retrying error=%s", what, e)
                    warned = time.monotonic()
                self.stop.wait(0.5)
        raise SystemExit(0)

    def wait_config(self, reg: Registry) -> NetworkConfig:
        warned = 0.0
        while True:
            raw = self._retry("reading config", reg.get_config)
            if raw is not None:
                return parse_config(raw)
            if time.monotonic() - warned > 10:
                log.warning("no network config yet, waiting key=%s", reg.config_key)
                warned = time.monotonic()
            if self.stop.wait(0.5):
                raise SystemExit(0)

    def start(self) -> None:
        a = self.args
        underlay, public_ip = find_underlay(a.iface, a.public_ip)
        log.info("starting etcd=%s prefix=%s iface=%s public_ip=%s", a.etcd_endpoints, a.etcd_prefix, underlay,
                 public_ip)
        reg = self.registry()
        self.cfg = cfg = self.wait_config(reg)
        log.info("network config network=%s subnet_len=%d subnet_min=%s subnet_max=%s backend=%s vni=%d port=%d",
                 cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max, cfg.backend.type,
                 cfg.backend.vni, cfg.backend.port)
        if cfg.backend.type == HOST_GW:
            self.backend = HostGwBackend(cfg.network, underlay, public_ip)
        else:
            self.backend = VxlanBackend(cfg.backend, underlay, public_ip)
        self.attrs = self.backend.prepare()
        self._acquire(reg)
        reg.close()

    def _acquire(self, reg: Registry, wait: bool = True) -> None:
        """Get (or get back) our lease; with wait, ride out etcd outages (start-up only)."""
        assert self.cfg is not None and self.backend is not None
        cfg, a = self.cfg, self.args
        previous = self.own.lease.subnet if self.own else subnet_env.previous_subnet(a.subnet_file)
        if previous is not None and not is_allocatable(cfg, previous):
            previous = None
        attrs = self.attrs
        assert attrs is not None

        def attempt() -> Acquired:
            return acquire(reg, cfg, attrs, a.subnet_lease_ttl, previous)

        # The event loop must keep reconciling during an outage: there, one try per loop turn.
        got = self._retry("acquiring lease", attempt) if wait else attempt()
        if self.own and got.lease.subnet != self.own.lease.subnet:
            log.error("subnet changed: pods on the old subnet lose connectivity old=%s new=%s",
                      self.own.lease.subnet, got.lease.subnet)
        self.own = got
        log.info("lease acquired subnet=%s key=%s how=%s etcd_lease=%x ttl=%d", got.lease.subnet, got.key, got.how,
                 got.etcd_lease, a.subnet_lease_ttl)
        self.backend.configure(got.lease)
        subnet_env.write(a.subnet_file, cfg.network, got.lease.subnet, self.backend.mtu, a.ip_masq)
        log.info("wrote subnet file path=%s subnet=%s mtu=%d", a.subnet_file, got.lease.subnet, self.backend.mtu)
        self._ensure_iptables(log_changes=False)
        self.need_reacquire = False

    def _ensure_iptables(self, log_changes: bool = True) -> None:
        assert self.cfg is not None and self.own is not None
        try:
            if self.args.ip_masq and masq.ensure_masq(self.cfg.network, self.own.lease.subnet) and log_changes:
                log.info("masquerade rules repaired chain=%s", masq.MASQ_CHAIN)
            if self.args.iptables_forward_rules and masq.ensure_forward(self.cfg.network) and log_changes:
                log.info("forward rules repaired chain=%s", masq.FWD_CHAIN)
        except Exception as e:
            log.error("iptables rules failed error=%s", e)

    # --- event loop ---------------------------------------------------------------------------

    def handle(self, item: object) -> bool:
        """Apply one queue item to the lease map; True if the kernel may need changes."""
        assert self.own is not None
        if isinstance(item, Snapshot):
            good, _ = parse_entries(item.kvs)
            self.leases = {key: lease for key, (lease, _kv) in good.items()}
            self.synced = True
            if self.own.key not in self.leases:
                log.warning("own lease missing from etcd, re-acquiring key=%s", self.own.key)
                self.need_reacquire = True
            return True
        if isinstance(item, WatchEvent):
            if item.kind == "delete":
                gone = self.leases.pop(item.key, None)
                log.info("lease removed key=%s", item.key)
                if item.key == self.own.key:
                    log.warning("own lease was deleted, re-acquiring key=%s", item.key)
                    self.need_reacquire = True
                return gone is not None
            try:
                lease = parse_entry(item.key, item.value)
            except (LeaseError, ValueError) as e:
                log.warning("skipping corrupt lease key=%s error=%s", item.key, e)
                return self.leases.pop(item.key, None) is not None
            if self.leases.get(item.key) != lease:
                log.info("lease added key=%s public_ip=%s backend=%s vtep_mac=%s", item.key, lease.attrs.public_ip,
                         lease.attrs.backend_type, lease.attrs.vtep_mac or "-")
            self.leases[item.key] = lease
            if item.key == self.own.key and lease.attrs != self.own.lease.attrs:
                log.warning("own lease was overwritten by someone else, re-acquiring key=%s", item.key)
                self.need_reacquire = True
            return True
        if isinstance(item, LeaseLost) and item.etcd_lease == self.own.etcd_lease:
            self.need_reacquire = True
        return False

    def reconcile(self) -> None:
        assert self.own is not None and self.backend is not None
        if not self.synced:
            return  # never remove entries before we know the full set of leases
        try:
            desired = self.backend.desired(self.own.lease, list(self.leases.values()))
            changes = self.backend.reconcile(self.own.lease, list(self.leases.values()))
        except Exception as e:
            log.error("reconcile failed, will retry error=%s", e)
            return
        if changes:
            log.info("reconciled added=%d removed=%d remotes=%d", changes.added, changes.removed, len(desired.routes))
        for subnet, reason in desired.skipped:
            log.debug("lease ignored subnet=%s reason=%s", subnet, reason)

    def run(self) -> int:
        self.start()
        assert self.own is not None
        renewer = Renewer(self.registry, self.args.subnet_lease_ttl, self.events, self.stop)
        renewer.set_lease(self.own.etcd_lease)
        renewer.start()
        Watcher(self.registry, self.events, self.stop, self.args.watch_idle_timeout).start()
        reg = self.registry()
        next_resync = time.monotonic() + self.args.resync
        while True:
            timeout = max(0.0, min(next_resync - time.monotonic(), 1.0 if self.need_reacquire else 3600.0))
            dirty = False
            try:
                item = self.events.get(timeout=timeout)
                while True:  # drain: one reconcile for a burst of events
                    if isinstance(item, _Stop):
                        log.info("stopping; data path and lease left in place")
                        self.stop.set()
                        return 0
                    dirty |= self.handle(item)
                    item = self.events.get_nowait()
            except queue.Empty:
                pass
            if self.need_reacquire:
                try:
                    self._acquire(reg, wait=False)
                    renewer.set_lease(self.own.etcd_lease)
                    dirty = True
                except SystemExit:
                    return 0
                except Exception as e:
                    log.error("re-acquiring lease failed, will retry error=%s", e)
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.args.resync
                self._ensure_iptables()
                dirty = True
            if dirty:
                self.reconcile()

    def request_stop(self, *_args: object) -> None:
        # The event wakes the main loop; the flag also ends start-up retries and the threads.
        self.events.put(_Stop())
        self.stop.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("flannel-py", args.log_level)
    daemon = Daemon(args)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        return daemon.run()
    except (ConfigError, SubnetExhausted, ValueError) as e:
        log.error("fatal error=%s", e)
        return 1
    except SystemExit as e:
        return int(e.code or 0)
    except Exception:
        log.exception("fatal unexpected error")
        return 1


if __name__ == "__main__":
    sys.exit(main())
