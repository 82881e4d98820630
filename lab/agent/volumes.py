"""A pod's volumes, as the kubelet's volume manager makes them (the plan is pure; `materialize`
writes it).

Every volume is a directory (or, for a hostPath file, a file) on the node; a container sees it
at its mountPath through a bind mount in a mount namespace of its own (`mount_argv`), so two
pods, or two containers, see different things at the same path and the node sees none of it.

- configMap / secret: the object's keys (or `items`, key -> path) as files, `defaultMode` /
  per-item `mode`; a missing object or key fails the pod's start unless `optional`.
- emptyDir: a directory per pod, removed with it.
- hostPath: the node's path. The lab's nodes share one machine, so a node's "host" is a
  directory of its own (`node_root`/<path>), except the machine-wide paths in `SHARED_HOST_PATHS`
  (kernel modules and sources, /sys, /proc, /dev, network namespaces, the xtables lock), which
  every node has in common on a real machine too. `type` is checked (Directory, File, Socket...)
  and `DirectoryOrCreate` / `FileOrCreate` create it.
- projected: serviceAccountToken, configMap, secret and downwardAPI sources in one directory.
- downwardAPI: fieldRef values as files.
"""

from __future__ import annotations

import base64
import os
import shlex
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from knet.kube.models import Pod

SHARED_HOST_PATHS = ("/lib/modules", "/usr/src", "/sys", "/proc", "/dev", "/run/netns", "/run/xtables.lock")
DEFAULT_MODE = 0o644
# Lookup(kind, namespace, name) -> the object (a dict) or None when it does not exist.
Lookup = Callable[[str, str, str], dict[str, Any] | None]
# TokenSource(namespace, service account, audience, expiration seconds) -> a bearer token or None.
TokenSource = Callable[[str, str, str, int], str | None]


class VolumeError(Exception):
    """A volume cannot be made (yet): the pod's containers wait, with this as the reason."""


@dataclass
class Volume:
    name: str
    path: str                                   # on the node
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # relpath -> (content, mode)
    host: bool = False                          # a hostPath: checked, never written
    host_type: str = ""                         # hostPath's type ("" = no check)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


def host_path(node_root: str, path: str) -> str:
    """Where a hostPath lives for this lab node (see the module docstring)."""
    norm = os.path.normpath("/" + path.lstrip("/"))  # (POSIX keeps a leading "//")
    if any(norm == p or norm.startswith(p + "/") for p in SHARED_HOST_PATHS):
        return norm
    return os.path.join(node_root, norm.lstrip("/"))


def _mode(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777 else default


def _key_files(kind: str, source: Mapping[str, Any], ns: str, lookup: Lookup, default_mode: int,
               ) -> dict[str, tuple[bytes, int]]:
    name = str(source.get("name") or "")
    obj = lookup(kind, ns, name)
    optional = bool(source.get("optional"))
    if obj is None:
        if optional:
            return {}
        raise VolumeError(f'{kind.lower()} "{name}" not found')
    values: dict[str, bytes] = {}
    if kind == "Secret":
        for k, v in (obj.get("data") or {}).items():
            values[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            values[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            values[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            values[k] = base64.b64decode(v)
    items = source.get("items")
    if not items:
        return {k: (v, default_mode) for k, v in values.items()}
    out = {}
    for item in items:
        key = item.get("key")
        if key not in values:
            if optional:
                continue
            raise VolumeError(f'couldn\'t find key {key} in {kind} {ns}/{name}')
        out[str(item.get("path") or key)] = (values[key], _mode(item.get("mode"), default_mode))
    return out


def field_value(pod: Pod, path: str) -> str:
    """A downward API fieldRef's value (the subset the lab knows)."""
    values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace or "default",
              "metadata.uid": pod.metadata.uid or "", "spec.nodeName": pod.spec.node_name or "",
              "spec.serviceAccountName": pod.spec.service_account_name or "default"}
    if path == "metadata.labels":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(pod.labels.items()))
    if path == "metadata.annotations":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(pod.metadata.annotations.items()))
    if path.startswith("metadata.labels['") and path.endswith("']"):
        return pod.labels.get(path[17:-2], "")
    if path.startswith("metadata.annotations['") and path.endswith("']"):
        return pod.metadata.annotations.get(path[22:-2], "")
    return values.get(path, "")


def _downward(pod: Pod, items: Sequence[Mapping[str, Any]], default_mode: int) -> dict[str, tuple[bytes, int]]:
    return {str(i["path"]): (field_value(pod, str((i.get("fieldRef") or {}).get("fieldPath", ""))).encode(),
                             _mode(i.get("mode"), default_mode))
            for i in items if i.get("path") and i.get("fieldRef")}


def plan(pod: Pod, pod_dir: str, node_root: str, lookup: Lookup, token: TokenSource | None = None,
         ) -> dict[str, Volume]:
    """name -> Volume for every volume of the pod; VolumeError for one that cannot be made."""
    ns = pod.namespace or "default"
    out: dict[str, Volume] = {}
    for v in (pod.spec.model_extra or {}).get("volumes") or []:
        name = str(v.get("name") or "")
        here = os.path.join(pod_dir, name)
        if "configMap" in v or "secret" in v:
            kind, src = ("ConfigMap", v["configMap"]) if "configMap" in v else ("Secret", v["secret"])
            if kind == "Secret":
                src = {**src, "name": src.get("secretName")}
            mode = _mode(src.get("defaultMode"), DEFAULT_MODE)
            out[name] = Volume(name, here, _key_files(kind, src, ns, lookup, mode))
        elif "emptyDir" in v:
            out[name] = Volume(name, here)
        elif "hostPath" in v:
            hp = v["hostPath"] or {}
            htype = str(hp.get("type") or "")
            out[name] = Volume(name, host_path(node_root, str(hp.get("path") or "/")), host=True, host_type=htype)
        elif "downwardAPI" in v:
            src = v["downwardAPI"] or {}
            out[name] = Volume(name, here, _downward(pod, src.get("items") or [],
                                                     _mode(src.get("defaultMode"), DEFAULT_MODE)))
        elif "projected" in v:
            out[name] = Volume(name, here, _projected(pod, v["projected"] or {}, lookup, token))
        else:
            kinds = sorted(k for k in v if k != "name")
            raise VolumeError(f"volume {name}: unsupported volume type {', '.join(kinds) or '(none)'} in the lab")
    return out


def _projected(pod: Pod, src: Mapping[str, Any], lookup: Lookup, token: TokenSource | None,
               ) -> dict[str, tuple[bytes, int]]:
    ns = pod.namespace or "default"
    mode = _mode(src.get("defaultMode"), DEFAULT_MODE)
    files: dict[str, tuple[bytes, int]] = {}
    for s in src.get("sources") or []:
        if "serviceAccountToken" in s:
            t = s["serviceAccountToken"] or {}
            sa = pod.spec.service_account_name or "default"
            value = token(ns, sa, str(t.get("audience") or ""), int(t.get("expirationSeconds") or 3600)) \
                if token else None
            if value is None:
                raise VolumeError(f"no token for ServiceAccount {ns}/{sa}")
            files[str(t.get("path") or "token")] = (value.encode(), mode)
        elif "configMap" in s:
            files.update(_key_files("ConfigMap", s["configMap"] or {}, ns, lookup, mode))
        elif "secret" in s:
            files.update(_key_files("Secret", s["secret"] or {}, ns, lookup, mode))
        elif "downwardAPI" in s:
            files.update(_downward(pod, (s["downwardAPI"] or {}).get("items") or [], mode))
    return files


def container_mounts(mounts: Sequence[Mapping[str, Any]], volumes: Mapping[str, Volume]) -> list[Mount]:
    """A container's volumeMounts as bind mounts (subPath: a path inside the volume)."""
    out = []
    for m in mounts:
        vol = volumes.get(str(m.get("name") or ""))
        if vol is None:
            raise VolumeError(f"volumeMount {m.get('name')}: no such volume")
        source = vol.path
        sub = str(m.get("subPath") or "")
        if sub:
            if os.path.isabs(sub) or ".." in sub.split("/"):
                raise VolumeError(f"volumeMount {m.get('name')}: subPath {sub!r} must be a relative path inside it")
            source = os.path.join(source, sub)
        out.append(Mount(source, str(m.get("mountPath") or "/"), bool(m.get("readOnly"))))
    return out


def mount_argv(mounts: Sequence[Mount], argv: Sequence[str]) -> list[str]:
    """argv run in a new mount namespace with `mounts` bound at their targets. Slave propagation:
    nothing of it propagates back to the node, while mounts the node makes later reach the
    container (every mount behaves as mountPropagation HostToContainer, which deploy/'s CNI agent
    needs for the pod namespaces appearing under /run/netns). The shell execs argv in place: the
    pid stays the container's."""
    if not mounts:
        return list(argv)
    lines = ["set -e"]
    for m in mounts:
        src, dst = shlex.quote(m.source), shlex.quote(m.target)
        lines.append(f"if [ -d {src} ]; then mkdir -p {dst}; else mkdir -p \"$(dirname {dst})\"; "
                     f"[ -e {dst} ] || : > {dst}; fi")
        lines.append(f"mount --bind {src} {dst}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {dst}")
    lines.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", "\n".join(lines), "sh", *argv]


# --- the side effects ----------------------------------------------------------------------------

def check_host_path(path: str, htype: str) -> None:
    """hostPath's type check (and creation for the *OrCreate types)."""
    if htype == "DirectoryOrCreate":
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif htype == "FileOrCreate":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()
    checks: dict[str, Callable[[int], bool]] = {
        "Directory": stat.S_ISDIR, "DirectoryOrCreate": stat.S_ISDIR, "File": stat.S_ISREG,
        "FileOrCreate": stat.S_ISREG, "Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK}
    check = checks.get(htype)
    if htype and check is None:
        raise VolumeError(f"hostPath type {htype!r} is not one of {', '.join(checks)}")
    if check is None:
        if not os.path.exists(path):
            os.makedirs(path, exist_ok=True)  # "" (no check): made as Docker's runtime made it
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VolumeError(f"hostPath {path} does not exist (type {htype})") from None
    if not check(st.st_mode):
        raise VolumeError(f"hostPath {path} is not a {htype}")


def materialize(volumes: Mapping[str, Volume]) -> None:
    """Write the volumes' files (replacing what a previous start wrote) and check hostPaths."""
    for vol in volumes.values():
        if vol.host:
            check_host_path(vol.path, vol.host_type)
            continue
        os.makedirs(vol.path, mode=0o755, exist_ok=True)
        if vol.files:  # keys removed from the object since the last start go too
            tops = {rel.split("/", 1)[0] for rel in vol.files}
            for entry in os.listdir(vol.path):
                if entry not in tops and os.path.isfile(os.path.join(vol.path, entry)):
                    os.unlink(os.path.join(vol.path, entry))
        for rel, (content, mode) in vol.files.items():
            target = os.path.join(vol.path, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(content)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
