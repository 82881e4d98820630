"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the strategic merge patch
that `kubectl apply/edit/label/scale` send (k8s.io/apimachinery strategicpatch).

Strategic merge needs each list's merge strategy, which Kubernetes takes from struct tags. The
lists the served kinds use are in MERGE_KEYS below, keyed by the end of their path ("[]" stands
for a list element); every other list is atomic (replaced whole), as in Kubernetes.

Pure: documents in, document out. PatchError means the patch is malformed (400); PatchConflict
means a well-formed patch does not apply (a failed JSON patch `test`, a missing path: 422).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

PRIMITIVE = ""  # merge strategy for lists of scalars that are merged (set union), e.g. finalizers

_POD_SPEC_LISTS: dict[tuple[str, ...], str] = {
    ("containers",): "name", ("initContainers",): "name", ("ephemeralContainers",): "name",
    ("volumes",): "name", ("imagePullSecrets",): "name", ("hostAliases",): "ip",
    ("topologySpreadConstraints",): "topologyKey",
}
for _c in ("containers", "initContainers", "ephemeralContainers"):
    _POD_SPEC_LISTS.update({(_c, "[]", "ports"): "containerPort", (_c, "[]", "env"): "name",
                            (_c, "[]", "volumeMounts"): "mountPath", (_c, "[]", "volumeDevices"): "devicePath"})

MERGE_KEYS: dict[tuple[str, ...], str] = {
    **_POD_SPEC_LISTS,
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): PRIMITIVE,
    ("status", "conditions"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
    ("spec", "podCIDRs"): PRIMITIVE,
}
# Lists whose merge key depends on the kind (ServiceSpec.ports vs PodSpec...ports) come from the
# kind's strategy (`Strategy.merge_keys`: exact root paths) as `special`.
MergeKeys = Mapping[tuple[str, ...], str]
NO_SPECIAL: MergeKeys = {}


class PatchError(ValueError):
    """Malformed patch document (400 BadRequest)."""


class PatchConflict(ValueError):
    """A well-formed patch that cannot be applied to this object (422)."""


# --- JSON merge patch ---------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- JSON patch ---------------------------------------------------------------------------------

def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"JSON patch operation {kind} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            doc, _ = _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            if kind == "move":
                doc, value = _remove(doc, src)
            else:
                value = copy.deepcopy(_get(doc, src))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchConflict(f"test operation failed at {op['path']}")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r}")
    return doc


def _pointer(text: Any) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchError(f"invalid JSON pointer {text!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in text.split("/")[1:]] if text else []


def _index(container: list, part: str, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(container)
    if not part.isdigit():
        raise PatchConflict(f"invalid list index {part!r}")
    i = int(part)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchConflict(f"list index {i} out of range")
    return i


def _get(doc: Any, path: list[str]) -> Any:
    cur = doc
    for part in path:
        if isinstance(cur, dict):
            if part not in cur:
                raise PatchConflict(f"path /{'/'.join(path)} does not exist")
            cur = cur[part]
        elif isinstance(cur, list):
            cur = cur[_index(cur, part, False)]
        else:
            raise PatchConflict(f"path /{'/'.join(path)} does not exist")
    return cur


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), value)
    else:
        raise PatchConflict(f"cannot add at /{'/'.join(path)}")
    return doc


def _remove(doc: Any, path: list[str]) -> tuple[Any, Any]:
    if not path:
        raise PatchConflict("cannot remove the whole document")
    parent = _get(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchConflict(f"path /{'/'.join(path)} does not exist")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, False))
    raise PatchConflict(f"path /{'/'.join(path)} does not exist")


# --- strategic merge patch ----------------------------------------------------------------------

def strategic_merge_patch(original: dict, patch: Any, special: MergeKeys = NO_SPECIAL) -> dict:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(original) if isinstance(original, dict) else {}, patch, (), (), special)


def merge_key(path: tuple[str, ...], root_path: tuple[str, ...], special: MergeKeys) -> str | None:
    """Merge key of the list at `path` (generic suffix rules) / `root_path` (exact, the kind's)."""
    if root_path in special:
        return special[root_path]
    for n in range(min(len(path), 3), 0, -1):
        key = MERGE_KEYS.get(path[-n:])
        if key is not None:
            return key
    return None


def _merge_map(original: dict, patch: dict, path: tuple[str, ...], root: tuple[str, ...], special: MergeKeys) -> dict:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive is not None:
        raise PatchError(f"unknown patch directive {directive!r} in a map")
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list) and isinstance(value, list):
                original[field] = [v for v in original[field] if v not in value]
            continue
        sub_path, sub_root = (*path, key), (*root, key)
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                original.pop(key, None)
                continue
            current = original.get(key)
            original[key] = _merge_map(current if isinstance(current, dict) else {}, value, sub_path, sub_root, special)
        elif isinstance(value, list):
            mk = merge_key(sub_path, sub_root, special)
            current = original.get(key)
            if mk is None or not isinstance(current, list):
                merged = _strip_directives(value)
                if mk is not None:
                    merged = _merge_list([], value, mk, sub_path, sub_root, special)
            else:
                merged = _merge_list(current, value, mk, sub_path, sub_root, special)
            order = patch.get(f"$setElementOrder/{key}")
            original[key] = _order(merged, order, mk) if isinstance(order, list) else merged
        else:
            original[key] = value
    for key, order in patch.items():
        # An order directive alone (all elements unchanged) still reorders the list.
        if key.startswith("$setElementOrder/") and key.split("/", 1)[1] not in patch:
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list) and isinstance(order, list):
                original[field] = _order(original[field], order, merge_key((*path, field), (*root, field), special))
    if isinstance(retain, list):
        for key in list(original):
            if key not in retain:
                del original[key]
    return original


def _merge_list(original: list, patch: list, mk: str, path: tuple[str, ...], root: tuple[str, ...],
                special: MergeKeys) -> list:
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [_strip_directives(e) for e in patch if not (isinstance(e, dict) and "$patch" in e)]
    out = copy.deepcopy(original)
    if mk == PRIMITIVE:
        for e in patch:
            if e not in out:
                out.append(e)
        return out
    elem_path, elem_root = (*path, "[]"), (*root, "[]")
    for e in patch:
        if not isinstance(e, dict):
            raise PatchError(f"list {'.'.join(path)} with merge key {mk} needs objects, got {e!r}")
        if mk not in e:
            raise PatchError(f"map: {e} does not contain declared merge key: {mk}")
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(mk) == e[mk]), None)
        if e.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
            continue
        if idx is None:
            out.append(_merge_map({}, e, elem_path, elem_root, special))
        else:
            out[idx] = _merge_map(out[idx], e, elem_path, elem_root, special)
    return out


def _order(items: list, order: list, mk: str | None) -> list:
    """$setElementOrder: elements named in the order first, in that order; the rest (server-only
    elements) keep their relative order after them."""
    def ident(e: Any) -> Any:
        return json.dumps(e.get(mk), sort_keys=True) if mk and isinstance(e, dict) else json.dumps(e, sort_keys=True)
    rank = {ident(o): i for i, o in enumerate(order)}
    named = sorted((e for e in items if ident(e) in rank), key=lambda e: rank[ident(e)])
    return named + [e for e in items if ident(e) not in rank]


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not (k.startswith("$setElementOrder/") or k in ("$patch", "$retainKeys")
                        or k.startswith("$deleteFromPrimitiveList/"))}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value
