"""Run a CNI network configuration list the way a container runtime (libcni) does.

For each plugin of the list, in order: find the executable named by `type` on CNI_PATH, give it
the CNI_* environment and, on stdin, the plugin's own config with `cniVersion` and `name` copied
from the list, the previous plugin's result as `prevResult`, and `runtimeConfig` built from the
capability arguments the plugin declares (portMappings, ...). DEL runs the list in reverse with
the cached ADD result as prevResult. Plugins run inside `exec_netns` (the node's namespace), as
they would when the runtime runs on the node.

Used by the lab's pod runtime, the integration tests and the benchmarks.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from knet import netns as _netns
from lab.errors import LabError


def default_cni_path() -> list[str]:
    # The venv's bin holds knet-cni; /usr/lib/cni holds Debian's reference plugins (portmap, ...).
    return [os.path.dirname(sys.executable), "/usr/lib/cni"]


@dataclass
class RuntimeConf:
    container_id: str
    netns: str                                   # path of the pod's namespace (CNI_NETNS)
    ifname: str = "eth0"
    args: list[tuple[str, str]] = field(default_factory=list)   # CNI_ARGS key/value pairs
    capability_args: dict = field(default_factory=dict)         # e.g. {"portMappings": [...]}


class CniExecError(LabError):
    """A plugin failed: carries the spec's error fields (code, msg, details) and which plugin."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "",
                 stderr: str = "") -> None:
        self.plugin, self.command, self.code = plugin, command, code
        self.msg, self.details, self.stderr = msg, details, stderr
        text = f"{plugin} {command} failed (code {code}): {msg}"
        if details:
            text += f" ({details})"
        super().__init__(text)


def find_plugin(plugin_type: str, cni_path: Sequence[str]) -> str:
    if not plugin_type or "/" in plugin_type:
        raise CniExecError(plugin_type or "?", "FIND", 1, f"invalid plugin type {plugin_type!r}")
    for d in cni_path:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniExecError(plugin_type, "FIND", 1, f"failed to find plugin {plugin_type!r} in path "
                       f"{list(cni_path)}")


def plugin_config(conflist: dict, plugin: dict, prev_result: dict | None,
                  capability_args: dict | None = None) -> dict:
    """The stdin object for one plugin of the list (pure; mirrors libcni's buildOneConfig and
    injectRuntimeConfig)."""
    conf = copy.deepcopy(plugin)
    conf["cniVersion"] = conflist["cniVersion"]
    conf["name"] = conflist["name"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    runtime = {key: value for key, value in (capability_args or {}).items()
               if (plugin.get("capabilities") or {}).get(key)}
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def cni_env(command: str, rt: RuntimeConf, cni_path: Sequence[str]) -> dict[str, str]:
    # libcni passes the runtime's own environment through (PATH lets plugins find iptables).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": rt.container_id,
        "CNI_NETNS": rt.netns,
        "CNI_IFNAME": rt.ifname,
        "CNI_PATH": ":".join(cni_path),
    })
    if rt.args:
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in rt.args)
    return env


def k8s_args(namespace: str, pod: str, container_id: str) -> list[tuple[str, str]]:
    # What containerd/CRI-O send. IgnoreUnknown=1 matters: the reference plugins reject unknown
    # CNI_ARGS keys otherwise.
    return [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", pod),
            ("K8S_POD_INFRA_CONTAINER_ID", container_id)]


def exec_plugin(path: str, command: str, env: dict[str, str], conf: dict,
                exec_netns: str | None = None, timeout: float = 60.0) -> dict | None:
    """Run one plugin; returns its parsed stdout (None when empty), raises CniExecError."""
    argv = _netns.exec_argv(exec_netns, [path]) if exec_netns else [path]
    name = os.path.basename(path)
    try:
        proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CniExecError(name, command, 1, f"timed out after {timeout:.0f}s") from None
    out = proc.stdout.decode(errors="replace").strip()
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            obj = json.loads(out)
            if not isinstance(obj, dict):
                raise ValueError
        except ValueError:
            raise CniExecError(name, command, proc.returncode,
                               out or err or f"exit status {proc.returncode}", stderr=err) from None
        raise CniExecError(name, command, int(obj.get("code", 1) or 1), str(obj.get("msg", out)),
                           str(obj.get("details", "") or ""), stderr=err)
    if not out:
        return None
    try:
        result = json.loads(out)
    except ValueError:
        raise CniExecError(name, command, 1, f"unparsable result: {out[:200]!r}", stderr=err) from None
    if not isinstance(result, dict):
        raise CniExecError(name, command, 1, f"result is not a JSON object: {out[:200]!r}")
    return result


def add_list(conflist: dict, rt: RuntimeConf, exec_netns: str | None = None,
             cni_path: Sequence[str] | None = None, timeout: float = 60.0) -> dict:
    """ADD every plugin in order; on failure, DEL what was attempted (the runtime's cleanup)
    and re-raise the ADD error. Returns the last plugin's result."""
    cni_path = list(cni_path or default_cni_path())
    plugins = conflist["plugins"]
    env = cni_env("ADD", rt, cni_path)
    result: dict | None = None
    for i, plugin in enumerate(plugins):
        try:
            path = find_plugin(plugin.get("type", ""), cni_path)
            conf = plugin_config(conflist, plugin, result, rt.capability_args)
            result = exec_plugin(path, "ADD", env, conf, exec_netns, timeout) or result
        except CniExecError:
            # The failed plugin may have half-done its work: it is included in the cleanup.
            _del_plugins(conflist, plugins[: i + 1], rt, result, exec_netns, cni_path, timeout)
            raise
    if result is None:
        raise CniExecError(plugins[-1].get("type", "?"), "ADD", 1, "the plugin list produced no result")
    return result


def del_list(conflist: dict, rt: RuntimeConf, prev_result: dict | None = None,
             exec_netns: str | None = None, cni_path: Sequence[str] | None = None,
             timeout: float = 60.0) -> None:
    """DEL every plugin in reverse order. Unlike libcni, a failing plugin does not stop the
    others (the lab tears the pod down anyway, so leak as little as possible); the first error
    is raised at the end."""
    cni_path = list(cni_path or default_cni_path())
    errors = _del_plugins(conflist, conflist["plugins"], rt, prev_result, exec_netns, cni_path, timeout)
    if errors:
        raise errors[0]


def check_list(conflist: dict, rt: RuntimeConf, prev_result: dict, exec_netns: str | None = None,
               cni_path: Sequence[str] | None = None, timeout: float = 60.0) -> None:
    cni_path = list(cni_path or default_cni_path())
    env = cni_env("CHECK", rt, cni_path)
    for plugin in conflist["plugins"]:
        path = find_plugin(plugin.get("type", ""), cni_path)
        exec_plugin(path, "CHECK", env, plugin_config(conflist, plugin, prev_result, rt.capability_args),
                    exec_netns, timeout)


def _del_plugins(conflist: dict, plugins: list[dict], rt: RuntimeConf, prev_result: dict | None,
                 exec_netns: str | None, cni_path: list[str], timeout: float) -> list[CniExecError]:
    env = cni_env("DEL", rt, cni_path)
    errors = []
    for plugin in reversed(plugins):
        try:
            path = find_plugin(plugin.get("type", ""), cni_path)
            exec_plugin(path, "DEL", env, plugin_config(conflist, plugin, prev_result, rt.capability_args),
                        exec_netns, timeout)
        except CniExecError as e:
            errors.append(e)
    return errors
