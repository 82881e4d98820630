"""`knet-controllers`: the lab's kube-controller-manager + kube-scheduler in one process.

    knet-controllers --kubeconfig controllers.kubeconfig [--lb-pool 192.168.33.200-192.168.33.250]
                     [--metrics 127.0.0.1:10257] [--controllers scheduler,replicaset,...]
                     [--allocate-node-cidrs --cluster-cidr 10.244.0.0/16 [--node-cidr-mask-size 24]]

Each controller is a worker thread fed by shared informers (one watch per kind for the process);
they talk to the API server only through the `kubernetes` client (knet.kube), as they would to a
real cluster's.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from kubernetes.client import ApiClient

from knet import logs, metrics
from knet.kube import InformerFactory, add_arguments, api_client_from_args
from knet.kube.indexes import SERVICE, STANDARD
from knet.kube.models import (
    DaemonSet,
    Deployment,
    Endpoints,
    EndpointSlice,
    Node,
    Pod,
    ReplicaSet,
    ReplicationController,
    Service,
    StatefulSet,
)
from knet.kube.recorder import EventRecorder
from lab.controllers.cidrset import RangeAllocator
from lab.controllers.daemonset import DaemonSetController
from lab.controllers.deployment import DeploymentController
from lab.controllers.endpoints import EndpointSliceController
from lab.controllers.gc import GarbageCollector
from lab.controllers.indexes import OWNED_INDEXES, POD_INDEXES, SERVICE_INDEXES
from lab.controllers.loadbalancer import DEFAULT_POOL, LoadBalancerController, Pool
from lab.controllers.nodeipam import CidrSetMetrics, NodeIpamController
from lab.controllers.replicas import ReplicaController
from lab.controllers.scheduler import Scheduler
from lab.controllers.statefulset import StatefulSetController
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers")
ALL = ("scheduler", "replicaset", "deployment", "statefulset", "daemonset", "endpointslice", "loadbalancer",
       "garbagecollector", "nodeipam")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet-controllers", description="the knet lab's controllers and scheduler")
    add_arguments(p)
    p.add_argument("--lb-pool", default=DEFAULT_POOL, help="LoadBalancer addresses: A-B ranges or CIDRs, "
                                                          f"comma-separated (default {DEFAULT_POOL})")
    p.add_argument("--controllers", default=",".join(ALL), help=f"which to run (default all: {','.join(ALL)})")
    p.add_argument("--metrics", default="", metavar="ADDR:PORT", help="serve /metrics and /healthz here")
    # kube-controller-manager's node IPAM flags (the range allocator).
    p.add_argument("--allocate-node-cidrs", action="store_true",
                   help="give every Node a spec.podCIDR from --cluster-cidr (the nodeipam controller)")
    p.add_argument("--cluster-cidr", default="", help="the pods' range, cut into per-node blocks")
    p.add_argument("--node-cidr-mask-size", type=int, default=24, help="prefix length of a node's block (default 24)")
    p.add_argument("--service-cluster-ip-range", default="",
                   help="no node block is handed out where it overlaps this range")
    p.add_argument("--log-level", default="info")
    return p


def build(factory: InformerFactory, api: ApiClient, pool: Pool, which: set[str],
          ipam: RangeAllocator | None = None) -> list[Controller]:
    """The controllers named in `which`, over informers from `factory` with the indexes they
    look objects up by (lab.controllers.indexes); nodeipam only with an allocator."""
    pods = factory.informer(Pod, indexers=POD_INDEXES)
    nodes = factory.informer(Node)
    services = factory.informer(Service, indexers=SERVICE_INDEXES)
    rses = factory.informer(ReplicaSet, indexers=OWNED_INDEXES)
    rcs = factory.informer(ReplicationController, indexers=OWNED_INDEXES)
    deployments = factory.informer(Deployment, indexers=OWNED_INDEXES)
    sets = factory.informer(StatefulSet, indexers=OWNED_INDEXES)
    daemonsets = factory.informer(DaemonSet, indexers=OWNED_INDEXES)
    out: list[Controller] = []
    if "scheduler" in which:
        out.append(Scheduler(api, pods, nodes))
    if "replicaset" in which:
        out.append(ReplicaController(api, pods, rses, rcs))
    if "deployment" in which:
        out.append(DeploymentController(api, pods, rses, deployments))
    if "statefulset" in which:
        out.append(StatefulSetController(api, pods, sets))
    if "daemonset" in which:
        out.append(DaemonSetController(api, pods, nodes, daemonsets))
    if "endpointslice" in which:
        out.append(EndpointSliceController(api, pods, services, factory.informer(EndpointSlice, indexers={
            SERVICE: STANDARD[SERVICE]}), factory.informer(Endpoints)))
    if "loadbalancer" in which:
        out.append(LoadBalancerController(api, services, pool))
    if "garbagecollector" in which:
        out.append(GarbageCollector(api, {"Pod": pods, "ReplicaSet": rses},
                                    {"ReplicaSet": rses, "ReplicationController": rcs, "Deployment": deployments,
                                     "StatefulSet": sets, "DaemonSet": daemonsets}))
    if "nodeipam" in which and ipam is not None:
        out.append(NodeIpamController(api, nodes, ipam))
    return out


def node_ipam(args: argparse.Namespace) -> RangeAllocator | None:
    """The range allocator the flags ask for (None without --allocate-node-cidrs); ValueError
    with the reason for flags kube-controller-manager would refuse too."""
    if not args.allocate_node_cidrs:
        return None
    if not args.cluster_cidr:
        raise ValueError("--allocate-node-cidrs needs --cluster-cidr")
    return RangeAllocator(args.cluster_cidr, args.node_cidr_mask_size, args.service_cluster_ip_range or None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("controllers", args.log_level)
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    which = {c.strip() for c in args.controllers.split(",") if c.strip()}
    unknown = which - set(ALL)
    if unknown:
        print(f"knet-controllers: unknown controllers {sorted(unknown)} (known: {', '.join(ALL)})", file=sys.stderr)
        return 2
    try:
        pool = Pool(args.lb_pool)
    except ValueError as e:
        print(f"knet-controllers: --lb-pool: {e}", file=sys.stderr)
        return 2
    try:
        ipam = node_ipam(args)
    except ValueError as e:
        print(f"knet-controllers: node IPAM: {e}", file=sys.stderr)
        return 2
    api = api_client_from_args(args)
    factory = InformerFactory(api)
    controllers = build(factory, api, pool, which, ipam)
    recorder = EventRecorder(api, "knet-controllers")  # each controller reports as its own source
    for c in controllers:
        c.recorder = recorder
    reg = metrics.Registry()
    syncs = reg.counter("knet_controller_syncs_total", "syncs per controller", ["controller"])
    errors = reg.counter("knet_controller_sync_errors_total", "failed syncs per controller", ["controller"])
    depth = reg.gauge("knet_controller_queue_depth", "keys waiting per controller", ["controller"])
    if ipam is not None and "nodeipam" in which:
        reg.register(CidrSetMetrics(ipam))
    if args.metrics:
        def health() -> tuple[bool, str]:
            for c in controllers:
                syncs.values[(c.name,)] = c.syncs
                errors.values[(c.name,)] = c.errors
                depth.set(len(c.queue), c.name)
            synced = all(i.synced.is_set() for i in factory.informers)
            return synced, "ok" if synced else "informers not synced"
        metrics.serve(reg, args.metrics, health)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    factory.start()
    log.info("waiting for the informers to list (%s)", ", ".join(i.name for i in factory.informers))
    while not factory.wait_synced(1.0):
        if stop.is_set():
            factory.stop()
            return 0
    # Only now: a controller acting on a partial view would create pods that already exist.
    for c in controllers:
        c.start()
        c.queue.add_all(c.all_keys())
    log.info("controllers running: %s; LoadBalancer pool %s (%d addresses)", ", ".join(c.name for c in controllers),
             args.lb_pool, len(pool))
    stop.wait()
    log.info("stopping")
    for c in controllers:
        c.stop()
    recorder.stop(2.0)
    factory.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
