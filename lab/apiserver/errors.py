"""API errors as metav1.Status objects (what every Kubernetes client decodes on a non-2xx answer)."""

from __future__ import annotations

from typing import Any

MODIFIED_MSG = "the object has been modified; please apply your changes to the latest version and try again"
REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class ApiError(Exception):
    """An error answer; `status()` is the body."""

    def __init__(self, code: int, message: str, reason: str | None = None, *, name: str | None = None,
                 kind: str | None = None, group: str | None = None, causes: list[dict] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.name = name
        self.kind = kind
        self.group = group
        self.causes = causes or []

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.message, self.reason, name=self.name, kind=self.kind,
                             group=self.group, causes=self.causes)


def status_object(code: int, message: str, reason: str, *, name: str | None = None, kind: str | None = None,
                  group: str | None = None, causes: list[dict] | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    if kind is not None:
        details["kind"] = kind
    if causes:
        details["causes"] = causes
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def success_status(name: str, kind: str, group: str = "", uid: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(404, f'{qualified} "{name}" not found', name=name, kind=resource, group=group)


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(409, f'{qualified} "{name}" already exists', "AlreadyExists", name=name, kind=resource,
                    group=group)


def conflict(resource: str, name: str, why: str, group: str = "") -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(409, f'Operation cannot be fulfilled on {qualified} "{name}": {why}', "Conflict", name=name,
                    kind=resource, group=group)


def invalid(kind: str, name: str, causes: list[dict], group: str = "") -> ApiError:
    """422 with the field causes; the message lists them as kube-apiserver does (kubectl prints it)."""
    qualified = f"{kind}.{group}" if group else kind
    texts = [_cause_text(c) for c in causes]
    if len(texts) == 1:
        msg = f'{qualified} "{name}" is invalid: {texts[0]}'
    elif texts:
        msg = f'{qualified} "{name}" is invalid: [{", ".join(texts)}]'
    else:
        msg = f'{qualified} "{name}" is invalid'
    return ApiError(422, msg, "Invalid", name=name, kind=kind, group=group, causes=causes)


def _cause_text(c: dict) -> str:
    return f"{c['field']}: {c['message']}" if c.get("field") else c["message"]


def gone(message: str) -> ApiError:
    return ApiError(410, message, "Expired")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")
