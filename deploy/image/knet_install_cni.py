#!/usr/bin/env python3
"""knet-install-cni: the knet-node DaemonSet's init step.

1. Installs the `knet-cni` executable into the host's CNI bin dir. The container runtime runs it on
   the host, outside this image: it is the image's native client (static, needs nothing from the
   host) when the image has one, which hands every request to knet-cni-agent over
   /run/knet/cni.sock, plus a launcher for the host's python3 (>= 3.8) with the standard-library-only
   part of the `cni` package (shim, wire, versions, errors) as knet-cni.d/knet-cni-py, which the
   native client hands VERSION and what the agent cannot take to. Without a native client the
   launcher itself is knet-cni. Without an agent the answer is CNI error 11 ("try again later")
   instead of running the plugin in-process (that needs pyroute2, which the host does not have):
   kubelet retries until the DaemonSet is up.
2. Writes the conflist (from the ConfigMap) into the host's CNI config dir, atomically.
3. Only for flannel-py's etcd subnet manager (--net-conf; deploy/ runs the kube subnet manager,
   which reads net-conf.json itself): writes flannel's network config to etcd at <prefix>/config
   when the key does not exist yet (create-if-absent: nodes starting together race harmlessly; an
   existing config is never overwritten, since changing the Network under running nodes breaks
   them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

SHIM_FILES = ("__init__.py", "shim.py", "wire.py", "versions.py", "errors.py")

LAUNCHER = '''#!/usr/bin/env python3
# knet-cni, installed by knet-install-cni (knet-node DaemonSet). Hands the request to
# knet-cni-agent; the plugin itself runs there, in the DaemonSet's image.
import json, os, sys
sys.path.insert(0, {libdir!r})
from cni import shim
stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
env = dict(os.environ)
answer = shim._version(stdin) if env.get("CNI_COMMAND") == "VERSION" else None
if answer is None and sys.argv[1:] != ["--direct"]:  # --direct: the native knet-cni found no agent
    path = shim._agent_socket(stdin)
    answer = shim.via_agent(path, env, stdin) if path else None
if answer is None:
    answer = (1, json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "knet-cni-agent is not reachable",
                             "details": "is the knet-node DaemonSet pod running on this node?"}}))
code, out = answer
sys.stdout.buffer.write((out + "\\n").encode("utf-8", "surrogateescape") if out else b"")
sys.exit(code)
'''


def _atomic_write(path: str, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".knet-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # the runtime never sees a half-written file


def native_client() -> bytes | None:
    """The native knet-cni next to this interpreter (built into the image), if there is one."""
    try:
        with open(os.path.join(os.path.dirname(sys.executable), "knet-cni"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data if data.startswith(b"\x7fELF") else None


def install_binary(host_root: str, bin_dir: str) -> str:
    import cni
    src = os.path.dirname(cni.__file__)
    host_bin = host_root + bin_dir
    lib = os.path.join(host_bin, "knet-cni.d", "cni")
    os.makedirs(lib, exist_ok=True)
    for name in SHIM_FILES:
        with open(os.path.join(src, name), "rb") as f:
            _atomic_write(os.path.join(lib, name), f.read(), 0o644)
    launcher = LAUNCHER.format(libdir=os.path.join(bin_dir, "knet-cni.d")).encode()
    target = os.path.join(host_bin, "knet-cni")
    native = native_client()
    if native is not None:  # the fallback first: the native client may run as soon as it is there
        _atomic_write(os.path.join(host_bin, "knet-cni.d", "knet-cni-py"), launcher, 0o755)
    _atomic_write(target, native or launcher, 0o755)
    return target


def install_conflist(host_root: str, conf_dir: str, conflist: str, name: str) -> str:
    with open(conflist, "rb") as f:
        data = f.read()
    json.loads(data)  # refuse to install a broken config: the node would stop making pods
    os.makedirs(host_root + conf_dir, exist_ok=True)
    target = os.path.join(host_root + conf_dir, name)
    _atomic_write(target, data, 0o644)
    return target


def put_net_conf(args: argparse.Namespace, deadline: float) -> str:
    from flannel_py.config import parse_config
    from flannel_py.registry import EtcdUnavailable, Registry

    with open(args.net_conf) as f:
        raw = f.read()
    parse_config(raw)  # invalid: fail here, visibly, instead of in every flannel-py
    tls = {k: v if v and os.path.exists(v) else None
           for k, v in (("ca_cert", args.etcd_cafile), ("cert", args.etcd_certfile), ("key", args.etcd_keyfile))}
    while True:
        try:
            reg = Registry(args.etcd_endpoints, args.etcd_prefix, **tls)
            try:
                created = reg.create_if_absent(reg.config_key, raw, 0)
            finally:
                reg.close()
            return "written" if created else "present"
        except EtcdUnavailable as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"knet-install-cni: etcd {args.etcd_endpoints} unreachable: {e}") from e
            time.sleep(2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet-install-cni", description=__doc__.splitlines()[0])
    p.add_argument("--host-root", default="/host", help="where the host's / is mounted")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--conflist", required=True, help="file with the CNI network configuration list")
    p.add_argument("--conflist-name", default="10-knet.conflist")
    p.add_argument("--net-conf", default=None, help="flannel network config to create in etcd if absent")
    p.add_argument("--etcd-endpoints", default="http://127.0.0.1:2379")
    p.add_argument("--etcd-prefix", default="/coreos.com/network")
    p.add_argument("--etcd-cafile", default=None)
    p.add_argument("--etcd-certfile", default=None)
    p.add_argument("--etcd-keyfile", default=None)
    p.add_argument("--etcd-timeout", type=float, default=120.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = args.host_root.rstrip("/")
    print(f"installed {install_binary(root, args.bin_dir)}", flush=True)
    if args.net_conf:
        state = put_net_conf(args, time.monotonic() + args.etcd_timeout)
        print(f"network config {args.etcd_prefix}/config: {state}", flush=True)
    # Last: the conflist is what makes kubelet report the node Ready.
    print(f"installed {install_conflist(root, args.conf_dir, args.conflist, args.conflist_name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
