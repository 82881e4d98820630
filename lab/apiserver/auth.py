"""Bearer tokens and kubeconfigs.

The tokens file has kube-apiserver's --token-auth-file format: one `token,user[,uid[,"groups"]]`
per line (`#` comments); an authenticated user is also in `system:authenticated`. What a user may
do is the authorizer's business (authorizer.py). Tokens are never logged: log lines name the
user only.

The lab's credentials (`LAB_IDENTITIES`): the admin is in system:masters; each knet component
authenticates as the ServiceAccount its deploy/ manifest runs it as (`serviceAccountName`), so
deploy/rbac.yaml's bindings, which the lab's server loads, give it exactly what a cluster gives
it. Upstream kube-proxy is `system:kube-proxy`, bound to the bootstrap role system:node-proxier
as kubeadm binds it. The lab's own control plane (controllers, node agents) stands in for
kube-controller-manager and the kubelets, whose bootstrap roles and Node authorizer the lab does
not reproduce: they are in system:masters. The lab key of a credential is its uid column.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from lab.apiserver import rbac

# The lab's users: the admin kubeconfig and one per component.
DEFAULT_USERS = ("admin", "kproxy", "kdns", "netpolicy", "ingress", "node-agent", "controllers", "flannel",
                 "kube-proxy")  # upstream kube-proxy, knet lab up --proxy-mode kube-proxy-*
# lab key -> (user, groups). The ServiceAccounts are deploy/'s serviceAccountName of each
# component (tests/unit/test_apiserver_rbac.py checks them against the manifests).
_NODE_SA = rbac.service_account_user("knet-system", "knet-node")  # node-daemonset.yaml
LAB_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("admin", (rbac.MASTERS,)),
    "kproxy": _NODE_SA, "netpolicy": _NODE_SA, "flannel": _NODE_SA,
    "kdns": rbac.service_account_user("kube-system", "kdns"),  # kdns.yaml
    "ingress": rbac.service_account_user("knet-system", "knet-ingress"),  # ingress.yaml
    "node-agent": ("knet:node-agent", (rbac.MASTERS,)),
    "controllers": ("knet:controllers", (rbac.MASTERS,)),
    # Upstream kube-proxy (a peer, not knet's): the user kubeadm gives it, which the bootstrap
    # role system:node-proxier is bound to.
    "kube-proxy": ("system:kube-proxy", ()),
}


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()


ANONYMOUS = User(rbac.ANONYMOUS, "", (rbac.UNAUTHENTICATED,))


def load_tokens(path: str) -> dict[str, User]:
    """token -> user (with system:authenticated among its groups)."""
    out: dict[str, User] = {}
    with open(path) as f:
        for row in csv.reader(line for line in f if line.strip() and not line.lstrip().startswith("#")):
            if len(row) >= 2 and row[0].strip() and row[1].strip():
                name = row[1].strip()
                uid = row[2].strip() if len(row) > 2 else ""
                groups = [g.strip() for g in row[3].split(",") if g.strip()] if len(row) > 3 else []
                if rbac.AUTHENTICATED not in groups:
                    groups.append(rbac.AUTHENTICATED)
                out[row[0].strip()] = User(name, uid, tuple(groups))
    return out


def authenticate(tokens: dict[str, User], header: str | None) -> User | None:
    """The user of an `Authorization: Bearer <token>` header, or None."""
    if not header or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer "):].strip()
    for token, user in tokens.items():
        if hmac.compare_digest(token.encode(), given.encode()):  # constant time: no timing oracle
            return user
    return None


def ensure_tokens(path: str, users: tuple[str, ...] | list[str] = DEFAULT_USERS) -> dict[str, str]:
    """lab key -> token; existing keys keep their tokens (a restarted lab keeps its kubeconfigs
    valid), and every line names the key's current identity (`LAB_IDENTITIES`; a key not there
    is a user of that name)."""
    current: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        current = {user.uid or user.name: token for token, user in load_tokens(path).items()}
    for user in users:
        if user not in current:
            current[user] = secrets.token_hex(24)
    lines = []
    for key, token in current.items():
        name, groups = LAB_IDENTITIES.get(key, (key, ()))
        lines.append(f'{token},{name},{key},"{",".join(groups)}"\n' if groups else f"{token},{name},{key}\n")
    _write_private(path, "# token,user,uid,\"groups\" (kube-apiserver --token-auth-file format; uid: the lab's "
                         "key)\n" + "".join(lines))
    return current


def kubeconfig(server: str, user: str, token: str, cluster: str = "knet", ca_pem: bytes | None = None) -> dict:
    context = f"{user}@{cluster}"
    entry: dict = {"server": server}
    if ca_pem:
        entry["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user, "namespace": "default"}}],
        "current-context": context,
    }


def write_kubeconfig(path: str, server: str, user: str, token: str, cluster: str = "knet",
                     ca_pem: bytes | None = None) -> str:
    # JSON is YAML: kubectl and the kubernetes client read it as a kubeconfig.
    _write_private(path, json.dumps(kubeconfig(server, user, token, cluster, ca_pem), indent=2) + "\n")
    return path


def _write_private(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
