"""The DefaultIngressClass admission plugin: an Ingress created without a class gets the one
annotated `ingressclass.kubernetes.io/is-default-class: "true"` (the newest of several); one
naming a class keeps it; without a default the field stays empty."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
from kubernetes import client

pytestmark = pytest.mark.integration

DEFAULT = "ingressclass.kubernetes.io/is-default-class"


def ingress(name: str, cls: str | None = None) -> dict:
    spec: dict = {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}
    if cls:
        spec["ingressClassName"] = cls
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name}, "spec": spec}


def ingress_class(name: str, default: bool) -> dict:
    meta: dict = {"name": name}
    if default:
        meta["annotations"] = {DEFAULT: "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": meta,
            "spec": {"controller": "knet.dev/ingress"}}


def test_default_ingress_class_is_assigned_on_create(api, ns):
    net = client.NetworkingV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    older, newer, plain = f"t-old-{suffix}", f"t-new-{suffix}", f"t-plain-{suffix}"
    try:
        assert net.create_namespaced_ingress(ns, ingress("none")).spec.ingress_class_name is None
        net.create_ingress_class(ingress_class(plain, False))
        net.create_ingress_class(ingress_class(older, True))
        net.list_ingress_class()  # a consistent read: the server's cache has the class from here on
        assert net.create_namespaced_ingress(ns, ingress("one")).spec.ingress_class_name == older
        time.sleep(1.1)  # creationTimestamp has seconds: the second default is strictly newer
        net.create_ingress_class(ingress_class(newer, True))
        net.list_ingress_class()
        assert net.create_namespaced_ingress(ns, ingress("two")).spec.ingress_class_name == newer
        assert net.create_namespaced_ingress(ns, ingress("named", plain)).spec.ingress_class_name == plain
        # Only on create: an update does not fill it in.
        none = net.read_namespaced_ingress("none", ns)
        none.metadata.labels = {"touched": "yes"}
        assert net.replace_namespaced_ingress("none", ns, none).spec.ingress_class_name is None
    finally:
        for name in (older, newer, plain):
            with contextlib.suppress(client.ApiException):
                net.delete_ingress_class(name)
