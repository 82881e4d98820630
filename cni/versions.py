"""Spec versions this plugin speaks (import-free: the thin executable answers VERSION itself)."""

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"


def version_answer(conf: object) -> dict:
    version = LATEST_VERSION
    if isinstance(conf, dict) and conf.get("cniVersion") in SUPPORTED_VERSIONS:
        version = conf["cniVersion"]
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
