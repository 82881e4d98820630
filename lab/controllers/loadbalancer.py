"""The LoadBalancer controller (the lab's cloud provider, as MetalLB in layer-2 mode would be):
`type: LoadBalancer` Services get an address from the lab pool in
`status.loadBalancer.ingress[].ip`; `spec.loadBalancerIP` is honoured when it is in the pool and
free; the address is released when the Service goes or changes type. Services with a
`loadBalancerClass` belong to another implementation and are left alone.

The assignment is recomputed from all Services on every sync (pure `assign`), so it survives a
controller restart: the addresses already in status are the state."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.models import Service
from knet.kube.recorder import NORMAL, WARNING
from lab.controllers import indexes
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers.loadbalancer")

DEFAULT_POOL = "192.168.33.200-192.168.33.250"


# --- pure --------------------------------------------------------------------------------------

class Pool:
    """Addresses from "A-B" ranges and CIDRs, comma-separated (a CIDR's network and broadcast
    addresses are left out)."""

    def __init__(self, spec: str) -> None:
        self.ranges: list[tuple[int, int]] = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if "-" in part:
                a, b = (int(ipaddress.IPv4Address(x.strip())) for x in part.split("-", 1))
            else:
                net = ipaddress.IPv4Network(part, strict=False)
                a, b = int(net.network_address), int(net.broadcast_address)
                if net.num_addresses > 2:
                    a, b = a + 1, b - 1
            if a > b:
                raise ValueError(f"empty address range {part!r}")
            self.ranges.append((a, b))
        if not self.ranges:
            raise ValueError("empty LoadBalancer pool")

    def __contains__(self, ip: object) -> bool:
        try:
            n = int(ipaddress.IPv4Address(str(ip)))
        except ValueError:
            return False
        return any(a <= n <= b for a, b in self.ranges)

    def addresses(self) -> Iterable[str]:
        for a, b in self.ranges:
            for n in range(a, b + 1):
                yield str(ipaddress.IPv4Address(n))

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


@dataclass(frozen=True)
class LBRequest:
    key: str                   # namespace/name
    requested: str | None      # spec.loadBalancerIP
    current: tuple[str, ...]   # status.loadBalancer.ingress[].ip
    created: float = 0.0       # creation time: the older claim wins a conflict


def assign(requests: Sequence[LBRequest], pool: Pool) -> dict[str, str | None]:
    """key -> address (None: pool exhausted, or the requested address is taken / outside)."""
    out: dict[str, str | None] = {}
    used: set[str] = set()
    ordered = sorted(requests, key=lambda r: (r.created, r.key))
    # 1. keep what is already assigned (if still valid), oldest claim first
    for r in ordered:
        keep = next((ip for ip in r.current if ip in pool and ip not in used
                     and (r.requested is None or r.requested == ip)), None)
        if keep is not None:
            out[r.key] = keep
            used.add(keep)
    # 2. explicit requests
    for r in ordered:
        if r.key in out or r.requested is None:
            continue
        ok = r.requested in pool and r.requested not in used
        out[r.key] = r.requested if ok else None
        if ok:
            used.add(r.requested)
    # 3. the lowest free address for the rest
    free = (ip for ip in pool.addresses() if ip not in used)
    for r in ordered:
        if r.key not in out:
            ip = next((a for a in free if a not in used), None)
            out[r.key] = ip
            if ip is not None:
                used.add(ip)
    return out


def wants_lb(svc: Service) -> bool:
    return svc.spec.type == "LoadBalancer" and not svc.spec.load_balancer_class and not svc.is_terminating


# --- the controller ----------------------------------------------------------------------------

class LoadBalancerController(Controller):
    name = "loadbalancer"
    source = "service-controller"
    resync = 30.0

    def __init__(self, api: ApiClient, services: Informer[Service], pool: Pool) -> None:
        super().__init__()
        self.api, self.services, self.pool = api, services, pool
        services.add_handler(on_add=self._on_service, on_update=self._on_update, on_delete=self._on_service)

    def _on_update(self, old: Service, new: Service) -> None:
        # kube's service controller tells of a type change that makes or ends a load balancer
        if old.spec.type != new.spec.type and (wants_lb(old) or wants_lb(new)):
            self.event(new, NORMAL, "Type", f"{old.spec.type} -> {new.spec.type}", "Service", "v1")
        self._on_service(new)

    def _on_service(self, svc: Service) -> None:
        if wants_lb(svc) or svc.status.load_balancer.ingress:
            self.enqueue("*")  # one allocation for all: conflicts are resolved across Services

    def all_keys(self) -> list[str]:
        return ["*"]

    def sync(self, key: str) -> None:
        svcs = self.services.by_index(indexes.LOADBALANCER, "")  # only those: not every Service
        requests = [LBRequest(s.key, s.spec.load_balancer_ip,
                              tuple(i.ip for i in s.status.load_balancer.ingress if i.ip),
                              s.metadata.creation_timestamp.timestamp() if s.metadata.creation_timestamp else 0.0)
                    for s in svcs if wants_lb(s)]
        plan = assign(requests, self.pool)
        # Releases first, so an address moving between Services is never shown twice.
        for svc in svcs:
            if not wants_lb(svc) and svc.status.load_balancer.ingress and not svc.spec.load_balancer_class:
                self._write(svc, None)
        for svc in svcs:
            if svc.key in plan:
                self._write(svc, plan[svc.key])

    def _write(self, svc: Service, ip: str | None) -> None:
        current = [i.ip for i in svc.status.load_balancer.ingress]
        want = [ip] if ip else []
        if current == want:
            return
        wanted = wants_lb(svc)
        if ip is None and svc.spec.type == "LoadBalancer":
            log.warning("service %s: no LoadBalancer address (pool %d addresses, requested %s)", svc.key,
                        len(self.pool), svc.spec.load_balancer_ip or "-")
            self.event(svc, WARNING, "SyncLoadBalancerFailed", "Error syncing load balancer: no address free in the "
                       f"pool{f' for the requested {svc.spec.load_balancer_ip}' if svc.spec.load_balancer_ip else ''}",
                       "Service", "v1")
        elif wanted:
            self.event(svc, NORMAL, "EnsuringLoadBalancer", "Ensuring load balancer", "Service", "v1")
        else:
            self.event(svc, NORMAL, "DeletingLoadBalancer", "Deleting load balancer", "Service", "v1")
        ingress = [{"ip": ip, "ipMode": "VIP"}] if ip else []
        client.patch_status(self.api, "Service", svc.name, {"loadBalancer": {"ingress": ingress}}, svc.namespace)
        log.info("service %s: LoadBalancer ingress %s -> %s", svc.key, current or "-", ip or "-")
        if wanted and ip:
            self.event(svc, NORMAL, "EnsuredLoadBalancer", "Ensured load balancer", "Service", "v1")
        elif not wanted:
            self.event(svc, NORMAL, "DeletedLoadBalancer", "Deleted load balancer", "Service", "v1")
