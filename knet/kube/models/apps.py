"""apps/v1 Deployment, ReplicaSet, StatefulSet, DaemonSet and core/v1 ReplicationController."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from knet.kube.models.core import PodTemplateSpec
from knet.kube.models.meta import Condition, IntOrString, KubeModel, KubeObject, LabelSelector


class RollingUpdateDeployment(KubeModel):
    # int or "25%"; both default to 25% on the server.
    max_unavailable: IntOrString | None = None
    max_surge: IntOrString | None = None


class DeploymentStrategy(KubeModel):
    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    rolling_update: RollingUpdateDeployment | None = None


class ReplicaStatus(KubeModel):
    """The status fields Deployments, ReplicaSets and ReplicationControllers share."""

    replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    fully_labeled_replicas: int = 0
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)


class DeploymentStatus(ReplicaStatus):
    updated_replicas: int = 0
    unavailable_replicas: int = 0
    collision_count: int | None = None


class DeploymentSpec(KubeModel):
    replicas: int = Field(default=1, ge=0)
    selector: LabelSelector
    template: PodTemplateSpec
    strategy: DeploymentStrategy = Field(default_factory=DeploymentStrategy)
    min_ready_seconds: int = Field(default=0, ge=0)
    revision_history_limit: int | None = None
    progress_deadline_seconds: int | None = None
    paused: bool = False


class Deployment(KubeObject):
    spec: DeploymentSpec
    status: DeploymentStatus = Field(default_factory=DeploymentStatus)


class ReplicaSetSpec(KubeModel):
    replicas: int = Field(default=1, ge=0)
    selector: LabelSelector
    template: PodTemplateSpec = Field(default_factory=PodTemplateSpec)
    min_ready_seconds: int = Field(default=0, ge=0)


class ReplicaSet(KubeObject):
    spec: ReplicaSetSpec
    status: ReplicaStatus = Field(default_factory=ReplicaStatus)


class StatefulSetUpdateStrategy(KubeModel):
    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"


class StatefulSetSpec(KubeModel):
    replicas: int = Field(default=1, ge=0)
    selector: LabelSelector
    template: PodTemplateSpec = Field(default_factory=PodTemplateSpec)
    service_name: str = ""
    pod_management_policy: Literal["OrderedReady", "Parallel"] = "OrderedReady"
    update_strategy: StatefulSetUpdateStrategy = Field(default_factory=StatefulSetUpdateStrategy)
    min_ready_seconds: int = Field(default=0, ge=0)


class StatefulSetStatus(KubeModel):
    replicas: int = 0
    ready_replicas: int = 0
    current_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    current_revision: str | None = None
    update_revision: str | None = None
    observed_generation: int | None = None


class StatefulSet(KubeObject):
    spec: StatefulSetSpec
    status: StatefulSetStatus = Field(default_factory=StatefulSetStatus)


class RollingUpdateDaemonSet(KubeModel):
    max_unavailable: IntOrString | None = None  # the server defaults it to 1
    max_surge: IntOrString | None = None        # and this to 0


class DaemonSetUpdateStrategy(KubeModel):
    type: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    rolling_update: RollingUpdateDaemonSet | None = None


class DaemonSetSpec(KubeModel):
    selector: LabelSelector
    template: PodTemplateSpec = Field(default_factory=PodTemplateSpec)
    update_strategy: DaemonSetUpdateStrategy = Field(default_factory=DaemonSetUpdateStrategy)
    min_ready_seconds: int = Field(default=0, ge=0)
    revision_history_limit: int | None = None


class DaemonSetStatus(KubeModel):
    current_number_scheduled: int = 0
    number_misscheduled: int = 0
    desired_number_scheduled: int = 0
    number_ready: int = 0
    updated_number_scheduled: int = 0
    number_available: int = 0
    number_unavailable: int = 0
    observed_generation: int | None = None


class DaemonSet(KubeObject):
    spec: DaemonSetSpec
    status: DaemonSetStatus = Field(default_factory=DaemonSetStatus)


class ReplicationControllerSpec(KubeModel):
    replicas: int = Field(default=1, ge=0)
    # A map selector (see knet.kube.selectors.map_selector_matches); the API server defaults it
    # to the template's labels, so None only appears in objects not yet written.
    selector: dict[str, str] | None = None
    template: PodTemplateSpec | None = None
    min_ready_seconds: int = Field(default=0, ge=0)

    @property
    def effective_selector(self) -> dict[str, str]:
        if self.selector:
            return self.selector
        return dict(self.template.metadata.labels) if self.template else {}


class ReplicationController(KubeObject):
    spec: ReplicationControllerSpec = Field(default_factory=ReplicationControllerSpec)
    status: ReplicaStatus = Field(default_factory=ReplicaStatus)
