"""What the CNI plugin leaves on a node, as uninstall steps (`knet uninstall-node` runs them):

    links     the bridge (cni0) and the host ends of the pod veths attached to it
    iptables  the per-attachment masquerade chains CNI-* (`cni.masq`) and the jumps to them
    files     the plugin in /opt/cni/bin (knet-cni, knet-cni.d), conflists naming knet-cni in
              /etc/cni/net.d, the IPAM reservations (<dataDir>/<network>), libcni's cached results
              of the network, the agent's socket directory (/run/knet)
"""

from __future__ import annotations

import glob
import json
import os

from cni import masq
from cni.config import DEFAULT_AGENT_SOCKET
from cni.ipam_config import DEFAULT_DATA_DIR
from knet import links
from knet.uninstall import Step, at, iptables_steps, link_steps, path_steps

PLUGIN_TYPE = "knet-cni"
# Where a container runtime looks (libcni's defaults; deploy/image/knet_install_cni.py installs there).
BIN_DIR = "/opt/cni/bin"
CONF_DIR = "/etc/cni/net.d"
RESULTS_DIR = "/var/lib/cni/results"


def owns_chain(chain: str) -> bool:
    return chain.startswith(masq.CHAIN_PREFIX)


def uninstall_steps(root: str = "/", bridge: str = "cni0", network_name: str = "knet") -> list[Step]:
    """`root`: where the node's / is mounted; `bridge`, `network_name`: the conflist's."""
    return [*link_steps(_links(bridge)), *iptables_steps(owns_chain), *path_steps(_files(root, network_name))]


def _links(bridge: str) -> list[str]:
    with links.iproute() as ipr:
        dump = ipr.link("dump")
    br = next((link["index"] for link in dump if link.get("IFLA_IFNAME") == bridge), None)
    if br is None:
        return []
    veths = [link.get("IFLA_IFNAME") for link in sorted(dump, key=lambda x: x["index"])
             if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth" and link.get("IFLA_MASTER") == br]
    return [bridge, *veths]


def _files(root: str, network_name: str) -> list[str]:
    out = [at(root, f"{BIN_DIR}/{PLUGIN_TYPE}"), at(root, f"{BIN_DIR}/{PLUGIN_TYPE}.d"),
           at(root, f"{DEFAULT_DATA_DIR}/{network_name}"), at(root, os.path.dirname(DEFAULT_AGENT_SOCKET))]
    out += glob.glob(at(root, f"{RESULTS_DIR}/{network_name}-*"))
    for conf in sorted(glob.glob(at(root, f"{CONF_DIR}/*"))):
        try:
            with open(conf) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        plugins = data.get("plugins", [data]) if isinstance(data, dict) else []
        if any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins):
            out.append(conf)
    return out
