"""flannel-py: the per-node daemon (console script), flanneld's behaviour with either subnet
manager: etcd v3 leases (etcd_manager.py, the default as in flanneld) or, with --kube-subnet-mgr,
the Node's podCIDR and flannel's Node annotations (kube_manager.py).

Start-up: the network config (etcd <prefix>/config, or net-conf.json), the backend device, our
subnet (an etcd lease, or the podCIDR with our annotations published), the device's address,
subnet.env, the masquerade rules (--ip-masq). Then one loop applies the other nodes' leases from
the manager's watcher to the kernel (reconcile: diff desired vs actual), re-acquires our lease if
it is lost, and resyncs periodically to repair anything changed behind its back.

Dual-stack (EnableIPv6 in the config): the underlay interface's IPv6 address is our PublicIPv6
(flanneld's rule: none there is a start-up error), the lease and subnet.env carry the IPv6 subnet,
the backend programs IPv6 as well (backend_vxlan.py, backend_hostgw.py), --ip-masq and the forward
rules go into ip6tables too.

SIGTERM/SIGINT stop the daemon and leave the data path as it is (as flanneld does): pods keep
talking while it restarts, and the etcd lease (or the Node annotations) outlive us, so the
restarted daemon gets the same subnet back.
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
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from flannel_py import masq, subnet_env
from flannel_py.backend_hostgw import HostGwBackend
from flannel_py.backend_vxlan import VxlanBackend
from flannel_py.config import HOST_GW, ConfigError, NetworkConfig
from flannel_py.kube_annotations import DEFAULT_PREFIX as DEFAULT_ANNOTATION_PREFIX
from flannel_py.lease import Lease, LeaseAttrs
from flannel_py.registry import DEFAULT_PREFIX
from flannel_py.subnets import SubnetExhausted
from knet import daemon as knet_daemon
from knet import links, logs

log = logging.getLogger("flannel_py")

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_NET_CONF = "/etc/kube-flannel/net-conf.json"
DEFAULT_TTL = 24 * 3600


class _Stop:
    pass


class SubnetManager(Protocol):
    """What the loop needs from etcd_manager.EtcdSubnetManager and kube_manager.KubeSubnetManager."""

    leases: dict[str, Lease]   # every node's lease (ours included), by etcd key or node name
    synced: bool               # the first full view of the leases has been handled
    need_reacquire: bool       # our lease is gone or changed behind us

    def describe(self) -> dict[str, object]: ...
    def network_config(self) -> NetworkConfig: ...
    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None, wait: bool = True,
                previous_v6: IPv6Network | None = None) -> Lease | None: ...
    def start(self) -> None: ...
    def handle(self, item: object) -> bool: ...
    def close(self) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flannel-py", description="flanneld-like overlay daemon")
    p.add_argument("--kube-subnet-mgr", action="store_true",
                   help="subnets from the Nodes' podCIDR, leases as Node annotations (no etcd)")
    p.add_argument("--kubeconfig-file", "--kubeconfig", dest="kubeconfig_file", default=None,
                   help="kube subnet manager: kubeconfig (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--kube-annotation-prefix", default=DEFAULT_ANNOTATION_PREFIX,
                   help="kube subnet manager: prefix of the Node annotations")
    p.add_argument("--net-config-path", default=DEFAULT_NET_CONF,
                   help="kube subnet manager: the network config file (kube-flannel's ConfigMap key net-conf.json)")
    p.add_argument("--node-name", default=None, help="kube subnet manager: this node's name (default: $NODE_NAME)")
    p.add_argument("--set-node-network-unavailable", default=True, action=argparse.BooleanOptionalAction,
                   help="kube subnet manager: set the Node's NetworkUnavailable condition False once the subnet "
                        "file is written (flanneld's default)")
    p.add_argument("--etcd-endpoints", default="http://127.0.0.1:2379", help="comma-separated etcd URLs")
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX, help="key root (config at <prefix>/config)")
    p.add_argument("--etcd-cafile", default=None)
    p.add_argument("--etcd-certfile", default=None)
    p.add_argument("--etcd-keyfile", default=None)
    p.add_argument("--iface", default=None,
                   help="underlay interface name or IP (default: the default route's, else the first non-lo)")
    p.add_argument("--public-ip", default=None, help="address other nodes reach us at (default: --iface's first IPv4)")
    p.add_argument("--public-ipv6", default=None,
                   help="dual-stack: IPv6 address other nodes reach us at (default: --iface's first global IPv6)")
    p.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE)
    p.add_argument("--ip-masq", action="store_true", help="masquerade pod traffic leaving the cluster Network")
    p.add_argument("--iptables-forward-rules", default=True, action=argparse.BooleanOptionalAction,
                   help="accept forwarding to/from the Network in FORWARD (flanneld's default)")
    p.add_argument("--subnet-lease-ttl", type=int, default=DEFAULT_TTL, help="etcd lease TTL in seconds (24h)")
    p.add_argument("--resync", type=float, default=10.0, help="seconds between full kernel/iptables resyncs")
    p.add_argument("--watch-idle-timeout", type=float, default=30.0,
                   help="re-establish an etcd watch stream idle this long (detects silently dead etcd peers)")
    knet_daemon.add_logging_arguments(p)
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


def find_public_ipv6(name: str, public_ipv6: str | None) -> IPv6Address:
    """The underlay's IPv6 address for a dual-stack overlay: --public-ipv6, else the interface's
    first global one (flanneld refuses to start dual-stack without one, and so does this)."""
    if public_ipv6:
        return IPv6Address(public_ipv6)
    with links.iproute() as ipr:
        found = [ipaddress.IPv6Interface(a).ip for a in links.addresses(ipr, name) if ":" in a]
    usable = [ip for ip in found if not ip.is_link_local]
    if not usable:
        raise ValueError(f"failed to find IPv6 address for interface {name} (EnableIPv6 needs one on the "
                         "underlay, as flanneld does; or pass --public-ipv6)")
    return usable[0]


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.manager: SubnetManager = self._manager()
        self.own: Lease | None = None
        self.cfg: NetworkConfig | None = None
        self.backend: VxlanBackend | HostGwBackend | None = None
        self.attrs: LeaseAttrs | None = None

    def _manager(self) -> SubnetManager:
        if self.args.kube_subnet_mgr:
            from flannel_py.kube_manager import KubeSubnetManager
            return KubeSubnetManager(self.args, self.events, self.stop)
        from flannel_py.etcd_manager import EtcdSubnetManager
        return EtcdSubnetManager(self.args, self.events, self.stop)

    def start(self) -> None:
        a = self.args
        underlay, public_ip = find_underlay(a.iface, a.public_ip)
        log.info("starting", extra={**self.manager.describe(), "iface": underlay, "public_ip": str(public_ip)})
        self.cfg = cfg = self.manager.network_config()
        log.info("network config", extra={"network": str(cfg.network), "subnet_len": cfg.subnet_len,
                                          "subnet_min": str(cfg.subnet_min), "subnet_max": str(cfg.subnet_max),
                                          "backend": cfg.backend.type, "vni": cfg.backend.vni,
                                          "port": cfg.backend.port})
        public_ipv6 = None
        if cfg.ipv6 is not None:
            public_ipv6 = find_public_ipv6(underlay, a.public_ipv6)
            log.info("dual-stack", extra={"ipv6_network": str(cfg.ipv6.network), "ipv6_subnet_len": cfg.ipv6.subnet_len,
                                          "public_ipv6": str(public_ipv6)})
        if cfg.backend.type == HOST_GW:
            self.backend = HostGwBackend(cfg.network, underlay, public_ip,
                                         ipv6_network=cfg.ipv6.network if cfg.ipv6 else None,  # type: ignore[arg-type]
                                         public_ipv6=public_ipv6)
        else:
            self.backend = VxlanBackend(cfg.backend, underlay, public_ip, public_ipv6=public_ipv6)
        self.attrs = self.backend.prepare()
        lease = self.manager.acquire(self.attrs, subnet_env.previous_subnet(a.subnet_file),
                                     previous_v6=subnet_env.previous_ipv6_subnet(a.subnet_file))
        assert lease is not None  # waiting acquire: a lease or an exception
        self._configure(lease)

    def _configure(self, lease: Lease) -> None:
        """Our subnet on the device, in subnet.env and in the masquerade rules."""
        assert self.cfg is not None and self.backend is not None
        if self.own and lease.subnet != self.own.subnet:
            log.error("subnet changed: pods on the old subnet lose connectivity",
                      extra={"old": str(self.own.subnet), "new": str(lease.subnet)})
        self.own = lease
        self.backend.configure(lease)
        ipv6_network = self.cfg.ipv6.network if self.cfg.ipv6 else None
        subnet_env.write(self.args.subnet_file, self.cfg.network, lease.subnet, self.backend.mtu, self.args.ip_masq,
                         ipv6_network, lease.ipv6_subnet)  # type: ignore[arg-type]
        log.info("wrote subnet file", extra={"path": self.args.subnet_file, "subnet": str(lease.subnet),
                                             "ipv6_subnet": str(lease.ipv6_subnet or "-"), "mtu": self.backend.mtu})
        self._ensure_iptables(log_changes=False)

    def _ensure_iptables(self, log_changes: bool = True) -> None:
        assert self.cfg is not None and self.own is not None
        families: list[tuple[masq.Net, masq.Net]] = [(self.cfg.network, self.own.subnet)]
        if self.cfg.ipv6 is not None and self.own.ipv6_subnet is not None:
            families.append((self.cfg.ipv6.network, self.own.ipv6_subnet))
        for network, subnet in families:
            try:
                if self.args.ip_masq and masq.ensure_masq(network, subnet) and log_changes:
                    log.info("masquerade rules repaired", extra={"chain": masq.MASQ_CHAIN, "network": str(network)})
                if self.args.iptables_forward_rules and masq.ensure_forward(network) and log_changes:
                    log.info("forward rules repaired", extra={"chain": masq.FWD_CHAIN, "network": str(network)})
            except Exception as e:
                log.error("iptables rules failed", extra={"error": str(e), "network": str(network)})

    # --- event loop ---------------------------------------------------------------------------

    def reconcile(self) -> None:
        assert self.own is not None and self.backend is not None
        if not self.manager.synced:
            return  # never remove entries before we know the full set of leases
        leases = list(self.manager.leases.values())
        try:
            desired = self.backend.desired(self.own, leases)
            changes = self.backend.reconcile(self.own, leases)
        except Exception as e:
            log.error("reconcile failed, will retry", extra={"error": str(e)})
            return
        if changes:
            log.info("reconciled", extra={"added": changes.added, "removed": changes.removed,
                                          "remotes": len(desired.routes)})
        for subnet, reason in desired.skipped:
            log.debug("lease ignored", extra={"subnet": subnet, "reason": reason})

    def _reacquire(self) -> bool:
        """One attempt (the loop must keep reconciling meanwhile); True when our lease is back."""
        assert self.attrs is not None and self.own is not None
        try:
            lease = self.manager.acquire(self.attrs, self.own.subnet, wait=False)
        except (ConfigError, SystemExit):
            raise
        except Exception as e:
            log.error("re-acquiring lease failed, will retry", extra={"error": str(e)})
            return False
        if lease is None:
            return False
        if lease != self.own:  # the same lease back (a renewed etcd lease, our annotations): nothing to redo
            self._configure(lease)
        return True

    def run(self) -> int:
        try:
            self.start()
            self.manager.start()
            return self._loop()
        finally:
            self.stop.set()
            self.manager.close()

    def _loop(self) -> int:
        next_resync = time.monotonic() + self.args.resync
        while True:
            timeout = max(0.0, min(next_resync - time.monotonic(), 1.0 if self.manager.need_reacquire else 3600.0))
            dirty = False
            try:
                item = self.events.get(timeout=timeout)
                while True:  # drain: one reconcile for a burst of events
                    if isinstance(item, _Stop):
                        log.info("stopping; data path and lease left in place")
                        return 0
                    dirty |= self.manager.handle(item)
                    item = self.events.get_nowait()
            except queue.Empty:
                pass
            if self.manager.need_reacquire:
                dirty |= self._reacquire()
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.args.resync
                self._ensure_iptables()
                dirty = True
            if dirty:
                self.reconcile()

    def request_stop(self, *_args: object) -> None:
        # The event wakes the main loop; the flag also ends start-up waits and the threads.
        self.events.put(_Stop())
        self.stop.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("flannel-py", args.log_level, fmt=args.logging_format)
    try:
        daemon = Daemon(args)
    except ConfigError as e:
        log.error("fatal", extra={"error": str(e)})
        return 1
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        return daemon.run()
    except (ConfigError, SubnetExhausted, ValueError) as e:
        log.error("fatal", extra={"error": str(e)})
        return 1
    except SystemExit as e:
        return int(e.code or 0)
    except Exception:
        log.exception("fatal unexpected error")
        return 1


if __name__ == "__main__":
    sys.exit(main())
