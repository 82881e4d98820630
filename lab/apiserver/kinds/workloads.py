"""ReplicaSets, ReplicationControllers, Deployments, StatefulSets, DaemonSets: replicas (not a
DaemonSet's), a selector that must match the pod template, the template validated as a pod spec,
the scale subresource's selector, and `kubectl get`'s columns for each."""

from __future__ import annotations

from typing import Any, ClassVar

from knet.kube import selectors
from lab.apiserver import tables
from lab.apiserver.kinds.pods import default_pod_spec, validate_pod_spec
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import AGE, NAME, column, get
from lab.apiserver.validation import Causes

_TAIL = [AGE, column("Containers", priority=1), column("Images", priority=1), column("Selector", priority=1)]


def _containers(obj: dict, field: str) -> str:
    return ",".join(c.get(field, "") for c in get(obj, "spec", "template", "spec", "containers", default=[])) or \
        tables.NONE


class Workload(Strategy):
    """What the four share. Subclasses: how the selector is written (`map_selector`) and what
    else they default or check."""

    status_from_controllers = True
    generation = True
    map_selector: ClassVar[bool] = False  # spec.selector is a label map (RC), not a LabelSelector
    empty_selector_message: ClassVar[str] = "empty selector is not valid"
    # status.replicas is not omitempty in Kubernetes: clients require it (Deployments leave it out).
    status_replicas: ClassVar[bool] = True
    # spec.replicas exists (a DaemonSet has one pod per node instead).
    has_replicas: ClassVar[bool] = True
    columns = [NAME, column("Desired", "integer"), column("Current", "integer"), column("Ready", "integer"), *_TAIL]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.setdefault("spec", {})
        if self.has_replicas:
            spec.setdefault("replicas", 1)
        template = spec.get("template")
        if isinstance(template, dict):
            default_pod_spec(template.setdefault("spec", {}))
        status = obj.setdefault("status", {})
        if self.status_replicas:
            status.setdefault("replicas", 0)

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            c.required("spec")
            return
        replicas = spec.get("replicas")
        if self.has_replicas and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
            c.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
        template = spec.get("template")
        tlabels = get(template, "metadata", "labels", default={})
        self._validate_selector(c, spec.get("selector"), template, tlabels, old)
        if template is None:
            c.required("spec.template")
        else:
            c.labels("spec.template.metadata.labels", tlabels)
            validate_pod_spec(c, get(template, "spec"), "spec.template.spec")
            policy = get(template, "spec", "restartPolicy")
            if policy not in (None, "Always"):
                c.unsupported("spec.template.spec.restartPolicy", policy, ("Always",))

    def _validate_selector(self, c: Causes, sel: Any, template: Any, tlabels: Any, old: dict[str, Any] | None,
                           ) -> None:
        if c.label_selector("spec.selector", sel, required=True):
            if not sel.get("matchLabels") and not sel.get("matchExpressions"):
                c.invalid("spec.selector", sel, self.empty_selector_message)
            else:
                try:
                    ok = selectors.Selector.from_object(sel).matches(tlabels)
                except selectors.SelectorError:
                    ok = True  # reported above
                if not ok:
                    c.invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`")
        if old is not None and sel != get(old, "spec", "selector"):
            c.immutable("spec.selector", sel)

    def selector_text(self, obj: dict[str, Any]) -> str:
        return tables.label_selector(get(obj, "spec", "selector"))

    def scale_selector(self, obj: dict[str, Any]) -> str:
        try:
            return str(selectors.Selector.from_object(get(obj, "spec", "selector")))
        except selectors.SelectorError:
            return ""

    def tail(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.age(obj), _containers(obj, "name"), _containers(obj, "image"), self.selector_text(obj)]

    def row(self, obj: dict[str, Any]) -> list[Any]:
        status = obj.get("status") or {}
        return [tables.name(obj), get(obj, "spec", "replicas", default=0), status.get("replicas", 0),
                status.get("readyReplicas", 0), *self.tail(obj)]


class ReplicaSets(Workload):
    pass


class ReplicationControllers(Workload):
    map_selector = True

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        super().default(obj, old)
        # An RC without a selector selects its template's labels (and is labelled with them).
        spec = obj["spec"]
        tlabels = get(spec.get("template"), "metadata", "labels")
        if tlabels and not spec.get("selector"):
            spec["selector"] = dict(tlabels)
        if tlabels and not get(obj, "metadata", "labels"):
            obj.setdefault("metadata", {})["labels"] = dict(tlabels)

    def _validate_selector(self, c: Causes, sel: Any, template: Any, tlabels: Any, old: dict[str, Any] | None,
                           ) -> None:
        c.labels("spec.selector", sel)
        if not sel:
            c.required("spec.selector")
        elif template is not None and not selectors.map_selector_matches({k: str(v) for k, v in sel.items()},
                                                                          tlabels):
            c.invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`")

    def selector_text(self, obj: dict[str, Any]) -> str:
        return tables.map_selector(get(obj, "spec", "selector"))

    def scale_selector(self, obj: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted((get(obj, "spec", "selector") or {}).items()))


class Deployments(Workload):
    empty_selector_message = "empty selector is invalid for deployment"
    status_replicas = False
    columns = [NAME, column("Ready"), column("Up-to-date", "integer"), column("Available", "integer"), *_TAIL]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        super().default(obj, old)
        spec = obj["spec"]
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        super().validate(c, obj, old, cfg)
        strategy = get(obj, "spec", "strategy", default={})
        if c.one_of("spec.strategy.type", strategy.get("type"), ("RollingUpdate", "Recreate")) and \
                strategy.get("type") == "Recreate" and strategy.get("rollingUpdate") is not None:
            c.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")

    def row(self, obj: dict[str, Any]) -> list[Any]:
        status = obj.get("status") or {}
        return [tables.name(obj), f"{status.get('readyReplicas', 0)}/{get(obj, 'spec', 'replicas', default=0)}",
                status.get("updatedReplicas", 0), status.get("availableReplicas", 0), *self.tail(obj)]


class StatefulSets(Workload):
    columns = [NAME, column("Ready"), AGE, column("Containers", priority=1), column("Images", priority=1)]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        super().default(obj, old)
        spec = obj["spec"]
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        spec.setdefault("revisionHistoryLimit", 10)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        ready = f"{get(obj, 'status', 'readyReplicas', default=0)}/{get(obj, 'spec', 'replicas', default=0)}"
        return [tables.name(obj), ready, *self.tail(obj)[:3]]


class DaemonSets(Workload):
    """One pod per node: no replicas; updateStrategy RollingUpdate (maxUnavailable 1, maxSurge 0)
    or OnDelete, as apps/v1's defaults and validation have it."""

    has_replicas = False
    status_replicas = False
    empty_selector_message = "empty selector is invalid for daemonset"
    columns = [NAME, column("Desired", "integer"), column("Current", "integer"), column("Ready", "integer"),
               column("Up-to-date", "integer"), column("Available", "integer"), column("Node Selector"), *_TAIL]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        super().default(obj, old)
        spec = obj["spec"]
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                ru = strategy.setdefault("rollingUpdate", {})
                if isinstance(ru, dict):
                    ru.setdefault("maxUnavailable", 1)
                    ru.setdefault("maxSurge", 0)
        # These four are not omitempty in DaemonSetStatus: clients require them.
        status = obj.setdefault("status", {})
        for name in ("currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled", "numberReady"):
            status.setdefault(name, 0)

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        super().validate(c, obj, old, cfg)
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        mrs = spec.get("minReadySeconds", 0)
        if not isinstance(mrs, int) or isinstance(mrs, bool) or mrs < 0:
            c.invalid("spec.minReadySeconds", mrs, "must be greater than or equal to 0")
        strategy = spec.get("updateStrategy") or {}
        if not c.one_of("spec.updateStrategy.type", strategy.get("type"), ("RollingUpdate", "OnDelete")):
            return
        ru = strategy.get("rollingUpdate")
        if strategy["type"] == "OnDelete" or not isinstance(ru, dict):
            return
        unavailable, surge = ru.get("maxUnavailable"), ru.get("maxSurge")
        for field_name, value in (("maxUnavailable", unavailable), ("maxSurge", surge)):
            if not _int_or_percent(value):
                c.invalid(f"spec.updateStrategy.rollingUpdate.{field_name}", value,
                          "must be an integer or a percentage (e.g. '5%')")
                return
        if _is_zero(unavailable) and _is_zero(surge):
            c.invalid("spec.updateStrategy.rollingUpdate.maxUnavailable", unavailable,
                      "may not be 0 when `maxSurge` is 0")

    def row(self, obj: dict[str, Any]) -> list[Any]:
        status = obj.get("status") or {}
        node_selector = ",".join(f"{k}={v}" for k, v in
                                 sorted((get(obj, "spec", "template", "spec", "nodeSelector") or {}).items()))
        return [tables.name(obj), status.get("desiredNumberScheduled", 0), status.get("currentNumberScheduled", 0),
                status.get("numberReady", 0), status.get("updatedNumberScheduled", 0),
                status.get("numberAvailable", 0), node_selector or tables.NONE, *self.tail(obj)]


def _int_or_percent(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.endswith("%") and value[:-1].isdigit()


def _is_zero(value: Any) -> bool:
    return value == 0 or value == "0%"
