"""Delegated IPAM: execute the `ipam.type` plugin from CNI_PATH, as the spec says (imported only
when a configuration names an IPAM other than the built-in host-local)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from cni.errors import INVALID_CONFIG, IO_FAILURE, CniError
from cni.wire import dumps, loads

TIMEOUT = 60.0


def find_plugin(name: str, path: list[str]) -> str:
    if not name or "/" in name:
        raise CniError(INVALID_CONFIG, f"plugin type {name!r} is not a plugin name")
    for d in path:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"failed to find plugin {name!r} in CNI_PATH {':'.join(path) or '(empty)'}")


def run(plugin: str, command: str, env: Mapping[str, str], path: list[str], stdin_conf: dict) -> dict:
    """The plugin's parsed result (a CniError with its own code when it fails)."""
    exe = find_plugin(plugin, path)
    try:
        proc = subprocess.run([exe], input=dumps(stdin_conf).encode(), env=dict(env, CNI_COMMAND=command),
                              capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(IO_FAILURE, f"ipam plugin {plugin} failed to run: {e}") from None
    out = proc.stdout.decode(errors="replace").strip()
    try:
        parsed = loads(out) if out else {}
    except ValueError:
        parsed = {}
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise CniError(int(parsed["code"]), str(parsed.get("msg", "")), str(parsed.get("details", "")))
        raise CniError(IO_FAILURE, f"ipam plugin {plugin} exited {proc.returncode}: "
                       + (out or proc.stderr.decode(errors="replace").strip())[:500])
    return parsed if isinstance(parsed, dict) else {}
