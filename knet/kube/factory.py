"""One informer per (kind, namespace, selectors) for a whole process, over one ApiClient.

    factory = InformerFactory(api)
    pods = factory.informer(Pod, field_selector=f"spec.nodeName={node}")
    services = factory.informer(Service)
    slices = factory.informer(EndpointSlice, indexers={SERVICE: by_service})
    services.add_handler(on_add=..., ...)
    factory.start()
    if not factory.wait_synced(60): raise SystemExit("API server not reachable")

Two parts of a daemon asking for the same informer get the same one (one watch, one cache).
Informers asked for after `start()` start at once. `indexers` are added to the (possibly shared)
informer: the standard ones of `knet.kube.indexes` may be asked for by every part that uses them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, TypeVar

from kubernetes.client import ApiClient

from knet.kube.indexes import IndexFunc
from knet.kube.informer import Informer
from knet.kube.models import KubeObject, LabelSelector, model_for
from knet.kube.selectors import to_query

M = TypeVar("M", bound=KubeObject)


class InformerFactory:
    def __init__(self, api_client: ApiClient, *, namespace: str | None = None, **informer_options: Any) -> None:
        """`namespace` is the default scope of every informer (None: all namespaces);
        `informer_options` (watch_timeout, page_size, ...) are passed to each Informer."""
        self.api = api_client
        self.namespace = namespace
        self.options = informer_options
        self._informers: dict[tuple[str, str | None, str | None, str | None], Informer[Any]] = {}
        self._lock = threading.Lock()
        self._started = False

    def informer(self, kind: type[M] | str, *, namespace: str | None = None,
                 label_selector: LabelSelector | Mapping[str, str] | str | None = None,
                 field_selector: str | None = None,
                 indexers: Mapping[str, IndexFunc] | None = None) -> Informer[M]:
        model = model_for(kind)
        ns = namespace if namespace is not None else self.namespace
        key = (model.__name__, ns, to_query(label_selector), field_selector or None)
        with self._lock:
            inf = self._informers.get(key)
            if inf is None:
                inf = Informer(self.api, model, namespace=ns, label_selector=label_selector,
                               field_selector=field_selector, **self.options)
                self._informers[key] = inf
                if self._started:
                    inf.start()
            if indexers:
                inf.add_indexers(indexers)
            return inf

    @property
    def informers(self) -> list[Informer[Any]]:
        with self._lock:
            return list(self._informers.values())

    def start(self) -> None:
        with self._lock:
            self._started = True
            for inf in self._informers.values():
                inf.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True when every informer has listed once; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in self.informers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not inf.wait_synced(left):
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        informers = self.informers
        for inf in informers:  # signal all first, so they wind down in parallel
            inf.stop(timeout=0)
        deadline = time.monotonic() + timeout
        for inf in informers:
            inf.join(max(0.0, deadline - time.monotonic()))
