"""metrics.k8s.io/v1beta1, as metrics-server serves it through the aggregation layer (and so
`kubectl top` finds it in discovery): NodeMetrics and PodMetrics built from the node agents'
Summary API (/stats/summary: CPU in nanocores over the agent's sampling window, memory working
set), fetched from every node when asked.

    GET /apis/metrics.k8s.io/v1beta1/nodes[/<name>]
    GET /apis/metrics.k8s.io/v1beta1[/namespaces/<ns>]/pods[/<name>]      (?labelSelector=)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from lab.apiserver.errors import ApiError

log = logging.getLogger("lab.apiserver.metrics")
GROUP, VERSION = "metrics.k8s.io", "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
FETCH_TIMEOUT = 5.0


def api_group() -> dict[str, Any]:
    entry = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [entry], "preferredVersion": entry}


def resource_list() -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": [
        {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]}]}


def cpu_quantity(nanocores: int) -> str:
    return f"{max(0, int(nanocores))}n"


def memory_quantity(size: int) -> str:
    return f"{max(0, int(size)) // 1024}Ki"


def _usage(cpu: dict[str, Any], memory: dict[str, Any]) -> dict[str, str]:
    return {"cpu": cpu_quantity(cpu["usageNanoCores"]), "memory": memory_quantity(memory.get("workingSetBytes", 0))}


def _window(seconds: float | None) -> str:
    return f"{seconds or 0:.3f}s"


def node_metrics(name: str, labels: dict[str, str], node_stats: dict[str, Any]) -> dict[str, Any] | None:
    """NodeMetrics from a summary's `node` block (None: no CPU rate measured yet)."""
    cpu, mem = node_stats.get("cpu") or {}, node_stats.get("memory") or {}
    if "usageNanoCores" not in cpu:
        return None
    return {"kind": "NodeMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": name, "labels": labels, "creationTimestamp": _now()},
            "timestamp": cpu.get("time") or _now(), "window": _window(node_stats.get("window") or 10.0),
            "usage": _usage(cpu, mem)}


def pod_metrics(pod_stats: dict[str, Any], labels: dict[str, str]) -> dict[str, Any] | None:
    """PodMetrics from a summary's pod entry (None unless every container has a CPU rate, as
    metrics-server leaves such pods out)."""
    ref = pod_stats.get("podRef") or {}
    containers = []
    for c in pod_stats.get("containers") or []:
        cpu, mem = c.get("cpu") or {}, c.get("memory") or {}
        if "usageNanoCores" not in cpu:
            return None
        containers.append({"name": c.get("name", ""), "usage": _usage(cpu, mem)})
    if not containers:
        return None
    when = max((c.get("cpu", {}).get("time", "") for c in pod_stats.get("containers") or []), default="") or _now()
    return {"kind": "PodMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": ref.get("name", ""), "namespace": ref.get("namespace", ""), "labels": labels,
                         "creationTimestamp": _now()},
            "timestamp": when, "window": _window(pod_stats.get("window")), "containers": containers}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}


class MetricsApi:
    def __init__(self, list_objects: Callable[[str, str | None, str], Awaitable[list[dict[str, Any]]]],
                 fetch: Callable[[dict[str, Any], str], Awaitable[bytes]]) -> None:
        """`list_objects(kind, namespace, label_selector)`: stored Pods or Nodes;
        `fetch(node, path)`: the body of a GET to that node's agent."""
        self.list_objects, self.fetch = list_objects, fetch

    async def _summaries(self, nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        async def one(node: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
            name = node["metadata"]["name"]
            try:
                body = await asyncio.wait_for(self.fetch(node, "/stats/summary"), FETCH_TIMEOUT)
                return name, json.loads(body)
            except (ApiError, OSError, TimeoutError, ValueError) as e:
                log.info("metrics: no summary from node %s: %s", name, e)
                return name, None
        got = await asyncio.gather(*(one(n) for n in nodes))
        return {name: s for name, s in got if s is not None}

    async def handle(self, method: str, rest: list[str], query: dict[str, str]) -> dict[str, Any]:
        """`rest`: the path after /apis/metrics.k8s.io/v1beta1/."""
        if method != "GET":
            raise ApiError(405, f"the server does not allow this method on the requested resource: {method}",
                           "MethodNotAllowed")
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in ("nodes", "pods") or len(rest) > 2 or (namespace and rest[0] == "nodes"):
            raise ApiError(404, "the server could not find the requested resource")
        kind, name = rest[0], rest[1] if len(rest) == 2 else None
        selector = query.get("labelSelector", "")
        if kind == "nodes":
            return await self._nodes(name, selector)
        return await self._pods(namespace, name, selector)

    async def _nodes(self, name: str | None, selector: str) -> dict[str, Any]:
        nodes = [n for n in await self.list_objects("Node", None, selector)
                 if name is None or n["metadata"]["name"] == name]
        summaries = await self._summaries(nodes)
        items = [m for n in nodes if (s := summaries.get(n["metadata"]["name"])) is not None
                 and (m := node_metrics(n["metadata"]["name"], n["metadata"].get("labels") or {},
                                        s.get("node") or {})) is not None]
        if name is not None:
            if not items:
                raise ApiError(404, f'nodemetrics.metrics.k8s.io "{name}" not found', "NotFound")
            return items[0]
        return _list("NodeMetricsList", items)

    async def _pods(self, namespace: str | None, name: str | None, selector: str) -> dict[str, Any]:
        pods = {(p["metadata"].get("namespace"), p["metadata"]["name"]): p
                for p in await self.list_objects("Pod", namespace, selector)
                if name is None or p["metadata"]["name"] == name}
        node_names = {(p.get("spec") or {}).get("nodeName") for p in pods.values()} - {None, ""}
        nodes = [n for n in await self.list_objects("Node", None, "") if n["metadata"]["name"] in node_names]
        summaries = await self._summaries(nodes)
        items = []
        for summary in summaries.values():
            for entry in summary.get("pods") or []:
                ref = entry.get("podRef") or {}
                pod = pods.get((ref.get("namespace"), ref.get("name")))
                if pod is None or (pod["metadata"].get("uid") and ref.get("uid") != pod["metadata"]["uid"]):
                    continue
                m = pod_metrics(entry, pod["metadata"].get("labels") or {})
                if m is not None:
                    items.append(m)
        items.sort(key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
        if name is not None:
            if not items:
                raise ApiError(404, f'podmetrics.metrics.k8s.io "{name}" not found', "NotFound")
            return items[0]
        return _list("PodMetricsList", items)
