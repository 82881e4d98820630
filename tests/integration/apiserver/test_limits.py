"""Input limits as kube-apiserver has them: a body over 3 MiB is 413, annotations over 256 KiB are
422 on metadata.annotations, JSON nested past the limit is 400; for create, update (PUT) and patch
(what `kubectl apply` sends). Each is a Status, writes nothing, leaves no traceback in the server's
log, and the server goes on serving."""

from __future__ import annotations

import json

import pytest

from lab.apiserver import limits
from tests.integration.apiserver.conftest import ADMIN_TOKEN, stored_keys
from tests.integration.apiserver.test_client import raw

pytestmark = pytest.mark.integration

MERGE = "application/merge-patch+json"


def configmap(name: str, annotations: dict | None = None, **extra) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "annotations": annotations or {}},
            "data": {"k": "v"}, **extra}


def nested(depth: int) -> bytes:
    """`depth` levels of JSON arrays (made as text: nothing here recurses)."""
    return ("[" * depth + "]" * depth).encode()


def send(server, method: str, path: str, body: bytes, ctype: str = "application/json"):
    return raw(server, path, method, ADMIN_TOKEN, body, ctype)


@pytest.fixture
def cm_path(server, ns):
    """A namespace with one stored ConfigMap `base`; its collection path."""
    base = f"/api/v1/namespaces/{ns}/configmaps"
    code, _ = send(server, "POST", base, json.dumps(configmap("base")).encode())
    assert code == 201
    return base


def test_oversized_body_is_413_for_create_update_and_patch(server, etcd, ns, cm_path):
    before = stored_keys(etcd, server, ns)
    big = configmap("big")
    big["data"] = {"k": "x" * (limits.MAX_REQUEST_BODY_BYTES + 1)}
    body = json.dumps(big).encode()
    for method, path, ctype in (("POST", cm_path, "application/json"),
                                ("PUT", f"{cm_path}/base", "application/json"),
                                ("PATCH", f"{cm_path}/base", MERGE)):
        code, status = send(server, method, path, body, ctype)
        assert code == 413, (method, code, status)
        assert status["kind"] == "Status" and status["reason"] == "RequestEntityTooLarge", status
        if server.flavour == "lab":
            assert status["message"] == f"Request entity too large: limit is {limits.MAX_REQUEST_BODY_BYTES}"
    assert set(stored_keys(etcd, server, ns)) == set(before)
    _still_serving(server, cm_path, "after-413")


def test_annotations_over_256k_are_422_on_the_field(server, etcd, ns, cm_path):
    before = stored_keys(etcd, server, ns)
    huge = {"a": "x" * (limits.TOTAL_ANNOTATION_SIZE_LIMIT + 1)}  # 1 byte for the key: over by 2
    current = send(server, "GET", f"{cm_path}/base", b"")[1]
    current["metadata"]["annotations"] = huge
    for method, path, body, ctype in (
            ("POST", cm_path, configmap("annotated", huge), "application/json"),
            ("PUT", f"{cm_path}/base", current, "application/json"),
            ("PATCH", f"{cm_path}/base", {"metadata": {"annotations": huge}}, MERGE)):
        code, status = send(server, method, path, json.dumps(body).encode(), ctype)
        assert code == 422, (method, code, status)
        assert status["reason"] == "Invalid"
        causes = status["details"]["causes"]
        assert [c["field"] for c in causes] == ["metadata.annotations"], causes
        assert causes[0]["reason"] == "FieldValueTooLong"
        assert "may not be more than 262144 bytes" in causes[0]["message"]
    # Exactly the limit is fine (keys and values counted together).
    fits = {"a": "x" * (limits.TOTAL_ANNOTATION_SIZE_LIMIT - 1)}
    assert send(server, "POST", cm_path, json.dumps(configmap("fits", fits)).encode())[0] == 201
    assert set(stored_keys(etcd, server, ns)) == {*before, f"{server.prefix}/configmaps/{ns}/fits"}


def test_deep_json_is_400_not_a_crash(server, etcd, ns, cm_path):
    before = stored_keys(etcd, server, ns)
    # Deeper than kube-apiserver's decoder takes (10,000) and than Python's stack: both refuse it.
    deep = nested(20_000)
    in_object = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"x":' + deep + b"}"
    for method, path, body, ctype in (("POST", cm_path, in_object, "application/json"),
                                      ("PUT", f"{cm_path}/base", in_object, "application/json"),
                                      ("PATCH", f"{cm_path}/base", b'{"data":{"k":' + deep + b"}}", MERGE)):
        code, status = send(server, method, path, body, ctype)
        assert code == 400, (method, code, status)
        assert status["kind"] == "Status" and status["reason"] == "BadRequest"
        if server.flavour == "lab":
            assert "exceeded max depth" in status["message"], status
    if server.flavour == "lab":
        # Past the lab's own limit but well within Python's stack: the same clear 400.
        just_past = b'{"metadata":{"name":"deep2"},"x":' + nested(limits.MAX_DEPTH) + b"}"
        code, status = send(server, "POST", cm_path, just_past)
        assert code == 400 and f"exceeded max depth of {limits.MAX_DEPTH}" in status["message"], status
    assert set(stored_keys(etcd, server, ns)) == set(before)
    _still_serving(server, cm_path, "after-400")


def _still_serving(server, cm_path: str, name: str) -> None:
    assert send(server, "POST", cm_path, json.dumps(configmap(name)).encode())[0] == 201
    if server.flavour == "lab":
        with open(server.log) as f:
            log = f.read()
        assert "Traceback" not in log and "RecursionError" not in log
