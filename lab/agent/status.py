"""A pod's status from what the agent knows of its sandbox and containers (pure)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from knet.kube.models import Condition, Pod


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    name: str
    image: str
    running: bool = False
    pid: int | None = None
    started_at: str | None = None
    restart_count: int = 0
    ready: bool = False            # readiness (true when running and no readiness probe)
    started: bool = False          # startup probe passed (or none)
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    terminated: dict[str, Any] | None = None       # the current state, when it is not restarted
    last_terminated: dict[str, Any] | None = None  # lastState.terminated
    ever_started: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_status(self) -> dict[str, Any]:
        if self.running:
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            state = {"waiting": {"reason": self.waiting_reason, **({"message": self.waiting_message}
                                                                    if self.waiting_message else {})}}
        out: dict[str, Any] = {
            "name": self.name, "image": self.image, "imageID": f"knet-lab://{self.image}",
            "ready": self.ready and self.running, "started": self.running and self.started,
            "restartCount": self.restart_count, "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.pid:
            out["containerID"] = f"knet://{self.pid}"
        return out


def phase(restart_policy: str, containers: list[ContainerState], sandbox_ready: bool) -> str:
    if not sandbox_ready or not containers or any(not c.ever_started for c in containers):
        return "Pending"
    if any(c.running for c in containers) or restart_policy == "Always":
        return "Running"
    # Nothing runs and nothing will be restarted: the pod is done.
    finished = [c.terminated for c in containers if c.terminated is not None]
    if len(finished) < len(containers):
        return "Running"  # OnFailure: a failed container is about to be restarted
    return "Succeeded" if all(t.get("exitCode") == 0 for t in finished) else "Failed"


def _cond(type_: str, ok: bool, old: list[Condition], reason: str = "") -> dict[str, Any]:
    value = "True" if ok else "False"
    prev = next((c for c in old if c.type == type_), None)
    since = now()
    if prev is not None and prev.status == value and prev.last_transition_time is not None:
        since = prev.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    out: dict[str, Any] = {"type": type_, "status": value, "lastProbeTime": None, "lastTransitionTime": since}
    if reason and not ok:
        out["reason"] = reason
    return out


def init_done(inits: list[ContainerState]) -> bool:
    return all(c.terminated is not None and c.terminated.get("exitCode") == 0 for c in inits)


def pod_status(pod: Pod, containers: list[ContainerState], sandbox_ready: bool, pod_ips: list[str],
               host_ip: str | None, start_time: str | None, inits: list[ContainerState] | None = None,
               ) -> dict[str, Any]:
    old = pod.status.conditions
    inits = inits or []
    initialized = init_done(inits)
    p = phase(pod.spec.restart_policy, containers, sandbox_ready)
    if not initialized:
        failed = any(c.terminated is not None and c.terminated.get("exitCode") != 0 for c in inits)
        p = "Failed" if failed and pod.spec.restart_policy == "Never" else "Pending"
    all_ready = bool(containers) and all(c.ready and c.running for c in containers)
    not_ready = [c.name for c in containers if not (c.ready and c.running)]
    reason = "ContainersNotReady" if p in ("Pending", "Running") else "PodCompleted"
    status: dict[str, Any] = {
        "phase": p,
        "conditions": [
            _cond("Initialized", initialized, old, "ContainersNotInitialized"),
            _cond("Ready", all_ready, old, reason),
            _cond("ContainersReady", all_ready, old, reason),
            _cond("PodScheduled", True, old),
        ],
        "containerStatuses": [c.to_status() for c in containers],
        **({"initContainerStatuses": [c.to_status() for c in inits]} if inits else {}),
        "qosClass": pod.status.model_extra.get("qosClass", "BestEffort") if pod.status.model_extra else "BestEffort",
    }
    if not initialized:
        waiting = [c.name for c in inits if not (c.terminated and c.terminated.get("exitCode") == 0)]
        status["conditions"][0]["message"] = f"containers with incomplete status: [{' '.join(waiting)}]"
        for c in status["containerStatuses"]:
            c["state"] = {"waiting": {"reason": "PodInitializing"}}
    if not_ready and p in ("Pending", "Running"):
        msg = f"containers with unready status: [{' '.join(not_ready)}]"
        for c in status["conditions"]:
            if c["type"] in ("Ready", "ContainersReady"):
                c["message"] = msg
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    if start_time:
        status["startTime"] = start_time
    return status


def comparable(status: dict[str, Any]) -> Any:
    """The status without timestamps that change without meaning anything (for "changed?")."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("lastTransitionTime", "lastProbeTime")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    return strip(status)
