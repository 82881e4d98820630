"""Streaming lists (watch-list, KEP-3157), as client-go's WatchListClient and kube-proxy/CoreDNS
with it use them: `watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&
allowWatchBookmarks=true` streams the current objects as ADDED, then a BOOKMARK annotated
`k8s.io/initial-events-end: "true"` at the revision of that state, then the changes after it.
Run against knet-apiserver and kube-apiserver alike (conftest)."""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator

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


@contextlib.contextmanager
def stream(server, ns: str, **params: str) -> Iterator[Iterator[dict]]:
    """A watch read event by event as the server sends them."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPSConnection(url.hostname, url.port, timeout=30,
                                       context=ssl.create_default_context(cafile=server.ca))
    conn.request("GET", f"/api/v1/namespaces/{ns}/configmaps?{urllib.parse.urlencode(params)}",
                 headers={"Authorization": f"Bearer {OTHER_TOKEN}"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()

    def events() -> Iterator[dict]:
        while line := resp.readline():
            if line.strip():
                yield json.loads(line)
    try:
        yield events()
    finally:
        conn.close()


def name_of(event: dict) -> tuple[str, str | None]:
    return event["type"], event["object"]["metadata"].get("name")


def is_initial_end(event: dict) -> bool:
    return event["type"] == "BOOKMARK" and \
        (event["object"]["metadata"].get("annotations") or {}).get("k8s.io/initial-events-end") == "true"


@pytest.mark.parametrize("rv", ["", "0"])
def test_initial_events_then_the_end_bookmark_then_changes(api, ns, server, rv) -> None:
    core = client.CoreV1Api(api)
    for name in ("a", "b"):
        core.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": {"pick": "me"}}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "other"}})
    params = {**WATCH_LIST, "labelSelector": "pick=me", "timeoutSeconds": "30"}
    if rv:
        params["resourceVersion"] = rv
    with stream(server, ns, **params) as events:
        initial = []
        for e in events:
            if is_initial_end(e):
                mark = e["object"]
                break
            initial.append(e)
        assert sorted(map(name_of, initial)) == [("ADDED", "a"), ("ADDED", "b")], initial
        assert mark["kind"] == "ConfigMap" and mark["apiVersion"] == "v1"
        assert int(mark["metadata"]["resourceVersion"]) >= \
            max(int(e["object"]["metadata"]["resourceVersion"]) for e in initial)
        # What changes after the initial state comes as changes.
        core.create_namespaced_config_map(ns, {"metadata": {"name": "c", "labels": {"pick": "me"}}})
        assert name_of(next(e for e in events if e["type"] != "BOOKMARK")) == ("ADDED", "c")


def test_without_initial_events_only_changes_come(api, ns, server) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "before", "labels": {"pick": "me"}}})
    params = {**WATCH_LIST, "sendInitialEvents": "false", "labelSelector": "pick=me", "timeoutSeconds": "30"}
    with stream(server, ns, **params) as events:
        # No bookmark says when the watch is in place: write until a change comes through.
        seen: list[dict] = []
        reader = threading.Thread(target=lambda: seen.append(next(e for e in events if e["type"] != "BOOKMARK")),
                                  daemon=True)
        reader.start()
        for i in range(60):
            core.create_namespaced_config_map(ns, {"metadata": {"name": f"after-{i}", "labels": {"pick": "me"}}})
            reader.join(0.5)
            if seen:
                break
    assert seen and seen[0]["type"] == "ADDED" and seen[0]["object"]["metadata"]["name"].startswith("after-"), seen


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
