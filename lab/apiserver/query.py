"""The parameters of a list or watch, parsed once (a bad selector is a 400 before any work), and
what they let a reader skip: the equality terms an index answers (`indexable`) and the strings
an object's stored JSON must contain to possibly match (`raw_hints`, so a list read from etcd
decodes only the objects that might be returned)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from knet.kube import selectors
from lab.apiserver.errors import bad_request

if TYPE_CHECKING:
    from lab.apiserver.resources import ResourceType

# Values whose JSON form is the value in quotes, whatever encoder wrote it (no escapes).
_PLAIN = re.compile(r"^[A-Za-z0-9._/:-]+$")


class Query:
    def __init__(self, rt: ResourceType, params: dict[str, str]) -> None:
        try:
            self.labels = selectors.Selector.parse(params.get("labelSelector"))
            self.fields = selectors.parse_field_selector(params.get("fieldSelector"))
            selectors.check_field_selector(self.fields, {"metadata.name", "metadata.namespace", *rt.fields}, rt.kind)
        except selectors.SelectorError as e:
            raise bad_request(f"unable to parse requirement: {e}" if "requirement" not in str(e) else str(e)) from None
        self.rv = params.get("resourceVersion") or None
        if self.rv is not None and not self.rv.isdigit():
            raise bad_request(f"invalid resourceVersion {self.rv!r}: must be an integer")
        self.rv_match = params.get("resourceVersionMatch") or None
        self.cont = params.get("continue") or None
        try:
            self.limit = int(params.get("limit") or 0)
            self.timeout = int(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        except ValueError as e:
            raise bad_request(f"invalid limit or timeoutSeconds: {e}") from None

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        return self.labels.matches((obj.get("metadata") or {}).get("labels")) and \
            selectors.field_selector_matches(self.fields, obj)

    @property
    def selects_nothing(self) -> bool:
        return self.labels.is_nothing

    def indexable(self) -> list[tuple[str, tuple[str, ...]]]:
        """(index name, values) for each term that only objects with one of `values` under that
        index can satisfy: `label:<key>` for `key=v` / `key in (...)`, `field:<path>` for
        `path=v` (metadata.name and metadata.namespace included)."""
        out: list[tuple[str, tuple[str, ...]]] = []
        for r in self.labels.requirements:
            if r.op in ("=", "in"):
                out.append((f"label:{r.key}", tuple(r.values)))
        for f in self.fields:
            if f.op == "=":
                out.append((f"field:{f.path}", (f.value,)))
        return out

    def raw_hints(self) -> list[bytes]:
        """Byte strings the stored JSON of every matching object contains (a cheap pre-filter:
        an object without one of them cannot match; one with all of them may)."""
        hints: list[bytes] = []
        for r in self.labels.requirements:
            if r.op in ("=", "in", "exists"):
                hints.append(json.dumps(r.key).encode())
            if r.op in ("=", "in") and len(r.values) == 1 and _PLAIN.match(r.values[0]):
                hints.append(json.dumps(r.values[0]).encode())
        for f in self.fields:
            # Only string-valued fields: numbers and booleans are not quoted in JSON.
            if f.op == "=" and _PLAIN.match(f.value) and not f.value.isdigit() and f.value not in ("true", "false") \
                    and f.path != "source":
                hints.append(json.dumps(f.value).encode())
        return hints
