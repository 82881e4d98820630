"""The record store: Kubernetes objects in, DNS records out (pure; no I/O, no threads).

Record forms follow the Kubernetes DNS-Based Service Discovery specification (schema 1.1.0):
  <svc>.<ns>.svc.<zone>               A/AAAA  ClusterIP(s); headless: every ready endpoint address
  <hostname>.<svc>.<ns>.svc.<zone>    A/AAAA  headless endpoints (hostname field, else the dashed IP)
  _<port>._<proto>.<svc>.<ns>.svc.<zone> SRV  named ports; target the service (ClusterIP) or each
                                              endpoint's name (headless, with the endpoint's port)
  <reversed ip>.in-addr.arpa / ip6.arpa PTR   ClusterIPs -> service; headless endpoints -> their name
  <svc>.<ns>.svc.<zone>               CNAME   ExternalName services
  <a-b-c-d>.<ns>.pod.<zone>           A/AAAA  pods (synthesised in "insecure" mode; from Pods when
                                              "verified")
  dns-version.<zone>                  TXT     the schema version
  <zone>                              SOA, NS (ns.dns.<zone>)

SRV priority and weight are left open by the specification; like CoreDNS we use priority 0 and
split a weight of 100 evenly over the records of one name, so RFC 2782 clients spread load evenly.

Each Service (with its EndpointSlices) and each Pod owns a set of records. `RecordStore` merges
owners (two headless services may publish a PTR for the same pod IP) and tracks empty non-terminals
(a name with records below it exists: NODATA, not NXDOMAIN). Every update returns the names whose
answers may have changed, which is what the answer cache invalidates.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from kdns.wire import AAAA, CNAME, NS, PTR, RR, SOA, SRV, TXT, A
from knet.kube.endpoints import publishes_not_ready, resolve
from knet.kube.models import EndpointSlice, Pod, Service

Records = dict[str, dict[int, list[RR]]]  # name -> type -> records
STATIC = ""  # the owner key of the zone's own records


@dataclass(frozen=True)
class Config:
    zone: str = "cluster.local"
    ttl: int = 5  # CoreDNS's default: clients follow endpoint changes within seconds
    negative_ttl: int = 5  # SOA minimum: a service created right after a miss is found soon
    pods: str = "insecure"  # insecure | verified | disabled
    dns_version: str = "1.1.0"
    ns_addresses: tuple[str, ...] = field(default=())  # A/AAAA of ns.dns.<zone> (the server's own)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", normalize(self.zone))
        if self.pods not in ("insecure", "verified", "disabled"):
            raise ValueError(f"pods mode {self.pods!r}: insecure, verified or disabled")


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def valid_name(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(0 < len(lab) <= 63 and lab.isascii() for lab in labels)


def address_record(owner: str, ip: str, ttl: int) -> RR:
    addr = ipaddress.ip_address(ip)
    return (owner, A if addr.version == 4 else AAAA, ttl, addr.packed)


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def dashed(ip: str) -> str:
    """The system-assigned endpoint hostname for an address without one (as CoreDNS names it)."""
    return ip.replace(".", "-").replace(":", "-")


def _add(records: Records, rr: RR) -> None:
    lst = records.setdefault(rr[0], {}).setdefault(rr[1], [])
    if rr not in lst:
        lst.append(rr)


def _finish(records: Records) -> Records:
    """Deterministic order, and SRV weights split over each name's records."""
    for types in records.values():
        for rtype, lst in types.items():
            lst.sort(key=lambda rr: rr[3])
            if rtype == SRV:
                weight = max(1, 100 // len(lst))
                lst[:] = [(o, t, ttl, (prio, weight, port, target)) for o, t, ttl, (prio, _, port, target) in lst]
    return records


def service_records(svc: Service, slices: Iterable[EndpointSlice], cfg: Config) -> Records:
    ns, name = svc.metadata.namespace or "default", svc.metadata.name
    fqdn = f"{name}.{ns}.svc.{cfg.zone}".lower()
    ttl = cfg.ttl
    records: Records = {}
    if svc.spec.type == "ExternalName":
        target = normalize(svc.spec.external_name or "")
        if valid_name(target):
            _add(records, (fqdn, CNAME, ttl, target))
        return records
    if not svc.is_headless:
        ips = svc.cluster_ips
        for ip in ips:
            _add(records, address_record(fqdn, ip, ttl))
            _add(records, (reverse_name(ip), PTR, ttl, fqdn))
        if ips:
            for port in svc.spec.ports:
                if port.name:
                    srv = f"_{port.name}._{port.protocol.lower()}.{fqdn}".lower()
                    _add(records, (srv, SRV, ttl, (0, 100, port.port, fqdn)))
        return _finish(records)
    # Headless: the endpoints themselves (both families; ready ones unless the Service publishes
    # not-ready addresses), each named by its hostname or its dashed address; SRV per named port
    # with each endpoint's own port number.
    eps = resolve(slices).published(publishes_not_ready(svc))
    for ep in eps.endpoints:
        target = f"{(ep.hostname or dashed(ep.address)).lower()}.{fqdn}"
        _add(records, address_record(fqdn, ep.address, ttl))
        _add(records, address_record(target, ep.address, ttl))
        _add(records, (reverse_name(ep.address), PTR, ttl, target))
    for (pname, proto), port_eps in eps.ports.items():
        if not pname:
            continue
        srv = f"_{pname}._{proto.lower()}.{fqdn}".lower()
        for ep in port_eps:
            target = f"{(ep.hostname or dashed(ep.address)).lower()}.{fqdn}"
            _add(records, (srv, SRV, ttl, (0, 100, ep.port, target)))
    return _finish(records)


def pod_records(pod: Pod, cfg: Config) -> Records:
    ns = pod.metadata.namespace or "default"
    records: Records = {}
    for ip in pod.ips:
        _add(records, address_record(f"{dashed(ip)}.{ns}.pod.{cfg.zone}".lower(), ip, cfg.ttl))
    return records


def static_records(cfg: Config, serial: int) -> Records:
    zone, ttl = cfg.zone, cfg.ttl
    ns_name = f"ns.dns.{zone}"
    records: Records = {}
    _add(records, (f"dns-version.{zone}", TXT, ttl, (cfg.dns_version,)))
    _add(records, soa_record(cfg, serial))
    _add(records, (zone, NS, ttl, ns_name))
    for ip in cfg.ns_addresses:
        _add(records, address_record(ns_name, ip, ttl))
    return records


def soa_record(cfg: Config, serial: int) -> RR:
    # TTL and MINIMUM both the negative TTL: resolvers cache a miss for min(TTL, MINIMUM) (RFC 2308).
    neg = cfg.negative_ttl
    return (cfg.zone, SOA, neg, (f"ns.dns.{cfg.zone}", f"hostmaster.{cfg.zone}", serial, 7200, 1800, 86400, neg))


class RecordStore:
    """All cluster records, merged over owners; `names` is read by the answer builder."""

    def __init__(self, cfg: Config | None = None, serial: int | None = None) -> None:
        self.cfg = cfg or Config()
        self.zone = self.cfg.zone
        self._suffix = "." + self.zone
        self.serial = serial if serial is not None else int(time.time()) & 0xFFFFFFFF
        self.soa = soa_record(self.cfg, self.serial)
        self.names: Records = {}
        self.ents: dict[str, int] = {}  # in-zone name -> how many names exist strictly below it
        self._contrib: dict[str, Records] = {}
        self._owners: dict[str, set[str]] = {}
        self.updates = 0
        self.set_owner(STATIC, static_records(self.cfg, self.serial))

    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith(self._suffix)

    def exists(self, name: str) -> bool:
        return name in self.names or name in self.ents

    # --- updates -------------------------------------------------------------------------------

    def update_service(self, key: str, svc: Service | None, slices: Iterable[EndpointSlice] = ()) -> set[str]:
        """Replace everything service `key` ("ns/name") publishes; None removes it."""
        return self.set_owner("svc:" + key, service_records(svc, slices, self.cfg) if svc is not None else {})

    def update_pod(self, key: str, pod: Pod | None) -> set[str]:
        if self.cfg.pods != "verified":
            return set()
        return self.set_owner("pod:" + key, pod_records(pod, self.cfg) if pod is not None else {})

    def set_owner(self, owner: str, records: Records) -> set[str]:
        old = self._contrib.pop(owner, {})
        if records:
            self._contrib[owner] = records
        changed: set[str] = set()
        for name in old.keys() | records.keys():
            if old.get(name) == records.get(name):
                continue
            changed.add(name)
            owners = self._owners.setdefault(name, set())
            if name in records:
                owners.add(owner)
            else:
                owners.discard(owner)
            if not owners:
                del self._owners[name]
                if self.names.pop(name, None) is not None:
                    self._ancestors(name, -1, changed)
                continue
            merged: dict[int, list[RR]] = {}
            for o in sorted(owners):
                for rtype, lst in self._contrib[o][name].items():
                    into = merged.setdefault(rtype, [])
                    into += [rr for rr in lst if rr not in into]
            if name not in self.names:
                self._ancestors(name, +1, changed)
            self.names[name] = merged
        if changed:
            self.updates += 1
        return changed

    def _ancestors(self, name: str, delta: int, changed: set[str]) -> None:
        """Count `name` in each in-zone ancestor; an ancestor that starts or stops existing changes."""
        if not self.in_zone(name):
            return
        while name != self.zone:
            name = name.partition(".")[2]
            count = self.ents.get(name, 0) + delta
            if count <= 0:
                self.ents.pop(name, None)
                changed.add(name)
            else:
                self.ents[name] = count
                if count == 1 and delta > 0:
                    changed.add(name)
