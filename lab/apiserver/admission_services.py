"""Services (defaults, validation, ClusterIP / nodePort assignment), Endpoints and EndpointSlices:
what kproxy, kdns and the EndpointSlice controller read."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from typing import Any

from lab.apiserver.allocator import DNS_SERVICE, NodePortRange, ServiceCIDR
from lab.apiserver.validation import Causes, get

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")


def needs_cluster_ip(spec: dict) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName" and spec.get("clusterIP") != "None"


def default_service(obj: dict, old: dict | None) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        cfg = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
        cfg.setdefault("timeoutSeconds", 10800)
    if not spec.get("clusterIP") and spec.get("clusterIPs"):
        spec["clusterIP"] = spec["clusterIPs"][0]
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            if p.get("targetPort") in (None, 0, "") and isinstance(p.get("port"), int):
                p["targetPort"] = p["port"]
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    if spec["type"] in NODE_PORT_TYPES:
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if old is not None:
        _carry_over(spec, old.get("spec") or {})
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def _carry_over(spec: dict, old: dict) -> None:
    """On update, an omitted clusterIP / nodePort keeps the allocated one (a PUT of a manifest
    without them must not reallocate), and nodePorts go when the type no longer uses them."""
    keeps_ip = "ExternalName" not in (spec.get("type"), old.get("type"))
    if keeps_ip and not spec.get("clusterIP") and old.get("clusterIP"):
        spec["clusterIP"] = old["clusterIP"]
        spec["clusterIPs"] = list(old.get("clusterIPs") or [old["clusterIP"]])
    # Fields of the old type that the user left alone go with it (kube-apiserver's dropTypeDependentFields).
    if spec.get("type") not in NODE_PORT_TYPES and old.get("type") in NODE_PORT_TYPES:
        for key in ("externalTrafficPolicy", "healthCheckNodePort"):
            if spec.get(key) == old.get(key):
                spec.pop(key, None)
    if spec.get("type") != "LoadBalancer" and old.get("type") == "LoadBalancer" and \
            spec.get("allocateLoadBalancerNodePorts") == old.get("allocateLoadBalancerNodePorts"):
        spec.pop("allocateLoadBalancerNodePorts", None)
    if wants_health_check_port(spec) and wants_health_check_port(old) and not spec.get("healthCheckNodePort") and \
            old.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old["healthCheckNodePort"]
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old.get("ports") or []
                 if isinstance(p, dict)}
    for p in spec.get("ports") or []:
        if not isinstance(p, dict):
            continue
        if spec.get("type") in NODE_PORT_TYPES and old.get("type") in NODE_PORT_TYPES and not p.get("nodePort"):
            kept = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
            if kept:
                p["nodePort"] = kept
        elif spec.get("type") not in NODE_PORT_TYPES and old.get("type") in NODE_PORT_TYPES and \
                p.get("nodePort") == old_ports.get((p.get("port"), p.get("protocol", "TCP"))):
            p.pop("nodePort", None)


def validate_service(c: Causes, obj: dict, old: dict | None, cidr: ServiceCIDR, ports: NodePortRange) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    stype = spec.get("type")
    c.one_of("spec.type", stype, TYPES)
    cip = spec.get("clusterIP")
    if stype == "ExternalName":
        if cip:
            c.forbidden("spec.clusterIP", "may not be set for ExternalName services")
        name = spec.get("externalName")
        if not name:
            c.required("spec.externalName")
        else:
            c.dns_subdomain("spec.externalName", str(name).rstrip("."))
    elif cip == "None":
        if stype != "ClusterIP":
            c.invalid("spec.clusterIP", cip, "may not be set to 'None' for LoadBalancer or NodePort services")
    elif cip and not cidr.contains(cip):
        c.invalid("spec.clusterIP", cip, cidr.check(cip, ()) or "invalid")
    if old is not None:
        old_ip = get(old, "spec", "clusterIP")
        if old_ip and cip != old_ip and "ExternalName" not in (stype, get(old, "spec", "type")):
            c.immutable("spec.clusterIP", cip)
    plist = spec.get("ports")
    if not plist and stype != "ExternalName" and cip != "None":
        c.required("spec.ports")
    _validate_ports(c, plist or [], stype, ports)
    affinity = spec.get("sessionAffinity")
    if c.one_of("spec.sessionAffinity", affinity, ("None", "ClientIP")) and affinity == "ClientIP":
        t = get(spec, "sessionAffinityConfig", "clientIP", "timeoutSeconds")
        if not isinstance(t, int) or not 0 < t <= 86400:
            c.invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", t, "must be greater than 0 and "
                                                                               "less than 86400")
    c.labels("spec.selector", spec.get("selector"))
    for i, ip in enumerate(spec.get("externalIPs") or []):
        c.ip(f"spec.externalIPs[{i}]", ip)
    if spec.get("loadBalancerIP"):
        c.ip("spec.loadBalancerIP", spec["loadBalancerIP"])
    if stype in NODE_PORT_TYPES:
        c.one_of("spec.externalTrafficPolicy", spec.get("externalTrafficPolicy"), ("Cluster", "Local"))
    elif spec.get("externalTrafficPolicy"):
        c.invalid("spec.externalTrafficPolicy", spec["externalTrafficPolicy"],
                  "may only be set when `type` is 'NodePort' or 'LoadBalancer'")
    c.one_of("spec.internalTrafficPolicy", spec.get("internalTrafficPolicy"), ("Cluster", "Local"), required=False)


def _validate_ports(c: Causes, plist: Any, stype: Any, node_ports: NodePortRange) -> None:
    if not isinstance(plist, list):
        c.invalid("spec.ports", plist, "must be a list")
        return
    names: set[str] = set()
    seen: set[tuple] = set()
    seen_node_ports: dict[int, str] = {}
    for i, p in enumerate(plist):
        f = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            c.invalid(f, p, "must be a service port object")
            continue
        name = p.get("name")
        if len(plist) > 1 and not name:
            c.required(f"{f}.name")
        elif name and c.dns_label(f"{f}.name", name):
            if name in names:
                c.duplicate(f"{f}.name", name)
            names.add(name)
        c.port(f"{f}.port", p.get("port"))
        proto = p.get("protocol", "TCP")
        c.protocol(f"{f}.protocol", proto)
        c.int_or_port_name(f"{f}.targetPort", p.get("targetPort"), required=False)
        key = (p.get("port"), proto)
        if key in seen:
            c.duplicate(f, {"port": p.get("port"), "protocol": proto})
        seen.add(key)
        np = p.get("nodePort")
        if np in (None, 0):
            continue
        if stype not in NODE_PORT_TYPES:
            c.forbidden(f"{f}.nodePort", f"may not be used when `type` is '{stype}'")
        elif isinstance(np, bool) or not isinstance(np, int) or not node_ports.low <= np <= node_ports.high:
            c.invalid(f"{f}.nodePort", np, node_ports.check(np if isinstance(np, int) else -1, ()) or "invalid")
        elif seen_node_ports.get(np) == proto:
            c.duplicate(f"{f}.nodePort", np)
        else:
            seen_node_ports[np] = proto


def allocations(obj: dict | None) -> tuple[set[str], set[int]]:
    """Cluster IPs and node ports a stored Service holds."""
    spec = (obj or {}).get("spec") or {}
    ips = {ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"}
    nps = {p["nodePort"] for p in spec.get("ports") or [] if isinstance(p, dict) and isinstance(p.get("nodePort"), int)
           and p["nodePort"]}
    if spec.get("type") not in NODE_PORT_TYPES:
        nps = set()
    if wants_health_check_port(spec) and isinstance(spec.get("healthCheckNodePort"), int):
        nps.add(spec["healthCheckNodePort"])
    return ips, nps


def wants_health_check_port(spec: dict) -> bool:
    """kube-apiserver gives a LoadBalancer Service with externalTrafficPolicy Local a
    healthCheckNodePort (from the node port range), which kube-proxy serves and load balancers probe."""
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def assign(c: Causes, obj: dict, old: dict | None, cidr: ServiceCIDR, node_ports: NodePortRange,
           used_ips: Collection[str], used_ports: Collection[int]) -> None:
    """Fill in clusterIP and nodePorts (explicit ones checked against what other Services hold:
    `used_*` must not contain this Service's own allocations)."""
    spec = obj["spec"]
    own_ips, own_ports = allocations(old)
    if needs_cluster_ip(spec):
        ip = spec.get("clusterIP")
        if ip:
            why = cidr.check(ip, set(used_ips) - own_ips)
            if why:
                c.invalid("spec.clusterIP", ip, why)
        else:
            ns, name = get(obj, "metadata", "namespace", default=""), get(obj, "metadata", "name", default="")
            dns = cidr.dns_service_ip
            ip = dns if (ns, name) == DNS_SERVICE and dns not in used_ips else cidr.pick(used_ips)
            if ip is None:
                c.add("FieldValueInvalid", "spec.clusterIP", "Internal error: range is full")
            else:
                spec["clusterIP"] = ip
        if ip:
            spec["clusterIPs"] = [ip]
            spec["ipFamilies"] = ["IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"]
    elif spec.get("clusterIP") == "None":
        spec["clusterIPs"] = ["None"]
    else:
        spec.pop("clusterIPs", None)
    if spec.get("type") not in NODE_PORT_TYPES:
        return
    if spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False:
        return
    taken = set(used_ports) - own_ports
    mine: set[int] = set()
    for i, p in enumerate(spec.get("ports") or []):
        np = p.get("nodePort")
        if np:
            if np in mine:
                continue  # the same nodePort for TCP and UDP of one port
            why = node_ports.check(np, taken)
            if why:
                c.invalid(f"spec.ports[{i}].nodePort", np, why)
            mine.add(np)
    for p in spec.get("ports") or []:
        if not p.get("nodePort"):
            np = node_ports.pick(taken | mine)
            if np is None:
                c.add("FieldValueInvalid", "spec.ports.nodePort", "Internal error: range is full")
                return
            p["nodePort"] = np
            mine.add(np)
    _assign_health_check_port(c, spec, node_ports, taken | mine)


def _assign_health_check_port(c: Causes, spec: dict, node_ports: NodePortRange, taken: set[int]) -> None:
    hc = spec.get("healthCheckNodePort")
    if not wants_health_check_port(spec):
        spec.pop("healthCheckNodePort", None)
        return
    if hc:
        why = node_ports.check(hc, taken) if isinstance(hc, int) and not isinstance(hc, bool) else "must be a port"
        if why:
            c.invalid("spec.healthCheckNodePort", hc, why)
        return
    hc = node_ports.pick(taken)
    if hc is None:
        c.add("FieldValueInvalid", "spec.healthCheckNodePort", "Internal error: range is full")
    else:
        spec["healthCheckNodePort"] = hc


# --- Endpoints and EndpointSlices -----------------------------------------------------------------

def default_endpoints(obj: dict) -> None:
    for s in obj.get("subsets") or []:
        for p in (s.get("ports") or []) if isinstance(s, dict) else []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def validate_endpoints(c: Causes, obj: dict) -> None:
    for i, s in enumerate(obj.get("subsets") or []):
        f = f"subsets[{i}]"
        if not isinstance(s, dict):
            c.invalid(f, s, "must be an endpoint subset")
            continue
        for key in ("addresses", "notReadyAddresses"):
            for j, a in enumerate(s.get(key) or []):
                c.ip(f"{f}.{key}[{j}].ip", a.get("ip") if isinstance(a, dict) else a)
        for j, p in enumerate(s.get("ports") or []):
            c.port(f"{f}.ports[{j}].port", p.get("port") if isinstance(p, dict) else None)
            c.protocol(f"{f}.ports[{j}].protocol", (p or {}).get("protocol", "TCP"))


def default_endpointslice(obj: dict) -> None:
    if obj.get("endpoints") is None:
        obj["endpoints"] = []  # not omitempty in Kubernetes: clients require the list
    for p in obj.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
    for e in obj.get("endpoints") or []:
        if isinstance(e, dict):
            e.setdefault("conditions", {})


def validate_endpointslice(c: Causes, obj: dict) -> None:
    family = obj.get("addressType")
    c.one_of("addressType", family, ("IPv4", "IPv6", "FQDN"))
    for i, e in enumerate(obj.get("endpoints") or []):
        f = f"endpoints[{i}]"
        addrs = e.get("addresses") if isinstance(e, dict) else None
        if not isinstance(addrs, list) or not addrs:
            c.required(f"{f}.addresses")
            continue
        if len(addrs) > 100:
            c.invalid(f"{f}.addresses", len(addrs), "must have at most 100 items")
        for j, a in enumerate(addrs):
            if family in ("IPv4", "IPv6"):
                try:
                    ok = ipaddress.ip_address(a).version == (4 if family == "IPv4" else 6)
                except ValueError:
                    ok = False
                if not ok:
                    c.invalid(f"{f}.addresses[{j}]", a, f"must be a valid {family} address")
            else:
                c.dns_subdomain(f"{f}.addresses[{j}]", a)
        if e.get("hostname"):
            c.dns_label(f"{f}.hostname", e["hostname"])
    for i, p in enumerate(obj.get("ports") or []):
        f = f"ports[{i}]"
        if p.get("port") is not None:
            c.port(f"{f}.port", p["port"], allow_zero=True)
        c.protocol(f"{f}.protocol", p.get("protocol", "TCP"))
        if p.get("name"):
            c.dns_label(f"{f}.name", p["name"])
