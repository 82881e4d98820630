"""Events: the core/v1 kind (kept for the event TTL, `--event-ttl`, then removed by etcd), and
events.k8s.io/v1 served over the same storage, as kube-apiserver serves both from one etcd key
space: an object read through events.k8s.io is converted from the stored core/v1 one, one written
through it is converted to core/v1 before it is stored (the conversion is pure).

    core/v1            events.k8s.io/v1
    involvedObject  <-> regarding
    message         <-> note
    source          <-> deprecatedSource
    firstTimestamp  <-> deprecatedFirstTimestamp
    lastTimestamp   <-> deprecatedLastTimestamp
    count           <-> deprecatedCount
    reportingComponent <-> reportingController
    (the same in both: reason, type, action, related, series, eventTime, reportingInstance)
"""

from __future__ import annotations

from typing import Any

from lab.apiserver import tables
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import column, get
from lab.apiserver.validation import Causes

GROUP, VERSION = "events.k8s.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
RENAMED = (("involvedObject", "regarding"), ("message", "note"), ("source", "deprecatedSource"),
           ("firstTimestamp", "deprecatedFirstTimestamp"), ("lastTimestamp", "deprecatedLastTimestamp"),
           ("count", "deprecatedCount"), ("reportingComponent", "reportingController"))
IMMUTABLE_ON_UPDATE = ("involvedObject", "reason", "message", "source", "firstTimestamp", "lastTimestamp", "count",
                       "type", "eventTime", "action", "related", "reportingComponent", "reportingInstance")
SHARED = ("metadata", "reason", "type", "action", "related", "series", "eventTime", "reportingInstance")
_TO_V1 = dict(RENAMED)
_TO_CORE = {v1: core for core, v1 in RENAMED}
# events.k8s.io field selectors -> the stored object's (kube-apiserver's field label conversion)
FIELDS = {"regarding": "involvedObject", "reportingController": "reportingComponent", "deprecatedSource": "source",
          "note": "message"}


def _convert(obj: dict[str, Any], renames: dict[str, str], api_version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Event", "apiVersion": api_version}
    for key, value in obj.items():
        if key in ("kind", "apiVersion") or value is None:
            continue
        if key in renames:
            out[renames[key]] = value
        elif key in SHARED:
            out[key] = value
    return out


def to_v1(core: dict[str, Any]) -> dict[str, Any]:
    return _convert(core, _TO_V1, API_VERSION)


def to_core(v1: dict[str, Any]) -> dict[str, Any]:
    return _convert(v1, _TO_CORE, "v1")


def field_selector_to_core(selector: str) -> str:
    """`regarding.name=x,reportingController=y` -> `involvedObject.name=x,reportingComponent=y`."""
    terms = []
    for term in filter(None, (t.strip() for t in selector.split(","))):
        head, sep, rest = term.partition(".")
        op = next((o for o in ("!=", "==", "=") if o in head), None)
        if sep and op is None and head in FIELDS:
            term = f"{FIELDS[head]}.{rest}"
        elif op is not None:
            name = head.split(op, 1)[0]
            if name in FIELDS:
                term = FIELDS[name] + term[len(name):]
        terms.append(term)
    return ",".join(terms)


def validate_v1(c: Causes, v1: dict[str, Any]) -> None:
    """What kube-apiserver requires of an Event created through events.k8s.io/v1: the legacy
    checks every Event passes (namespace agreement; with an eventTime, the reporting fields), then
    the strict ones of this API. Field names as kube-apiserver reports them."""
    ns = str((v1.get("metadata") or {}).get("namespace") or "")
    regarding_ns = str((v1.get("regarding") or {}).get("namespace") or "")
    if not v1.get("eventTime"):
        if (not regarding_ns and ns not in ("", "default")) or (regarding_ns and regarding_ns != ns):
            c.invalid("involvedObject.namespace", regarding_ns, "does not match event.namespace")
    else:
        if not regarding_ns and ns not in ("default", "kube-system"):
            c.invalid("involvedObject.namespace", regarding_ns, "does not match event.namespace")
        for field, limit in (("reportingController", 0), ("reportingInstance", 128), ("action", 128),
                             ("reason", 128)):
            value = str(v1.get(field) or "")
            if not value:
                c.required(field)
            elif limit and len(value) > limit:
                c.invalid(field, "", f"can have at most {limit} characters")
        if len(str(v1.get("note", ""))) > 1024:
            c.invalid("message", "", "can have at most 1024 characters")
    if not v1.get("eventTime"):
        c.required("eventTime")
    if v1.get("type") not in ("Normal", "Warning"):
        c.invalid("type", "", f"has invalid value: {v1.get('type') or ''}")
    for v1_field, core in (("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp"),
                           ("deprecatedCount", "count"), ("deprecatedSource", "source")):
        if v1.get(v1_field):
            c.invalid(core, "", "needs to be unset")


class Events(Strategy):
    cascades = False
    columns = [column("Last Seen"), column("Type"), column("Reason"), column("Object"), column("Message")]

    def ttl(self, cfg: Config) -> int:
        return cfg.event_ttl

    def row(self, obj: dict[str, Any]) -> list[Any]:
        last = obj.get("lastTimestamp") or obj.get("eventTime") or get(obj, "metadata", "creationTimestamp")
        io = obj.get("involvedObject") or {}
        return [tables.since(last), obj.get("type", ""), obj.get("reason", ""),
                f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}", obj.get("message", "")]


class EventsV1(Events):
    """events.k8s.io/v1: a view of the core Events (`stored_as`), converted both ways."""
    stored_as = ("", "Event")

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        if old is None:
            validate_v1(c, obj)
            return
        # An update through events.k8s.io may change only the series and counts (kube-apiserver's
        # ValidateEventUpdate for this API; core/v1 updates keep the legacy freedom). The causes
        # name the core fields, as kube-apiserver's do.
        new, prev = (x if x.get("apiVersion") != API_VERSION else to_core(x) for x in (obj, old))
        for name in IMMUTABLE_ON_UPDATE:
            if new.get(name) != prev.get(name):
                c.immutable(name, new.get(name))

    def to_stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        return to_core(obj)

    def from_stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        return to_v1(obj)

    def stored_field_selector(self, selector: str) -> str:
        return field_selector_to_core(selector)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return super().row(to_core(obj))
