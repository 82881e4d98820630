"""What a request may be: kube-apiserver's input limits, checked before anything is decoded into
the server's structures or stored (a request over a limit changes nothing).

- the body: `MaxRequestBodyBytes` (3 MiB, kube-apiserver's default for writes) -> 413
  RequestEntityTooLarge, refused from Content-Length before reading and again while reading;
- the JSON nesting depth: kube-apiserver's decoder stops at 10,000 levels. Python's json module
  and everything that walks an object afterwards (admission, patches, deepcopy, encoding) recurse,
  so a few thousand levels are a RecursionError there: the limit here is `MAX_DEPTH` (no object
  Kubernetes serves comes near it), a clear 400 rather than a 500;
- the annotations: 256 KiB of keys and values in total -> 422 on `metadata.annotations`
  (apimachinery's ValidateAnnotations; admission checks `annotations_size`).
"""

from __future__ import annotations

import json
from typing import Any

from lab.apiserver.errors import ApiError, bad_request

MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 100
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def too_large() -> ApiError:
    return ApiError(413, f"Request entity too large: limit is {MAX_REQUEST_BODY_BYTES}", "RequestEntityTooLarge")


def decode_json(raw: bytes, what: str = "the body of the request") -> Any:
    """`raw` as JSON, refusing (400) what is not JSON or nests deeper than MAX_DEPTH."""
    if len(raw) > MAX_REQUEST_BODY_BYTES:
        raise too_large()
    try:
        doc = json.loads(raw)
    except RecursionError:  # deeper than the interpreter's stack: past any limit
        raise _too_deep(what) from None
    except ValueError as e:
        raise bad_request(f"{what} could not be decoded as JSON: {e}") from None
    # Only a body with more containers than the limit can nest past it: counting is C-speed,
    # walking the parsed tree is not, and most bodies never need the walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and depth_exceeds(doc, MAX_DEPTH):
        raise _too_deep(what)
    return doc


def _too_deep(what: str) -> ApiError:
    return bad_request(f"{what} could not be decoded as JSON: exceeded max depth of {MAX_DEPTH}")


def depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether `doc` nests more than `limit` objects/arrays deep (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def annotations_size(annotations: dict[str, str]) -> int:
    """Bytes of keys and values, as ValidateAnnotationsSize counts them (Go's len: UTF-8 bytes)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
