"""knet.kube.client configuration sources and knet.kube.resources method/path mapping."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from knet.kube import client as kc
from knet.kube.resources import RESOURCES, resource


def write_kubeconfig(path, server: str, token: str, ca: str | None = None, context: str = "lab") -> str:
    cluster = {"server": server, **({"certificate-authority": ca} if ca else {"insecure-skip-tls-verify": True})}
    with open(path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "Config", "current-context": context,
                   "clusters": [{"name": "c", "cluster": cluster}],
                   "users": [{"name": "u", "user": {"token": token}}],
                   "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}},
                                {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "x"}}]}, f)
    return str(path)


def bearer(cfg) -> str:
    return cfg.auth_settings()["BearerToken"]["value"]


def test_explicit_kubeconfig_wins_over_env(tmp_path, monkeypatch):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    explicit = write_kubeconfig(tmp_path / "a", "https://127.0.0.1:6443", "tok-a", str(ca))
    env = write_kubeconfig(tmp_path / "b", "https://127.0.0.1:7443", "tok-b")
    monkeypatch.setenv("KUBECONFIG", env)
    cfg = kc.load_configuration(explicit)
    assert cfg.host == "https://127.0.0.1:6443" and bearer(cfg) == "Bearer tok-a"
    assert cfg.ssl_ca_cert == str(ca) and cfg.verify_ssl
    cfg = kc.load_configuration()
    assert cfg.host == "https://127.0.0.1:7443" and bearer(cfg) == "Bearer tok-b" and not cfg.verify_ssl


def test_no_configuration_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kc.ConfigError, match="no kubeconfig"):
        kc.load_configuration()
    with pytest.raises(kc.ConfigError, match="cannot load"):
        kc.load_configuration(str(tmp_path / "missing"))


def test_args_and_pool_size(tmp_path):
    path = write_kubeconfig(tmp_path / "k", "https://127.0.0.1:6443", "t")
    parser = argparse.ArgumentParser()
    kc.add_arguments(parser)
    api = kc.api_client_from_args(parser.parse_args(["--kubeconfig", path, "--context", "other"]))
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.configuration.connection_pool_maxsize >= kc.POOL_SIZE
    api.close()


def test_make_configuration_token_file_is_reread(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("first\n")
    cfg = kc.make_configuration("https://127.0.0.1:6443/", token_file=str(tok), ca_file="/ca.crt")
    assert cfg.host == "https://127.0.0.1:6443" and bearer(cfg) == "Bearer first"
    tok.write_text("second\n")
    os.utime(tok, (1, 1))  # a different mtime, as a rotation gives
    assert bearer(cfg) == "Bearer second"
    plain = kc.make_configuration("http://127.0.0.1:8080", token="t", insecure=True)
    assert bearer(plain) == "Bearer t" and not plain.verify_ssl


def test_resource_paths_and_methods():
    assert resource("pods") is RESOURCES["Pod"] and resource("endpointslice").group == "discovery.k8s.io"
    assert RESOURCES["Pod"].path("default", "web") == "/api/v1/namespaces/default/pods/web"
    assert RESOURCES["Ingress"].path() == "/apis/networking.k8s.io/v1/ingresses"
    assert RESOURCES["Node"].path("ignored", "n1") == "/api/v1/nodes/n1"
    assert RESOURCES["ReplicaSet"].snake == "replica_set" and RESOURCES["Endpoints"].snake == "endpoints"
    for r in RESOURCES.values():  # every generated method we call exists in the installed client
        assert callable(r.method(None, "list", namespace=None))
        for verb in ("read", "create", "replace", "patch", "delete"):
            assert callable(r.method(None, verb, namespace="ns"))
    assert RESOURCES["Pod"].method(None, "list", namespace=None).__name__ == "list_pod_for_all_namespaces"
    assert RESOURCES["Pod"].method(None, "patch", namespace="d", suffix="_status").__name__ == \
        "patch_namespaced_pod_status"
    with pytest.raises(ValueError):
        RESOURCES["Pod"].method(None, "read", namespace=None)
    with pytest.raises(KeyError):
        resource("widgets")
