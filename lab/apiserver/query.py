"""The parameters of a list or watch, parsed once (a bad selector is a 400 before any work), and
what they let a reader skip: the equality terms an index answers (`indexable`) and the strings
an object's stored JSON must contain to possibly match (`raw_hints`, so a list read from etcd
decodes only the objects that might be returned)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from knet.kube import selectors
from lab.apiserver.errors import bad_request, invalid
from lab.apiserver.validation import Causes

if TYPE_CHECKING:
    from lab.apiserver.resources import ResourceType

# Values whose JSON form is the value in quotes, whatever encoder wrote it (no escapes).
_PLAIN = re.compile(r"^[A-Za-z0-9._/:-]+$")


class Query:
    def __init__(self, rt: ResourceType, params: dict[str, str], *, watch: bool = False) -> None:
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
        # A streaming list (watch-list): the current objects first, then a bookmark marking their
        # end, then the changes. None: not asked (a plain watch); False: no initial events.
        initial = params.get("sendInitialEvents")
        self.send_initial: bool | None = None if initial is None else initial.lower() in ("1", "true")
        self.bookmarks = params.get("allowWatchBookmarks") in ("1", "true", "True")
        _check_options(self, watch)
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


def _check_options(q: Query, watch: bool) -> None:
    """kube-apiserver's ListOptions validation of the resourceVersion/watch-list parameters
    (422 Invalid on ListOptions.meta.k8s.io, one cause per broken rule, in its words)."""
    c = Causes()
    match = q.rv_match
    if watch:
        if q.send_initial is not None and match != "NotOlderThan":
            c.forbidden("resourceVersionMatch",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
        if match:
            if q.send_initial is None:
                c.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless "
                                                    "sendInitialEvents is provided")
            if match != "NotOlderThan":
                c.unsupported("resourceVersionMatch", match, ["NotOlderThan"])
            if q.cont:
                c.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
    else:
        if match:
            if q.rv is None:
                c.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is "
                                                    "provided")
            if q.cont:
                c.forbidden("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
            if match not in ("Exact", "NotOlderThan"):
                c.unsupported("resourceVersionMatch", match, ["Exact", "NotOlderThan", ""])
            if match == "Exact" and q.rv == "0":
                c.forbidden("resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"')
        if q.send_initial is not None:
            c.forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    if c:
        raise invalid("ListOptions", "", c.items, group="meta.k8s.io")
