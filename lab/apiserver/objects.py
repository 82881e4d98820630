"""Pure helpers on object dicts: metadata set on create/update, generated names, Scale
conversion, continue tokens, timestamps."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.apiserver.resources import ResourceType

# kube-apiserver's generateName alphabet (no vowels, so no words; no 0/1/3 look-alikes).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
SERVER_FIELDS = ("resourceVersion", "selfLink", "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")


def now(after_seconds: float = 0) -> str:
    """The API's timestamp format, for now or `after_seconds` from now."""
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=after_seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 time as clients write them: `Z` or an offset (the Python client's models write
    `+00:00`), with or without fractions (MicroTime)."""
    if not text:
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def generate_name(prefix: str) -> str:
    return prefix[:58] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))


def meta(obj: dict) -> dict:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = obj["metadata"] = {}
    return m


def init_create(rt: ResourceType, obj: dict, namespace: str | None) -> None:
    """Server-set fields of a new object (the caller has checked kind/apiVersion/namespace)."""
    obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
    m = meta(obj)
    for key in (*SERVER_FIELDS, "uid", "creationTimestamp", "generation"):
        m.pop(key, None)
    if not m.get("name") and m.get("generateName"):
        m["name"] = generate_name(m["generateName"])
    if rt.namespaced:
        m["namespace"] = namespace
    else:
        m.pop("namespace", None)
    m["uid"] = str(uuid.uuid4())
    m["creationTimestamp"] = now()
    if rt.strategy.generation:
        m["generation"] = 1
    if rt.strategy.status_from_controllers:
        obj["status"] = {}


def init_update(rt: ResourceType, new: dict, old: dict, subresource: str | None) -> dict:
    """The object to store for an update: identity from the old object; a main-resource update
    keeps the old status, a status update keeps everything but status."""
    if subresource == "status":
        out = copy.deepcopy(old)
        out["status"] = copy.deepcopy(new.get("status", {}))
        for key in rt.strategy.status_writes_metadata:
            if key in new.get("metadata", {}):
                meta(out)[key] = copy.deepcopy(new["metadata"][key])
        return out
    out = copy.deepcopy(new)
    out["kind"], out["apiVersion"] = rt.kind, rt.api_version
    m, om = meta(out), old.get("metadata", {})
    for key in SERVER_FIELDS:
        m.pop(key, None)
    for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
        if key in om:
            m[key] = om[key]
        else:
            m.pop(key, None)
    if rt.has_status:
        if "status" in old:
            out["status"] = copy.deepcopy(old["status"])
        else:
            out.pop("status", None)
    if "generation" in om:
        m["generation"] = om["generation"] + (1 if spec_changed(out, old) else 0)
    return out


def spec_changed(new: dict, old: dict) -> bool:
    """Anything but metadata and status changed (kube-apiserver then bumps metadata.generation)."""
    def body(o: dict) -> dict:
        return {k: v for k, v in o.items() if k not in ("metadata", "status", "kind", "apiVersion")}
    return body(new) != body(old)


def strip_for_storage(obj: dict) -> dict:
    """The object as stored: without the fields the server derives when it reads (a copy of
    the top level and metadata only; the rest is shared with `obj`, and only ever serialized)."""
    out = dict(obj)
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("resourceVersion", "selfLink", "managedFields")}
    return out


def with_rv(obj: dict, revision: int) -> dict:
    meta(obj)["resourceVersion"] = str(revision)
    return obj


def to_scale(rt: ResourceType, obj: dict) -> dict:
    m = obj.get("metadata", {})
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {k: m[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in m},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                   "selector": rt.strategy.scale_selector(obj)},
    }


def encode_continue(revision: int, start_key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start_key}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"continue key is not valid: {e}") from None


def owner_uids(obj: dict) -> set[str]:
    return {str(r["uid"]) for r in (obj.get("metadata") or {}).get("ownerReferences") or []
            if isinstance(r, dict) and r.get("uid")}


def get_path(obj: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj
