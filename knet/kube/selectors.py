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
- The string form (`labelSelector=` of list/watch, the grammar of labels.Parse): `a=b`, `a==b`,
  `a!=b` (true when a is absent), `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, `a>1`, `a<1`, joined by
  commas. "" = everything. Keys and values must be valid label keys and values.
- Field selectors (fields.ParseSelector): `path=value`, `path==value`, `path!=value`, joined by
  commas (a backslash escapes `,`, `=`, `!` and `\\` in values), on dotted paths of the object's
  JSON (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`).

Parse errors raise SelectorError (a ValueError) with upstream's wording: the lab API server
answers them with a 400 BadRequest Status.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from knet.kube.models.meta import LabelSelector

_OPS = ("in", "notin", "=", "!=", "exists", "!", "gt", "lt")
_EXPRESSION_OPS = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}


class SelectorError(ValueError):
    """A selector that does not parse (the API server's 400 BadRequest)."""


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
        if value is None:
            return False
        try:
            have, want = int(value), int(self.values[0])
        except ValueError:
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
        return cls._build(selector.match_labels,
                          ((e.key, e.operator, e.values) for e in selector.match_expressions))

    @classmethod
    def from_object(cls, obj: Mapping[str, Any] | None) -> Selector:
        """A metav1.LabelSelector's JSON as the API server holds it, not validated (the server's
        validation reports faults itself): null parts are empty, matchLabels values compare as
        strings, and only an unknown operator raises SelectorError. None selects nothing."""
        if obj is None:
            return cls.nothing()
        return cls._build({k: str(v) for k, v in (obj.get("matchLabels") or {}).items()},
                          ((e.get("key", ""), e.get("operator"), e.get("values") or ())
                           for e in obj.get("matchExpressions") or []))

    @classmethod
    def _build(cls, match_labels: Mapping[str, str],
               expressions: Iterable[tuple[str, Any, Iterable[str]]]) -> Selector:
        reqs = [Requirement(k, "=", (v,)) for k, v in sorted(match_labels.items())]
        for key, operator, values in expressions:
            op = _EXPRESSION_OPS.get(operator)
            if op is None:
                raise SelectorError(f"{operator!r} is not a valid label selector operator")
            reqs.append(Requirement(key, op, tuple(values)))
        return cls(tuple(reqs))

    @classmethod
    def from_map(cls, selector: Mapping[str, str] | None) -> Selector:
        if not selector:
            return cls.nothing()
        return cls(tuple(Requirement(k, "=", (v,)) for k, v in sorted(selector.items())))

    @classmethod
    def parse(cls, text: str | None) -> Selector:
        """The `labelSelector` query string. Raises SelectorError on bad syntax or invalid keys/values."""
        return cls(_parse_label_requirements(text or ""))

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

_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# One requirement: optional "!", key, then an operator and its operand(s) or nothing.
_REQ_RE = re.compile(r"""\s*(?P<not>!)?\s*(?P<key>[^\s!=<>,()]+)\s*
    (?:(?P<op>==|=|!=|<|>)\s*(?P<value>[^\s,()]*)
      |\s(?P<setop>in|notin)\s*\((?P<set>[^()]*)\)
    )?\s*(?:,|$)""", re.VERBOSE)


def valid_label_key(key: str) -> bool:
    """A qualified name: an optional DNS-subdomain prefix and `/`, then a name of at most 63
    alphanumerics, '-', '_' or '.', starting and ending alphanumeric."""
    return bool(_KEY_RE.match(key)) and len(key.split("/")[0]) <= 253


def valid_label_value(value: str) -> bool:
    """Empty, or at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric."""
    return len(value) <= 63 and bool(_VALUE_RE.match(value))


def _parse_label_requirements(text: str) -> tuple[Requirement, ...]:
    """`a=b,c!=d,e in (f,g),!h,i` -> requirements (all must match); "" selects everything."""
    if not text.strip():
        return ()
    out: list[Requirement] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _REQ_RE.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r}")
        out.append(_requirement(m))
        pos = m.end()
        if text[pos - 1] == "," and pos == len(text):
            raise SelectorError("found '', expected: identifier after ','")
    return tuple(out)


def _requirement(m: re.Match) -> Requirement:
    key = m["key"]
    if not valid_label_key(key):
        raise SelectorError(f"invalid label key {key!r}")
    if m["not"]:
        if m["op"] or m["setop"]:
            raise SelectorError(f"'!' must be followed by a bare key, not an operator: {key}")
        return Requirement(key, "!")
    if m["setop"]:
        values = tuple(v.strip() for v in m["set"].split(",")) if m["set"].strip() else ()
        if not values:
            raise SelectorError(f"for 'in', 'notin' operators, values set can't be empty: {key}")
        for v in values:
            if not valid_label_value(v):
                raise SelectorError(f"invalid label value {v!r}")
        return Requirement(key, m["setop"], values)
    op = m["op"]
    if op is None:
        return Requirement(key, "exists")
    value = m["value"]
    if op in ("<", ">"):
        if not re.fullmatch(r"-?\d+", value or ""):
            raise SelectorError(f"for 'gt', 'lt' operators, exactly one integer value is required: {value!r}")
        return Requirement(key, "gt" if op == ">" else "lt", (value,))
    if not valid_label_value(value):
        raise SelectorError(f"invalid label value {value!r}")
    return Requirement(key, "=" if op in ("=", "==") else "!=", (value,))


# --- field selectors ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldRequirement:
    path: str
    op: str  # "=" or "!="
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.path) == self.value) == (self.op == "=")


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares against. An absent field reads as "" (so
    `spec.nodeName=` selects unscheduled pods, as upstream); booleans as "true"/"false"."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, Mapping) and path == "source":  # Event.source is an object; the selector means component
        return str(cur.get("component", ""))
    return str(cur)


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """The `fieldSelector` query string: `metadata.name=x,spec.nodeName!=` (a backslash escapes
    `,`, `=`, `!` and `\\` in values). Raises SelectorError on bad syntax."""
    if text is None or not text.strip():
        return []
    out = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        for op in ("!=", "==", "="):
            idx = _find_unescaped(term, op)
            if idx >= 0:
                path, value = term[:idx].strip(), _unescape(term[idx + len(op):])
                if not path:
                    raise SelectorError(f"invalid field selector term {term!r}")
                out.append(FieldRequirement(path, "!=" if op == "!=" else "=", value))
                break
        else:
            raise SelectorError(f"invalid selector: '{term}'; can't understand '{term}'")
    return out


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    return parts


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def field_selector_matches(requirements: Iterable[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in requirements)


def check_field_selector(requirements: Iterable[FieldRequirement], allowed: set[str], kind: str) -> None:
    """Raise SelectorError for a field the kind does not support selecting on (as the API server)."""
    for r in requirements:
        if r.path not in allowed:
            raise SelectorError(f'"{r.path}" is not a known field selector: only "{kind}" fields '
                                f'{", ".join(sorted(allowed))} are supported')
