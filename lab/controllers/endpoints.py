"""The EndpointSlice controller (plus the legacy Endpoints object that `kubectl get endpoints`
and `describe service` show): for each Service with a selector, keep its slices equal to
`slices.desired(service, pods)`. Any pod change re-syncs the Services selecting it at once (well
within a second); a sync that finds nothing to change writes nothing, so there is no churn."""

from __future__ import annotations

import logging

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.indexes import SERVICE
from knet.kube.models import Endpoints, EndpointSlice, Pod, Service
from knet.kube.selectors import Selector
from lab.controllers import indexes, slices
from lab.controllers.common import MANAGED_BY, SLICE_CONTROLLER, owner_ref
from lab.controllers.workqueue import Controller, Expectations

log = logging.getLogger("lab.controllers.endpoints")


class EndpointSliceController(Controller):
    name = "endpointslice"
    resync = 30.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], services: Informer[Service],
                 slice_informer: Informer[EndpointSlice], endpoints: Informer[Endpoints]) -> None:
        super().__init__()
        self.api, self.pods, self.services = api, pods, services
        self.slices, self.endpoints = slice_informer, endpoints
        self.expectations = Expectations(timeout=5.0)
        services.add_handler(on_add=lambda s: self.enqueue(s.key), on_update=lambda _o, s: self.enqueue(s.key),
                             on_delete=lambda s: self.enqueue(s.key))
        pods.add_handler(on_add=self._on_pod, on_update=self._on_pod_update, on_delete=self._on_pod)
        slice_informer.add_handler(on_update=lambda _o, s: self._on_slice(s), on_delete=self._on_slice)

    def _on_pod(self, pod: Pod) -> None:
        for svc in indexes.selecting(self.services, pod):  # by selector term: never every Service
            self.enqueue(svc.key)

    def _on_pod_update(self, old: Pod, new: Pod) -> None:
        if old.labels != new.labels:
            self._on_pod(old)
        self._on_pod(new)

    def _on_slice(self, s: EndpointSlice) -> None:
        # Someone else edited or deleted one of our slices: put it right.
        if s.metadata.labels.get(MANAGED_BY) == SLICE_CONTROLLER and s.service_name:
            self.enqueue(f"{s.namespace}/{s.service_name}")

    def all_keys(self) -> list[str]:
        return [s.key for s in self.services.list()]

    def _ours(self, ns: str, name: str) -> list[EndpointSlice]:
        return [s for s in self.slices.by_index(SERVICE, f"{ns}/{name}")
                if s.metadata.labels.get(MANAGED_BY) == SLICE_CONTROLLER]

    def sync(self, key: str) -> None:
        ns, _, name = key.partition("/")
        svc = self.services.get_by_key(key)
        if not self.expectations.satisfied(key, lambda n: self.slices.get(n, ns) is not None):
            self.queue.add_after(key, 0.1)  # a slice we made is not in the cache yet: do not make it twice
            return
        have = self._ours(ns, name)
        if svc is None or not slices.manages(svc):
            for s in have:
                client.delete(self.api, "EndpointSlice", s.name, ns)
            if svc is None and self.endpoints.get(name, ns) is not None:
                client.delete(self.api, "Endpoints", name, ns)
            return
        pods = indexes.selected(self.pods, ns, Selector.from_map(svc.spec.selector))
        labels = slices.labels_for(svc)
        owner = owner_ref(svc, "v1", "Service")
        creates, updates, deletes = slices.reconcile(slices.desired(svc, pods), have, labels, owner)
        for body in creates:
            meta = {"generateName": f"{name}-", "namespace": ns, "labels": labels, "ownerReferences": [owner]}
            made = client.create(self.api, "EndpointSlice", {"apiVersion": "discovery.k8s.io/v1",
                                                              "kind": "EndpointSlice", "metadata": meta, **body}, ns)
            self.expectations.expect(key, adds=[made["metadata"]["name"]])
            log.info("service %s: created slice %s (%d endpoints)", key, made["metadata"]["name"],
                     len(body["endpoints"]))
        for slice_name, body in updates:
            try:
                client.replace(self.api, "EndpointSlice", slice_name, body, ns)
            except client.ApiException as e:
                if e.status != 409:
                    raise
                # Our cache is a write behind: sync again from the version the event brings.
                self.queue.add_after(key, 0.1)
                return
            log.info("service %s: updated slice %s (%d endpoints, %d ready)", key, slice_name, len(body["endpoints"]),
                     sum(1 for e in body["endpoints"] if e["conditions"]["ready"]))
        if deletes:
            self.expectations.expect(key, deletes=deletes)
        for slice_name in deletes:
            client.delete(self.api, "EndpointSlice", slice_name, ns)
            log.info("service %s: deleted slice %s", key, slice_name)
        self._sync_endpoints(svc, pods)

    def _sync_endpoints(self, svc: Service, pods: list[Pod]) -> None:
        want = slices.endpoints_object(svc, pods)
        ns = svc.namespace or "default"
        have = self.endpoints.get(svc.name, ns)
        if have is None:
            try:
                client.create(self.api, "Endpoints", want, ns)
            except client.ApiException as e:
                if e.status != 409:
                    raise
                self.queue.add_after(svc.key, 0.5)  # made meanwhile, not in the cache yet
            return
        if Endpoints.model_validate(want).subsets == have.subsets and \
                have.metadata.labels == want["metadata"]["labels"]:
            return
        want["metadata"]["resourceVersion"] = have.metadata.resource_version
        client.replace(self.api, "Endpoints", svc.name, want, ns)
