"""Base model and the metadata types shared by every Kubernetes object.

Every model is tolerant of fields it does not declare (they are kept, unvalidated, in
`model_extra` and written back by `to_dict()`, so a controller that reads, changes and writes an
object does not drop fields it never knew about) and strict about the ones it declares: a port
that is not a number in range, an address that is not an address, an unknown enum value makes the
whole object malformed (see `knet.kube.models.parse`), rather than being programmed half-right.

Python attribute names are snake_case; the JSON names (camelCase, with the API's acronyms:
podIP, clusterIPs, podCIDR ...) are aliases. Both are accepted on input.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from pydantic.alias_generators import to_camel

Protocol = Literal["TCP", "UDP", "SCTP"]


class KubeModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # The API (and kubectl, and JSON patches) send `null` for "unset"; Go decodes it to the zero
        # value. Dropping it lets every field fall back to its default instead of failing on e.g.
        # `"labels": null`.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def to_dict(self) -> dict[str, Any]:
        """The object as the API's JSON (camelCase, unset fields omitted, unknown fields kept)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- validated scalar types --------------------------------------------------------------------

def _ip(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError -> a validation error naming the field
    return value


def _cidr(value: str) -> str:
    ipaddress.ip_network(value, strict=False)
    return value


def _port_or_name(value: int | str) -> int | str:
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} out of range 1-65535")
    elif not value or len(value) > 15:
        # An IANA_SVC_NAME: 1-15 characters. Numeric strings are names too for the API.
        raise ValueError(f"invalid port name {value!r}")
    return value


IP = Annotated[str, AfterValidator(_ip)]
CIDR = Annotated[str, AfterValidator(_cidr)]
Port = Annotated[int, Field(ge=1, le=65535)]
# IntOrString must not be coerced: 8080 and "8080" mean different things (number vs port name).
IntOrString = StrictInt | StrictStr
PortOrName = Annotated[StrictInt | StrictStr, AfterValidator(_port_or_name)]


# --- selectors, references, metadata -----------------------------------------------------------

class LabelSelectorRequirement(KubeModel):
    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class LabelSelector(KubeModel):
    """metav1.LabelSelector. Matching lives in `knet.kube.selectors` (`label_selector_matches`,
    `Selector.from_label_selector`), which imports this module, not the other way round."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


class OwnerReference(KubeModel):
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectReference(KubeModel):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    api_version: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ObjectMeta(KubeModel):
    name: str = ""
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: list[OwnerReference] = Field(default_factory=list)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    deletion_grace_period_seconds: int | None = None

    def controller_ref(self) -> OwnerReference | None:
        """The owner with `controller: true` (the ReplicaSet of a pod, ...)."""
        return next((o for o in self.owner_references if o.controller), None)


class Condition(KubeModel):
    """The common shape of status conditions (pods, nodes, deployments, ...)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None
    last_probe_time: datetime | None = None
    last_heartbeat_time: datetime | None = None
    last_update_time: datetime | None = None
    observed_generation: int | None = None


class PortStatus(KubeModel):
    port: int
    protocol: Protocol = "TCP"
    error: str | None = None


class LoadBalancerIngress(KubeModel):
    ip: IP | None = None
    hostname: str | None = None
    ip_mode: str | None = None
    ports: list[PortStatus] = Field(default_factory=list)


class LoadBalancerStatus(KubeModel):
    ingress: list[LoadBalancerIngress] = Field(default_factory=list)


class KubeObject(KubeModel):
    """Fields every top-level object has."""

    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """The cache key: "namespace/name", or "name" for cluster-scoped objects (client-go's)."""
        return object_key(self.metadata.namespace, self.metadata.name)

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @property
    def is_terminating(self) -> bool:
        return self.metadata.deletion_timestamp is not None


def object_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name
