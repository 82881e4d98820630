"""NetworkPolicies (what netpolicy enforces), Ingresses and IngressClasses (what the ingress
controller serves): defaults, validation, `kubectl get`'s columns."""

from __future__ import annotations

from typing import Any

from knet.kube.models.networking import DEFAULT_INGRESS_CLASS_ANNOTATION
from lab.apiserver import tables
from lab.apiserver.strategy import Config, Lookup, Strategy
from lab.apiserver.tables import AGE, NAME, NONE, column, get
from lab.apiserver.validation import WILDCARD_DNS, Causes


def _default_networkpolicy(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}  # an empty selector: every pod of the namespace
    if "policyTypes" not in spec or not spec["policyTypes"]:
        types = ["Ingress"]
        if spec.get("egress"):
            types.append("Egress")
        spec["policyTypes"] = types
    for rules in (spec.get("ingress") or [], spec.get("egress") or []):
        for rule in rules:
            for p in (rule.get("ports") or []) if isinstance(rule, dict) else []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def _validate_networkpolicy(c: Causes, obj: dict) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    c.label_selector("spec.podSelector", spec.get("podSelector") or {})
    for i, t in enumerate(spec.get("policyTypes") or []):
        c.one_of(f"spec.policyTypes[{i}]", t, ("Ingress", "Egress"))
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            f = f"spec.{direction}[{i}]"
            if not isinstance(rule, dict):
                c.invalid(f, rule, "must be a rule object")
                continue
            for j, p in enumerate(rule.get("ports") or []):
                _validate_policy_port(c, p, f"{f}.ports[{j}]")
            for j, peer in enumerate(rule.get(peers_key) or []):
                _validate_peer(c, peer, f"{f}.{peers_key}[{j}]")


def _validate_policy_port(c: Causes, p: Any, f: str) -> None:
    if not isinstance(p, dict):
        c.invalid(f, p, "must be a port object")
        return
    c.protocol(f"{f}.protocol", p.get("protocol", "TCP"))
    port = p.get("port")
    if port is not None:
        c.int_or_port_name(f"{f}.port", port)
    end = p.get("endPort")
    if end is not None:
        if not isinstance(port, int):
            c.required(f"{f}.port", "must be specified when endPort is specified")
        elif not isinstance(end, int) or end < port:
            c.invalid(f"{f}.endPort", end, "must be greater than or equal to `port`")


def _validate_peer(c: Causes, peer: Any, f: str) -> None:
    if not isinstance(peer, dict):
        c.invalid(f, peer, "must be a peer object")
        return
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None]
    if not present:
        c.required(f, "must specify a peer")
    if "ipBlock" in present and len(present) > 1:
        c.forbidden(f, "may not specify more than 1 peer type when ipBlock is specified")
    for k in ("podSelector", "namespaceSelector"):
        if peer.get(k) is not None:
            c.label_selector(f"{f}.{k}", peer[k])
    block = peer.get("ipBlock")
    if block is not None:
        net = c.cidr(f"{f}.ipBlock.cidr", (block or {}).get("cidr"))
        for i, ex in enumerate((block or {}).get("except") or []):
            exnet = c.cidr(f"{f}.ipBlock.except[{i}]", ex)
            if net and exnet and (exnet.version != net.version or not exnet.subnet_of(net)):  # type: ignore[arg-type]
                c.invalid(f"{f}.ipBlock.except[{i}]", ex, "must be a strict subset of `cidr`")


def _validate_ingress(c: Causes, obj: dict) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    if spec.get("defaultBackend") is not None:
        _validate_backend(c, spec["defaultBackend"], "spec.defaultBackend")
    elif not spec.get("rules"):
        c.invalid("spec", spec, "either `defaultBackend` or `rules` must be specified")
    for i, rule in enumerate(spec.get("rules") or []):
        f = f"spec.rules[{i}]"
        host = rule.get("host") if isinstance(rule, dict) else None
        if host and not WILDCARD_DNS.match(host):
            c.dns_subdomain(f"{f}.host", host)
        http = (rule or {}).get("http")
        if http is None:
            continue
        paths = http.get("paths") if isinstance(http, dict) else None
        if not paths:
            c.required(f"{f}.http.paths")
        for j, p in enumerate(paths or []):
            pf = f"{f}.http.paths[{j}]"
            ptype = p.get("pathType") if isinstance(p, dict) else None
            if c.one_of(f"{pf}.pathType", ptype, ("Exact", "Prefix", "ImplementationSpecific")) and \
                    ptype in ("Exact", "Prefix") and not str(p.get("path", "")).startswith("/"):
                c.invalid(f"{pf}.path", p.get("path"), "must be an absolute path")
            _validate_backend(c, (p or {}).get("backend"), f"{pf}.backend")
    for i, tls in enumerate(spec.get("tls") or []):
        for j, host in enumerate((tls or {}).get("hosts") or []):
            if not WILDCARD_DNS.match(str(host)):
                c.dns_subdomain(f"spec.tls[{i}].hosts[{j}]", host)


def _validate_backend(c: Causes, backend: Any, f: str) -> None:
    if not isinstance(backend, dict):
        c.required(f)
        return
    svc, res = backend.get("service"), backend.get("resource")
    if (svc is None) == (res is None):
        c.invalid(f, backend, "cannot set both service and resource backends" if svc else
                  "one backend (service or resource) must be specified")
        return
    if svc is not None:
        if not svc.get("name"):
            c.required(f"{f}.service.name")
        port = svc.get("port") or {}
        if ("number" in port) == ("name" in port):
            c.invalid(f"{f}.service.port", port, "exactly one of `name` or `number` must be specified")
        elif "number" in port:
            c.port(f"{f}.service.port.number", port["number"])
        else:
            c.port_name(f"{f}.service.port.name", port["name"])


class NetworkPolicies(Strategy):
    generation = True
    columns = [NAME, column("Pod-Selector"), AGE]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        _default_networkpolicy(obj)

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        _validate_networkpolicy(c, obj)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), tables.label_selector(get(obj, "spec", "podSelector")), tables.age(obj)]


LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_INDEX = "default"


def default_class(classes: list[dict[str, Any]]) -> str | None:
    """The default IngressClass among those annotated as default: the newest, the first name
    among equally new ones (as the DefaultIngressClass admission plugin chooses). RFC 3339 times
    in UTC sort as text; a stable sort keeps the names' order among equal times."""
    by_name = sorted(classes, key=lambda c: get(c, "metadata", "name", default=""))
    ranked = sorted(by_name, key=lambda c: get(c, "metadata", "creationTimestamp", default=""), reverse=True)
    return get(ranked[0], "metadata", "name") if ranked else None


class Ingresses(Strategy):
    status_from_controllers = True
    generation = True
    columns = [NAME, column("Class"), column("Hosts"), column("Address"), column("Ports"), AGE]

    def default_on_create(self, obj: dict[str, Any], lookup: Lookup) -> None:
        """DefaultIngressClass: an Ingress naming no class (neither the field nor the legacy
        annotation) gets the default one, if there is one."""
        spec = obj.get("spec")
        annotations = get(obj, "metadata", "annotations", default=None) or {}
        if not isinstance(spec, dict) or spec.get("ingressClassName") or LEGACY_CLASS_ANNOTATION in annotations:
            return
        name = default_class(lookup("networking.k8s.io", "IngressClass", DEFAULT_INDEX, "true"))
        if name:
            spec["ingressClassName"] = name

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        _validate_ingress(c, obj)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        spec = obj.get("spec") or {}
        hosts = [r.get("host") for r in spec.get("rules") or [] if r.get("host")]
        lb = [i.get("ip") or i.get("hostname", "") for i in get(obj, "status", "loadBalancer", "ingress", default=[])]
        return [tables.name(obj), spec.get("ingressClassName") or NONE, ",".join(hosts) or "*", ",".join(lb),
                "80, 443" if spec.get("tls") else "80", tables.age(obj)]


class IngressClasses(Strategy):
    generation = True
    columns = [NAME, column("Controller"), column("Parameters"), AGE]
    custom_indexes = (DEFAULT_INDEX,)

    def index_values(self, name: str, obj: dict[str, Any]) -> list[str]:
        """The default classes (annotated `is-default-class: "true"`) under "true"."""
        return ["true"] if get(obj, "metadata", "annotations", DEFAULT_INGRESS_CLASS_ANNOTATION) == "true" else []

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        if not get(obj, "spec", "controller"):
            c.required("spec.controller")

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), get(obj, "spec", "controller", default=""), NONE, tables.age(obj)]
