"""The knet-node DaemonSet's start-up sequence in a lab node, as the manifests write it (see
conftest.py for the mapping onto the lab), then: a pod made through the installed `knet-cni`
launcher, every daemon's health endpoint, RBAC against the API requests each component really
made (the lab API server's request log), and `knet uninstall-node` inside the lab node leaving
nothing of knet there. Test order matters: the uninstall is last."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from knet import netns
from knet.kube import client
from tests.integration.deploy import manifests as m
from tests.integration.deploy.conftest import BIN, Deployed, http_get, wait_for

pytestmark = pytest.mark.integration
POD = "deploy-a"
# The lab's components authenticate as deploy/'s ServiceAccounts (kproxy, netpolicy and flannel as
# one); each credential's lab key is its uid, which the log line names after the user.
LOG_LINE = re.compile(r'msg="(GET|POST|PUT|PATCH|DELETE) (\S+) user=\S+ uid=(\S+) code=(\d+)')
USERS = {"flannel": "knet:flannel", "kproxy": "knet:kproxy", "netpolicy": "knet:netpolicy", "kdns": "knet:kdns",
         "ingress": "knet:ingress"}


def _pod_ns(d: Deployed) -> str:
    return f"{d.name}-pod-default-{POD}"


def _cni(d: Deployed, command: str) -> subprocess.CompletedProcess:
    """The installed executable, run in node1 the way a container runtime runs it."""
    with open(os.path.join(d.host("/etc/cni/net.d"), "10-knet.conflist")) as f:
        conf = json.load(f)
    net = dict(conf["plugins"][0], name=conf["name"], cniVersion=conf["cniVersion"])
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": f"{d.name}-{POD}",
           "CNI_NETNS": netns.path(_pod_ns(d)), "CNI_IFNAME": "eth0", "CNI_PATH": d.host("/opt/cni/bin")}
    return netns.run(d.node1, [d.host("/opt/cni/bin/knet-cni")], input=json.dumps(net), env=env,
                     capture_output=True, text=True, timeout=30)


def test_install_and_pod_through_launcher(deployed: Deployed):
    d = deployed
    launcher = d.host("/opt/cni/bin/knet-cni")
    assert os.access(launcher, os.X_OK)
    with open(launcher, "rb") as f:
        if f.read(4) == b"\x7fELF":  # the native client (static); the launcher is its direct path
            launcher = d.host("/opt/cni/bin/knet-cni.d/knet-cni-py")
    with open(launcher) as f:
        assert f.readline() == "#!/usr/bin/env python3\n"  # the host's python, not the image's venv
    subnet_env = d.host("/run/flannel/subnet.env")
    wait_for(lambda: os.path.exists(subnet_env) and os.path.exists(d.host("/run/knet/cni.sock")), 30,
             "flannel-py's subnet.env and the agent's socket", d.log("flannel-py") + d.log("knet-cni-agent"))
    with open(subnet_env) as f:
        env = dict(line.strip().split("=", 1) for line in f if "=" in line)
    assert env["FLANNEL_NETWORK"] == "10.244.0.0/16"
    assert env["FLANNEL_SUBNET"] == "10.244.1.1/24"  # node1's podCIDR (kube subnet manager)
    api = client.new_api_client(d.admin_kubeconfig)
    try:
        annotations = client.get(api, "Node", "node1")["metadata"]["annotations"]
    finally:
        api.close()
    assert annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
    assert annotations["flannel.alpha.coreos.com/public-ip"] == "192.168.33.11"
    netns.create(_pod_ns(d))  # lab-prefixed: the lab's teardown removes it whatever happens
    r = _cni(d, "ADD")
    assert r.returncode == 0, r.stdout + r.stderr
    ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
    subnet = env["FLANNEL_SUBNET"].rsplit(".", 1)[0]
    assert ip.startswith(subnet + "."), (ip, env)
    assert "request command=ADD" in d.log("knet-cni-agent")  # served by the agent, not in-process
    assert netns.run(d.node1, ["ping", "-c1", "-W2", ip], capture_output=True).returncode == 0


@pytest.mark.parametrize("daemon,ns,port,path", [
    ("kproxy", 1, 10249, "/healthz"), ("netpolicy", 1, 9641, "/healthz"), ("knet-ingress", 2, 10254, "/healthz"),
    ("kdns", 2, 8080, "/health"), ("kdns", 2, 8181, "/ready")])  # kdns: the Corefile's health and ready plugins
def test_health_endpoints(deployed: Deployed, daemon: str, ns: int, port: int, path: str):
    d = deployed
    where = d.node1 if ns == 1 else d.node2

    def healthy() -> bool:
        assert d.procs[daemon].poll() is None, d.log(daemon)[-3000:]
        return http_get(where, f"http://127.0.0.1:{port}{path}")[0] == 200

    wait_for(healthy, 45, f"{daemon} /healthz", d.log(daemon))


def _recorded(log: str) -> dict[str, set[tuple[str, str, str]]]:
    """user -> {(group, resource, verb)} from the API server's request log."""
    out: dict[str, set[tuple[str, str, str]]] = {}
    for method, target, user, _code in LOG_LINE.findall(log):
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        if parts[0] == "api" and len(parts) > 2:
            group, rest = "", parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, rest = parts[1], parts[3:]
        else:
            continue  # discovery (/api, /apis, /version): every authenticated user may read it
        if rest[0] == "namespaces" and len(rest) > 2:
            rest = rest[2:]
        resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
        watch = parse_qs(url.query).get("watch", ["false"])[0] in ("1", "true")
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}[method]
        out.setdefault(user, set()).add((group, f"{resource}/{sub}" if sub else resource, verb))
    return out


def test_rbac_covers_recorded_requests(deployed: Deployed):
    d = deployed
    api = client.new_api_client(d.admin_kubeconfig)
    try:
        # The pieces of deploy/ the ingress controller reads, applied to the lab API server
        # (server-side validation of the kinds it serves), and an Ingress whose status it writes.
        docs = {(x["kind"], x["metadata"]["name"]): x for x in d.docs}
        # (Not the kdns Service: the lab already has a DNS Service on 10.96.0.10, as kubeadm's
        # CoreDNS has; docs/install.md says to remove it first.)
        for key in (("Namespace", "knet-system"), ("IngressClass", "knet"), ("Service", "knet-ingress"),
                    ("ConfigMap", "knet-config"), ("ConfigMap", "kube-flannel-cfg"), ("ConfigMap", "kube-proxy"),
                    ("ConfigMap", "coredns")):
            body = docs[key]
            client.create(api, key[0], body, body["metadata"].get("namespace"))
        backend = {"service": {"name": "web", "port": {"number": 80}}}
        meta = {"name": "rbac", "namespace": "default"}
        client.create(api, "Ingress", {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
                                       "spec": {"ingressClassName": "knet", "defaultBackend": backend}}, "default")

        def status_written() -> bool:
            ing = client.get(api, "Ingress", "rbac", "default") or {}
            return bool(ing.get("status", {}).get("loadBalancer", {}).get("ingress"))

        wait_for(status_written, 45, "knet-ingress writing the Ingress status", d.log("knet-ingress"))
    finally:
        api.close()
    time.sleep(1)
    recorded = _recorded(d.apiserver_log())
    roles = m.by_kind(d.docs, "ClusterRole")
    for user, role in USERS.items():
        granted = {(g, r, v) for rule in roles[role]["rules"] for g in rule["apiGroups"]
                   for r in rule["resources"] for v in rule["verbs"]}
        got = recorded.get(user, set())
        assert got, f"no requests recorded for {user}"
        assert got <= granted, f"{user} made requests {role} does not grant: {sorted(got - granted)}"
        # ...and nothing granted that the component never did. The server logs a request when it
        # completes, and a watch completes only when its timeoutSeconds (5-7.5 min) runs out: a
        # granted watch counts as used when the same resource was listed (an informer lists, then
        # watches from that list; tests/unit/test_deploy_rbac.py proves the watch from the code).
        used = got | {(g, r, "watch") for g, r, v in got if v == "list"}
        assert granted <= used, f"{role} grants what {user} never used: {sorted(granted - used)}"


def _leftovers(d: Deployed) -> list[str]:
    out = []
    links = netns.run(d.node1, ["ip", "-o", "link"], capture_output=True, text=True).stdout
    out += [w for w in ("cni0", "flannel.", "veth") if w in links]
    for cmd in ("iptables-save", "ip6tables-save"):
        save = netns.run(d.node1, [cmd], capture_output=True, text=True).stdout
        out += [f"{cmd}: {line}" for line in save.splitlines()
                if re.search(r"\b(KUBE-|CNI-|FLANNEL-)", line) and "KUBELET-CANARY" not in line]
    nft = netns.run(d.node1, ["nft", "list", "tables"], capture_output=True, text=True).stdout
    out += ["nft knet-netpol"] if "knet-netpol" in nft else []
    routes = netns.run(d.node1, ["ip", "route"], capture_output=True, text=True).stdout
    out += [f"route {r}" for r in routes.splitlines() if r.startswith("10.244.")]
    for path in ("/opt/cni/bin/knet-cni", "/opt/cni/bin/knet-cni.d", "/etc/cni/net.d/10-knet.conflist",
                 "/run/flannel/subnet.env", "/var/lib/cni/networks/knet", "/run/knet"):
        if os.path.lexists(d.host(path)):
            out.append(path)
    return out


def test_uninstall_node_leaves_nothing(deployed: Deployed):
    d = deployed
    for key in ("flannel-py", "knet-cni-agent", "kproxy", "netpolicy"):  # kubectl delete: pods stop
        d.procs[key].terminate()
        d.procs[key].wait(15)
    before = _leftovers(d)
    assert {"cni0", "flannel.", "veth", "nft knet-netpol"} <= set(before), before
    assert any("KUBE-SERVICES" in x for x in before) and any("FLANNEL-POSTRTG" in x for x in before), before
    # KNET_UNINSTALL_NETNS: the tool itself refuses unless it really is inside this lab node.
    env = dict(os.environ, KNET_UNINSTALL_NETNS=d.node1)
    tool = [os.path.join(BIN, "knet-uninstall-node"), f"--root={d.root}"]
    dry = netns.run(d.node1, [*tool, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would remove link cni0" in dry.stdout and "would remove nft table inet knet-netpol" in dry.stdout
    assert _leftovers(d) == before  # a dry run changes nothing
    assert netns.run(d.node1, tool, env=env, capture_output=True).returncode == 2  # no --yes: refused
    real = netns.run(d.node1, [*tool, "--yes"], env=env, capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stdout + real.stderr
    assert _leftovers(d) == []
    # The pod's namespace lost its interface with the veth pair.
    assert "eth0" not in netns.run(_pod_ns(d), ["ip", "-o", "link"], capture_output=True, text=True).stdout
