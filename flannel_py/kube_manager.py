"""The Kubernetes subnet manager (flanneld --kube-subnet-mgr): no etcd of its own.

- network config: the net-conf.json file kube-flannel's ConfigMap mounts (--net-config-path);
- our subnet: our Node's spec.podCIDR, assigned by kube-controller-manager's node IPAM; until it
  is there we wait and say so every 10 s;
- our "lease": flannel's annotations on our Node (kube_annotations.py), written with a
  strategic-merge patch of nodes/status as flanneld does (kubelets and flannel may patch node
  status; no update of the Node's spec, no conflict with kubelet's heartbeats);
- everyone's leases: an informer on Nodes; each add/update/delete is one queue item and changes
  one entry of the lease map (keyed by node name).

- once our subnet.env is written: our Node's NetworkUnavailable condition False, as flanneld
  (--set-node-network-unavailable, on by default).

API calls, and so the RBAC the DaemonSet needs: nodes list + watch (the informer), nodes get (our
own Node, fresh, before patching it), nodes/status patch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from flannel_py.config import ConfigError, NetworkConfig, parse_config
from flannel_py.kube_annotations import (
    Annotations,
    annotation_patch,
    lease_of,
    network_available,
    network_available_patch,
    node_lease,
    own_ipv6_subnet,
    own_subnet,
    published,
)
from flannel_py.lease import Lease, LeaseAttrs, LeaseError
from knet.kube import client as kube_client
from knet.kube.informer import Informer
from knet.kube.models import Node, parse

log = logging.getLogger("flannel_py.kube")
WAIT_LOG_EVERY = 10.0


@dataclass(frozen=True)
class NodeChanged:
    """A Node was added or changed (node set) or deleted (node None)."""
    name: str
    node: Node | None


@dataclass(frozen=True)
class NodesSynced:
    """Every Node of the informer's first list is in the queue before this."""


def node_name(args: argparse.Namespace) -> str:
    """flanneld's: $NODE_NAME (the DaemonSet sets it from spec.nodeName); --node-name for the lab."""
    name = args.node_name or os.environ.get("NODE_NAME", "")
    if not name:
        raise ConfigError("the node's name is unknown: set $NODE_NAME (downward API: spec.nodeName) or --node-name")
    return name


def read_net_conf(path: str) -> NetworkConfig:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the network config {path}: {e.strerror}") from None
    return parse_config(raw)


class KubeSubnetManager:
    def __init__(self, args: argparse.Namespace, out: queue.Queue, stop: threading.Event) -> None:
        self.args = args
        self.out = out
        self.stop = stop
        self.node = node_name(args)
        self.names = Annotations.with_prefix(args.kube_annotation_prefix)
        self.leases: dict[str, Lease] = {}  # node name -> lease
        self.synced = False
        self.need_reacquire = False
        self.own: Lease | None = None
        self.published: Lease | None = None  # our lease as the other nodes read it from our Node
        self._warned = 0.0
        self.cfg: NetworkConfig | None = None
        try:
            self.api = kube_client.new_api_client(args.kubeconfig_file)
        except kube_client.ConfigError as e:
            raise ConfigError(str(e)) from None
        self.nodes = Informer(self.api, Node, on_add=self._changed, on_update=lambda _old, new: self._changed(new),
                              on_delete=self._deleted)

    def describe(self) -> dict[str, object]:
        return {"subnet_manager": "kube", "node": self.node, "net_conf": self.args.net_config_path}

    def _changed(self, node: Node) -> None:
        self.out.put(NodeChanged(node.name, node))

    def _deleted(self, node: Node) -> None:
        self.out.put(NodeChanged(node.name, None))

    def network_config(self) -> NetworkConfig:
        self.cfg = read_net_conf(self.args.net_config_path)
        self.nodes.start()
        warned = time.monotonic()
        while not self.nodes.wait_synced(0.5):
            if self.stop.is_set():
                raise SystemExit(0)
            if time.monotonic() - warned > WAIT_LOG_EVERY:
                log.warning("waiting for the API server to list Nodes", extra={"node": self.node})
                warned = time.monotonic()
        self.out.put(NodesSynced())
        return self.cfg

    def acquire(self, attrs: LeaseAttrs, previous: IPv4Network | None, wait: bool = True,
                previous_v6: IPv6Network | None = None) -> Lease | None:
        """Our podCIDR with our annotations patched onto the Node. With `wait` (start-up) until
        there is one; without, one attempt: None while there is nothing to acquire (the reason is
        logged every 10 s), an exception when the API fails."""
        assert self.cfg is not None
        while True:
            try:
                lease = self._try_acquire(attrs)
            except ConfigError:
                raise
            except Exception as e:  # API unreachable, a conflict, ...: retried like any outage
                if not wait:
                    raise
                lease, why = None, f"API request failed: {e}"
            else:
                why = "" if lease else self._why_waiting()
            if lease is not None:
                break
            if time.monotonic() - self._warned > WAIT_LOG_EVERY:
                log.warning("no subnet for this node yet, waiting", extra={"node": self.node, "reason": why})
                self._warned = time.monotonic()
            if not wait:
                return None
            if self.stop.wait(0.5):
                raise SystemExit(0)
        if previous is not None and previous != lease.subnet and self.own is None:
            log.warning("podCIDR differs from the subnet of the previous run",
                        extra={"previous": str(previous), "subnet": str(lease.subnet)})
        if self.own is None or lease != self.own:
            log.info("lease acquired", extra={"subnet": str(lease.subnet), "node": self.node,
                                              "public_ip": str(lease.attrs.public_ip)})
        self.own = lease
        self.need_reacquire = False
        return lease

    def _why_waiting(self) -> str:
        node = self.nodes.get(self.node)
        if node is None:
            return "the Node object does not exist (is the kubelet registered under this name?)"
        if self.cfg is not None and self.cfg.ipv6 is not None and node.pod_cidrs:
            return ("spec.podCIDRs has no IPv6 entry and EnableIPv6 is set: the node IPAM controller must "
                    "allocate from an IPv6 cluster CIDR as well (kube-controller-manager --cluster-cidr=<v4>,<v6>)")
        return ("spec.podCIDR is not set: the node IPAM controller (kube-controller-manager "
                "--allocate-node-cidrs) has not assigned one yet")

    def _try_acquire(self, attrs: LeaseAttrs) -> Lease | None:
        """One attempt: None while there is no Node or no podCIDR."""
        assert self.cfg is not None
        if self.nodes.get(self.node) is None:
            return None  # the informer sees it appear: no request while waiting
        raw = kube_client.get(self.api, "Node", self.node)  # fresh: annotations and podCIDR as they are now
        node = parse(Node, raw) if raw else None
        if node is None:
            return None
        subnet = own_subnet(node, self.cfg.network)
        if subnet is None:
            return None
        ipv6_subnet = None
        if self.cfg.ipv6 is not None:
            ipv6_subnet = own_ipv6_subnet(node, self.cfg.ipv6.network)  # type: ignore[arg-type]
            if ipv6_subnet is None:
                return None
        current = node.metadata.annotations
        patch = annotation_patch(self.names, attrs, current)
        if patch is not None:
            kube_client.patch(self.api, "Node", self.node, patch, status=True)
            changed = patch["metadata"]["annotations"]
            if self.own is not None:
                log.warning("own Node's annotations were changed behind us, re-published",
                            extra={"node": self.node, "keys": sorted(changed)})
            else:
                log.info("node annotations published", extra={"node": self.node, "keys": sorted(changed)})
        overwrite = current.get(self.names.public_ip_overwrite)
        try:
            self.published = lease_of(self.names, published(self.names, attrs, current), subnet, ipv6_subnet)
        except LeaseError as e:  # an unusable public-ip-overwrite
            raise ConfigError(f"node {self.node}: {e}") from None
        if overwrite and self.own is None:
            log.info("public-ip-overwrite annotation is published as public-ip",
                     extra={"node": self.node, "public_ip": overwrite})
        return Lease(subnet, attrs, ipv6_subnet)

    def start(self) -> None:
        """Called once our lease is configured and subnet.env written (the informer runs since
        network_config()): flanneld's CompleteLease, the NetworkUnavailable condition False on our
        Node. A failure is logged, not fatal (nor is it in flanneld): the overlay works without.
        Unlike flanneld, a restart that finds it False already writes nothing."""
        node = self.nodes.get(self.node)
        if not self.args.set_node_network_unavailable or (node is not None and network_available(node)):
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            kube_client.patch(self.api, "Node", self.node, network_available_patch(now), status=True)
        except Exception as e:
            log.error("setting the node condition NetworkUnavailable=False failed",
                      extra={"node": self.node, "error": str(e)})
        else:
            log.info("node condition NetworkUnavailable=False", extra={"node": self.node})

    def handle(self, item: object) -> bool:
        """Apply one queue item to the lease map; True if the kernel may need changes."""
        if isinstance(item, NodesSynced):
            self.synced = True
            return True
        if not isinstance(item, NodeChanged):
            return False
        before = self.leases.get(item.name)
        if item.node is None:
            self.leases.pop(item.name, None)
            if before is not None:
                log.info("node removed", extra={"node": item.name, "subnet": str(before.subnet)})
            if item.name == self.node:
                log.warning("own Node was deleted; re-publishing once it is back", extra={"node": item.name})
                self.need_reacquire = True
            return before is not None
        try:
            lease: Lease | None = node_lease(self.names, item.node)
            if lease is not None and lease.ipv6_subnet is not None and (self.cfg is None or self.cfg.ipv6 is None):
                lease = dataclasses.replace(lease, ipv6_subnet=None)  # an IPv4-only overlay ignores IPv6 podCIDRs
        except LeaseError as e:
            self.leases.pop(item.name, None)
            # Said once when a lease goes away; a node that never was one only at debug level
            # (every status update of it would repeat the line).
            (log.info if before is not None else log.debug)("node is not a lease",
                                                            extra={"node": item.name, "reason": str(e)})
            lease = None
        else:
            self.leases[item.name] = lease
            if lease != before:
                log.info("node lease", extra={"node": item.name, "subnet": str(lease.subnet),
                                              "public_ip": str(lease.attrs.public_ip),
                                              "backend": lease.attrs.backend_type,
                                              "vtep_mac": lease.attrs.vtep_mac or "-"})
        if item.name == self.node and self.own is not None and lease != self.published:
            # Maybe only an event from before our patch: acquire() compares with the Node as it is
            # now and patches (and says so) only when something really differs.
            self.need_reacquire = True
        return lease != before

    def close(self) -> None:
        self.nodes.stop(timeout=0)
        self.api.close()
