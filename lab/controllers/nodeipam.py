"""Node IPAM (kube-controller-manager `--allocate-node-cidrs`, the range allocator): every Node
gets one block of each cluster CIDR (one per family on a dual-stack cluster, primary first) as
`spec.podCIDRs`, and the first as `spec.podCIDR`, which flannel's kube
subnet manager and the CNI then use as the node's pod subnet.

The decisions are cidrset.NodeIpam's (pure); this controller feeds it Node events, keyed by
node name, and carries its actions out: a strategic-merge patch of the Node's spec (as upstream's
PatchNodeCIDRs), a `CIDRNotAvailable` event on a Node a full range leaves without podCIDR (and a
log line), log lines for adoptions and releases. Before the first allocation every podCIDR the
Nodes already have is adopted, so a restarted controller hands out nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from kubernetes.client import ApiClient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from knet.kube import Informer, client
from knet.kube.models import Node
from lab.controllers.cidrset import Action, CidrSet, NodeIpam, NodeView
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers.nodeipam")
EVENT_SOURCE = "cidrAllocator"  # upstream's event source component


def view(node: Node) -> NodeView:
    return NodeView(node.name, node.metadata.uid or "", tuple(node.pod_cidrs))


class NodeIpamController(Controller):
    name = "nodeipam"
    resync = 60.0

    def __init__(self, api: ApiClient, nodes: Informer[Node], allocator: NodeIpam) -> None:
        super().__init__()
        self.api, self.nodes, self.allocator = api, nodes, allocator
        nodes.add_handler(on_add=lambda n: self.enqueue(n.name), on_update=self._on_update,
                          on_delete=lambda n: self.enqueue(n.name))

    def _on_update(self, old: Node, new: Node) -> None:
        # A heartbeat (status only) of a Node that has its podCIDR changes nothing here.
        if not new.pod_cidrs or old.pod_cidrs != new.pod_cidrs or old.metadata.uid != new.metadata.uid:
            self.enqueue(new.name)

    def all_keys(self) -> list[str]:
        return [n.name for n in self.nodes.list()]

    def start(self) -> None:
        """Adopt what the Nodes hold before the worker allocates anything (main starts the
        controllers once the informers have listed)."""
        for action in self.allocator.adopt_existing(view(n) for n in self.nodes.list()):
            self._apply(action, None)
        for s in (f.cidrs for f in self.allocator.families):
            log.info("node IPAM: cluster CIDR %s, /%d per node, %d of %d blocks in use", s.cluster, s.mask_size,
                     s.allocated, s.max)
        super().start()

    def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        for action in self.allocator.sync(key, view(node) if node is not None else None):
            self._apply(action, node)

    def _apply(self, a: Action, node: Node | None) -> None:
        if a.kind == "assign":
            try:
                cidrs = a.cidr.split(",")
                client.patch(self.api, "Node", a.node, {"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}})
            except client.ApiException as e:
                if e.status == 404:
                    return  # gone meanwhile: its delete event releases the block
                raise  # retried with backoff; the block stays reserved for this Node
            log.info("node %s: podCIDR %s assigned", a.node, a.cidr)
        elif a.kind == "adopt":
            log.info("node %s: podCIDR %s adopted", a.node, a.cidr)
            if a.message:
                log.warning("node %s: %s", a.node, a.message)
        elif a.kind == "release":
            log.info("node %s: podCIDR %s released (%s)", a.node, a.cidr, a.message)
            self.queue.add_all(self.allocator.waiting)  # a block is free: try the waiting Nodes again
        elif a.kind == "full":
            log.warning("node %s: no podCIDR assigned: %s", a.node, a.message)
            if node is not None:
                self._event(node, "CIDRNotAvailable")
        elif a.kind == "invalid":
            log.warning("node %s: %s", a.node, a.message)

    def _event(self, node: Node, reason: str) -> None:
        """An event on the Node as upstream's RecordNodeStatusChange writes it, through the
        controllers' one recorder (asynchronous: the allocation never waits on it)."""
        self.event(node, "Normal", reason, f"Node {node.name} status is now: {reason}", kind="Node",
                   api_version="v1", component=EVENT_SOURCE)


class CidrSetMetrics:
    """kube-controller-manager's node IPAM metrics under its names (`cirdset_max_cidrs` is
    upstream's spelling), read from the allocator on every scrape."""

    def __init__(self, ipam: NodeIpam) -> None:
        self.ipam = ipam

    def collect(self) -> Iterator[Metric]:
        for s in (f.cidrs for f in self.ipam.families):
            yield from self._collect(s)

    @staticmethod
    def _collect(s: CidrSet) -> Iterator[Metric]:
        labels, key = ["clusterCIDR"], [str(s.cluster)]
        for family, value in (
            (CounterMetricFamily("node_ipam_controller_cidrset_cidrs_allocations_total",
                                 "Counter measuring total number of CIDR allocations.", labels=labels), s.allocations),
            (CounterMetricFamily("node_ipam_controller_cidrset_cidrs_releases_total",
                                 "Counter measuring total number of CIDR releases.", labels=labels), s.releases),
            (GaugeMetricFamily("node_ipam_controller_cidrset_usage_cidrs",
                               "Gauge measuring percentage of allocated CIDRs.", labels=labels), s.usage),
            (GaugeMetricFamily("node_ipam_controller_cirdset_max_cidrs",
                               "Maximum number of CIDRs that can be allocated.", labels=labels), s.max),
        ):
            family.add_metric(key, value)
            yield family
