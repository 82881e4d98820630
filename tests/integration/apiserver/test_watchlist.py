"""Streaming lists (watch-list, KEP-3157), as client-go's WatchListClient and kube-proxy/CoreDNS
with it use them: `watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&
allowWatchBookmarks=true` streams the current objects as ADDED, then a BOOKMARK annotated
`k8s.io/initial-events-end: "true"` at the revision of that state, then the changes after it.
Run against knet-apiserver and kube-apiserver alike (conftest)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest
from kubernetes import client

from tests.integration.apiserver.conftest import OTHER_TOKEN
from tests.integration.apiserver.test_client import raw

pytestmark = pytest.mark.integration
WATCH_LIST = {"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
              "allowWatchBookmarks": "true"}


def lines_of(text: object) -> list[dict]:
    body = text if isinstance(text, str) else json.dumps(text)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def watch(server, ns: str, **params: str) -> tuple[int, object]:
    return raw(server, f"/api/v1/namespaces/{ns}/configmaps?{urllib.parse.urlencode(params)}", token=OTHER_TOKEN)


@pytest.mark.parametrize("rv", ["", "0"])
def test_initial_events_then_the_end_bookmark_then_changes(api, ns, server, rv) -> None:
    core = client.CoreV1Api(api)
    for name in ("a", "b"):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": {"pick": "me"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "other"}})
    result: list = []
    params = {**WATCH_LIST, "labelSelector": "pick=me", "timeoutSeconds": "3"}
    if rv:
        params["resourceVersion"] = rv
    t = threading.Thread(target=lambda: result.append(watch(server, ns, **params)), daemon=True)
    t.start()
    time.sleep(1.0)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "c", "labels": {"pick": "me"}}})
    t.join(15)
    code, text = result[0]
    events = lines_of(text)
    assert code == 200, text
    kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in events]
    end = next(i for i, e in enumerate(events) if e["type"] == "BOOKMARK" and
               (e["object"]["metadata"].get("annotations") or {}).get("k8s.io/initial-events-end") == "true")
    assert sorted(kinds[:end]) == [("ADDED", "a"), ("ADDED", "b")], kinds
    mark = events[end]["object"]
    assert mark["kind"] == "ConfigMap" and mark["apiVersion"] == "v1"
    initial_rv = int(mark["metadata"]["resourceVersion"])
    assert initial_rv >= max(int(e["object"]["metadata"]["resourceVersion"]) for e in events[:end])
    after = [(t, n) for t, n in kinds[end + 1:] if t != "BOOKMARK"]
    assert after == [("ADDED", "c")], kinds


def test_without_initial_events_only_changes_come(api, ns, server) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "before", "labels": {"pick": "me"}}})
    result: list = []
    params = {**WATCH_LIST, "sendInitialEvents": "false", "labelSelector": "pick=me", "timeoutSeconds": "3"}
    t = threading.Thread(target=lambda: result.append(watch(server, ns, **params)), daemon=True)
    t.start()
    time.sleep(1.0)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "after", "labels": {"pick": "me"}}})
    t.join(15)
    code, text = result[0]
    assert code == 200, text
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in lines_of(text)
            if e["type"] != "BOOKMARK"] == [("ADDED", "after")]


def test_the_initial_objects_come_without_a_bookmark_unless_bookmarks_are_allowed(api, ns, server) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(ns, {"metadata": {"name": "a", "labels": {"pick": "me"}}})
    params = {k: v for k, v in WATCH_LIST.items() if k != "allowWatchBookmarks"}
    code, text = watch(server, ns, **params, labelSelector="pick=me", timeoutSeconds="2")
    assert code == 200, text
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in lines_of(text)] == [("ADDED", "a")]


# kube-apiserver's ListOptions validation, message for message.
INVALID = [
    ({"watch": "true", "sendInitialEvents": "true", "allowWatchBookmarks": "true"},
     ["resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"]),
    ({"watch": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"},
     ["resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
      "provided"]),
    ({"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"},
     ["resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
      "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"]),
    ({**WATCH_LIST, "resourceVersionMatch": "Exact"},
     ["resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
      'resourceVersionMatch: Unsupported value: "Exact": supported values: "NotOlderThan"']),
]


@pytest.mark.parametrize(("params", "causes"), INVALID, ids=["no-match", "match-without-initial", "list", "exact"])
def test_invalid_combinations_are_refused(ns, server, params, causes) -> None:
    code, status = watch(server, ns, **params, timeoutSeconds="1")
    assert code == 422 and isinstance(status, dict), status
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "ListOptions", status
    assert status["details"]["group"] == "meta.k8s.io"
    joined = causes[0] if len(causes) == 1 else f"[{', '.join(causes)}]"
    assert status["message"] == f'ListOptions.meta.k8s.io "" is invalid: {joined}'
