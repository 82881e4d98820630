"""A Service's IP families as kube-apiserver decides and checks them: `spec.ipFamilyPolicy`
(SingleStack, PreferDualStack, RequireDualStack), `spec.ipFamilies` and `spec.clusterIPs`, on a
single- or dual-stack cluster (one or two --service-cluster-ip-range ranges, primary first).

- `validate_fields`: the stand-alone checks of the three fields (ValidateServiceClusterIPsRelatedFields)
  and, on update, what an upgrade or downgrade may change (validateUpgradeDowngrade*).
- `init_families`: the policy's default and the families the Service gets (initIPFamilyFields,
  run at allocation): SingleStack takes the requested or the primary family, PreferDualStack both
  when the cluster has both, RequireDualStack fails on a single-stack cluster; on update a switch
  to SingleStack drops the secondary IP, and a PreferDualStack Service is not upgraded or
  downgraded just because the cluster changed.

Pure: dicts in, the spec updated in place, causes out.
"""

from __future__ import annotations

from typing import Any

from knet.kube.ipfamily import FAMILIES, POLICIES, family_or_none, is_dual_stack, other
from lab.apiserver.validation import Causes

SINGLE, PREFER, REQUIRE = POLICIES
NONE = "None"
VALID_IP = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"


def is_headless(spec: dict[str, Any]) -> bool:
    return list(spec.get("clusterIPs") or []) == [NONE]


def validate_fields(c: Causes, spec: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Every check that needs no cluster configuration."""
    if spec.get("type") == "ExternalName":
        for key in ("clusterIPs", "ipFamilies"):
            if spec.get(key):
                c.forbidden(f"spec.{key}", "may not be set for ExternalName services")
        if spec.get("ipFamilyPolicy") is not None:
            c.forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services")
        return
    before = len(c.items)
    _validate_related(c, spec)
    # kube-apiserver runs these checks before the update's (at allocation) and stops at them.
    if old is not None and old.get("type") != "ExternalName" and len(c.items) == before:
        _validate_upgrade_downgrade(c, spec, old)


def _validate_related(c: Causes, spec: dict[str, Any]) -> None:
    ips = list(spec.get("clusterIPs") or [])
    fams = list(spec.get("ipFamilies") or [])
    if spec.get("clusterIP"):
        if not ips:
            c.required("spec.clusterIPs")
        elif ips[0] != spec["clusterIP"]:
            c.invalid("spec.clusterIPs", ips, "first value must match `clusterIP`")
    elif ips:
        c.invalid("spec.clusterIPs", ips, "must be empty when `clusterIP` is not specified")
    seen: set[str] = set()
    for i, fam in enumerate(fams):
        if fam not in FAMILIES:
            c.unsupported(f"spec.ipFamilies[{i}]", fam, FAMILIES)
        if fam in seen:
            c.duplicate(f"spec.ipFamilies[{i}]", fam)
        seen.add(fam)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in POLICIES:
        c.unsupported("spec.ipFamilyPolicy", policy, POLICIES)
    bad_ip = False
    for i, ip in enumerate(ips):
        if i == 0 and ip == NONE:
            if len(ips) > 1:
                bad_ip = True
                c.invalid("spec.clusterIPs", ips, "'None' must be the first and only value")
            continue
        if family_or_none(str(ip)) is None:
            bad_ip = True
            c.invalid(f"spec.clusterIPs[{i}]", ip, VALID_IP)
    if len(ips) > 2:
        c.invalid("spec.clusterIPs", ips, "may only hold up to 2 values")
    if bad_ip:
        return
    if len(ips) > 1 and not is_dual_stack(ips):
        c.invalid("spec.clusterIPs", ips, "may specify no more than one IP for each IP family")
    if not is_headless(spec):
        for i, (ip, fam) in enumerate(zip(ips, fams, strict=False)):
            if fam in FAMILIES and family_or_none(ip) != fam:
                c.invalid(f"spec.clusterIPs[{i}]", ip, f"expected an {fam} value as indicated by `ipFamilies[{i}]`")


def _validate_upgrade_downgrade(c: Causes, spec: dict[str, Any], old: dict[str, Any]) -> None:
    new_ips, old_ips = list(spec.get("clusterIPs") or []), list(old.get("clusterIPs") or [])
    single = spec.get("ipFamilyPolicy") == SINGLE
    if not (is_headless(spec) and is_headless(old)):
        if len(old_ips) == len(new_ips):
            for i, ip in enumerate(old_ips):
                if ip != new_ips[i]:
                    c.invalid(f"spec.clusterIPs[{i}]", new_ips, "may not change once set")
        elif len(old_ips) > len(new_ips):
            if not new_ips:
                c.invalid("spec.clusterIPs[0]", new_ips, "primary clusterIP can not be unset")
            elif old_ips[0] != new_ips[0]:
                c.invalid("spec.clusterIPs[0]", new_ips, "may not change once set")
            if len(new_ips) == 1 and not single:
                c.invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                          "must be set to 'SingleStack' when releasing the secondary clusterIP")
        elif old_ips and new_ips[0] != old_ips[0]:
            c.invalid("spec.clusterIPs[0]", new_ips, "may not change once set")
    if is_headless(spec) or is_headless(old):
        return  # headless may change its families
    new_f, old_f = list(spec.get("ipFamilies") or []), list(old.get("ipFamilies") or [])
    if len(old_f) == len(new_f):
        if old_f != new_f:
            c.invalid("spec.ipFamilies[0]", new_f, "may not change once set")
    elif len(old_f) > len(new_f):
        if not new_ips:
            c.invalid("spec.ipFamilies[0]", new_f, "primary ipFamily can not be unset")
        if new_f and new_f[0] != old_f[0]:
            c.invalid("spec.ipFamilies[0]", new_ips, "may not change once set")
        if len(new_f) == 1 and not single:
            c.invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                      "must be set to 'SingleStack' when releasing the secondary ipFamily")
    elif old_f and new_f and new_f[0] != old_f[0]:
        c.invalid("spec.ipFamilies[0]", new_ips, "may not change once set")


def _unchanged_prefer_dual(spec: dict[str, Any], old: dict[str, Any]) -> bool:
    """A PreferDualStack Service left as it was: never upgraded or downgraded because the
    cluster's families changed, only by an explicit policy change."""
    return (spec.get("ipFamilyPolicy") == PREFER and old.get("ipFamilyPolicy") == PREFER and
            spec.get("type") == old.get("type") and
            list(spec.get("clusterIPs") or []) == list(old.get("clusterIPs") or []) and
            list(spec.get("ipFamilies") or []) == list(old.get("ipFamilies") or []))


def init_families(c: Causes, spec: dict[str, Any], old: dict[str, Any] | None, cluster: tuple[str, ...]) -> None:
    """Default the policy and settle spec.ipFamilies (and clusterIPs' length on a downgrade)
    against the cluster's families `cluster` (primary first); causes when it cannot."""
    if spec.get("type") == "ExternalName" or (old is not None and _unchanged_prefer_dual(spec, old)):
        return
    if spec.get("ipFamilyPolicy") is None:
        if old is not None and old.get("ipFamilyPolicy"):
            spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
        elif spec.get("clusterIP") == NONE and not spec.get("selector"):
            spec["ipFamilyPolicy"] = REQUIRE  # headless without selector: both families
        else:
            spec["ipFamilyPolicy"] = SINGLE
    policy = spec["ipFamilyPolicy"]
    ips, fams = list(spec.get("clusterIPs") or []), list(spec.get("ipFamilies") or [])
    before = len(c.items)
    if old is not None:
        old_ips, old_fams = list(old.get("clusterIPs") or []), list(old.get("ipFamilies") or [])
        if policy == SINGLE:  # with the fields unchanged, SingleStack is a clear intent to downgrade
            if ips == old_ips and len(ips) > 1:
                ips = ips[:1]
            if fams == old_fams and len(fams) > 1:
                fams = fams[:1]
        else:
            if ips and len(ips) < len(old_ips):
                c.invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' to release the secondary cluster IP")
            if fams and len(fams) < len(old_fams):
                c.invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' to release the secondary IP family")
    if policy == SINGLE:
        if len(ips) == 2:
            c.invalid("spec.ipFamilyPolicy", policy,
                      "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified")
        if len(fams) == 2:
            c.invalid("spec.ipFamilyPolicy", policy,
                      "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified")
    for i, ip in enumerate(ips):
        if ip == NONE:
            break
        fam = family_or_none(ip)
        if i >= len(fams) and fam is not None:
            if fam in cluster:
                fams.append(fam)
            else:
                c.invalid(f"spec.clusterIPs[{i}]", ips, f"{fam} is not configured on this cluster")
    if len(c.items) > before:
        return
    if spec.get("clusterIP") == NONE and not spec.get("selector"):
        # Headless without selector may name families the cluster lacks (its endpoints are hand-made).
        fams = fams or [cluster[0]]
        if len(fams) < 2 and policy != SINGLE:
            fams.append(other(fams[0]))  # type: ignore[arg-type]  # validated as a family
        _write(spec, ips, fams)
        return
    if policy == REQUIRE and len(cluster) < 2:
        c.invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services")
    for i, fam in enumerate(fams):
        if fam not in cluster:
            c.invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster")
    if len(c.items) > before:
        return
    fams = fams or [cluster[0]]
    if policy != SINGLE and len(fams) == 1 and len(cluster) == 2:
        fams.append(other(fams[0]))  # type: ignore[arg-type]
    _write(spec, ips, fams)


def _write(spec: dict[str, Any], ips: list[str], fams: list[str]) -> None:
    spec["ipFamilies"] = fams
    if ips:
        spec["clusterIPs"] = ips
