"""meta.k8s.io Table rendering: what `kubectl get` asks for (`Accept: ...;as=Table`) so that it
prints the same columns as against a real cluster (priority-1 columns appear with `-o wide`).

The columns and cells of a kind are its strategy's (`Strategy.columns` / `row`); this module has
the Table envelope and the cell helpers the kinds share (AGE, `<none>`, selectors, lists).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from lab.apiserver import objects

if TYPE_CHECKING:
    from lab.apiserver.resources import ResourceType

NONE = "<none>"


def table_version(accept: str) -> str | None:
    """meta.k8s.io version of the first `as=Table` media type the client accepts, if any."""
    for media in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
    return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration (the AGE column)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if h < 24 * 365 * 2:
        return f"{d}d"
    if h < 24 * 365 * 8:
        return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"
    return f"{d // 365}y"


def since(timestamp: str | None) -> str:
    t = objects.parse_time(timestamp)
    return human_duration((dt.datetime.now(dt.UTC) - t).total_seconds()) if t else "<unknown>"


def age(obj: dict) -> str:
    return since(objects.get_path(obj, "metadata", "creationTimestamp"))


def get(obj: Any, *path: str, default: Any = None) -> Any:
    v = objects.get_path(obj, *path)
    return default if v is None else v


def name(obj: dict) -> str:
    return get(obj, "metadata", "name", default="")


def joined(items: list[str], limit: int = 3) -> str:
    """`a,b,c + 2 more...` (kubectl's endpoint lists)."""
    if not items:
        return NONE
    shown = ",".join(items[:limit])
    return shown + (f" + {len(items) - limit} more..." if len(items) > limit else "")


def map_selector(sel: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).items())) or NONE


def label_selector(sel: dict | None) -> str:
    if not sel:
        return NONE
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator")
        if op in ("In", "NotIn"):
            parts.append(f"{e.get('key')} {op.lower()} ({','.join(e.get('values') or [])})")
        else:
            parts.append(e.get("key", "") if op == "Exists" else f"!{e.get('key')}")
    return ",".join(parts) or NONE


def column(title: str, kind: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    """A TableColumnDefinition (priority 1: shown with `-o wide` only)."""
    return {"name": title, "type": kind, "format": fmt, "description": "", "priority": priority}


NAME, AGE = column("Name", fmt="name"), column("Age")


def table(rt: ResourceType, items: list[dict], list_meta: dict, include: str = "Metadata",
          version: str = "v1", with_columns: bool = True) -> dict:
    strategy = rt.strategy
    rows = []
    for obj in items:
        r: dict[str, Any] = {"cells": strategy.row(obj)}
        if include == "Object":
            r["object"] = obj
        elif include != "None":
            r["object"] = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                           "metadata": obj.get("metadata", {})}
        rows.append(r)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta,
            "columnDefinitions": strategy.columns if with_columns else [], "rows": rows}
