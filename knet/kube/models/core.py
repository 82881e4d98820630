"""core/v1: Pod, Service, Endpoints, Namespace, Node, Secret, ConfigMap."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from knet.kube.models.meta import (
    CIDR,
    IP,
    Condition,
    KubeModel,
    KubeObject,
    LoadBalancerStatus,
    ObjectMeta,
    ObjectReference,
    Port,
    PortOrName,
    Protocol,
)

# --- Pod ---------------------------------------------------------------------------------------


class ContainerPort(KubeModel):
    name: str | None = None
    container_port: Port
    protocol: Protocol = "TCP"
    host_port: int | None = Field(default=None, ge=0, le=65535)
    host_ip: str | None = Field(default=None, alias="hostIP")


class EnvVar(KubeModel):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class HTTPHeader(KubeModel):
    name: str
    value: str


class HTTPGetAction(KubeModel):
    path: str = "/"
    port: PortOrName
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    http_headers: list[HTTPHeader] = Field(default_factory=list)


class TCPSocketAction(KubeModel):
    port: PortOrName
    host: str | None = None


class ExecAction(KubeModel):
    command: list[str] = Field(default_factory=list)


class Probe(KubeModel):
    # Defaults are the API server's (a probe's fields are defaulted server-side on a cluster).
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    exec: ExecAction | None = None
    grpc: dict[str, Any] | None = None
    initial_delay_seconds: int = Field(default=0, ge=0)
    period_seconds: int = Field(default=10, ge=1)
    timeout_seconds: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=1, ge=1)
    termination_grace_period_seconds: int | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [h for h in (self.http_get, self.tcp_socket, self.exec, self.grpc) if h is not None]
        if len(handlers) != 1:
            raise ValueError("a probe needs exactly one of httpGet, tcpSocket, exec, grpc")
        return self


class SleepAction(KubeModel):
    seconds: int = Field(ge=0)


class LifecycleHandler(KubeModel):
    """A preStop / postStart hook: exactly one of exec, httpGet, tcpSocket (deprecated), sleep."""
    exec: ExecAction | None = None
    http_get: HTTPGetAction | None = None
    tcp_socket: TCPSocketAction | None = None
    sleep: SleepAction | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> LifecycleHandler:
        if sum(h is not None for h in (self.exec, self.http_get, self.tcp_socket, self.sleep)) != 1:
            raise ValueError("a lifecycle handler needs exactly one of exec, httpGet, tcpSocket, sleep")
        return self


class Lifecycle(KubeModel):
    pre_stop: LifecycleHandler | None = None
    post_start: LifecycleHandler | None = None


class Container(KubeModel):
    name: str = Field(min_length=1)
    image: str = ""
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None
    lifecycle: Lifecycle | None = None
    stdin: bool = False       # the container's stdin stays open (`kubectl attach -i`, `run -i`)
    stdin_once: bool = False
    tty: bool = False         # the container runs on a terminal (`kubectl run -it`)


class PodSpec(KubeModel):
    node_name: str | None = None
    hostname: str | None = None
    subdomain: str | None = None
    host_network: bool = False
    containers: list[Container] = Field(default_factory=list)
    init_containers: list[Container] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int | None = Field(default=None, ge=0)
    dns_policy: str | None = None
    service_account_name: str | None = None
    tolerations: list[dict[str, Any]] = Field(default_factory=list)

    def named_port(self, name: str, protocol: str = "TCP") -> int | None:
        """The containerPort a Service's named targetPort refers to (first container that has it)."""
        for container in self.containers:
            for port in container.ports:
                if port.name == name and port.protocol == protocol:
                    return port.container_port
        return None


class PodIP(KubeModel):
    ip: IP


class ContainerStatus(KubeModel):
    name: str
    ready: bool = False
    restart_count: int = 0
    started: bool | None = None
    image: str | None = None
    image_id: str | None = Field(default=None, alias="imageID")
    container_id: str | None = Field(default=None, alias="containerID")
    state: dict[str, Any] = Field(default_factory=dict)
    last_state: dict[str, Any] = Field(default_factory=dict)


class PodStatus(KubeModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    pod_ip: IP | None = Field(default=None, alias="podIP")
    pod_ips: list[PodIP] = Field(default_factory=list, alias="podIPs")
    host_ip: IP | None = Field(default=None, alias="hostIP")
    host_ips: list[PodIP] = Field(default_factory=list, alias="hostIPs")
    conditions: list[Condition] = Field(default_factory=list)
    container_statuses: list[ContainerStatus] = Field(default_factory=list)
    start_time: datetime | None = None
    reason: str | None = None
    message: str | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class Pod(KubeObject):
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def is_ready(self) -> bool:
        ready = self.status.condition("Ready")
        return ready is not None and ready.status == "True"

    @property
    def ips(self) -> list[str]:
        """All pod addresses, podIPs first, podIP as the fallback (older servers set only that)."""
        ips = [p.ip for p in self.status.pod_ips]
        if self.status.pod_ip and self.status.pod_ip not in ips:
            ips.insert(0, self.status.pod_ip)
        return ips


class PodTemplateSpec(KubeModel):
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)


# --- Service -----------------------------------------------------------------------------------


def _cluster_ip(value: str) -> str:
    # "None" is a headless service; "" is "allocate one for me" in a request.
    if value not in ("", "None"):
        ipaddress.ip_address(value)
    return value


def _empty_is_cluster(value: Any) -> Any:
    # A cluster leaves externalTrafficPolicy unset ("") for ClusterIP services; it means Cluster.
    return "Cluster" if value == "" else value


ClusterIP = Annotated[str, AfterValidator(_cluster_ip)]
TrafficPolicy = Annotated[Literal["Cluster", "Local"], BeforeValidator(_empty_is_cluster)]


class ServicePort(KubeModel):
    name: str = ""
    protocol: Protocol = "TCP"
    app_protocol: str | None = None
    port: Port
    target_port: PortOrName | None = None
    node_port: int | None = Field(default=None, ge=0, le=65535)

    @property
    def effective_target_port(self) -> int | str:
        """targetPort as the API defaults it: the service port when unset."""
        return self.target_port if self.target_port is not None else self.port


class ClientIPConfig(KubeModel):
    timeout_seconds: int = Field(default=10800, ge=1, le=86400)


class SessionAffinityConfig(KubeModel):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


class ServiceSpec(KubeModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: ClusterIP | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[ClusterIP] = Field(default_factory=list, alias="clusterIPs")
    ports: list[ServicePort] = Field(default_factory=list)
    # None (no selector) is meaningful: the Service's endpoints are written by hand.
    selector: dict[str, str] | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    external_ips: list[IP] = Field(default_factory=list, alias="externalIPs")
    external_name: str | None = None
    publish_not_ready_addresses: bool = False
    load_balancer_ip: IP | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[CIDR] = Field(default_factory=list)
    load_balancer_class: str | None = None
    allocate_load_balancer_node_ports: bool | None = None
    health_check_node_port: int | None = None
    ip_families: list[str] = Field(default_factory=list)
    ip_family_policy: str | None = None


class ServiceStatus(KubeModel):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Service(KubeObject):
    spec: ServiceSpec = Field(default_factory=ServiceSpec)
    status: ServiceStatus = Field(default_factory=ServiceStatus)

    @property
    def is_headless(self) -> bool:
        return self.spec.cluster_ip == "None"

    @property
    def cluster_ips(self) -> list[str]:
        """Allocated cluster addresses (none for headless or unallocated services)."""
        ips = self.spec.cluster_ips or ([self.spec.cluster_ip] if self.spec.cluster_ip else [])
        return [ip for ip in ips if ip not in ("", "None")]

    @property
    def affinity_timeout(self) -> int | None:
        """ClientIP affinity timeout in seconds, None without affinity."""
        if self.spec.session_affinity != "ClientIP":
            return None
        cfg = self.spec.session_affinity_config
        return cfg.client_ip.timeout_seconds if cfg and cfg.client_ip else 10800


# --- Endpoints (core/v1, the predecessor of EndpointSlice) -------------------------------------


class EndpointAddress(KubeModel):
    ip: IP
    hostname: str | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointPort(KubeModel):
    name: str | None = None
    port: Port
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class EndpointSubset(KubeModel):
    addresses: list[EndpointAddress] = Field(default_factory=list)
    not_ready_addresses: list[EndpointAddress] = Field(default_factory=list)
    ports: list[EndpointPort] = Field(default_factory=list)


class Endpoints(KubeObject):
    subsets: list[EndpointSubset] = Field(default_factory=list)


# --- Namespace, Node ---------------------------------------------------------------------------


class NamespaceSpec(KubeModel):
    finalizers: list[str] = Field(default_factory=list)


class NamespaceStatus(KubeModel):
    phase: Literal["Active", "Terminating"] | None = None


class Namespace(KubeObject):
    spec: NamespaceSpec = Field(default_factory=NamespaceSpec)
    status: NamespaceStatus = Field(default_factory=NamespaceStatus)


class Taint(KubeModel):
    key: str
    value: str | None = None
    effect: str


class NodeSpec(KubeModel):
    pod_cidr: CIDR | None = Field(default=None, alias="podCIDR")
    pod_cidrs: list[CIDR] = Field(default_factory=list, alias="podCIDRs")
    unschedulable: bool = False
    taints: list[Taint] = Field(default_factory=list)
    provider_id: str | None = Field(default=None, alias="providerID")


class NodeAddress(KubeModel):
    type: str
    address: str


class NodeStatus(KubeModel):
    addresses: list[NodeAddress] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    node_info: dict[str, Any] = Field(default_factory=dict)
    capacity: dict[str, Any] = Field(default_factory=dict)
    allocatable: dict[str, Any] = Field(default_factory=dict)


class Node(KubeObject):
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    def address(self, type_: str = "InternalIP") -> str | None:
        return next((a.address for a in self.status.addresses if a.type == type_), None)

    @property
    def internal_ip(self) -> str | None:
        return self.address("InternalIP")

    @property
    def pod_cidrs(self) -> list[str]:
        return self.spec.pod_cidrs or ([self.spec.pod_cidr] if self.spec.pod_cidr else [])

    @property
    def is_ready(self) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in self.status.conditions)


# --- Secret, ConfigMap -------------------------------------------------------------------------


def _b64_values(data: dict[str, str]) -> dict[str, str]:
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"data[{key}] is not base64") from e
    return data


class Secret(KubeObject):
    type: str = "Opaque"
    data: Annotated[dict[str, str], AfterValidator(_b64_values)] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)
    immutable: bool | None = None

    def decoded(self, key: str) -> bytes | None:
        """A value as bytes (stringData, which only appears on writes, wins as on the server)."""
        if key in self.string_data:
            return self.string_data[key].encode()
        value = self.data.get(key)
        return base64.b64decode(value) if value is not None else None


class ConfigMap(KubeObject):
    data: dict[str, str] = Field(default_factory=dict)
    binary_data: dict[str, str] = Field(default_factory=dict)
    immutable: bool | None = None
