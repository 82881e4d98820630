"""Admission, the generic chain every write goes through before anything is stored (a rejected
request writes nothing): the kind's defaults, metadata validation, the kind's validation, then
the kind's allocations. Pure apart from the reservations: objects in, causes out; the registry
turns causes into a 422 Invalid Status and writes the allocation keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from knet.kube import selectors
from lab.apiserver import limits
from lab.apiserver.allocator import Reservation
from lab.apiserver.strategy import Config
from lab.apiserver.validation import Causes, get

if TYPE_CHECKING:
    from lab.apiserver.resources import ResourceType


def admit(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config,
          res: Reservation) -> list[dict[str, str]]:
    """Default `obj` (in place), validate it, allocate what it needs (reserved in `res`); the
    causes, empty when it may be written."""
    strategy = rt.strategy
    strategy.default(obj, old)
    c = Causes()
    validate_metadata(c, rt, obj)
    strategy.validate(c, obj, old, cfg)
    if not c:
        strategy.allocate(c, obj, old, res, cfg)
    return c.items


def validate_metadata(c: Causes, rt: ResourceType, obj: dict[str, Any]) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        c.required("metadata")
        return
    name = meta.get("name")
    rule = rt.strategy.name_rule
    if not name:
        c.required("metadata.name", "name or generateName is required")
    elif rule == "label":
        c.dns_label("metadata.name", name)
    elif rule == "dns1035":
        c.dns1035("metadata.name", name)
    elif rule == "path":  # RBAC objects: any name usable as a path segment (`system:discovery`)
        if not isinstance(name, str) or name in (".", "..") or "/" in name or "%" in name:
            c.invalid("metadata.name", name, "may not be '.' or '..' and may not contain '/' or '%'")
    else:
        c.dns_subdomain("metadata.name", name)
    c.labels("metadata.labels", meta.get("labels"))
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
            c.invalid("metadata.annotations", annotations, "must be a map of strings")
        else:
            for k in annotations:
                if not selectors.valid_label_key(k):
                    c.invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, "
                                                         "'-', '_' or '.'")
            if limits.annotations_size(annotations) > limits.TOTAL_ANNOTATION_SIZE_LIMIT:
                c.add("FieldValueTooLong", "metadata.annotations",
                      f"Too long: may not be more than {limits.TOTAL_ANNOTATION_SIZE_LIMIT} bytes")
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for key in ("apiVersion", "kind", "name", "uid"):
            if not get(ref, key):
                c.required(f"metadata.ownerReferences[{i}].{key}")
