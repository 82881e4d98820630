"""Endpoints and EndpointSlices: defaults, validation, `kubectl get`'s columns. What kproxy and
kdns read (slices) and what `kubectl get endpoints` shows; slices are indexed by their Service's
name, which is how the mirror and the EndpointSlice clients look them up."""

from __future__ import annotations

import ipaddress
from typing import Any

from knet.kube.models import SERVICE_NAME_LABEL
from lab.apiserver import tables
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import AGE, NAME, column
from lab.apiserver.validation import Causes


class Endpoints(Strategy):
    columns = [NAME, column("Endpoints"), AGE]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        for s in obj.get("subsets") or []:
            for p in (s.get("ports") or []) if isinstance(s, dict) else []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
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

    def row(self, obj: dict[str, Any]) -> list[Any]:
        eps = []
        for s in obj.get("subsets") or []:
            for a in s.get("addresses") or []:
                eps += [f"{a.get('ip')}:{p.get('port')}" for p in s.get("ports") or []] or [a.get("ip", "")]
        return [tables.name(obj), tables.joined(eps), tables.age(obj)]


class EndpointSlices(Strategy):
    generation = True
    indexed_labels = (SERVICE_NAME_LABEL,)
    columns = [NAME, column("AddressType"), column("Ports"), column("Endpoints"), AGE]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if obj.get("endpoints") is None:
            obj["endpoints"] = []  # not omitempty in Kubernetes: clients require the list
        for p in obj.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
        for e in obj.get("endpoints") or []:
            if isinstance(e, dict):
                e.setdefault("conditions", {})

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
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

    def row(self, obj: dict[str, Any]) -> list[Any]:
        ports = ",".join(str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None) or "<unset>"
        addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
        return [tables.name(obj), obj.get("addressType", ""), ports, tables.joined(addrs) if addrs else "<unset>",
                tables.age(obj)]
