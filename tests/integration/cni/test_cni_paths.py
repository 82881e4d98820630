"""The agent path and the direct path are one plugin: the same cases, run through each on its own
node (same configuration, same state layout), give the same answers and the same kernel state
whichever thin executable (native or Python) the runtime is given; and both paths can work on one
node at the same time."""

from __future__ import annotations

import contextlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from knet import links, netns
from tests.integration.cni.conftest import KNET_CNI, KNET_CNI_PY, Node, _make_node

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nodes():
    """Three nodes: two served by their agent, through the native and the Python thin executable,
    and one whose configured agent socket does not exist, so that every call takes the direct path
    (through the native executable: it reads stdin, finds no agent, and hands both over)."""
    with contextlib.ExitStack() as stack:
        make = contextlib.contextmanager(_make_node)
        agent = stack.enter_context(make(with_agent=True, exe=KNET_CNI))
        agent_py = stack.enter_context(make(with_agent=True, exe=KNET_CNI_PY))
        direct = stack.enter_context(make(with_agent=False, exe=KNET_CNI))
        direct.agent_socket = os.path.join(direct.state, "agent.sock")  # never created
        yield {"agent": agent, "agent-py": agent_py, "direct": direct}


def normalize(node: Node, text: str) -> str:
    """Remove what differs by construction: random MACs and veth names, the node's own names."""
    text = re.sub(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", "MAC", text)
    text = re.sub(r"fe80::[0-9a-f:]+", "fe80::LINKLOCAL", text)  # derived from the MAC
    text = re.sub(r"veth[0-9a-f]{8}", "VETH", text)
    text = re.sub(r"(?<=CNI-)[0-9a-f]{24}", "HASH", text)
    return text.replace(node.state, "STATE").replace(node.prefix, "NODE")


def addresses(ns: str, *selector: str) -> str:
    """`ip -br addr` without the operational state, which the kernel settles asynchronously."""
    lines = netns.run(ns, ["ip", "-br", "addr", "show", *selector]).stdout.splitlines()
    return "\n".join(" ".join(line.split()[:1] + line.split()[2:]) for line in lines)


def kernel_view(node: Node, pod: str | None) -> str:
    """What a user would look at: the pod's addresses and routes, the node's bridge and nat rules."""
    out = []
    if pod and netns.exists(pod):
        out += [addresses(pod), netns.run(pod, ["ip", "route"]).stdout,
                netns.run(pod, ["ip", "-6", "route", "show", "table", "main"]).stdout]
    out += [addresses(node.name, "type", "bridge"), netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout,
            netns.run(node.name, ["ip6tables", "-t", "nat", "-S"]).stdout]
    return normalize(node, "\n".join(out))


def write_subnet_env(node: Node) -> str:
    path = os.path.join(node.state, "subnet.env")
    with open(path, "w") as f:
        f.write("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    return path


# (case, conf changes, env changes, command sequence). "{pod}" and "{state}" are filled per node.
CASES = [
    ("basic", {}, {}, ["ADD", "CHECK", "DEL", "DEL"]),
    ("no-masq-mtu-promisc", {"ipMasq": False, "mtu": 1400, "promiscMode": True, "bridge": "knet1"}, {},
     ["ADD", "CHECK", "DEL"]),
    ("static-ip", {}, {"CNI_ARGS": "IgnoreUnknown=1;IP=10.99.0.77"}, ["ADD", "DEL"]),
    ("dual-stack", {"ipam": {"type": "host-local", "dataDir": "{state}/ipam", "routes": [{"dst": "0.0.0.0/0"}],
                             "ranges": [[{"subnet": "10.98.0.0/24"}], [{"subnet": "fd00:98::/64"}]]}},
     {}, ["ADD", "CHECK", "DEL"]),
    ("old-version", {"cniVersion": "0.4.0"}, {}, ["ADD", "CHECK", "DEL"]),
    ("flannel-mode", {"subnetFile": "{subnet_env}", "ipam": {"dataDir": "{state}/ipam"}}, {}, ["ADD", "DEL"]),
    ("check-needs-prev-result", {}, {}, ["ADD", "CHECK-NO-PREV", "DEL"]),
    ("twice", {}, {}, ["ADD", "ADD", "DEL"]),
    ("interface-exists", {}, {"CNI_IFNAME": "lo"}, ["ADD"]),
    ("bridge-is-not-a-bridge", {"bridge": "lo"}, {}, ["ADD"]),
    ("malformed-json", b'{"cniVersion": "1.0.0", "name": ', {}, ["ADD", "DEL"]),
    ("missing-env", {}, {"CNI_CONTAINERID": None}, ["ADD", "DEL", "CHECK"]),
    ("bad-command", {}, {"CNI_COMMAND": "FROB"}, ["FROB"]),
    ("bad-version", {"cniVersion": "0.0.1"}, {}, ["ADD"]),
    ("no-netns", {}, {"CNI_NETNS": "/run/netns/does-not-exist-kt"}, ["ADD", "DEL"]),
    ("bad-subnet", {"ipam": {"type": "host-local", "subnet": "10.300.0.0/24", "dataDir": "{state}"}}, {}, ["ADD"]),
    ("exhausted", {"ipam": {"type": "host-local", "dataDir": "{state}/ipam-x", "ranges": [[{
        "subnet": "10.97.0.0/24", "rangeStart": "10.97.0.9", "rangeEnd": "10.97.0.9"}]]}}, {},
     ["ADD", "ADD-OTHER", "STATUS", "DEL"]),
    ("status-gc", {"cniVersion": "1.1.0"}, {}, ["ADD", "STATUS", "GC-NONE", "DEL"]),
    ("version", {}, {}, ["VERSION"]),
]


def run_case(node: Node, case: str, change: dict | bytes, env: dict, commands: list[str]) -> list:
    pod = node.new_pod()
    fill = {"pod": pod, "state": node.state, "subnet_env": write_subnet_env(node)}
    if isinstance(change, bytes):
        conf: dict | bytes = change
    else:
        conf = json.loads(json.dumps(node.conf(**change)).replace("{state}", fill["state"])
                          .replace("{subnet_env}", fill["subnet_env"]))
    results, prev = [], None
    for command in commands:
        verb, _, variant = command.partition("-")
        this = conf
        container = f"c-{case}"
        if isinstance(conf, dict):
            if verb == "CHECK" and variant != "NO-PREV":
                this = dict(conf, prevResult=prev)
            elif verb == "GC":
                this = dict(conf, **{"cni.dev/valid-attachments": []})
        if variant == "OTHER":
            container = f"o-{case}"
        rc, out = node.cni(verb, this, container, pod, **env)
        if verb == "ADD" and rc == 0 and prev is None:
            prev = out
        results.append((command, rc, normalize(node, json.dumps(out, sort_keys=True))))
        results.append(("kernel after " + command, kernel_view(node, pod)))
    return results


@pytest.mark.parametrize(("case", "change", "env", "commands"), CASES, ids=[c[0] for c in CASES])
def test_same_answers_and_kernel_state_on_both_paths(nodes, case, change, env, commands):
    direct = run_case(nodes["direct"], case, change, env, commands)
    for via in ("agent", "agent-py"):
        assert run_case(nodes[via], case, change, env, commands) == direct, via
    assert all(not isinstance(r[1], int) or r[1] in (0, 1) for r in direct)
    # and the agents really served them (a silent fallback would make this test prove nothing)
    if "VERSION" not in commands and isinstance(change, dict) and "CNI_CONTAINERID" not in env:
        assert nodes["agent"].served_by_agent(commands[0], f"c-{case}")
        assert nodes["agent-py"].served_by_agent(commands[0], f"c-{case}")
    assert not nodes["direct"].agent_log_text()


def test_both_paths_at_once_share_ipam_and_locks(agent_node):
    """Half the calls through the agent, half in-process, all at once, on one network."""
    node = agent_node
    pods = [node.new_pod() for _ in range(40)]
    conf = node.conf(ipMasq=False)

    def call(command: str, i: int, direct: bool) -> tuple[int, dict]:
        env = {"KNET_CNI_DIRECT": "1"} if direct else {}
        return node.cni(command, conf, f"m{i}", pods[i], **env)

    with ThreadPoolExecutor(max_workers=20) as pool:
        added = list(pool.map(lambda i: call("ADD", i, i % 2 == 1), range(40)))
    assert [rc for rc, _ in added] == [0] * 40, [r for r in added if r[0]]
    addresses = [r["ips"][0]["address"].split("/")[0] for _, r in added]
    assert len(set(addresses)) == 40 and node.ipam_files() == set(addresses)
    assert node.served_by_agent("ADD", "m0") and not node.served_by_agent("ADD", "m1", wait=0)
    for i in (0, 1):  # each pod really has its own address
        with links.iproute(pods[i]) as ipr:
            assert links.addresses(ipr, "eth0")[0] == added[i][1]["ips"][0]["address"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        deleted = list(pool.map(lambda i: call("DEL", i, i % 2 == 0), range(40)))  # the other path deletes
    assert [rc for rc, _ in deleted] == [0] * 40
    assert node.ipam_files() == set()
    assert not [n for n in node.link_names() if n.startswith("veth")]
