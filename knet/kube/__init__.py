"""knet.kube: the Kubernetes object layer every component uses.

    from knet.kube import Informer, InformerFactory, new_api_client, parse
    from knet.kube.models import Pod, Service, EndpointSlice, NetworkPolicy, ...
    from knet.kube.selectors import Selector, label_selector_matches, map_selector_matches

Models: knet/kube/models (pydantic; tolerant of unknown fields, strict about used ones).
Informer: knet/kube/informer.py (list + watch + cache + callbacks + synced).
Client: knet/kube/client.py (kubeconfig / in-cluster / token config, JSON request helpers).
"""

from knet.kube.client import add_arguments, api_client_from_args, load_configuration, make_configuration, new_api_client
from knet.kube.events import Backoff, Event, relist_diff, threadsafe
from knet.kube.factory import InformerFactory
from knet.kube.informer import Informer
from knet.kube.models import KubeObject, model_for, object_key, parse
from knet.kube.resources import RESOURCES, Resource, resource
from knet.kube.selectors import Selector, label_selector_matches, map_selector_matches

__all__ = [
    "RESOURCES", "Backoff", "Event", "Informer", "InformerFactory", "KubeObject", "Resource", "Selector",
    "add_arguments", "api_client_from_args", "label_selector_matches", "load_configuration", "make_configuration",
    "map_selector_matches", "model_for", "new_api_client", "object_key", "parse", "relist_diff", "resource",
    "threadsafe",
]
