"""The HTTP/1.1 the node API needs (its only client is the API server's proxy): a request head
parsed (every value of a repeated header kept: client-go sends one X-Stream-Protocol-Version
line per protocol), a response head, one request per connection. Streaming requests leave HTTP
after the head (101 Switching Protocols), so bodies are never read: a request with one is
refused."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024
REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class BadRequest(Exception):
    pass


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case names

    def header(self, name: str) -> str:
        """All values of a header joined with ", " (as HTTP folds them); "" if absent."""
        return ", ".join(self.headers.get(name.lower(), []))

    def values(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    def flat_headers(self) -> dict[str, str]:
        return {k: ", ".join(v) for k, v in self.headers.items()}

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]

    def flag(self, name: str) -> bool:
        """A boolean query parameter as the API server converts it (`1`, `true`, `True`)."""
        return self.arg(name).lower() in ("1", "true", "yes")


def parse_head(raw: bytes) -> Request:
    """A request line and headers (up to and including the blank line)."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {lines[0][:100]!r}")
    method, target, _ = parts
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:100]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    split = urllib.parse.urlsplit(target)
    if not split.path.startswith("/"):
        raise BadRequest(f"request target must be a path, got {target[:100]!r}")
    return Request(method, target, urllib.parse.unquote(split.path),
                   urllib.parse.parse_qs(split.query, keep_blank_values=True), headers)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request head (None: the client closed without sending one)."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest("connection closed in the middle of a request head") from None
    except asyncio.LimitOverrunError:
        raise BadRequest(f"request head larger than {MAX_HEAD} bytes") from None
    req = parse_head(raw)
    length = req.header("content-length").strip()
    if (length and length != "0") or req.header("transfer-encoding"):
        raise BadRequest("request bodies are not accepted here")
    return req


def head(status: int, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             extra: list[tuple[str, str]] | None = None) -> bytes:
    """A complete response; the connection closes after it."""
    return head(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                         ("Connection", "close"), *(extra or [])]) + body


def status_response(code: int, message: str, reason: str = "") -> bytes:
    """A metav1.Status body, as the kubelet answers API errors (the API server passes it on and
    kubectl prints its message)."""
    default = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 500: "InternalError"}
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason or default.get(code, ""), "code": code}
    return response(code, json.dumps(body).encode(), "application/json")
