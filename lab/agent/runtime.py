"""The node agent's runtime side: pod sandboxes through the lab's runtime code (`lab.net.pods`: the
pause namespace and the node's CNI conflist run plugin by plugin as containerd would), per-pod
state files for adoption after a restart, the pod's resolv.conf/hosts, and lab.json records (so
`knet lab exec <ns>/<pod>` and `knet lab status` see the agent's pods too)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from knet import cgroups
from knet.kube import Informer, client
from knet.kube.models import Pod, Service
from knet.kube.recorder import EventRecorder
from lab.agent import podenv
from lab.net import cniexec, pods, state, topology

log = logging.getLogger("lab.agent")


@dataclass
class Runtime:
    api: ApiClient
    prefix: str                     # the lab's name: pod namespaces are <prefix>-pod-<ns>-<name>
    node_name: str
    node_info: dict[str, Any]       # {"netns": ..., "conflist": ...} (lab.json's node entry)
    state_dir: str                  # per-pod state files and container logs
    node_ip: str | None = None
    service_cidr: str = topology.SERVICE_CIDR
    cluster_domain: str = podenv.CLUSTER_DOMAIN
    lab_root: str | None = None     # set: record pods in the lab's lab.json
    service_informer: Informer[Service] | None = None
    etc_netns: str = "/etc/netns"
    cgroup: str | None = None       # the node's pod cgroup: every container process runs below it
    recorder: EventRecorder | None = None  # the agent's events (source kubelet, host = the node)
    # A tokens file (--token-auth-file format): projected ServiceAccount tokens come from it.
    sa_tokens: str | None = None
    node_root: str = ""             # this node's "/" for hostPath volumes (lab.agent.volumes)
    _dns_default: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self._dns_default = podenv.dns_service_ip(self.service_cidr)
        self.node_root = self.node_root or os.path.join(self.state_dir, "hostroot")
        os.makedirs(os.path.join(self.state_dir, "pods"), exist_ok=True)
        os.makedirs(os.path.join(self.state_dir, "logs"), exist_ok=True)

    # --- naming, files ---------------------------------------------------------------------------

    def pod_netns(self, namespace: str, name: str) -> str:
        return topology.pod_netns(self.prefix, namespace, name)

    def state_path(self, namespace: str, name: str) -> str:
        return os.path.join(self.state_dir, "pods", f"{namespace}_{name}.json")

    def pod_log_dir(self, namespace: str, name: str, uid: str) -> str:
        """The kubelet's /var/log/pods/<ns>_<pod>_<uid> (one directory per container inside)."""
        return os.path.join(self.state_dir, "logs", f"{namespace}_{name}_{uid}")

    def container_log(self, namespace: str, name: str, uid: str, container: str, instance: int) -> str:
        """The log of one container instance: <pod log dir>/<container>/<restart count>.log."""
        return os.path.join(self.pod_log_dir(namespace, name, uid), container, f"{instance}.log")

    def pod_volume_dir(self, uid: str) -> str:
        """The kubelet's /var/lib/kubelet/pods/<uid>/volumes: one directory per volume."""
        return os.path.join(self.state_dir, "volumes", uid)

    def lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap or Secret for a volume or the environment, read from the API server when a
        container starts (as the kubelet reads them)."""
        return client.get(self.api, kind, name, namespace) if name else None

    def token(self, namespace: str, service_account: str, audience: str, expiration: int) -> str | None:
        """A bearer token of the ServiceAccount, as the kubelet gets one: from the API server's
        TokenRequest API (kube-apiserver, `--control-plane real`); where that is not served
        (knet-apiserver: 404), the lab's long-lived token of that ServiceAccount from `sa_tokens`
        (None without one)."""
        spec: dict[str, Any] = {"expirationSeconds": max(expiration, 600)}  # kube-apiserver's minimum
        if audience:
            spec["audiences"] = [audience]
        try:
            if self.api is None:  # no API server to ask (a runtime made for the pure parts)
                raise ApiException(status=404)
            answer = CoreV1Api(self.api).create_namespaced_service_account_token(
                service_account, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                             "spec": spec}, _request_timeout=client.REQUEST_TIMEOUT)
            if answer.status and answer.status.token:
                return str(answer.status.token)
        except ApiException as e:
            if e.status != 404:
                log.warning("TokenRequest for %s/%s: %s %s", namespace, service_account, e.status, e.reason)
                return None
        if not self.sa_tokens:
            return None
        user = f"system:serviceaccount:{namespace}:{service_account}"
        with contextlib.suppress(OSError), open(self.sa_tokens, newline="") as f:
            for row in csv.reader(line for line in f if not line.lstrip().startswith("#")):
                if len(row) >= 2 and row[1] == user:
                    return row[0]
        return None

    def pod_cgroup(self, uid: str) -> str | None:
        """The pod's cgroup under the node's pod cgroup (the kubelet's kubepods/pod<uid>): kproxy's
        eBPF hooks on the node cgroup apply to it as to every descendant."""
        return os.path.join(self.cgroup, f"pod{uid}") if self.cgroup and uid else None

    def container_cgroup(self, uid: str, container: str) -> str | None:
        pod = self.pod_cgroup(uid)
        return os.path.join(pod, container) if pod else None

    def saved_pods(self) -> dict[str, dict[str, Any]]:
        """ns/name -> the state file of every pod this node's agent has made."""
        out = {}
        d = os.path.join(self.state_dir, "pods")
        for fname in sorted(os.listdir(d)):
            if not fname.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, fname)) as f:
                    data = json.load(f)
                out[f"{data['namespace']}/{data['name']}"] = data
            except (OSError, ValueError, KeyError):
                log.warning("unreadable pod state %s: ignored", fname)
        return out

    def save_pod_state(self, namespace: str, name: str, data: dict[str, Any]) -> None:
        path = self.state_path(namespace, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    def event(self, pod: Pod, type_: str, reason: str, message: str, container: str = "") -> None:
        """An event about the pod (or one of its containers), as the kubelet records them."""
        if self.recorder is not None:
            self.recorder.event(pod, type_, reason, message, kind="Pod", api_version="v1",
                                field_path=f"spec.containers{{{container}}}" if container else "")

    def services(self) -> list[Service]:
        return self.service_informer.list() if self.service_informer is not None else []

    def dns_ip(self) -> str:
        """kube-dns's ClusterIP when that Service exists, else the tenth service address (where
        the kubelet's --cluster-dns points; kdns takes it when it comes)."""
        for svc in self.services():
            if svc.namespace == "kube-system" and svc.name == "kube-dns" and svc.cluster_ips:
                return svc.cluster_ips[0]
        return self._dns_default

    def write_dns_files(self, pod: Pod, podns: str, pod_ip: str | None) -> None:
        """/etc/netns/<podns>/{resolv.conf,hosts}: what `ip netns exec <podns>` mounts over /etc."""
        d = os.path.join(self.etc_netns, podns)
        os.makedirs(d, exist_ok=True)
        resolv = podenv.resolv_conf(pod, self.dns_ip(), self.cluster_domain)
        if resolv is not None:
            with open(os.path.join(d, "resolv.conf"), "w") as f:
                f.write(resolv)
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write(podenv.hosts_file(pod, pod_ip, self.cluster_domain))

    # --- sandboxes -------------------------------------------------------------------------------

    def sandbox_add(self, namespace: str, name: str, ports: list[dict], uid: str) -> dict[str, Any]:
        record = pods.sandbox_add(self.prefix, self.node_name, self.node_info, name, namespace, ports,
                                  exec_netns=None)  # we run in the node's namespace already
        record.update(managed_by="knet-node-agent", uid=uid)
        if self.lab_root is not None:
            with contextlib.suppress(OSError, LookupError), state.update(self.prefix, self.lab_root) as d:
                d["pods"][pods.pod_key(namespace, name)] = record
        return record

    def sandbox_del(self, namespace: str, name: str, record: dict[str, Any] | None) -> cniexec.CniExecError | None:
        return pods.sandbox_del(self.prefix, self.node_info, name, namespace, record, exec_netns=None)

    def forget_pod(self, namespace: str, name: str, uid: str = "") -> None:
        """The pod is gone: its state file, logs, cgroup (and any process left in it), lab record."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_path(namespace, name))
        if uid:
            shutil.rmtree(self.pod_log_dir(namespace, name, uid), ignore_errors=True)
            shutil.rmtree(self.pod_volume_dir(uid), ignore_errors=True)
            pod_cgroup = self.pod_cgroup(uid)
            if pod_cgroup:
                cgroups.remove(pod_cgroup)
        if self.lab_root is not None:
            with contextlib.suppress(OSError, LookupError), state.update(self.prefix, self.lab_root) as d:
                rec = d["pods"].get(pods.pod_key(namespace, name))
                if rec is not None and rec.get("managed_by") == "knet-node-agent":
                    del d["pods"][pods.pod_key(namespace, name)]
