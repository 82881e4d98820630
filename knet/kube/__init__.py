"""knet.kube: the Kubernetes object layer every component uses.

    from knet.kube import Informer, InformerFactory, new_api_client, parse
    from knet.kube.models import Pod, Service, EndpointSlice, NetworkPolicy, ...
    from knet.kube.selectors import Selector, label_selector_matches, map_selector_matches

Models: knet/kube/models (pydantic; tolerant of unknown fields, strict about used ones).
Informer: knet/kube/informer.py (list + watch + cache + callbacks + synced), with named
secondary indexes (knet/kube/indexes.py: by_namespace, by_service, by_node).
Client: knet/kube/client.py (kubeconfig / in-cluster / token config, JSON request helpers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knet.kube.client import (
        add_arguments,
        api_client_from_args,
        load_configuration,
        make_configuration,
        new_api_client,
    )
    from knet.kube.events import Backoff, Event, relist_diff, threadsafe
    from knet.kube.factory import InformerFactory
    from knet.kube.indexes import IndexFunc, by_namespace, by_node, by_service
    from knet.kube.informer import Informer
    from knet.kube.models import KubeObject, model_for, object_key, parse
    from knet.kube.resources import RESOURCES, Resource, resource
    from knet.kube.selectors import Selector, label_selector_matches, map_selector_matches

__all__ = [
    "RESOURCES", "Backoff", "Event", "IndexFunc", "Informer", "InformerFactory", "KubeObject", "Resource",
    "Selector", "add_arguments", "api_client_from_args", "by_namespace", "by_node", "by_service",
    "label_selector_matches", "load_configuration", "make_configuration",
    "map_selector_matches", "model_for", "new_api_client", "object_key", "parse", "relist_diff", "resource",
    "threadsafe",
]

# Imported on first use (PEP 562): the kubernetes client takes the better part of a second to
# import, and importers of knet.kube.models, .selectors or .events alone do not need it.
_SOURCES = {
    "client": ("add_arguments", "api_client_from_args", "load_configuration", "make_configuration", "new_api_client"),
    "events": ("Backoff", "Event", "relist_diff", "threadsafe"),
    "factory": ("InformerFactory",),
    "indexes": ("IndexFunc", "by_namespace", "by_node", "by_service"),
    "informer": ("Informer",),
    "models": ("KubeObject", "model_for", "object_key", "parse"),
    "resources": ("RESOURCES", "Resource", "resource"),
    "selectors": ("Selector", "label_selector_matches", "map_selector_matches"),
}
_SOURCE_OF = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str) -> object:
    module = _SOURCE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
