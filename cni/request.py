"""The request a runtime makes: CNI_* environment variables plus the network config on stdin."""

from __future__ import annotations

from collections.abc import Mapping

from cni.errors import DECODE_FAILURE, INVALID_ENVIRONMENT, CniError
from cni.wire import loads

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# Which variables each command needs (spec 1.1, "Parameters"); DEL may omit CNI_NETNS.
# CNI_PATH is required as the reference plugins' skeleton requires it (delegated IPAM needs it).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
}


class Request:
    # A plain class: dataclasses imports inspect, a fifth of the direct path's start-up.
    __slots__ = ("args", "command", "container_id", "env", "ifname", "netns", "path")

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: dict[str, str] | None = None, path: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}
        self.path = path or []
        self.env = env or {}


def parse_env(env: Mapping[str, str]) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND is {command or 'not set'}; expected one of "
                       + ", ".join(COMMANDS))
    missing = [v for v in _REQUIRED[command] if not env.get(v)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"{command} needs the environment variable(s) "
                       + ", ".join(missing))
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or "/" in ifname or ifname in (".", "..") or " " in ifname):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name")
    return Request(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(":") if p],
        env=dict(env),
    )


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS is "K1=V1;K2=V2"; a pair without '=' is an error, as in libcni."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_stdin(data: bytes) -> dict:
    if not data.strip():
        raise CniError(DECODE_FAILURE, "no network configuration on stdin")
    try:
        conf = loads(data)
    except (ValueError, RecursionError) as e:
        raise CniError(DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    return conf
