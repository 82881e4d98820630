"""autopath @kubernetes: the client's search path walked on the server, in one round trip.

A pod's resolver asks `name.<ns>.svc.<zone>` first (ndots:5 makes every external name walk the
search path). When the query's source address is a pod kdns knows (the `pods verified` mode keeps
every pod's address) and the name lies under the pod's first search domain, kdns tries the search
path itself, as CoreDNS's autopath plugin does with the kubernetes plugin's search path:

    name.<ns>.svc.<zone>, name.svc.<zone>, name.<zone>, name.<kdns's own search domains>..., name

and answers with the first reply that is not NXDOMAIN, with a CNAME from the name asked to the
name that answered in front of it. If every step is NXDOMAIN the first reply goes back unchanged
(the client walks on by itself). An unknown source gets no autopath: its namespace, so its search
path, is unknown.

Pure: the pods' addresses and the search path; the walking is the server's.
"""

from __future__ import annotations

from collections.abc import Iterable

from knet.kube.models import Pod


class PodAddresses:
    """Pod IP -> namespace, kept from the pod informer's events (work per event: its addresses).
    Host-network pods are left out: their address is the node's, shared by every such pod."""

    def __init__(self) -> None:
        self.namespace_of: dict[str, str] = {}
        self.owner: dict[str, str] = {}  # ip -> pod key (a new pod may reuse an old one's address)
        self.ips: dict[str, tuple[str, ...]] = {}  # pod key -> its addresses

    def update(self, key: str, pod: Pod | None) -> None:
        for ip in self.ips.pop(key, ()):
            if self.owner.get(ip) == key:
                del self.owner[ip]
                del self.namespace_of[ip]
        if pod is None or pod.spec.host_network or not pod.ips:
            return
        ns = pod.metadata.namespace or "default"
        ips = tuple(pod.ips)
        self.ips[key] = ips
        for ip in ips:
            self.namespace_of[ip] = ns
            self.owner[ip] = key


def search_path(namespace: str, zone: str, host_search: Iterable[str]) -> list[str]:
    """The search path a pod of `namespace` has (kubelet's ClusterFirst), then the host's, then ""."""
    svc = f"svc.{zone}"
    return [f"{namespace}.{svc}", svc, zone, *host_search, ""]


def base_name(qname: str, first: str) -> str | None:
    """The name the client searched for, when `qname` is it under its first search domain."""
    if qname.endswith("." + first):
        return qname[:-len(first) - 1]
    return None


def expand(base: str, domain: str) -> str:
    return f"{base}.{domain}" if domain else base


def resolv_conf_search(path: str = "/etc/resolv.conf") -> list[str]:
    """kdns's own search domains (CoreDNS appends those of its resolv.conf to the pods' path)."""
    out: list[str] = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    out = [p.rstrip(".").lower() for p in parts[1:]]
    except OSError:
        pass
    return out
