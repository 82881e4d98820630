"""Secrets (stringData folded into data, base64 checked, TLS keys required) and ConfigMaps (kdns's
configuration): their data maps and `kubectl get`'s columns."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lab.apiserver import tables
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import AGE, NAME, column
from lab.apiserver.validation import CONFIG_KEY, Causes


def validate_data_map(c: Causes, obj: dict, key: str, b64: bool) -> None:
    data = obj.get(key)
    if data is None:
        return
    if not isinstance(data, dict):
        c.invalid(key, data, "must be a map")
        return
    for k, v in data.items():
        if not CONFIG_KEY.match(k) or len(k) > 253:
            c.invalid(f"{key}[{k}]", k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
        if b64:
            try:
                base64.b64decode(str(v), validate=True)
            except (binascii.Error, ValueError):
                c.invalid(f"{key}[{k}]", "<secret contents redacted>", "illegal base64 data")
        elif not isinstance(v, str):
            c.invalid(f"{key}[{k}]", v, "must be a string")


class Secrets(Strategy):
    columns = [NAME, column("Type"), column("Data", "integer"), AGE]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        obj.setdefault("type", "Opaque")
        # stringData is write-only: merged into data, base64-encoded, as kube-apiserver does.
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        validate_data_map(c, obj, "data", b64=True)
        if obj.get("type") == "kubernetes.io/tls":
            for k in ("tls.crt", "tls.key"):
                if k not in (obj.get("data") or {}):
                    c.required(f"data[{k}]")

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), obj.get("type", ""), len(obj.get("data") or {}), tables.age(obj)]


class ConfigMaps(Strategy):
    columns = [NAME, column("Data", "integer"), AGE]

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        validate_data_map(c, obj, "data", b64=False)
        validate_data_map(c, obj, "binaryData", b64=True)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), tables.age(obj)]
