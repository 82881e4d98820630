"""The CNI verbs (spec 1.0/1.1): ADD, DEL, CHECK, VERSION, STATUS, GC.

`run(env, stdin)` is the whole plugin as a function: it is what the executable runs directly and
what the node agent runs for the thin executable, so both paths behave identically. It logs
nothing (the direct path must not pay for importing logging); the agent logs each request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

from cni import datapath
from cni.config import (
    NetConf,
    apply_subnet_file,
    check_version,
    parse_netconf,
    version_tuple,
)
from cni.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, IO_FAILURE, CniError
from cni.ipam import Ipam
from cni.request import Request, parse_env, parse_stdin
from cni.result import format_result, merge_dns, normalize_prev_result
from cni.rtnl import Rtnl
from cni.versions import LATEST_VERSION, SUPPORTED_VERSIONS, version_answer
from cni.wire import dumps


def _needs(conf: NetConf, minimum: str, command: str) -> None:
    if version_tuple(conf.cni_version) < version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {minimum} or later, "
                       f"the configuration says {conf.cni_version}")


def _ipam_stdin(conf: NetConf) -> dict:
    return dict(conf.raw, ipam=conf.ipam)


def cmd_add(conf: NetConf, req: Request, node: Rtnl) -> dict:
    apply_subnet_file(conf)
    # Fail on a bad namespace before anything is reserved: nothing half-made on bad input.
    os.close(datapath.open_netns(req.netns))
    ipam = Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf))
    if ipam.builtin:
        ipam.config()  # validate the ranges before reserving
    ipam_result = ipam.add(conf.runtime_config)
    try:
        result = datapath.setup(conf, req.container_id, req.netns, req.ifname, ipam_result, node)
    except BaseException:
        ipam.delete()
        raise
    result["dns"] = merge_dns(conf.dns, ipam_result.get("dns"))
    return format_result(result, conf.cni_version)


def cmd_del(conf: NetConf, req: Request, _node: Rtnl | None) -> None:
    with contextlib.suppress(CniError):  # the overlay may be gone; DEL still releases what it can
        apply_subnet_file(conf)
    ipam = Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)) if conf.ipam.get("type") else None
    # The pod's addresses let ipMasq remove its rules in one step; IPAM releases them only after
    # the interface is gone, so no other pod can be given an address still in use.
    addresses = ipam.reserved() if ipam else []
    if not addresses and conf.prev_result:
        addresses = [ip.get("address", "") for ip in conf.prev_result.get("ips") or []]
    datapath.teardown(conf, req.container_id, req.netns, req.ifname, addresses)
    if ipam:
        ipam.delete()


def cmd_check(conf: NetConf, req: Request, node: Rtnl) -> None:
    _needs(conf, "0.4.0", "CHECK")
    if conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    apply_subnet_file(conf)
    prev = normalize_prev_result(conf.prev_result)
    Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).check(prev)
    datapath.check(conf, req.netns, req.ifname, prev, node)


def cmd_status(conf: NetConf, req: Request, _node: Rtnl | None) -> None:
    _needs(conf, "1.1.0", "STATUS")
    try:
        apply_subnet_file(conf)
    except CniError as e:
        raise CniError(50, f"not ready: {e.msg}") from None
    if conf.ipam.get("type"):
        Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).status()


def cmd_gc(conf: NetConf, req: Request, _node: Rtnl | None) -> None:
    _needs(conf, "1.1.0", "GC")
    valid = conf.valid_attachments or []
    with contextlib.suppress(CniError):
        apply_subnet_file(conf)
    if conf.ipam.get("type"):
        Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).gc(valid)
    if conf.ip_masq:
        keep = {a.get("containerID") for a in valid}
        masq = datapath.masq()
        stale = {chain for chain, cid in masq.list_chains(conf.name).items() if cid not in keep}
        if stale:
            masq.remove_chains(stale)


HANDLERS: dict[str, Callable[[NetConf, Request, Rtnl], dict | None]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}
NEEDS_NODE_SOCKET = ("ADD", "CHECK")


def _where(e: BaseException) -> str:
    """file:line where an unexpected exception was raised (for the error's details)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


def run(env: Mapping[str, str], stdin: bytes, node: Rtnl | None = None,
        on_bug: Callable[[BaseException], None] | None = None) -> tuple[int, str]:
    """Execute one request; returns (exit status, stdout text).

    `node`: a netlink socket in this namespace to use (the agent keeps one per worker); without
    one, a request that needs it opens its own. `on_bug`: told about unexpected exceptions."""
    version = LATEST_VERSION
    try:
        req = parse_env(env)
        if req.command == "VERSION":
            conf = None
            if stdin.strip():
                conf = parse_stdin(stdin)
            return 0, dumps(version_answer(conf))
        raw = parse_stdin(stdin)
        if raw.get("cniVersion") in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        check_version(raw)
        conf = parse_netconf(raw, req.command)
        own = node is None and req.command in NEEDS_NODE_SOCKET
        sock = Rtnl() if own else node
        try:
            out = HANDLERS[req.command](conf, req, sock)
        finally:
            if own:
                sock.close()
        return 0, dumps(out) if out is not None else ""
    except CniError as e:
        return 1, dumps(e.to_json(version))
    except Exception as e:  # a bug or an unexpected kernel answer: still the spec's error shape
        if on_bug is not None:
            on_bug(e)
        err = CniError(IO_FAILURE, f"internal error: {type(e).__name__}: {e}", _where(e))
        return 1, dumps(err.to_json(version))
