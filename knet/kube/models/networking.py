"""discovery.k8s.io/v1 EndpointSlice and networking.k8s.io/v1 NetworkPolicy, Ingress, IngressClass."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal

from pydantic import Field, model_validator

from knet.kube.models.meta import (
    CIDR,
    KubeModel,
    KubeObject,
    LabelSelector,
    LoadBalancerStatus,
    ObjectReference,
    Port,
    PortOrName,
    Protocol,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_INGRESS_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"

# --- EndpointSlice -----------------------------------------------------------------------------


class EndpointConditions(KubeModel):
    # The API says: ready/serving unset mean true ("unknown state should be interpreted as
    # ready"), terminating unset means false. The properties apply that once for every consumer.
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready is not False

    @property
    def is_serving(self) -> bool:
        return self.serving if self.serving is not None else self.is_ready

    @property
    def is_terminating(self) -> bool:
        return self.terminating is True


class Endpoint(KubeModel):
    addresses: list[str] = Field(min_length=1)
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    node_name: str | None = None
    target_ref: ObjectReference | None = None
    zone: str | None = None
    hints: dict[str, Any] | None = None


class EndpointSlicePort(KubeModel):
    # port unset means "all ports" in the API; name "" is the unnamed port of a one-port Service.
    name: str | None = None
    port: Port | None = None
    protocol: Protocol = "TCP"
    app_protocol: str | None = None


class EndpointSlice(KubeObject):
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: list[Endpoint] = Field(default_factory=list)
    ports: list[EndpointSlicePort] = Field(default_factory=list)

    @model_validator(mode="after")
    def _addresses_match_type(self) -> EndpointSlice:
        if self.address_type == "FQDN":
            return self
        version = 4 if self.address_type == "IPv4" else 6
        for ep in self.endpoints:
            for addr in ep.addresses:
                try:
                    ok = ipaddress.ip_address(addr).version == version
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"endpoint address {addr!r} is not {self.address_type}")
        return self

    @property
    def service_name(self) -> str | None:
        return self.metadata.labels.get(SERVICE_NAME_LABEL)


# --- NetworkPolicy -----------------------------------------------------------------------------


class IPBlock(KubeModel):
    cidr: CIDR
    except_: list[CIDR] = Field(default_factory=list, alias="except")

    @model_validator(mode="after")
    def _except_inside(self) -> IPBlock:
        net = ipaddress.ip_network(self.cidr, strict=False)
        for ex in self.except_:
            sub = ipaddress.ip_network(ex, strict=False)
            if sub.version != net.version or not sub.subnet_of(net):  # type: ignore[arg-type]  # same family here
                raise ValueError(f"except {ex} is not inside cidr {self.cidr}")
        return self


class NetworkPolicyPeer(KubeModel):
    """One `from`/`to` entry. Selector None means "no constraint of that kind", not "nothing":
    podSelector alone = pods of the policy's namespace; namespaceSelector alone = all pods of the
    selected namespaces; both = the selected pods in the selected namespaces."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkPolicyPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("ipBlock cannot be combined with podSelector/namespaceSelector")
        if self.ip_block is None and not selectors:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class NetworkPolicyPort(KubeModel):
    """port None = every port of the protocol; endPort makes [port, endPort] a range."""

    protocol: Protocol = "TCP"
    port: PortOrName | None = None
    end_port: Port | None = None

    @model_validator(mode="after")
    def _range(self) -> NetworkPolicyPort:
        if self.end_port is not None:
            if not isinstance(self.port, int):
                raise ValueError("endPort needs a numeric port")
            if self.end_port < self.port:
                raise ValueError(f"endPort {self.end_port} < port {self.port}")
        return self


class NetworkPolicyIngressRule(KubeModel):
    # Empty `from` (or absent) = every source; empty `ports` = every port. The API makes absent
    # and empty the same here, which dropping nulls preserves.
    from_: list[NetworkPolicyPeer] = Field(default_factory=list, alias="from")
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicyEgressRule(KubeModel):
    to: list[NetworkPolicyPeer] = Field(default_factory=list)
    ports: list[NetworkPolicyPort] = Field(default_factory=list)


class NetworkPolicySpec(KubeModel):
    pod_selector: LabelSelector  # {} selects every pod of the namespace
    policy_types: list[Literal["Ingress", "Egress"]] = Field(default_factory=list)
    ingress: list[NetworkPolicyIngressRule] = Field(default_factory=list)
    egress: list[NetworkPolicyEgressRule] = Field(default_factory=list)

    @property
    def effective_policy_types(self) -> list[str]:
        """policyTypes as the API defaults them: Ingress always, Egress if there are egress rules."""
        if self.policy_types:
            return list(self.policy_types)
        return ["Ingress", "Egress"] if self.egress else ["Ingress"]


class NetworkPolicy(KubeObject):
    spec: NetworkPolicySpec


# --- Ingress, IngressClass ---------------------------------------------------------------------


class ServiceBackendPort(KubeModel):
    name: str | None = None
    number: Port | None = None

    @model_validator(mode="after")
    def _one(self) -> ServiceBackendPort:
        if (self.name is None) == (self.number is None):
            raise ValueError("a backend port needs exactly one of name, number")
        return self

    @property
    def value(self) -> int | str:
        return self.number if self.number is not None else self.name  # type: ignore[return-value]  # one is set (_one)


class IngressServiceBackend(KubeModel):
    name: str = Field(min_length=1)
    port: ServiceBackendPort


class IngressBackend(KubeModel):
    service: IngressServiceBackend | None = None
    resource: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> IngressBackend:
        if (self.service is None) == (self.resource is None):
            raise ValueError("a backend needs exactly one of service, resource")
        return self


class HTTPIngressPath(KubeModel):
    path: str | None = None
    path_type: Literal["Exact", "Prefix", "ImplementationSpecific"]
    backend: IngressBackend

    @model_validator(mode="after")
    def _absolute(self) -> HTTPIngressPath:
        if self.path_type in ("Exact", "Prefix") and not (self.path or "").startswith("/"):
            raise ValueError(f"{self.path_type} path must be absolute, got {self.path!r}")
        return self


class HTTPIngressRuleValue(KubeModel):
    paths: list[HTTPIngressPath] = Field(min_length=1)


class IngressRule(KubeModel):
    host: str | None = None
    http: HTTPIngressRuleValue | None = None


class IngressTLS(KubeModel):
    hosts: list[str] = Field(default_factory=list)
    secret_name: str | None = None


class IngressSpec(KubeModel):
    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    rules: list[IngressRule] = Field(default_factory=list)
    tls: list[IngressTLS] = Field(default_factory=list)


class IngressStatus(KubeModel):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Ingress(KubeObject):
    spec: IngressSpec = Field(default_factory=IngressSpec)
    status: IngressStatus = Field(default_factory=IngressStatus)

    @property
    def class_name(self) -> str | None:
        """spec.ingressClassName, or the deprecated annotation that predates it."""
        return self.spec.ingress_class_name or self.metadata.annotations.get(INGRESS_CLASS_ANNOTATION)


class IngressClassSpec(KubeModel):
    controller: str | None = None
    parameters: dict[str, Any] | None = None


class IngressClass(KubeObject):
    spec: IngressClassSpec = Field(default_factory=IngressClassSpec)

    @property
    def is_default(self) -> bool:
        return self.metadata.annotations.get(DEFAULT_INGRESS_CLASS_ANNOTATION) == "true"
