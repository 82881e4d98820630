"""Fixtures for the CNI plugin tests: a node namespace, pod namespaces, the node agent, and a
runner that calls the plugin executable exactly as a container runtime does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from knet import links, netns
from tests.netutil import unique

BIN = os.path.dirname(sys.executable)
KNET_CNI = os.path.join(BIN, "knet-cni")
CNI_PATH = f"{BIN}:/usr/lib/cni"


@dataclass
class Node:
    name: str
    prefix: str
    state: str
    agent_socket: str | None = None
    pods: list[str] = field(default_factory=list)
    counter: int = 0

    def new_pod(self) -> str:
        self.counter += 1
        name = f"{self.prefix}-p{self.counter}"
        netns.create(name)
        self.pods.append(name)
        return name

    def conf(self, **overrides) -> dict:
        conf = {"cniVersion": "1.0.0", "name": "kt", "type": "knet-cni", "bridge": "cni0",
                "isGateway": True, "ipMasq": True, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": os.path.join(self.state, "ipam")}}
        if self.agent_socket:
            conf["agentSocket"] = self.agent_socket
        conf.update(overrides)
        return conf

    def cni(self, command: str, conf: dict | bytes, container: str = "", pod: str = "", ifname: str = "eth0",
            exe: str = KNET_CNI, **env) -> tuple[int, dict]:
        """Run a plugin inside the node namespace; returns (exit status, parsed stdout)."""
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
                    "CNI_NETNS": netns.path(pod) if pod else "", "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH}
        full_env.update(env)
        full_env = {k: v for k, v in full_env.items() if v is not None}
        with netns.enter(self.name):
            proc = subprocess.run([exe], input=data, env=full_env, capture_output=True, timeout=60)
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out else {})

    def ipam_files(self, network: str = "kt") -> set[str]:
        d = os.path.join(self.state, "ipam", network)
        if not os.path.isdir(d):
            return set()
        return {f for f in os.listdir(d) if f != "lock" and not f.startswith(("last_reserved", "."))}

    def link_names(self) -> set[str]:
        with links.iproute(self.name) as ipr:
            return {link.get("IFLA_IFNAME") for link in ipr.link("dump")}


@pytest.fixture(params=["agent", "direct"])
def node(request):
    """A node namespace; parametrized so every test runs through the agent and the direct path."""
    yield from _make_node(with_agent=request.param == "agent")


@pytest.fixture
def agent_node():
    yield from _make_node(with_agent=True)


def _make_node(with_agent: bool):
    prefix = unique("c")
    state = tempfile.mkdtemp(prefix="knet-test-cni-")
    n = Node(name=f"{prefix}-node", prefix=prefix, state=state)
    netns.create(n.name)
    try:
        if with_agent:
            n.agent_socket = os.path.join(state, "agent.sock")
            proc = netns.spawn(n.name, [os.path.join(BIN, "knet-cni-agent"), "--socket", n.agent_socket],
                               log_path=os.path.join(state, "agent.log"))
            deadline = time.monotonic() + 10
            while not os.path.exists(n.agent_socket):
                assert proc.poll() is None and time.monotonic() < deadline, "agent did not start"
                time.sleep(0.05)
        yield n
    finally:
        for name in netns.list_names(prefix + "-"):
            netns.delete(name)
        shutil.rmtree(state, ignore_errors=True)
