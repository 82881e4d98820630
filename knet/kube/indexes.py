"""The informer's cache with named secondary indexes (client-go's Indexers / ThreadSafeStore).

An index is a function object -> the values it is filed under (none, one or several strings). The
store keeps, per index, value -> keys of the objects filed under it, and per object the values it
was filed under, so an update moves only that object's entries and a lookup touches only the
matching objects, never the whole cache. Deterministic order: keys come back in the order they
were filed.

Standard index functions (use the names too, so two parts of a process sharing an informer
share the index):

    NAMESPACE   by_namespace        every namespaced object, by metadata.namespace
    SERVICE     by_service          EndpointSlices, by "namespace/service-name" (kubernetes.io/service-name)
    NODE        by_node             Pods, by spec.nodeName (unscheduled pods are in no entry)

The store is not thread-safe: the informer serializes access with its lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from knet.kube.models import SERVICE_NAME_LABEL, EndpointSlice, KubeObject, Pod, object_key

log = logging.getLogger("knet.kube.informer")

M = TypeVar("M", bound=KubeObject)
IndexFunc = Callable[[Any], Iterable[str]]

NAMESPACE, SERVICE, NODE = "namespace", "service", "node"


def by_namespace(obj: KubeObject) -> tuple[str, ...]:
    """client-go's MetaNamespaceIndexFunc: cluster-scoped objects are in no entry."""
    ns = obj.metadata.namespace
    return (ns,) if ns else ()


def by_service(obj: EndpointSlice) -> tuple[str, ...]:
    """An EndpointSlice's Service, keyed as the Service's own `key` ("namespace/name"), from the
    kubernetes.io/service-name label (a slice without it belongs to no Service)."""
    name = obj.metadata.labels.get(SERVICE_NAME_LABEL)
    return (object_key(obj.metadata.namespace, name),) if name else ()


def by_node(obj: Pod) -> tuple[str, ...]:
    node = obj.spec.node_name
    return (node,) if node else ()


STANDARD: dict[str, IndexFunc] = {NAMESPACE: by_namespace, SERVICE: by_service, NODE: by_node}


class Store(Generic[M]):
    """Objects by key ("namespace/name") plus the named indexes over them."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self.objects: dict[str, M] = {}
        self._funcs: dict[str, IndexFunc] = {}
        self._index: dict[str, dict[str, dict[str, None]]] = {}  # index -> value -> keys (ordered set)
        self._filed: dict[str, dict[str, tuple[str, ...]]] = {}  # index -> key -> values it is under
        self.add_indexers(indexers or {})

    # --- indexes -------------------------------------------------------------------------------

    def add_indexers(self, indexers: Mapping[str, IndexFunc]) -> None:
        """Register indexes; objects already stored are filed at once. The same function under
        the same name again is a no-op; another function under a taken name is an error."""
        for name, fn in indexers.items():
            have = self._funcs.get(name)
            if have is fn:
                continue
            if have is not None:
                raise ValueError(f"index {name!r} is already registered with another function")
            self._funcs[name] = fn
            self._index[name], self._filed[name] = {}, {}
            for key, obj in self.objects.items():
                self._file(name, key, obj)

    @property
    def index_names(self) -> list[str]:
        return list(self._funcs)

    def indexes(self, name: str, fn: IndexFunc) -> bool:
        """Is `fn` registered as `name`?"""
        return self._funcs.get(name) is fn

    def keys_for(self, index: str, value: str) -> list[str]:
        return list(self._entries(index).get(value, ()))

    def objects_for(self, index: str, value: str) -> list[M]:
        objects = self.objects
        return [objects[k] for k in self._entries(index).get(value, ())]

    def values(self, index: str) -> list[str]:
        """Every value of `index` that has objects (client-go's ListIndexFuncValues)."""
        return list(self._entries(index))

    def _entries(self, index: str) -> dict[str, dict[str, None]]:
        entries = self._index.get(index)
        if entries is None:
            raise KeyError(f"no index {index!r} (registered: {', '.join(self._funcs) or 'none'})")
        return entries

    # --- objects -------------------------------------------------------------------------------

    def get(self, key: str) -> M | None:
        return self.objects.get(key)

    def put(self, key: str, obj: M) -> M | None:
        """Store `obj` under `key`; returns what was there."""
        old = self.objects.get(key)
        self.objects[key] = obj
        for name in self._funcs:
            self._unfile(name, key)
            self._file(name, key, obj)
        return old

    def pop(self, key: str) -> M | None:
        old = self.objects.pop(key, None)
        if old is not None:
            for name in self._funcs:
                self._unfile(name, key)
        return old

    def replace(self, objects: dict[str, M]) -> dict[str, M]:
        """Swap in a whole new cache (a relist); returns the old one. Indexes are rebuilt: a
        relist reads every object anyway."""
        old, self.objects = self.objects, objects
        for name in self._funcs:
            self._index[name], self._filed[name] = {}, {}
            for key, obj in objects.items():
                self._file(name, key, obj)
        return old

    def _file(self, name: str, key: str, obj: M) -> None:
        try:
            values = tuple(dict.fromkeys(self._funcs[name](obj)))
        except Exception:
            # A bad index function must not take the informer down, nor leave a stale entry.
            log.exception("index %s failed for %s; not indexed", name, key)
            values = ()
        if not values:
            return
        self._filed[name][key] = values
        entries = self._index[name]
        for v in values:
            entries.setdefault(v, {})[key] = None

    def _unfile(self, name: str, key: str) -> None:
        values = self._filed[name].pop(key, ())
        entries = self._index[name]
        for v in values:
            keys = entries.get(v)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del entries[v]
