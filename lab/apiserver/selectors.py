"""Label and field selectors: the query strings of `?labelSelector=` / `?fieldSelector=` (the
grammar of k8s.io/apimachinery labels.Parse and fields.ParseSelector) and LabelSelector objects.

Pure: strings and dicts in, requirements and booleans out. Parse errors raise SelectorError (the
server answers 400 BadRequest).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("gt", "lt"):
            try:
                have, want = int(value or ""), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        raise SelectorError(f"unknown operator {self.op}")

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(sorted(self.values))})"
        if self.op in ("gt", "lt"):
            return f"{self.key}{'>' if self.op == 'gt' else '<'}{self.values[0]}"
        return f"{self.key}{self.op}{self.values[0]}"


LabelSelector = tuple[Requirement, ...]

_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# One requirement: optional "!", key, then an operator and its operand(s) or nothing.
_REQ_RE = re.compile(r"""\s*(?P<not>!)?\s*(?P<key>[^\s!=<>,()]+)\s*
    (?:(?P<op>==|=|!=|<|>)\s*(?P<value>[^\s,()]*)
      |\s(?P<setop>in|notin)\s*\((?P<set>[^()]*)\)
    )?\s*(?:,|$)""", re.VERBOSE)


def valid_label_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and len(key.split("/")[0]) <= 253


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_VALUE_RE.match(value))


def parse_labels(text: str | None) -> LabelSelector:
    """`a=b,c!=d,e in (f,g),!h,i` -> requirements (all must match); "" selects everything."""
    if text is None or not text.strip():
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


def matches(selector: LabelSelector, labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(r.matches(labels) for r in selector)


def from_object(obj: Mapping[str, Any] | None) -> LabelSelector:
    """A metav1.LabelSelector {matchLabels, matchExpressions}; None selects nothing in Kubernetes,
    but callers decide that: this returns () (everything) for None and {}."""
    if not obj:
        return ()
    reqs = [Requirement(k, "=", (str(v),)) for k, v in sorted((obj.get("matchLabels") or {}).items())]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in obj.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        reqs.append(Requirement(expr.get("key", ""), op, tuple(expr.get("values") or ())))
    return tuple(reqs)


def to_string(selector: LabelSelector) -> str:
    return ",".join(str(r) for r in selector)


# --- field selectors ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


FieldSelector = tuple[FieldRequirement, ...]


def parse_fields(text: str | None) -> FieldSelector:
    """`metadata.name=x,spec.nodeName!=` (backslash escapes `,`, `=`, `!` and `\\`)."""
    if text is None or not text.strip():
        return ()
    out = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            continue
        for op, equal in (("!=", False), ("==", True), ("=", True)):
            idx = _find_unescaped(term, op)
            if idx >= 0:
                name, value = term[:idx].strip(), _unescape(term[idx + len(op):])
                if not name:
                    raise SelectorError(f"invalid field selector term {term!r}")
                out.append(FieldRequirement(name, value, equal))
                break
        else:
            raise SelectorError(f"invalid selector: '{term}'; can't understand '{term}'")
    return tuple(out)


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


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string a field selector compares against (missing -> "", as kube-apiserver does)."""
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


def fields_match(selector: FieldSelector, obj: Mapping[str, Any],
                 value_of: Callable[[Mapping[str, Any], str], str] = field_value) -> bool:
    return all((value_of(obj, r.field) == r.value) == r.equal for r in selector)


def check_fields(selector: FieldSelector, allowed: set[str], kind: str) -> None:
    for r in selector:
        if r.field not in allowed:
            raise SelectorError(f'"{r.field}" is not a known field selector: only "{kind}" fields '
                                f'{", ".join(sorted(allowed))} are supported')
