"""The upstream programs ("anchors", built by scripts/install-anchors into .anchors/bin) started
next to knet's for the tests that compare both: the real kube-apiserver and
kube-controller-manager on a private etcd, CoreDNS with its kubernetes plugin.

Everything listens on 127.0.0.1 (free ports) or inside namespaces the caller made; every process
is the caller's to stop (`apiserver_env.stop`), and a caller that gets an exception from a
`start_*` here has nothing to stop.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import urllib.request
from dataclasses import dataclass

from knet_testing.apiserver_env import HOST, REPO, ApiServerProcess, free_port, start, stop, wait_for
from lab.apiserver import pki
from lab.bringup.real_control_plane import NEEDED as REAL_CONTROL_PLANE
from lab.bringup.real_control_plane import service_account_key

BIN = os.path.join(REPO, ".anchors", "bin")
SERVICE_CIDR = "10.96.0.0/12"  # the lab's (lab.topology.SERVICE_CIDR)
CLUSTER_CIDR = "10.244.0.0/16"
# The lab API server lets every authenticated user do everything (it has no authorization); the
# tests' users get the same from kube-apiserver's RBAC through this group.
MASTERS = "system:masters"
KCM_USER = "system:kube-controller-manager"  # bootstrap RBAC binds the controller manager's role to it


def binary(name: str) -> str | None:
    """An anchor's path, or None when scripts/install-anchors has not built it."""
    path = os.path.join(BIN, name)
    return path if os.access(path, os.X_OK) else None


def missing(*names: str) -> str:
    """'' when every named anchor is built, else the reason to skip a test that needs them."""
    absent = [n for n in names if binary(n) is None]
    return f"{', '.join(absent)} not built (scripts/install-anchors)" if absent else ""


def real_control_plane_missing() -> str:
    """'' when `knet lab up --control-plane real` can run, else the reason to skip its tests."""
    return missing(*REAL_CONTROL_PLANE)


def kube_tokens(tokens: str) -> str:
    """The lab's tokens file (token,user[,uid] lines) in kube-apiserver's --token-auth-file form,
    every user in system:masters unless its line names its groups (`token,user,uid,"groups"`)."""
    out = []
    for line in tokens.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        token, user, *rest = [f.strip() for f in line.split(",")]
        out.append(line.strip() if len(rest) >= 2 else f'{token},{user},{rest[0] if rest else user},"{MASTERS}"')
    return "\n".join(out) + "\n"


def _ready(url: str, ca: str) -> bool:
    ctx = ssl.create_default_context(cafile=ca)
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=5) as r:
        return r.status == 200
    return False


def start_kube_apiserver(tmp: str, etcd_url: str, prefix: str, tokens: str, *extra: str,
                         port: int = 0, verbosity: int = 0) -> ApiServerProcess:
    """kube-apiserver on https://127.0.0.1:`port` (a free one by default) with its files under
    `tmp`: the lab's CA and server certificate (lab.apiserver.pki), `tokens` (the lab's format, see
    kube_tokens), RBAC, a service-account signing key, the lab's service range. Ready (/readyz)
    on return; the same shape as apiserver_env.start_apiserver's answer."""
    exe = binary("kube-apiserver")
    if exe is None:
        raise FileNotFoundError(missing("kube-apiserver"))
    os.makedirs(tmp, exist_ok=True)
    certs = pki.ensure(os.path.join(tmp, "pki"), [HOST])
    sa_key, sa_pub = service_account_key(os.path.join(tmp, "pki"))
    tokens_file = os.path.join(tmp, "tokens.csv")
    with open(tokens_file, "w") as f:
        f.write(kube_tokens(tokens))
    port = port or free_port()
    argv = [exe, "--etcd-servers", etcd_url, "--etcd-prefix", prefix,
            "--bind-address", HOST, "--secure-port", str(port), "--advertise-address", HOST,
            # The `kubernetes` Endpoints may not hold a loopback address: nobody reconciles them here.
            "--endpoint-reconciler-type", "none",
            "--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key, "--client-ca-file", certs.ca_cert,
            "--token-auth-file", tokens_file, "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", sa_pub, "--service-account-signing-key-file", sa_key,
            "--service-cluster-ip-range", SERVICE_CIDR, "--allow-privileged=true",
            "--cert-dir", os.path.join(tmp, "certs"), "--profiling=false", f"--v={verbosity}", *extra]
    log = os.path.join(tmp, "apiserver.log")
    url = f"https://{HOST}:{port}"
    proc = start(argv, log)
    try:
        wait_for(lambda: _ready(url, certs.ca_cert), 120, "kube-apiserver", proc, log)
    except BaseException:
        stop(proc)
        raise
    return ApiServerProcess(proc, [url], certs, argv, log)


@dataclass
class ControllerManager:
    proc: object
    log: str


def start_kube_controller_manager(tmp: str, api: ApiServerProcess, token: str,
                                  *extra: str) -> ControllerManager:
    """kube-controller-manager against `api` as system:kube-controller-manager (`token` must be in
    the server's tokens as that user), each controller with its own service account as kubeadm
    runs it; node IPAM over the lab's pod network. Started, not waited for: tests wait for what
    a controller does."""
    from lab.apiserver import auth

    exe = binary("kube-controller-manager")
    if exe is None:
        raise FileNotFoundError(missing("kube-controller-manager"))
    kubeconfig = auth.write_kubeconfig(os.path.join(tmp, "kcm.kubeconfig"), api.urls[0], KCM_USER, token,
                                       "anchors", api.certs.ca_pem())
    sa_key, _ = service_account_key(os.path.join(tmp, "pki"))
    argv = [exe, "--kubeconfig", kubeconfig, "--authentication-kubeconfig", kubeconfig,
            "--authorization-kubeconfig", kubeconfig, "--bind-address", HOST, "--secure-port", str(free_port()),
            "--leader-elect=false", "--use-service-account-credentials=true",
            "--service-account-private-key-file", sa_key, "--root-ca-file", api.certs.ca_cert,
            "--service-cluster-ip-range", SERVICE_CIDR, "--cluster-cidr", CLUSTER_CIDR,
            "--allocate-node-cidrs=true", "--node-cidr-mask-size", "24",
            "--cert-dir", os.path.join(tmp, "kcm-certs"), "--profiling=false", *extra]
    log = os.path.join(tmp, "controller-manager.log")
    return ControllerManager(start(argv, log), log)


def corefile(port: int, ready_port: int, kubeconfig: str, upstream: str, zone: str = "cluster.local",
             ttl: int = 5) -> str:
    """CoreDNS configured as kdns runs: the cluster zone (and reverse zones, falling through for
    addresses that are not the cluster's) from the kubernetes plugin with kdns's TTL and insecure
    pod records, everything else forwarded to `upstream` and cached as kdns caches forwarded
    answers (up to an hour, their own TTLs; the cluster's own answers are not cached, as kdns
    drops them on every change and kubeadm's Corefile disables them)."""
    return f"""\
.:{port} {{
    bind {HOST}
    errors
    ready {HOST}:{ready_port}
    kubernetes {zone} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl {ttl}
    }}
    forward . {upstream}
    cache 3600 {{
        disable success {zone}
        disable denial {zone}
    }}
}}
"""


@dataclass
class CoreDns:
    port: int
    proc: object
    log: str


def start_coredns(tmp: str, kubeconfig: str, upstream: str, *, wait: float = 60,
                  env: dict[str, str] | None = None) -> CoreDns:
    """CoreDNS on 127.0.0.1 (a free port) with `corefile`'s configuration; ready (its kubernetes
    plugin has listed the cluster) on return. `kubeconfig` must reach the API server from here."""
    exe = binary("coredns")
    if exe is None:
        raise FileNotFoundError(missing("coredns"))
    os.makedirs(tmp, exist_ok=True)
    port, ready_port = free_port(), free_port()
    path = os.path.join(tmp, "Corefile")
    with open(path, "w") as f:
        f.write(corefile(port, ready_port, kubeconfig, upstream))
    log = os.path.join(tmp, "coredns.log")
    proc = start([exe, "-conf", path], log, env)

    def ready() -> bool:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{HOST}:{ready_port}/ready",
                                                                  timeout=5) as r:
            return r.status == 200
        return False

    try:
        wait_for(ready, wait, "coredns", proc, log)
    except BaseException:
        stop(proc)
        raise
    return CoreDns(port, proc, log)
