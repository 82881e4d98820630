"""What exists from the start, as on a fresh cluster: the system namespaces and the `kubernetes`
Service (the first address of the service range) with Endpoints pointing at this server."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from lab.apiserver.errors import ApiError
from lab.apiserver.kinds.cluster import SYSTEM_NAMESPACES
from lab.apiserver.registry import Registry
from lab.apiserver.resources import by_kind

log = logging.getLogger("lab.apiserver.bootstrap")


async def bootstrap(reg: Registry, advertise_ip: str | None = None, advertise_port: int = 6443) -> None:
    namespaces = by_kind("", "Namespace")
    for ns in SYSTEM_NAMESPACES:
        with contextlib.suppress(ApiError):
            await reg.create(namespaces, None, {"metadata": {"name": ns}})
    services, endpoints = by_kind("", "Service"), by_kind("", "Endpoints")
    labels = {"component": "apiserver", "provider": "kubernetes"}
    try:
        await reg.get(services, "default", "kubernetes")
    except ApiError:
        svc = {"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
               "spec": {"clusterIP": reg.cfg.service_cidr.api_service_ip, "type": "ClusterIP",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": advertise_port}]}}
        try:
            await reg.create(services, "default", svc)
        except ApiError as e:  # e.g. the first address already taken by a hand-made Service
            log.warning("kubernetes service: %s", e.message)
    if not advertise_ip:
        return
    ep: dict[str, Any] = {"metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
          "subsets": [{"addresses": [{"ip": advertise_ip}],
                       "ports": [{"name": "https", "port": advertise_port, "protocol": "TCP"}]}]}
    try:
        current = await reg.get(endpoints, "default", "kubernetes")
        ep["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await reg.update(endpoints, "default", "kubernetes", ep)
    except ApiError as e:
        if e.code != 404:
            raise
        await reg.create(endpoints, "default", ep)
