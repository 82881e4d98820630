"""IPAM: the built-in host-local allocator, and delegation to any other IPAM plugin on CNI_PATH
(`delegate.py`).

Both return the same shape: {"ips": [{"address", "gateway"?}], "routes": [...], "dns": {...}}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from cni.errors import (
    ALREADY_EXISTS,
    DATAPATH_FAILURE,
    INVALID_CONFIG,
    IPAM_EXHAUSTED,
    NOT_AVAILABLE,
    CniError,
)
from cni.ipam_config import DEFAULT_DATA_DIR, HostLocalConfig, IPAddress, Range, parse_host_local
from cni.ipam_store import Store
from cni.request import Request


def iter_candidates(ranges: list[Range], last_reserved: str | None) -> Iterator[tuple[IPAddress, Range]]:
    """Every address of a range set once, starting right after the last reserved one (round
    robin, as host-local does, so a released address is not handed out again at once)."""
    start_range, start_ip = 0, ranges[0].start
    if last_reserved:
        try:
            last = ipaddress.ip_address(last_reserved)
        except ValueError:
            last = None
        for i, r in enumerate(ranges):
            if last is not None and last in r:
                if last < r.end:
                    start_range, start_ip = i, last + 1
                else:
                    start_range = (i + 1) % len(ranges)
                    start_ip = ranges[start_range].start
                break
    n = len(ranges)
    for step in range(n + 1):
        r = ranges[(start_range + step) % n]
        if step == 0:
            lo, hi = start_ip, r.end
        elif step == n:
            lo, hi = r.start, start_ip - 1  # the part of the first range skipped at the start
            if hi < lo:
                return
        else:
            lo, hi = r.start, r.end
        ip = lo
        while ip <= hi:
            yield ip, r
            if ip == hi:
                break
            ip += 1


def requested_ips(req: Request, runtime_config: dict) -> list[IPAddress]:
    """Static addresses asked for through CNI_ARGS IP=... or runtimeConfig.ips (capability "ips")."""
    raw: list[str] = []
    if req.args.get("IP"):
        raw += req.args["IP"].split(",")
    ips = runtime_config.get("ips")
    if isinstance(ips, list):
        raw += [str(x) for x in ips]
    try:
        return [ipaddress.ip_interface(x.strip()).ip for x in raw if x.strip()]
    except ValueError as e:
        raise CniError(INVALID_CONFIG, f"requested IP is invalid: {e}") from None


def host_local_add(cfg: HostLocalConfig, store: Store, container_id: str, ifname: str,
                   requested: list[IPAddress]) -> dict:
    """Reserve one address per range set (under the store lock) and build the IPAM result."""
    ips: list[dict] = []
    with store.locked():
        for held, (cid, ifn) in store.reservations().items():
            if cid == container_id and ifn == ifname:
                raise CniError(ALREADY_EXISTS, f"ipam: {held} is already allocated to container "
                               f"{container_id} interface {ifname}; duplicate allocation is not allowed")
        pending = list(requested)
        reserved: list[str] = []
        try:
            for index, ranges in enumerate(cfg.range_sets):
                ip, rng = _pick(store, ranges, index, container_id, ifname, pending)
                reserved.append(str(ip))
                entry = {"address": f"{ip}/{rng.subnet.prefixlen}"}
                if rng.gateway is not None:
                    entry["gateway"] = str(rng.gateway)
                ips.append(entry)
            if pending:
                raise CniError(INVALID_CONFIG, "ipam: requested IP(s) "
                               + ", ".join(map(str, pending)) + " are in none of the configured ranges")
        except BaseException:
            for addr in reserved:  # leave nothing half-made
                store.release(addr)
            raise
    return {"ips": ips, "routes": [r.to_json() for r in cfg.routes]}


def _pick(store: Store, ranges: list[Range], index: int, container_id: str, ifname: str,
          pending: list[IPAddress]) -> tuple[IPAddress, Range]:
    for want in list(pending):
        for r in ranges:
            if want in r:
                pending.remove(want)
                if want == r.gateway or not store.reserve(str(want), container_id, ifname, index):
                    raise CniError(ALREADY_EXISTS, f"ipam: requested IP {want} is not available")
                return want, r
    for ip, r in iter_candidates(ranges, store.last_reserved(index)):
        if ip == r.gateway:
            continue
        if store.reserve(str(ip), container_id, ifname, index):
            return ip, r
    desc = ", ".join(f"{r.subnet} ({r.start}-{r.end})" for r in ranges)
    raise CniError(IPAM_EXHAUSTED, f"ipam: no IP addresses available in range set {desc}")


def host_local_del(store: Store, container_id: str, ifname: str) -> list[str]:
    with store.locked():
        return store.release_by_id(container_id, ifname)


def host_local_gc(store: Store, valid: list[dict]) -> list[str]:
    keep = {(a.get("containerID", ""), a.get("ifname", "")) for a in valid}
    keep_ids = {cid for cid, _ in keep}
    released = []
    with store.locked():
        for ip, (cid, ifname) in store.reservations().items():
            if (cid, ifname) in keep or (not ifname and cid in keep_ids):
                continue
            store.release(ip)
            released.append(ip)
    return released


def host_local_has_free(cfg: HostLocalConfig, store: Store) -> bool:
    taken = set(store.reservations())
    for ranges in cfg.range_sets:
        free = sum(r.size() - (1 if r.gateway is not None and r.gateway in r else 0) for r in ranges)
        used = sum(1 for ip in taken if any(ipaddress.ip_address(ip) in r for r in ranges))
        if free - used <= 0:
            return False
    return True


class Ipam:
    """Dispatch to the built-in host-local, or exec `ipam.type` from CNI_PATH (spec: delegation)."""

    def __init__(self, network: str, ipam: dict, req: Request, stdin_conf: dict) -> None:
        self.network = network
        self.ipam = ipam
        self.req = req
        self.stdin_conf = stdin_conf
        self.builtin = ipam.get("type") == "host-local"

    def config(self) -> HostLocalConfig:
        return parse_host_local(self.ipam)

    def store(self) -> Store:
        # Releasing needs only where the state is, not valid ranges: DEL and GC must work even
        # when the configuration's subnet can no longer be read (e.g. flannel's subnet.env is gone).
        data_dir = self.ipam.get("dataDir") or DEFAULT_DATA_DIR
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            raise CniError(INVALID_CONFIG, f"ipam: dataDir {data_dir!r} must be an absolute path")
        return Store(data_dir, self.network)

    def add(self, runtime_config: dict) -> dict:
        if self.builtin:
            return host_local_add(self.config(), self.store(), self.req.container_id, self.req.ifname,
                                  requested_ips(self.req, runtime_config))
        result = self._delegate("ADD")
        if not result.get("ips"):
            raise CniError(INVALID_CONFIG, f"ipam plugin {self.ipam.get('type')} returned no addresses")
        return result

    def delete(self) -> None:
        if self.builtin:
            host_local_del(self.store(), self.req.container_id, self.req.ifname)
        elif self.ipam.get("type"):
            self._delegate("DEL")

    def reserved(self) -> list[str]:
        """The addresses host-local holds for this attachment (empty for a delegated IPAM)."""
        if not self.builtin:
            return []
        return [ip for ip, (cid, ifn) in self.store().reservations().items()
                if cid == self.req.container_id and ifn in (self.req.ifname, "")]

    def check(self, prev: dict) -> None:
        if not self.builtin:
            self._delegate("CHECK")
            return
        mine = set(self.reserved())
        for entry in prev.get("ips", []):
            ip = entry["address"].split("/")[0]
            if ip not in mine:
                raise CniError(DATAPATH_FAILURE, f"CHECK: ipam has no reservation of {ip} for container "
                               f"{self.req.container_id}")

    def gc(self, valid: list[dict]) -> None:
        if self.builtin:
            host_local_gc(self.store(), valid)
        elif self.ipam.get("type"):
            self._delegate("GC")

    def status(self) -> None:
        if self.builtin:
            if not host_local_has_free(self.config(), self.store()):
                raise CniError(NOT_AVAILABLE, f"ipam: no free addresses left in network {self.network}")
        else:
            self._delegate("STATUS")

    def _delegate(self, command: str) -> dict:
        # Imported here: only a delegated IPAM needs subprocess, which would cost every host-local
        # request on the direct path ~15% of its start-up.
        from cni import delegate
        return delegate.run(self.ipam.get("type", ""), command, self.req.env, self.req.path, self.stdin_conf)
