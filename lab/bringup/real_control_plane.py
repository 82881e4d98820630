"""`knet lab up --control-plane real`: the upstream control plane (scripts/install-anchors) in the
lab instead of knet-apiserver and most of knet-controllers:

    <lab>-ctl    etcd (the anchors' v3.7: kube-apiserver v1.37 needs >= 3.5; Debian has 3.4)
                 kube-apiserver          https://192.168.33.2:6443, RBAC, TokenRequest, kubelet client cert
                 relay                   https://127.0.0.1:<port> of the root namespace -> 192.168.33.2:6443
                                         (a listening socket only, lab.bringup.relay)
                 kube-controller-manager EndpointSlice (+ mirroring), ReplicaSet, Deployment, StatefulSet,
                                         GC, node IPAM, node lifecycle, namespace, service accounts...
                 knet-controllers        only the two the upstream control plane leaves to others here:
                                         the scheduler (no kube-scheduler in the anchors) and the
                                         LoadBalancer address pool (no cloud provider)
    <lab>-node<i> knet-node-agent (as in the lab control plane)

Identities. The lab's own programs that play upstream parts authenticate with static tokens
(--token-auth-file): admin, the node agents and knet-controllers in system:masters,
kube-controller-manager as system:kube-controller-manager and upstream kube-proxy as
system:kube-proxy (both bound by kube-apiserver's bootstrap RBAC, nothing added). knet's own
daemons (kproxy, netpolicy, flannel-py, kdns, ingress) get the ServiceAccounts of deploy/ and
ONLY what deploy/rbac.yaml grants them (applied with kubectl, as a cluster administrator does):
their tokens come from the TokenRequest API (`kubectl create token`), not from long-lived token
Secrets: a TokenRequest answers at once with a signed token (a Secret waits for the controller
manager's token controller to fill it in, and such Secrets are legacy: kube-controller-manager's
LegacyServiceAccountTokenCleanUp removes unused ones), and nothing bearer-valid is left in etcd.
The price is an expiry: TOKEN_DURATION, far longer than a lab lives.

The node API (exec, logs, port-forward through the API server): kube-apiserver dials the agents
at their InternalIP (--kubelet-preferred-address-types) with a client certificate signed by the
lab's CA, the CA in the agents' kubeconfig that they check clients against; the agents' serving
certificates are self-signed, which kube-apiserver accepts without --kubelet-certificate-authority
(as a kubelet without --tls-cert-file).

What only the lab's control plane offers: metrics.k8s.io (`kubectl top`; knet-apiserver serves it
from the agents' summaries, a cluster needs metrics-server), a host socket handed to the server
(--listen-fd; here the relay), deploy/rbac.yaml loaded at start (--authorization-policy-file;
here `kubectl apply`). kube-scheduler is not among the anchors: the lab's scheduler binds pods
(through the Binding subresource, as kube-scheduler does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import yaml

from knet import netns
from lab.apiserver import auth, pki
from lab.bringup import controlplane, etcd, launch
from lab.errors import LabError
from lab.net import topology

Progress = Callable[[str], None]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANCHORS_BIN = os.path.join(REPO, ".anchors", "bin")
NEEDED = ("etcd", "kube-apiserver", "kube-controller-manager")
LAB_DNS_RBAC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dns-rbac.yaml")
PORT = 6443
KCM_PORT = 10257  # kube-controller-manager's secure port (healthz), in the ctl namespace
CONTROLLERS_METRICS = "127.0.0.1:10259"  # knet-controllers' (10257 is kube-controller-manager's here)
LAB_CONTROLLERS = "scheduler,loadbalancer"  # the rest of knet-controllers' are kube-controller-manager's
TOKEN_DURATION = "720h"
DEPLOY = os.path.join(REPO, "deploy")
# Static-token identities: lab key -> (user, groups).
STATIC_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", ("system:masters",)),
    "node-agent": ("knet:node-agent", ("system:masters",)),  # a kubelet would be system:node:<name> (Node authorizer)
    "controllers": ("knet:controllers", ("system:masters",)),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-proxy": ("system:kube-proxy", ()),  # bootstrap RBAC: system:node-proxier
}
SA_PREFIX = "system:serviceaccount:"


def service_accounts() -> dict[str, tuple[str, str]]:
    """knet's daemons -> (namespace, name) of their ServiceAccount in deploy/: the identities the
    lab API server gives them too (lab.apiserver.auth.LAB_IDENTITIES, the one record of both)."""
    out = {}
    for key, (user, _) in auth.LAB_IDENTITIES.items():
        if user.startswith(SA_PREFIX):
            namespace, _, name = user.removeprefix(SA_PREFIX).partition(":")
            out[key] = (namespace, name)
    return out


class RealControlPlaneError(LabError):
    pass


def anchor(name: str) -> str:
    return os.path.join(ANCHORS_BIN, name)


def check_anchors() -> None:
    """Fail before anything is made when the upstream programs are not built."""
    absent = [n for n in NEEDED if not os.access(anchor(n), os.X_OK)]
    if absent:
        raise RealControlPlaneError(f"--control-plane real needs {', '.join(absent)} in {ANCHORS_BIN}: run "
                                    "scripts/install-anchors (kube-apiserver v1.37 needs etcd >= 3.5, Debian's is 3.4)")
    if shutil.which("kubectl") is None:
        raise RealControlPlaneError("--control-plane real applies deploy/rbac.yaml with kubectl: install kubectl "
                                    "(Debian: kubernetes-client)")


def start_etcd(p: topology.Plan, progress: Progress) -> None:
    """The lab's etcd, the anchors' build (before the overlay, which would start Debian's)."""
    etcd.start(p, progress, binary=anchor("etcd"))


def service_account_key(directory: str) -> tuple[str, str]:
    """(private, public) PEM files of the key that signs and checks service-account tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = os.path.join(directory, "sa.key"), os.path.join(directory, "sa.pub")
    if not os.path.exists(private):
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(public, "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def token_lines(tokens: dict[str, str]) -> str:
    """kube-apiserver's --token-auth-file (token,user,uid,"groups") for the static users."""
    out = []
    for key, token in tokens.items():
        user, groups = STATIC_USERS[key]
        out.append(f'{token},{user},{key}' + (f',"{",".join(groups)}"' if groups else ""))
    return "\n".join(out) + "\n"


def apiserver_argv(sdir: str, certs: pki.Pki, kubelet: tuple[str, str], sa: tuple[str, str],
                   ip_family: str = "ipv4") -> list[str]:
    """kube-apiserver's command line in the ctl namespace (pure but for the paths it names)."""
    return [
        anchor("kube-apiserver"), "--etcd-servers", "http://127.0.0.1:2379",
        "--bind-address", topology.CTL_IP, "--advertise-address", topology.CTL_IP, "--secure-port", str(PORT),
        "--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key, "--client-ca-file", certs.ca_cert,
        "--token-auth-file", os.path.join(sdir, "tokens.csv"), "--authorization-mode", "RBAC",
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file", sa[1], "--service-account-signing-key-file", sa[0],
        "--service-cluster-ip-range", topology.service_cidrs(ip_family), "--service-node-port-range", "30000-32767",
        "--allow-privileged=true",
        # The node agents answer at their InternalIP (their Hostname resolves nowhere).
        "--kubelet-client-certificate", kubelet[0], "--kubelet-client-key", kubelet[1],
        "--kubelet-preferred-address-types", "InternalIP",
        "--cert-dir", os.path.join(sdir, "certs"), "--profiling=false", "--v=1",
    ]


def controller_manager_argv(sdir: str, kubeconfig: str, certs: pki.Pki, sa_key: str,
                            ip_family: str = "ipv4") -> list[str]:
    return [
        anchor("kube-controller-manager"), "--kubeconfig", kubeconfig,
        "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
        "--bind-address", "127.0.0.1", "--secure-port", str(KCM_PORT), "--leader-elect=false",
        "--use-service-account-credentials=true", "--service-account-private-key-file", sa_key,
        "--root-ca-file", certs.ca_cert, "--service-cluster-ip-range", topology.service_cidrs(ip_family),
        "--cluster-cidr", topology.pod_cidrs(ip_family), "--allocate-node-cidrs=true",
        *topology.node_cidr_mask_flags(ip_family),
        "--cert-dir", os.path.join(sdir, "kcm-certs"), "--profiling=false", "--v=1",
    ]


def start_control_plane(p: topology.Plan, progress: Progress = print, lb_pool: str = controlplane.LB_POOL,
                        wait: float = 90.0, with_nodes: Callable[[dict[str, str]], None] | None = None
                        ) -> dict[str, Any]:
    """controlplane.start_control_plane's counterpart (same arguments, same record, plus the
    upstream processes)."""
    t0 = time.monotonic()
    check_anchors()
    start_etcd(p, progress)
    sdir = os.path.join(p.state_dir, "apiserver")
    os.makedirs(sdir, exist_ok=True)
    tokens = auth.ensure_tokens(os.path.join(sdir, "static-tokens.csv"), list(STATIC_USERS))
    with open(os.path.join(sdir, "tokens.csv"), "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token_lines(tokens))
    service_ip = _api_service_ip()
    certs = pki.ensure(os.path.join(sdir, "pki"), [topology.CTL_IP, service_ip])
    kubelet = pki.kubelet_client(os.path.join(sdir, "pki"))
    sa = service_account_key(os.path.join(sdir, "pki"))
    apiserver = launch.spawn("kube-apiserver", p.ctl.netns, apiserver_argv(sdir, certs, kubelet, sa, p.ip_family),
                             os.path.join(sdir, "apiserver.log"), RealControlPlaneError)
    relay, host_url = _start_relay(p, sdir)
    lab_url = f"https://{topology.CTL_IP}:{PORT}"
    ca = certs.ca_pem()
    base = os.path.dirname(p.state_dir)
    kubeconfig = auth.write_kubeconfig(controlplane.kubeconfig_path(p.name, base), host_url, "admin",
                                       tokens["admin"], p.name, ca)
    auth.write_kubeconfig(os.path.join(sdir, "admin.kubeconfig"), host_url, "admin", tokens["admin"], p.name, ca)
    if not launch.wait_until(lambda: _ready(kubeconfig), [apiserver, relay], wait):
        raise RealControlPlaneError(f"kube-apiserver not ready within {wait:.0f}s (see {apiserver.log})")
    progress(f"kube-apiserver: {lab_url} in {p.ctl.netns}, {host_url} on the host (relay pid {relay.pid}); "
             f"pid {apiserver.pid}")
    kubeconfigs = {key: auth.write_kubeconfig(os.path.join(sdir, f"{key}-lab.kubeconfig" if key == "admin" else
                                                           f"{key}.kubeconfig"), lab_url, key, token, p.name, ca)
                   for key, token in tokens.items()}
    kubeconfigs.update(_service_account_kubeconfigs(kubeconfig, sdir, lab_url, p.name, ca))
    progress(f"rbac: deploy/namespace.yaml, deploy/rbac.yaml and the ServiceAccounts applied with kubectl; "
             f"TokenRequest tokens ({TOKEN_DURATION}) for {', '.join(sorted(service_accounts()))}")
    kcm = launch.spawn("kube-controller-manager", p.ctl.netns,
                       controller_manager_argv(sdir, kubeconfigs["kube-controller-manager"], certs, sa[0],
                                               p.ip_family),
                       os.path.join(sdir, "controller-manager.log"), RealControlPlaneError)
    if p.overlay == "static":
        controlplane.create_static_nodes(kubeconfig, p)
    ctl = launch.spawn("knet-controllers", p.ctl.netns, [
        launch.binary("knet-controllers"), "--kubeconfig", kubeconfigs["controllers"], "--lb-pool", lb_pool,
        "--metrics", CONTROLLERS_METRICS, "--controllers", LAB_CONTROLLERS,
    ], os.path.join(p.state_dir, "controllers.log"), RealControlPlaneError)
    # Pods are admitted only once their ServiceAccount exists (the ServiceAccount admission plugin;
    # kube-controller-manager makes each namespace's `default`).
    if not launch.wait_until(lambda: _has_default_service_account(kubeconfig), [apiserver, kcm, ctl], wait):
        raise RealControlPlaneError(f"no default ServiceAccount within {wait:.0f}s (see {kcm.log})")
    agents = {n.short: controlplane.spawn_agent(n.netns, n.short, kubeconfigs["node-agent"], p.name, base,
                                                topology.SERVICE_CIDR, os.path.join(n.dir, "node-agent.log"))
              for n in p.nodes}
    if with_nodes is not None:
        with_nodes(kubeconfigs)
    controlplane.wait_nodes_ready(kubeconfig, [n.short for n in p.nodes], wait,
                                  [apiserver, relay, kcm, ctl, *agents.values()])
    progress(f"kube-controller-manager: pid {kcm.pid}; knet-controllers ({LAB_CONTROLLERS}): pid {ctl.pid}; "
             "node agents: " + ", ".join(f"{k} pid {d.pid}" for k, d in sorted(agents.items()))
             + f"; {len(p.nodes)} node(s) Ready with a podCIDR in {time.monotonic() - t0:.1f}s")
    progress(f"kubectl: kubectl --kubeconfig {kubeconfig} get nodes,pods -o wide")
    progress("   (no metrics.k8s.io here: `kubectl top` needs knet-apiserver's, or a metrics-server, which the "
             "anchors do not build)")
    return {
        "kind": "real",
        "apiserver": {"pid": apiserver.pid, "log": apiserver.log, "host_url": host_url, "lab_url": lab_url,
                      "relay_pid": relay.pid},
        "controller_manager": {"pid": kcm.pid, "log": kcm.log},
        "kubeconfig": kubeconfig,
        "kubeconfigs": kubeconfigs,
        "controllers": {"pid": ctl.pid, "log": ctl.log, "lb_pool": lb_pool, "only": LAB_CONTROLLERS},
        "agents": {k: {"pid": d.pid, "log": d.log} for k, d in agents.items()},
        "etcd": topology.ETCD_URL,
    }


def _api_service_ip() -> str:
    import ipaddress

    return str(ipaddress.ip_network(topology.SERVICE_CIDR).network_address + 1)


def _start_relay(p: topology.Plan, sdir: str) -> tuple[launch.Daemon, str]:
    """The host's loopback port for kubectl: a socket of the root namespace, served from ctl."""
    import socket
    import sys

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        log = os.path.join(sdir, "relay.log")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                netns.exec_argv(p.ctl.netns, [sys.executable, "-m", "lab.bringup.relay", "--listen-fd",
                                              str(sock.fileno()), "--to", f"{topology.CTL_IP}:{PORT}"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),),
                start_new_session=True, cwd=REPO)
    finally:
        sock.close()  # the relay has its own copy
    return launch.Daemon("relay to kube-apiserver", proc, log, RealControlPlaneError), f"https://127.0.0.1:{port}"


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    """kubectl from the root namespace (the kubeconfig must name a loopback server)."""
    controlplane.loopback_only(kubeconfig)
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise RealControlPlaneError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def _ready(kubeconfig: str) -> bool:
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"], capture_output=True,
                       text=True, timeout=30)
    return r.returncode == 0 and r.stdout.strip() == "ok"


def _has_default_service_account(kubeconfig: str) -> bool:
    r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "-n", "default", "get", "serviceaccount", "default"],
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def deploy_documents() -> str:
    """deploy/namespace.yaml, deploy/rbac.yaml and every ServiceAccount the other manifests of
    deploy/ declare (kdns's lives in kdns.yaml): what the components' identities need, nothing of
    their workloads (the lab runs those itself). Then the lab's own DNS identity (dns-rbac.yaml:
    the lab's kdns runs with autopath as kube-system/coredns), as the lab API server loads it."""
    docs: list[dict] = []
    for path in (os.path.join(DEPLOY, "namespace.yaml"), os.path.join(DEPLOY, "rbac.yaml"), LAB_DNS_RBAC):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    for name in sorted(os.listdir(DEPLOY)):
        if name.endswith(".yaml") and name not in ("namespace.yaml", "rbac.yaml", "kustomization.yaml"):
            with open(os.path.join(DEPLOY, name)) as f:
                docs += [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "ServiceAccount"]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _service_account_kubeconfigs(admin: str, sdir: str, lab_url: str, lab: str, ca: bytes) -> dict[str, str]:
    kubectl(admin, "apply", "-f", "-", stdin=deploy_documents())
    out, tokens = {}, {}
    for key, (namespace, name) in service_accounts().items():
        if (namespace, name) not in tokens:
            tokens[namespace, name] = kubectl(admin, "-n", namespace, "create", "token", name,
                                              "--duration", TOKEN_DURATION).strip()
        out[key] = auth.write_kubeconfig(os.path.join(sdir, f"{key}.kubeconfig"), lab_url,
                                         f"{SA_PREFIX}{namespace}:{name}", tokens[namespace, name], lab, ca)
    return out
