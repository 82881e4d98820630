"""Build an ApiClient for a real cluster or the lab, and small typed-method wrappers returning JSON.

Where the configuration comes from (first that applies):
  1. an explicit kubeconfig path (`--kubeconfig`), 2. `$KUBECONFIG` (a colon-separated list is
  merged, as kubectl does), 3. in-cluster (service account token + CA, when
  `KUBERNETES_SERVICE_HOST` is set), 4. `~/.kube/config`.
`make_configuration()` builds one from a server URL and a token (file) + CA directly: the lab's
components each have their own token.

One ApiClient is meant to be shared by all informers and requests of a process (its urllib3 pool
is thread-safe); `new_api_client` sizes the pool for many concurrent watches.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import kubernetes.config
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException

from knet.kube.models import KubeObject
from knet.kube.resources import resource

__all__ = [
    "ApiException", "ConfigError", "add_arguments", "api_client_from_args", "create", "delete", "get",
    "is_not_found", "list_objects", "load_configuration", "make_configuration", "new_api_client", "patch",
    "patch_status", "replace", "replace_status",
]

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
POOL_SIZE = 32  # each informer holds one connection for its watch; requests need a few more


class ConfigError(RuntimeError):
    pass


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(f"{SA_DIR}/token")


def load_configuration(kubeconfig: str | None = None, *, context: str | None = None) -> Configuration:
    cfg = Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    home = os.path.expanduser("~/.kube/config")
    try:
        if path:
            kubernetes.config.load_kube_config(config_file=path, context=context, client_configuration=cfg,
                                               persist_config=False)
        elif _in_cluster():
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        elif os.path.exists(home):
            kubernetes.config.load_kube_config(config_file=home, context=context, client_configuration=cfg,
                                               persist_config=False)
        else:
            raise ConfigError("no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster")
    except kubernetes.config.ConfigException as e:
        raise ConfigError(f"cannot load Kubernetes configuration: {e}") from e
    return cfg


def make_configuration(server: str, *, token: str | None = None, token_file: str | None = None,
                       ca_file: str | None = None, insecure: bool = False, cert_file: str | None = None,
                       key_file: str | None = None) -> Configuration:
    """A configuration from parts. `token_file` is re-read when it changes (rotated tokens)."""
    cfg = Configuration()
    cfg.host = server.rstrip("/")
    cfg.ssl_ca_cert = ca_file
    cfg.verify_ssl = not insecure
    cfg.cert_file, cfg.key_file = cert_file, key_file
    if token:
        cfg.api_key["authorization"] = f"Bearer {token}"
    elif token_file:
        state: dict[str, Any] = {"mtime": None}

        def refresh(c: Configuration) -> None:
            mtime = os.stat(token_file).st_mtime
            if mtime != state["mtime"]:
                with open(token_file) as f:
                    c.api_key["authorization"] = f"Bearer {f.read().strip()}"
                state["mtime"] = mtime

        refresh(cfg)
        # The client sets the hook to None in __init__ without an annotation, so its type reads as None.
        cfg.refresh_api_key_hook = refresh  # type: ignore[assignment]
    return cfg


def new_api_client(kubeconfig: str | None = None, *, context: str | None = None,
                   configuration: Configuration | None = None) -> ApiClient:
    cfg = configuration or load_configuration(kubeconfig, context=context)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, POOL_SIZE)
    return ApiClient(cfg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--kubeconfig / --context for a daemon's command line."""
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig path (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context (default: current)")


def api_client_from_args(args: argparse.Namespace) -> ApiClient:
    return new_api_client(getattr(args, "kubeconfig", None), context=getattr(args, "context", None))


# --- requests: typed methods, raw JSON in and out ------------------------------------------------

REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds


def _json(resp: Any) -> dict[str, Any]:
    try:
        return json.loads(resp.data) if resp.data else {}
    finally:
        resp.release_conn()


def _body(obj: KubeObject | dict[str, Any]) -> dict[str, Any]:
    return obj.to_dict() if isinstance(obj, KubeObject) else obj


def is_not_found(e: BaseException) -> bool:
    return isinstance(e, ApiException) and e.status == 404


def get(api: ApiClient, kind: str | type[KubeObject], name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object as JSON, or None when it does not exist."""
    r = resource(kind)
    try:
        return _json(r.method(api, "read", namespace=namespace)(
            name, **_ns(r, namespace), _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def list_objects(api: ApiClient, kind: str | type[KubeObject], namespace: str | None = None, *,
                 label_selector: str | None = None, field_selector: str | None = None) -> dict[str, Any]:
    """The List object as JSON (`items`, `metadata.resourceVersion`)."""
    r = resource(kind)
    kwargs: dict[str, Any] = {k: v for k, v in (("label_selector", label_selector),
                                                ("field_selector", field_selector)) if v}
    return _json(r.method(api, "list", namespace=namespace)(
        **_ns(r, namespace), **kwargs, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))


def create(api: ApiClient, kind: str | type[KubeObject], body: KubeObject | dict[str, Any],
           namespace: str | None = None) -> dict[str, Any]:
    r = resource(kind)
    return _json(r.method(api, "create", namespace=namespace)(
        **_ns(r, namespace), body=_body(body), _preload_content=False, _request_timeout=REQUEST_TIMEOUT))


def replace(api: ApiClient, kind: str | type[KubeObject], name: str, body: KubeObject | dict[str, Any],
            namespace: str | None = None, *, status: bool = False) -> dict[str, Any]:
    """PUT (resourceVersion in the body makes it a compare-and-swap: 409 on conflict)."""
    r = resource(kind)
    method = r.method(api, "replace", namespace=namespace, suffix="_status" if status else "")
    return _json(method(name, **_ns(r, namespace), body=_body(body), _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT))


def patch(api: ApiClient, kind: str | type[KubeObject], name: str, body: dict[str, Any],
          namespace: str | None = None, *, status: bool = False) -> dict[str, Any]:
    """A strategic-merge patch (what the client sends for a dict body): maps merge, lists of
    known kinds merge by key (pod conditions by `type`)."""
    r = resource(kind)
    method = r.method(api, "patch", namespace=namespace, suffix="_status" if status else "")
    return _json(method(name, **_ns(r, namespace), body=body, _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT))


def patch_status(api: ApiClient, kind: str | type[KubeObject], name: str, status: dict[str, Any],
                 namespace: str | None = None) -> dict[str, Any]:
    """Patch the `status` subresource: `patch_status(api, "Pod", "web", {"podIP": ...}, "default")`."""
    return patch(api, kind, name, {"status": status}, namespace, status=True)


def replace_status(api: ApiClient, kind: str | type[KubeObject], obj: KubeObject | dict[str, Any]) -> dict[str, Any]:
    body = _body(obj)
    meta = body.get("metadata", {})
    return replace(api, kind, meta["name"], body, meta.get("namespace"), status=True)


def delete(api: ApiClient, kind: str | type[KubeObject], name: str, namespace: str | None = None, *,
           missing_ok: bool = True, grace_period_seconds: int | None = None,
           uid: str | None = None) -> dict[str, Any] | None:
    """Delete; `grace_period_seconds` (pods: 0 = at once) and a `uid` precondition (only this
    incarnation of the object) go in the DeleteOptions body."""
    r = resource(kind)
    options: dict[str, Any] = {}
    if grace_period_seconds is not None:
        options["gracePeriodSeconds"] = grace_period_seconds
    if uid:
        options["preconditions"] = {"uid": uid}
    try:
        return _json(r.method(api, "delete", namespace=namespace)(
            name, **_ns(r, namespace), **({"body": options} if options else {}), _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT))
    except ApiException as e:
        if e.status == 404 and missing_ok:
            return None
        raise


def _ns(r: Any, namespace: str | None) -> dict[str, str]:
    return {"namespace": namespace} if r.namespaced and namespace is not None else {}
