"""The per-kind contract: everything one kind does differently from the generic registry, in one
object (kube-apiserver's `pkg/registry/<group>/<kind>/strategy.go`: PrepareForCreate, Validate,
the status strategy, CheckGracefulDelete, the table convertor, and the Service REST's allocation).

The registry, the lifecycle, the watch cache and the table printer call these methods and never
ask which kind they hold. Every method has the generic behaviour as its default, so a kind with
nothing special (Lease, ServiceAccount) is a plain `Strategy()`; a kind overrides only what
differs. The kinds' strategies live in `lab/apiserver/kinds/`, and `resources.py` serves them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lab.apiserver import tables
from lab.apiserver.allocator import DEFAULT_SERVICE_CIDR, NodePortRange, Reservation, ServiceCIDR, Space
from lab.apiserver.validation import Causes

# (group, kind, custom index, value) -> the cached objects of that kind with that index value.
Lookup = Callable[[str, str, str, str], list[dict[str, Any]]]
NAME_RULES = ("subdomain", "label", "dns1035", "path")


@dataclass(frozen=True)
class Config:
    """Server flags that admission and storage need (--service-cluster-ip-range,
    --service-node-port-range, --event-ttl)."""
    service_cidr: ServiceCIDR = field(default_factory=lambda: ServiceCIDR.parse(DEFAULT_SERVICE_CIDR))
    node_ports: NodePortRange = field(default_factory=NodePortRange)
    event_ttl: int = 3600  # seconds, kube-apiserver's default of 1h


@dataclass(frozen=True)
class Deletion:
    """How a DELETE goes: at once (the default); gracefully (`grace` > 0: the object stays, marked
    with deletionTimestamp = now + grace, until whoever runs it removes it); or by finalization
    (`finalize`: the object turns Terminating, its content is deleted, then it is)."""
    grace: int = 0
    finalize: bool = False


class Strategy:
    # How metadata.name is validated: "subdomain" (RFC 1123 subdomain, most kinds), "label"
    # (RFC 1123 label: namespaces), "dns1035" (services: the name is a DNS label in their records),
    # "path" (a URL path segment: RBAC objects, named like `system:discovery`).
    name_rule: ClassVar[str] = "subdomain"
    # A create may not set status: it belongs to a controller or an agent (PrepareForCreate).
    status_from_controllers: ClassVar[bool] = False
    # metadata.generation (1 on create, +1 when anything but metadata and status changes): only
    # the kinds whose kube-apiserver strategy keeps one (workloads, pods, EndpointSlices,
    # NetworkPolicies, Ingresses, IngressClasses), not every kind with a spec (Services and
    # Nodes have none).
    generation: ClassVar[bool] = False
    # Deleting one deletes (or, with propagationPolicy Orphan, orphans) its dependents.
    cascades: ClassVar[bool] = True
    # Strategic merge patch: merge keys of lists at exact paths that differ by kind
    # (ServiceSpec.ports merge on `port`, PodSpec's container ports on `containerPort`).
    merge_keys: ClassVar[Mapping[tuple[str, ...], str]] = {}
    # Metadata a status update may change too (the status strategy keeps everything else).
    status_writes_metadata: ClassVar[tuple[str, ...]] = ()
    # Field selectors the watch cache answers from an index (besides namespace and name).
    indexed_fields: ClassVar[tuple[str, ...]] = ()
    # Labels the watch cache indexes (a list selecting `key=value` reads the index).
    indexed_labels: ClassVar[tuple[str, ...]] = ()
    # A view of another kind's storage (group, kind), converted both ways (events.k8s.io/v1 Events
    # over the core ones): the registry and the watch cache know only the stored kind.
    stored_as: ClassVar[tuple[str, str] | None] = None
    # Indexes of the kind's own (values from `index_values`): RBAC bindings by subject.
    custom_indexes: ClassVar[tuple[str, ...]] = ()
    # `kubectl get` columns (meta.k8s.io Table), matching `row`.
    columns: ClassVar[list[dict[str, Any]]] = [tables.NAME, tables.AGE]

    # --- admission -------------------------------------------------------------------------------

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Fill in defaults (in place), before validation; `old` is the stored object on update."""

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        """Add a cause for every invalid field (metadata is validated generically)."""

    def default_on_create(self, obj: dict[str, Any], lookup: Lookup) -> None:
        """Defaults of a create that depend on other objects (kube-apiserver's mutating admission
        plugins, e.g. DefaultIngressClass), read through `lookup` (the watch cache's indexes)."""

    # --- allocation: claimed and released here, written by the registry ----------------------------

    def ranges(self, cfg: Config) -> dict[str, Space]:
        """The ranges this kind allocates from, by name (the etcd key part under `ranges/`)."""
        return {}

    def allocate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, res: Reservation,
                 cfg: Config) -> None:
        """Fill in allocated values (explicit ones reserved, missing ones picked from `res`)."""

    def held(self, obj: dict[str, Any] | None) -> set[tuple[str, str]]:
        """(range, value) pairs a stored object holds. The registry claims what a write adds to
        this set and releases what it removes (or, on delete, all of it), in the same etcd
        transaction as the object."""
        return set()

    # --- storage ---------------------------------------------------------------------------------

    def ttl(self, cfg: Config) -> int:
        """Seconds the object lives after its last write (0: until deleted). The registry writes it
        with an etcd lease of that length, so etcd removes it (and the watch cache and watchers
        see a DELETED), as kube-apiserver stores Events."""
        return 0

    # --- a view's conversion (only with `stored_as`) ---------------------------------------------

    def to_stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored kind's form of `obj` (written through this view)."""
        return obj

    def from_stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        """This view's form of a stored object."""
        return obj

    def stored_field_selector(self, selector: str) -> str:
        """A field selector in this view's field names -> the stored kind's."""
        return selector

    # --- deletion ----------------------------------------------------------------------------------

    def deletion(self, obj: dict[str, Any], options: Mapping[str, Any]) -> Deletion:
        """How a DELETE of `obj` goes (may raise an ApiError: some objects may not be deleted)."""
        return Deletion()

    # --- reading ---------------------------------------------------------------------------------

    def row(self, obj: dict[str, Any]) -> list[Any]:
        """The Table cells of `obj`, one per column."""
        return [tables.name(obj), tables.age(obj)]

    def index_values(self, name: str, obj: dict[str, Any]) -> list[str]:
        """The values of the custom index `name` for `obj` (the watch cache keeps it current)."""
        return []

    def scale_selector(self, obj: dict[str, Any]) -> str:
        """The Scale subresource's status.selector (a label selector's string form)."""
        return ""
