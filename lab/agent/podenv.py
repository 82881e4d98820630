"""A container's environment and a pod's resolv.conf / hosts, as the kubelet makes them (pure).

Service environment variables (seed S25): for every Service of the pod's namespace that exists
when the container starts (and the `kubernetes` Service of `default`, always), with a cluster IP:
`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`, `<NAME>_SERVICE_PORT_<PORTNAME>` and the Docker link
variables `<NAME>_PORT=tcp://ip:port`, `<NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]`. NAME is the
Service name upper-cased with '-' -> '_'. `enableServiceLinks: false` keeps only `kubernetes`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from knet.kube.models import Container, Pod, Service

CLUSTER_DOMAIN = "cluster.local"
# (kind, namespace, name) -> the ConfigMap or Secret (a dict), None when it does not exist.
Lookup = Callable[[str, str, str], "dict[str, Any] | None"]
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """The container's configuration cannot be resolved (the kubelet's CreateContainerConfigError)."""


def _values(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    if kind == "Secret":
        out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        out.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return out
    return {k: str(v) for k, v in (obj.get("data") or {}).items()}


def _key_ref(kind: str, ref: dict[str, Any], ns: str, lookup: Lookup | None) -> str | None:
    name, key = str(ref.get("name") or ""), str(ref.get("key") or "")
    obj = lookup(kind, ns, name) if lookup else None
    if obj is None:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    values = _values(kind, obj)
    if key not in values:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {ns}/{name}")
    return values[key]


def env_from(sources: Iterable[dict[str, Any]], ns: str, lookup: Lookup | None) -> dict[str, str]:
    """envFrom: every key of each ConfigMap / Secret (with its prefix) that is a valid variable name."""
    env: dict[str, str] = {}
    for src in sources:
        prefix = str(src.get("prefix") or "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = src.get(field)
            if not isinstance(ref, dict):
                continue
            obj = lookup(kind, ns, str(ref.get("name") or "")) if lookup else None
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            env.update({prefix + k: v for k, v in _values(kind, obj).items() if _ENV_NAME.match(prefix + k)})
    return env
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def dns_service_ip(service_cidr: str) -> str:
    """The cluster DNS address: the tenth address of the service range (kubeadm's convention)."""
    return str(ipaddress.ip_network(service_cidr, strict=False).network_address + 10)


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_env(services: Iterable[Service], namespace: str, enable_links: bool = True) -> dict[str, str]:
    env: dict[str, str] = {}
    chosen = []
    for svc in sorted(services, key=lambda s: (s.namespace or "", s.name)):
        if not svc.cluster_ips or svc.spec.type == "ExternalName":
            continue
        is_master = svc.namespace == "default" and svc.name == "kubernetes"
        if (svc.namespace == namespace and enable_links) or is_master:
            chosen.append(svc)
    for svc in chosen:
        ip, name = svc.cluster_ips[0], _env_name(svc.name)
        if not svc.spec.ports:
            continue
        first = svc.spec.ports[0]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(first.port)
        for p in svc.spec.ports:
            if p.name:
                env[f"{name}_SERVICE_PORT_{_env_name(p.name)}"] = str(p.port)
        env[f"{name}_PORT"] = f"{first.protocol.lower()}://{ip}:{first.port}"
        for p in svc.spec.ports:
            prefix = f"{name}_PORT_{p.port}_{p.protocol}"
            env[prefix] = f"{p.protocol.lower()}://{ip}:{p.port}"
            env[f"{prefix}_PROTO"] = p.protocol.lower()
            env[f"{prefix}_PORT"] = str(p.port)
            env[f"{prefix}_ADDR"] = ip
    return env


def pod_hostname(pod: Pod) -> str:
    return pod.spec.hostname or pod.name


def _field_ref(path: str, pod: Pod, host_ip: str | None) -> str:
    values = {
        "metadata.name": pod.name, "metadata.namespace": pod.namespace or "default",
        "metadata.uid": pod.metadata.uid or "", "spec.nodeName": pod.spec.node_name or "",
        "spec.serviceAccountName": pod.spec.service_account_name or "default",
        "status.podIP": pod.status.pod_ip or "", "status.hostIP": host_ip or pod.status.host_ip or "",
    }
    if path.startswith("metadata.labels['") and path.endswith("']"):
        return pod.labels.get(path[17:-2], "")
    if path.startswith("metadata.annotations['") and path.endswith("']"):
        return pod.metadata.annotations.get(path[22:-2], "")
    return values.get(path, "")


def container_env(container: Container, pod: Pod, services_env: dict[str, str], pod_ip: str | None = None,
                  host_ip: str | None = None, lookup: Lookup | None = None) -> dict[str, str]:
    """Service variables, then envFrom, then the container's own `env` (which wins), HOSTNAME and
    PATH; configMapKeyRef / secretKeyRef / envFrom read through `lookup` (ConfigError when a
    referenced object or key is missing and not optional)."""
    ns = pod.namespace or "default"
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": pod_hostname(pod), **services_env,
           **env_from((container.model_extra or {}).get("envFrom") or [], ns, lookup)}
    view = pod
    if pod_ip and not pod.status.pod_ip:
        view = pod.model_copy(update={"status": pod.status.model_copy(update={"pod_ip": pod_ip})})
    for var in container.env:
        if var.value is not None:
            env[var.name] = _expand(var.value, env)
        elif var.value_from and isinstance(var.value_from.get("fieldRef"), dict):
            env[var.name] = _field_ref(str(var.value_from["fieldRef"].get("fieldPath", "")), view, host_ip)
        elif var.value_from and isinstance(var.value_from.get("configMapKeyRef"), dict):
            value = _key_ref("ConfigMap", var.value_from["configMapKeyRef"], ns, lookup)
            if value is not None:
                env[var.name] = value
        elif var.value_from and isinstance(var.value_from.get("secretKeyRef"), dict):
            value = _key_ref("Secret", var.value_from["secretKeyRef"], ns, lookup)
            if value is not None:
                env[var.name] = value
        else:
            env[var.name] = ""  # resourceFieldRef: not resolved in the lab
    return env


def expand_argv(argv: list[str], env: dict[str, str]) -> list[str]:
    """$(VAR) in a container's command and args, from its environment (as the kubelet does)."""
    return [_expand(a, env) for a in argv]


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references to earlier variables, as the kubelet expands them ($$ escapes)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2:end]
            out.append(env.get(name, value[i:end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def resolv_conf(pod: Pod, dns_ip: str, cluster_domain: str = CLUSTER_DOMAIN) -> str | None:
    """/etc/resolv.conf of a pod (None: use the node's, dnsPolicy Default)."""
    policy = pod.spec.dns_policy or "ClusterFirst"
    if policy == "Default" or (policy == "ClusterFirst" and pod.spec.host_network):
        return None
    ns = pod.namespace or "default"
    dns_config: dict[str, Any] = (pod.spec.model_extra or {}).get("dnsConfig") or {}
    if policy == "None":
        servers, search, options = [], [], []
    else:
        servers = [dns_ip]
        search = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = ["ndots:5"]
    servers += [s for s in dns_config.get("nameservers") or [] if s not in servers]
    search += [s for s in dns_config.get("searches") or [] if s not in search]
    for opt in dns_config.get("options") or []:
        name = opt.get("name")
        if not name:
            continue
        options = [o for o in options if o.split(":")[0] != name]
        options.append(f"{name}:{opt['value']}" if opt.get("value") is not None else name)
    lines = [f"nameserver {s}" for s in servers[:3]]
    if search:
        lines.append("search " + " ".join(search[:6]))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def hosts_file(pod: Pod, pod_ip: str | None, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """/etc/hosts with the pod's own name (and its FQDN under a subdomain, as for StatefulSets)."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if pod_ip:
        host = pod_hostname(pod)
        if pod.spec.subdomain:
            lines.append(f"{pod_ip}\t{host}.{pod.spec.subdomain}.{pod.namespace}.svc.{cluster_domain}\t{host}")
        else:
            lines.append(f"{pod_ip}\t{host}")
    return "\n".join(lines) + "\n"
