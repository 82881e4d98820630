"""The CNI verbs (spec 1.0/1.1): ADD, DEL, CHECK, VERSION, STATUS, GC.

`run(env, stdin)` is the whole plugin as a function: it is what the executable runs directly and
what the node agent runs for the thin executable, so both paths behave identically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping

from cni import datapath, masq
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
from cni.versions import LATEST_VERSION, SUPPORTED_VERSIONS, version_answer

log = logging.getLogger("knet.cni")


def _needs(conf: NetConf, minimum: str, command: str) -> None:
    if version_tuple(conf.cni_version) < version_tuple(minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion {minimum} or later, "
                       f"the configuration says {conf.cni_version}")


def _ipam_stdin(conf: NetConf) -> dict:
    return dict(conf.raw, ipam=conf.ipam)


def cmd_add(conf: NetConf, req: Request) -> dict:
    apply_subnet_file(conf)
    # Fail on a bad namespace before anything is reserved: nothing half-made on bad input.
    os.close(datapath.open_netns(req.netns))
    ipam = Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf))
    if ipam.builtin:
        ipam.config()  # validate the ranges before reserving
    ipam_result = ipam.add(conf.runtime_config)
    try:
        result = datapath.setup(conf, req.container_id, req.netns, req.ifname, ipam_result)
    except BaseException:
        ipam.delete()
        raise
    result["dns"] = merge_dns(conf.dns, ipam_result.get("dns"))
    log.info("add container=%s netns=%s ifname=%s ips=%s", req.container_id, req.netns, req.ifname,
             ",".join(ip["address"] for ip in result["ips"]))
    return format_result(result, conf.cni_version)


def cmd_del(conf: NetConf, req: Request) -> None:
    with contextlib.suppress(CniError):  # the overlay may be gone; DEL still releases what it can
        apply_subnet_file(conf)
    datapath.teardown(conf, req.container_id, req.netns, req.ifname)
    if conf.ipam.get("type"):
        Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).delete()
    log.info("del container=%s ifname=%s", req.container_id, req.ifname)


def cmd_check(conf: NetConf, req: Request) -> None:
    _needs(conf, "0.4.0", "CHECK")
    if conf.prev_result is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration")
    apply_subnet_file(conf)
    prev = normalize_prev_result(conf.prev_result)
    Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).check(prev)
    datapath.check(conf, req.netns, req.ifname, prev)


def cmd_status(conf: NetConf, req: Request) -> None:
    _needs(conf, "1.1.0", "STATUS")
    try:
        apply_subnet_file(conf)
    except CniError as e:
        raise CniError(50, f"not ready: {e.msg}") from None
    if conf.ipam.get("type"):
        Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).status()


def cmd_gc(conf: NetConf, req: Request) -> None:
    _needs(conf, "1.1.0", "GC")
    valid = conf.valid_attachments or []
    with contextlib.suppress(CniError):
        apply_subnet_file(conf)
    if conf.ipam.get("type"):
        Ipam(conf.name, conf.ipam, req, _ipam_stdin(conf)).gc(valid)
    if conf.ip_masq:
        keep = {a.get("containerID") for a in valid}
        for chain, cid in masq.list_chains(conf.name).items():
            if cid not in keep:
                masq.remove_chain(chain)


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "STATUS": cmd_status, "GC": cmd_gc}


def run(env: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    """Execute one request; returns (exit status, stdout text)."""
    version = LATEST_VERSION
    try:
        req = parse_env(env)
        if req.command == "VERSION":
            conf = None
            if stdin.strip():
                conf = parse_stdin(stdin)
            return 0, json.dumps(version_answer(conf))
        raw = parse_stdin(stdin)
        if raw.get("cniVersion") in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        check_version(raw)
        conf = parse_netconf(raw, req.command)
        out = HANDLERS[req.command](conf, req)
        return 0, json.dumps(out) if out is not None else ""
    except CniError as e:
        return 1, json.dumps(e.to_json(version))
    except Exception as e:  # a bug or an unexpected kernel answer: still the spec's error shape
        log.exception("unexpected failure")
        return 1, json.dumps(CniError(IO_FAILURE, f"internal error: {type(e).__name__}: {e}").to_json(version))
