"""IP families as Kubernetes means them: the one place that says which family an address or a
range is, which families a Service has, and which of a pod's addresses belong to a family.

Kubernetes names families "IPv4" and "IPv6" (Service spec.ipFamilies, EndpointSlice addressType);
every component and the lab's API server and controllers decide them here, once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from knet.kube.models import Pod, Service

Family = Literal["IPv4", "IPv6"]
FAMILIES: tuple[Family, Family] = ("IPv4", "IPv6")
POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")


def family_of(address: str) -> Family:
    """The family of an address or a CIDR ("10.0.0.1", "fd00::1", "fd00:10:244::/56");
    ValueError for anything else."""
    text = address.split("/", 1)[0]
    return "IPv6" if ipaddress.ip_address(text).version == 6 else "IPv4"


def family_or_none(address: str) -> Family | None:
    try:
        return family_of(address)
    except ValueError:
        return None


def other(family: Family) -> Family:
    return "IPv6" if family == "IPv4" else "IPv4"


def of_family(addresses: Iterable[str], family: Family) -> list[str]:
    """The addresses (or CIDRs) of `family`, in their order; invalid ones are nobody's."""
    return [a for a in addresses if family_or_none(a) == family]


def first_of_family(addresses: Iterable[str], family: Family) -> str | None:
    return next(iter(of_family(addresses, family)), None)


def is_dual_stack(addresses: Iterable[str]) -> bool:
    """Exactly one address (or CIDR) of each family (kube's IsDualStackIPStrings/CIDRStrings)."""
    seen = [family_or_none(a) for a in addresses]
    return len(seen) == 2 and set(seen) == set(FAMILIES)


def service_families(service: Service) -> list[Family]:
    """The families a Service serves, primary first: spec.ipFamilies when set (the API server
    always sets them on a current cluster); else those of its cluster IPs; else, for a headless
    Service from an older server, both (as the EndpointSlice controller's
    getAddressTypesForService). ExternalName has none."""
    if service.spec.type == "ExternalName":
        return []
    fams = [f for f in service.spec.ip_families if f in FAMILIES]
    if fams:
        return list(dict.fromkeys(fams))
    ips = [f for f in (family_or_none(ip) for ip in service.cluster_ips) if f]
    if ips:
        return list(dict.fromkeys(ips))
    return list(FAMILIES) if service.is_headless else ["IPv4"]


def pod_addresses(pod: Pod, family: Family) -> list[str]:
    """A pod's addresses of one family (status.podIPs, podIP as the fallback)."""
    return of_family(pod.ips, family)
