"""Result formatting for each supported cniVersion (pure)."""

from __future__ import annotations

import ipaddress

from cni.config import version_tuple


def format_result(result: dict, version: str) -> dict:
    """Render the internal (1.x-shaped) result in the requested spec version."""
    out = {"cniVersion": version, **{k: v for k, v in result.items() if k != "cniVersion"}}
    if version_tuple(version) < (1, 0, 0):
        # 0.3.x/0.4.0 results carry an explicit IP version per address.
        out["ips"] = [dict(ip, version=str(ipaddress.ip_interface(ip["address"]).version))
                      for ip in out.get("ips", [])]
    else:
        out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in out.get("ips", [])]
    out.setdefault("dns", {})
    return out


def normalize_prev_result(prev: dict) -> dict:
    """A prevResult of any supported version, in the internal shape."""
    return {
        "interfaces": list(prev.get("interfaces") or []),
        "ips": [{k: v for k, v in ip.items() if k != "version"} for ip in prev.get("ips") or []],
        "routes": list(prev.get("routes") or []),
        "dns": dict(prev.get("dns") or {}),
    }


def merge_dns(conf_dns: dict, ipam_dns: dict | None) -> dict:
    out = dict(conf_dns or {})
    for key, value in (ipam_dns or {}).items():
        out.setdefault(key, value)
    return out
