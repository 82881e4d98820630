"""Label and field selectors, once for everyone (components, lab controllers, lab API server).

Semantics (those of k8s.io/apimachinery):

- A `LabelSelector` matches when every matchLabels pair AND every matchExpressions requirement
  holds: In (label present, value listed), NotIn (label absent, or value not listed), Exists,
  DoesNotExist.
- An empty LabelSelector (`{}`) matches everything; `None` matches nothing
  (metav1.LabelSelectorAsSelector). Per use:
    * NetworkPolicy.spec.podSelector: always present; `{}` = every pod in the namespace.
    * NetworkPolicyPeer.podSelector / namespaceSelector: None there means "this kind of
      constraint is absent" (see NetworkPolicyPeer), so callers test `is None` first and do not
      call `label_selector_matches(None, ...)` for it.
    * Deployment/ReplicaSet.spec.selector: required; `{}` would select every pod (the API rejects
      it, since it must match the template).
- A map selector (Service.spec.selector, ReplicationController.spec.selector) is matchLabels
  alone, but a None or empty map matches nothing: a Service without a selector has hand-written
  Endpoints and selects no pods; an RC's selector is defaulted by the server from its template.
- The string form (`labelSelector=` of list/watch): `a=b`, `a==b`, `a!=b` (true when a is absent),
  `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, `a>1`, `a<1`, joined by commas. "" = everything.
- Field selectors: `path=value`, `path==value`, `path!=value`, joined by commas, on dotted paths
  of the object's JSON (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from knet.kube.models.meta import LabelSelector

_OPS = ("in", "notin", "=", "!=", "exists", "!", "gt", "lt")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # one of _OPS ("=" also covers "=="; "!" is DoesNotExist)
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("in", "="):
            return present and value in self.values
        if self.op in ("notin", "!="):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        # gt/lt: both sides must be integers, as in Go's labels package.
        try:
            have, want = int(value), int(self.values[0])  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return have > want if self.op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "=":
            return f"{self.key}={self.values[0]}"
        if self.op == "!=":
            return f"{self.key}!={self.values[0]}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(sorted(self.values))})"
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        return f"{self.key}{'>' if self.op == 'gt' else '<'}{self.values[0]}"


class Selector:
    """A parsed label selector: an AND of requirements, or Nothing."""

    def __init__(self, requirements: tuple[Requirement, ...] = (), *, nothing: bool = False) -> None:
        self.requirements = requirements
        self.is_nothing = nothing

    @classmethod
    def everything(cls) -> Selector:
        return cls()

    @classmethod
    def nothing(cls) -> Selector:
        return cls(nothing=True)

    @classmethod
    def from_label_selector(cls, selector: LabelSelector | Mapping[str, Any] | None) -> Selector:
        if selector is None:
            return cls.nothing()
        if not isinstance(selector, LabelSelector):
            selector = LabelSelector.model_validate(selector)
        reqs = [Requirement(k, "=", (v,)) for k, v in sorted(selector.match_labels.items())]
        op_map = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
        reqs += [Requirement(e.key, op_map[e.operator], tuple(e.values)) for e in selector.match_expressions]
        return cls(tuple(reqs))

    @classmethod
    def from_map(cls, selector: Mapping[str, str] | None) -> Selector:
        if not selector:
            return cls.nothing()
        return cls(tuple(Requirement(k, "=", (v,)) for k, v in sorted(selector.items())))

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        """The `labelSelector` query string. Raises ValueError on bad syntax."""
        return cls(tuple(_parse_label_requirements(text or "")))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.is_nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def is_everything(self) -> bool:
        return not self.is_nothing and not self.requirements

    def __str__(self) -> str:
        # Nothing has no string form in the API; callers must not send it as a query.
        return ",".join(str(r) for r in self.requirements)

    def __repr__(self) -> str:
        return "Selector(<nothing>)" if self.is_nothing else f"Selector({str(self)!r})"


def label_selector_matches(selector: LabelSelector | Mapping[str, Any] | None,
                           labels: Mapping[str, str] | None) -> bool:
    """metav1.LabelSelector semantics: None matches nothing, {} matches everything."""
    return Selector.from_label_selector(selector).matches(labels)


def map_selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """Service/RC map selector: every pair must match; None or {} matches nothing."""
    return Selector.from_map(selector).matches(labels)


def to_query(selector: LabelSelector | Mapping[str, str] | str | None) -> str | None:
    """A selector as the `labelSelector` query value (None: no selector, list everything).
    A dict is a map selector; an empty LabelSelector is "" (everything)."""
    if selector is None or isinstance(selector, str):
        return selector or None
    if isinstance(selector, LabelSelector):
        return str(Selector.from_label_selector(selector)) or None
    return str(Selector(tuple(Requirement(k, "=", (v,)) for k, v in sorted(selector.items())))) or None


# --- string parsing ----------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=|>|<)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in selector {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '(' in selector {text!r}")
    parts.append(text[start:])
    return parts


def _parse_label_requirements(text: str) -> list[Requirement]:
    if not text.strip():
        return []
    reqs = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            if any(not re.fullmatch(_VALUE, v) for v in values):
                raise ValueError(f"invalid value in {part.strip()!r}")
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _CMP_RE.match(part):
            key, op, value = m.groups()
            if op in (">", "<"):
                if not re.fullmatch(r"-?\d+", value):
                    raise ValueError(f"{part.strip()!r}: {op} needs an integer")
                op = "gt" if op == ">" else "lt"
            reqs.append(Requirement(key, "=" if op == "==" else op, (value,)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise ValueError(f"invalid label selector requirement {part.strip()!r}")
    return reqs


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    op: str  # "=" or "!="
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        found: Any = obj
        for part in self.path.split("."):
            found = found.get(part) if isinstance(found, Mapping) else None
        # An absent field compares as "" (so `spec.nodeName=` selects unscheduled pods, as upstream).
        actual = "" if found is None else (str(found).lower() if isinstance(found, bool) else str(found))
        return (actual == self.value) == (self.op == "=")


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """The `fieldSelector` query string. Raises ValueError on bad syntax."""
    reqs = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ValueError(f"invalid field selector requirement {part.strip()!r}")
        path, op, value = m.groups()
        reqs.append(FieldRequirement(path, "!=" if op == "!=" else "=", value))
    return reqs


def field_selector_matches(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)
