"""Services: defaults, validation, the ClusterIP, nodePorts and healthCheckNodePort they hold
(picked, claimed and released here), `kubectl get svc`'s columns. What kproxy, kdns and the
EndpointSlice controller read."""

from __future__ import annotations

from typing import Any

from knet.kube.ipfamily import family_or_none
from lab.apiserver import tables
from lab.apiserver.allocator import DNS_SERVICE, SERVICE_IPS, NodePortRange, Reservation, ServiceCIDR, Space
from lab.apiserver.kinds import servicefamilies
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import AGE, NAME, NONE, column, get
from lab.apiserver.validation import Causes

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
IPS, PORTS = SERVICE_IPS["IPv4"], "servicenodeports"  # the IPv4 range and the node ports, as kube-apiserver names them


def needs_cluster_ip(spec: dict) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName" and spec.get("clusterIP") != "None"


def wants_health_check_port(spec: dict) -> bool:
    """kube-apiserver gives a LoadBalancer Service with externalTrafficPolicy Local a
    healthCheckNodePort (from the node port range), which kube-proxy serves and load balancers probe."""
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _normalize_cluster_ips(spec: dict, old: dict | None) -> None:
    """clusterIP and clusterIPs from what the client sent, as kube-apiserver's NormalizeClusterIPs:
    an old client sends clusterIP alone, a new one both (clusterIPs alone is refused later)."""
    ip, ips = spec.get("clusterIP"), spec.get("clusterIPs")
    if old is None:
        if ip and not ips:
            spec["clusterIPs"] = [ip]
        return
    old_ip, old_ips = old.get("clusterIP"), old.get("clusterIPs")
    if old_ips and not ips and old_ip == ip:  # an old client's update without clusterIPs
        spec["clusterIPs"] = ips = list(old_ips)
    if old_ip != ip:
        if old_ip and not ip:
            if ips == old_ips:  # cleared: the plural with it
                spec.pop("clusterIPs", None)
        elif ips == old_ips and ips and len(ips) == 1:
            spec["clusterIPs"] = [ip]


def _carry_over(spec: dict, old: dict) -> None:
    """On update, an omitted clusterIP(s) / nodePort keeps the allocated one (a PUT of a manifest
    without them must not reallocate), and fields of a type the Service no longer has go with it."""
    keeps_ip = "ExternalName" not in (spec.get("type"), old.get("type"))
    if keeps_ip:  # kube-apiserver's patchAllocatedValues
        if not spec.get("clusterIP") and old.get("clusterIP"):
            spec["clusterIP"] = old["clusterIP"]
        if not spec.get("clusterIPs") and old.get("clusterIPs"):
            spec["clusterIPs"] = list(old["clusterIPs"])
    elif spec.get("type") == "ExternalName" and old.get("type") != "ExternalName":
        # What the user left as it was goes with the ClusterIP type (dropTypeDependentFields).
        if spec.get("clusterIP") == old.get("clusterIP") and spec.get("clusterIPs") == old.get("clusterIPs"):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if spec.get(key) == old.get(key):
                spec.pop(key, None)
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
            c.invalid(f"{f}.nodePort", np, node_ports.check(str(np) if isinstance(np, int) else "-1") or "invalid")
        elif seen_node_ports.get(np) == proto:
            c.duplicate(f"{f}.nodePort", np)
        else:
            seen_node_ports[np] = proto


class Services(Strategy):
    name_rule = "dns1035"  # the name is a DNS label of the Service's records
    status_from_controllers = True
    merge_keys = {("spec", "ports"): "port"}
    columns = [NAME, column("Type"), column("Cluster-IP"), column("External-IP"), column("Port(s)"), AGE,
               column("Selector", priority=1)]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["sessionAffinity"] == "ClientIP":
            cfg = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
            cfg.setdefault("timeoutSeconds", 10800)
        _normalize_cluster_ips(spec, None if old is None else old.get("spec") or {})
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                if p.get("targetPort") in (None, 0, "") and isinstance(p.get("port"), int):
                    p["targetPort"] = p["port"]
        if spec["type"] != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")  # families: at allocation, by the cluster's
        if spec["type"] in NODE_PORT_TYPES:
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        if old is not None:
            _carry_over(spec, old.get("spec") or {})
        obj.setdefault("status", {}).setdefault("loadBalancer", {})

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
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
        elif cip == "None" and stype != "ClusterIP":
            c.invalid("spec.clusterIP", cip, "may not be set to 'None' for LoadBalancer or NodePort services")
        servicefamilies.validate_fields(c, spec, old.get("spec") or {} if old is not None else None)
        plist = spec.get("ports")
        if not plist and stype != "ExternalName" and cip != "None":
            c.required("spec.ports")
        _validate_ports(c, plist or [], stype, cfg.node_ports)
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

    # --- allocation ------------------------------------------------------------------------------

    def ranges(self, cfg: Config) -> dict[str, Space]:
        return {**{SERVICE_IPS[c.family]: c for c in cfg.service_cidrs}, PORTS: cfg.node_ports}

    def held(self, obj: dict[str, Any] | None) -> set[tuple[str, str]]:
        spec = (obj or {}).get("spec") or {}
        out = set()
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            fam = family_or_none(ip) if ip and ip != "None" else None
            if fam:
                out.add((SERVICE_IPS[fam], ip))
        if spec.get("type") in NODE_PORT_TYPES:
            out |= {(PORTS, str(p["nodePort"])) for p in spec.get("ports") or []
                    if isinstance(p, dict) and isinstance(p.get("nodePort"), int) and p["nodePort"]}
        hc = spec.get("healthCheckNodePort")
        if wants_health_check_port(spec) and isinstance(hc, int) and not isinstance(hc, bool) and hc:
            out.add((PORTS, str(hc)))
        return out

    def allocate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, res: Reservation,
                 cfg: Config) -> None:
        """Settle the IP families, then fill in clusterIPs (one per family, primary first) and
        nodePorts: explicit ones are reserved (422 when another Service holds them), missing ones
        picked. What `old` holds already is this Service's own; what it held and `obj` no longer
        does (a downgrade, a switch to ExternalName) is released with the write."""
        spec = obj["spec"]
        own = self.held(old)
        servicefamilies.init_families(c, spec, (old or {}).get("spec") if old is not None else None,
                                      cfg.service_families)
        if c:
            return
        if needs_cluster_ip(spec):
            self._allocate_cluster_ips(c, obj, own, res, cfg)
        elif spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
        else:
            spec.pop("clusterIPs", None)
        if spec.get("type") in NODE_PORT_TYPES and not (
                spec.get("type") == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is False):
            self._allocate_node_ports(c, spec, own, res)
        self._allocate_health_check_port(c, spec, own, res)

    def _allocate_cluster_ips(self, c: Causes, obj: dict[str, Any], own: set[tuple[str, str]], res: Reservation,
                              cfg: Config) -> None:
        spec = obj["spec"]
        ips = list(spec.get("clusterIPs") or [])
        for i, fam in enumerate(spec.get("ipFamilies") or []):
            cidr = cfg.service_cidr_of(fam)
            if cidr is None:  # init_families admits only the cluster's families
                continue
            name = SERVICE_IPS[fam]
            if i < len(ips) and ips[i]:
                why = None if (name, ips[i]) in own else res.reserve(name, ips[i])
                if why:
                    c.invalid("spec.clusterIPs", ips, f"failed to allocate IP {ips[i]}: {why}")
                continue
            picked = self._pick_ip(obj, res, name, cidr)
            if picked is None:
                c.add("FieldValueInvalid", "spec.clusterIPs", f"Internal error: range {cidr.network} is full")
                return
            ips.append(picked)
        if ips:
            spec["clusterIPs"] = ips
            spec["clusterIP"] = ips[0]

    @staticmethod
    def _allocate_node_ports(c: Causes, spec: dict[str, Any], own: set[tuple[str, str]], res: Reservation) -> None:
        mine: set[int] = set()
        for i, p in enumerate(spec.get("ports") or []):
            np = p.get("nodePort")
            if np and np not in mine:  # the same nodePort may serve TCP and UDP of one port
                why = None if (PORTS, str(np)) in own else res.reserve(PORTS, str(np))
                if why:
                    c.invalid(f"spec.ports[{i}].nodePort", np, why)
                mine.add(np)
        for p in spec.get("ports") or []:
            if not p.get("nodePort"):
                picked = res.pick(PORTS)
                if picked is None:
                    c.add("FieldValueInvalid", "spec.ports.nodePort", "Internal error: range is full")
                    return
                p["nodePort"] = int(picked)

    @staticmethod
    def _allocate_health_check_port(c: Causes, spec: dict[str, Any], own: set[tuple[str, str]],
                                    res: Reservation) -> None:
        """After the node ports, so a pick cannot take one the user asked for. A Service that no
        longer wants one loses it (kube-apiserver drops it with the Local policy or the type)."""
        if not wants_health_check_port(spec):
            spec.pop("healthCheckNodePort", None)
            return
        hc = spec.get("healthCheckNodePort")
        if hc:
            if not isinstance(hc, int) or isinstance(hc, bool):
                c.invalid("spec.healthCheckNodePort", hc, "must be a port")
                return
            why = None if (PORTS, str(hc)) in own else res.reserve(PORTS, str(hc))
            if why:
                c.invalid("spec.healthCheckNodePort", hc, why)
            return
        picked = res.pick(PORTS)
        if picked is None:
            c.add("FieldValueInvalid", "spec.healthCheckNodePort", "Internal error: range is full")
        else:
            spec["healthCheckNodePort"] = int(picked)

    @staticmethod
    def _pick_ip(obj: dict[str, Any], res: Reservation, name: str, cidr: ServiceCIDR) -> str | None:
        """Cluster DNS gets each range's tenth address if it is free; everything else a free one."""
        key = (get(obj, "metadata", "namespace", default=""), get(obj, "metadata", "name", default=""))
        if key == DNS_SERVICE and res.reserve(name, cidr.dns_service_ip) is None:
            return cidr.dns_service_ip
        return res.pick(name)

    # --- reading ---------------------------------------------------------------------------------

    def row(self, obj: dict[str, Any]) -> list[Any]:
        spec = obj.get("spec") or {}
        stype = spec.get("type", "ClusterIP")
        ips = list(spec.get("externalIPs") or [])
        if stype == "LoadBalancer":
            lb = [i.get("ip") or i.get("hostname", "") for i in get(obj, "status", "loadBalancer", "ingress",
                                                                    default=[])]
            ips = lb + ips or ["<pending>"]
        external = spec.get("externalName") if stype == "ExternalName" else (",".join(ips) or NONE)
        ports = ",".join(f"{p.get('port')}" + (f":{p['nodePort']}" if p.get("nodePort") else "") +
                         f"/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or NONE
        return [tables.name(obj), stype, spec.get("clusterIP") or NONE, external, ports, tables.age(obj),
                tables.map_selector(spec.get("selector"))]
