"""Bearer tokens and kubeconfigs.

The tokens file has kube-apiserver's --token-auth-file format: one `token,user[,uid[,"groups"]]`
per line (`#` comments). Every authenticated user may do everything (the lab has no RBAC). Tokens
are never logged: log lines name the user only.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hmac
import json
import os
import secrets

# The lab's users: the admin kubeconfig and one per component.
DEFAULT_USERS = ("admin", "kproxy", "kdns", "netpolicy", "ingress", "node-agent", "controllers", "flannel",
                 "kube-proxy")  # upstream kube-proxy, knet lab up --proxy-mode kube-proxy-*


def load_tokens(path: str) -> dict[str, str]:
    """token -> user."""
    out: dict[str, str] = {}
    with open(path) as f:
        for row in csv.reader(line for line in f if line.strip() and not line.lstrip().startswith("#")):
            if len(row) >= 2 and row[0].strip() and row[1].strip():
                out[row[0].strip()] = row[1].strip()
    return out


def authenticate(tokens: dict[str, str], header: str | None) -> str | None:
    """The user of an `Authorization: Bearer <token>` header, or None."""
    if not header or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer "):].strip()
    for token, user in tokens.items():
        if hmac.compare_digest(token.encode(), given.encode()):  # constant time: no timing oracle
            return user
    return None


def ensure_tokens(path: str, users: tuple[str, ...] | list[str] = DEFAULT_USERS) -> dict[str, str]:
    """user -> token; existing users keep their tokens (a restarted lab keeps its kubeconfigs valid)."""
    current: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        current = {user: token for token, user in load_tokens(path).items()}
    changed = False
    for user in users:
        if user not in current:
            current[user] = secrets.token_hex(24)
            changed = True
    if changed or not os.path.exists(path):
        lines = "".join(f"{token},{user},{user}\n" for user, token in current.items())
        _write_private(path, "# token,user,uid (kube-apiserver --token-auth-file format)\n" + lines)
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
