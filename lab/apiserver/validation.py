"""Building blocks of admission: field-error collection in kube-apiserver's wording (kubectl
prints these messages, clients read `details.causes[].field`) and the name/IP/port checks."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from knet.kube import selectors

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
WILDCARD_DNS = re.compile(r"^\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def render(value: Any) -> str:
    """Go's %q / %v of the offending value, as kube-apiserver's messages show it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Causes:
    """Collected field errors; each is a StatusCause {reason, message, field}."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, reason: str, field: str, message: str) -> None:
        self.items.append({"reason": reason, "message": message, "field": field})

    def required(self, field: str, detail: str = "") -> None:
        self.add("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))

    def invalid(self, field: str, value: Any, detail: str) -> None:
        self.add("FieldValueInvalid", field, f"Invalid value: {render(value)}: {detail}")

    def unsupported(self, field: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
        supported = ", ".join(render(a) for a in allowed)
        self.add("FieldValueNotSupported", field, f"Unsupported value: {render(value)}: supported values: {supported}")

    def duplicate(self, field: str, value: Any) -> None:
        self.add("FieldValueDuplicate", field, f"Duplicate value: {render(value)}")

    def forbidden(self, field: str, detail: str) -> None:
        self.add("FieldValueForbidden", field, f"Forbidden: {detail}")

    def immutable(self, field: str, value: Any) -> None:
        self.invalid(field, value, "field is immutable")

    # --- common checks; each returns True when the value is fine --------------------------------

    def dns_label(self, field: str, value: Any, required: bool = True) -> bool:
        return self._rfc1123(field, value, required, 63, DNS1123_LABEL,
                             "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                             "characters or '-', and must start and end with an alphanumeric character")

    def dns_subdomain(self, field: str, value: Any, required: bool = True) -> bool:
        return self._rfc1123(field, value, required, 253, DNS1123_SUBDOMAIN,
                             "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                             "characters, '-' or '.', and must start and end with an alphanumeric character")

    def _rfc1123(self, field: str, value: Any, required: bool, max_len: int, pattern: re.Pattern[str],
                 detail: str) -> bool:
        if value in (None, ""):
            if required:
                self.required(field)
            return not required
        if not isinstance(value, str) or len(value) > max_len or not pattern.match(value):
            self.invalid(field, value, detail)
            return False
        return True

    def dns1035(self, field: str, value: Any) -> bool:
        if not isinstance(value, str) or len(value) > 63 or not DNS1035_LABEL.match(value):
            self.invalid(field, value, "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                                       "start with an alphabetic character, and end with an alphanumeric character")
            return False
        return True

    def port(self, field: str, value: Any, required: bool = True, allow_zero: bool = False) -> bool:
        if value is None:
            if required:
                self.required(field)
            return not required
        low = 0 if allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 65535:
            self.invalid(field, value, f"must be between {low} and 65535, inclusive")
            return False
        return True

    def port_name(self, field: str, value: Any) -> bool:
        """IANA service names (container port names, named targetPorts)."""
        if (not isinstance(value, str) or not 1 <= len(value) <= 15 or not IANA_SVC_NAME.match(value)
                or "--" in value or not re.search("[a-z]", value)):
            self.invalid(field, value, "must be no more than 15 characters, contain only lowercase alphanumeric "
                                       "characters or '-', contain at least one letter, and not start or end with '-'")
            return False
        return True

    def int_or_port_name(self, field: str, value: Any, required: bool = True) -> bool:
        if value is None or value == "":
            if required:
                self.required(field)
            return not required
        if isinstance(value, int) and not isinstance(value, bool):
            return self.port(field, value)
        if isinstance(value, str) and value.isdigit():
            return self.port(field, int(value))
        return self.port_name(field, value)

    def protocol(self, field: str, value: Any) -> bool:
        if value not in PROTOCOLS:
            self.unsupported(field, value, PROTOCOLS)
            return False
        return True

    def ip(self, field: str, value: Any) -> bool:
        try:
            ipaddress.ip_address(value)
            return True
        except (ValueError, TypeError):
            self.invalid(field, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
            return False

    def cidr(self, field: str, value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        try:
            return ipaddress.ip_network(value, strict=False)
        except (ValueError, TypeError):
            self.invalid(field, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
            return None

    def one_of(self, field: str, value: Any, allowed: tuple[str, ...], required: bool = True) -> bool:
        if value is None:
            if required:
                self.required(field)
            return not required
        if value not in allowed:
            self.unsupported(field, value, allowed)
            return False
        return True

    def labels(self, field: str, labels: Any) -> None:
        if labels is None:
            return
        if not isinstance(labels, dict):
            self.invalid(field, labels, "must be a map of strings")
            return
        for k, v in labels.items():
            if not selectors.valid_label_key(k):
                self.invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', "
                                       "and must start and end with an alphanumeric character")
            elif not isinstance(v, str) or not selectors.valid_label_value(v):
                self.invalid(f"{field}", v, "a valid label must be an empty string or consist of alphanumeric "
                                            "characters, '-', '_' or '.', and must start and end with an "
                                            "alphanumeric character")

    def label_selector(self, field: str, sel: Any, required: bool = False) -> bool:
        if sel is None:
            if required:
                self.required(field)
            return not required
        if not isinstance(sel, dict):
            self.invalid(field, sel, "must be a label selector")
            return False
        self.labels(f"{field}.matchLabels", sel.get("matchLabels"))
        for i, expr in enumerate(sel.get("matchExpressions") or []):
            f = f"{field}.matchExpressions[{i}]"
            op = expr.get("operator") if isinstance(expr, dict) else None
            if not self.one_of(f"{f}.operator", op, ("In", "NotIn", "Exists", "DoesNotExist")):
                continue
            values = expr.get("values") or []
            if op in ("In", "NotIn") and not values:
                self.required(f"{f}.values", "must be specified when `operator` is 'In' or 'NotIn'")
            if op in ("Exists", "DoesNotExist") and values:
                self.forbidden(f"{f}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            if not selectors.valid_label_key(str(expr.get("key", ""))):
                self.invalid(f"{f}.key", expr.get("key"), "must be a valid label key")
        return True


def get(obj: Any, *path: str, default: Any = None) -> Any:
    """obj[path[0]][path[1]]...; None (or default) where a level is missing or not a map."""
    cur = obj
    for p in path:
        if not isinstance(cur, dict):
            return default
        cur = cur.get(p)
    return default if cur is None else cur
