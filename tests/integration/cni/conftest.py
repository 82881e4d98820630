"""Fixtures for the CNI plugin tests: a node namespace, pod namespaces, the node agent, and a
runner that calls the plugin executable exactly as a container runtime does."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from knet import links, netns
from tests.netutil import unique

BIN = os.path.dirname(sys.executable)
KNET_CNI = os.path.join(BIN, "knet-cni")  # native (cni/shim/knet-cni.c) when install-deps could build it
KNET_CNI_PY = os.path.join(BIN, "knet-cni-py") if os.path.exists(os.path.join(BIN, "knet-cni-py")) else KNET_CNI
CNI_PATH = f"{BIN}:/usr/lib/cni"


def is_native(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


@pytest.fixture(params=["native", "python"])
def thin_executable(request) -> str:
    """Each thin executable a runtime may be given (the native one only where it was built)."""
    if request.param == "native" and not is_native(KNET_CNI):
        pytest.skip("the native knet-cni is not built (no C compiler when ./scripts/install-deps ran)")
    return KNET_CNI if request.param == "native" else KNET_CNI_PY


@dataclass
class Node:
    name: str
    prefix: str
    state: str
    agent_socket: str | None = None
    agent: subprocess.Popen | None = None
    pods: list[str] = field(default_factory=list)
    counter: int = 0
    exe: str = KNET_CNI

    @property
    def agent_log(self) -> str:
        return os.path.join(self.state, "agent.log")

    def start_agent(self) -> None:
        """Start knet-cni-agent in the node (again, after stop_agent) and wait for its socket."""
        self.agent_socket = os.path.join(self.state, "agent.sock")
        self.agent = netns.spawn(self.name, [os.path.join(BIN, "knet-cni-agent"), "--socket", self.agent_socket],
                                 log_path=self.agent_log)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.agent_socket):
            assert self.agent.poll() is None and time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)

    def stop_agent(self, sig: int = signal.SIGTERM) -> int:
        """Signal the agent and wait for it to exit; returns its exit status."""
        assert self.agent is not None
        self.agent.send_signal(sig)
        try:
            return self.agent.wait(timeout=90)
        finally:
            self.agent = None

    def agent_log_text(self) -> str:
        try:
            with open(self.agent_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def served_by_agent(self, command: str, container: str, wait: float = 30.0) -> bool:
        """Whether the agent's log shows it served that request (it logs just after answering,
        so a positive answer is waited for; pass wait=0 to check for "not served")."""
        line = f"request command={command} container={container} ifname="
        deadline = time.monotonic() + wait
        while line not in self.agent_log_text():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

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
            exe: str | None = None, **env) -> tuple[int, dict]:
        """Run a plugin (default: this node's knet-cni) inside the node namespace; returns (exit
        status, parsed stdout)."""
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        full_env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container,
                    "CNI_NETNS": netns.path(pod) if pod else "", "CNI_IFNAME": ifname, "CNI_PATH": CNI_PATH}
        full_env.update(env)
        full_env = {k: v for k, v in full_env.items() if v is not None}
        with netns.enter(self.name):
            proc = subprocess.run([exe or self.exe], input=data, env=full_env, capture_output=True, timeout=60)
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


def _make_node(with_agent: bool, exe: str = KNET_CNI):
    prefix = unique("c")
    state = tempfile.mkdtemp(prefix="knet-test-cni-")
    n = Node(name=f"{prefix}-node", prefix=prefix, state=state, exe=exe)
    netns.create(n.name)
    try:
        if with_agent:
            n.start_agent()
        yield n
    finally:
        if n.agent is not None:
            with contextlib.suppress(ProcessLookupError):
                n.agent.send_signal(signal.SIGCONT)  # a test may have stopped it
        for name in netns.list_names(prefix + "-"):
            netns.delete(name)
        shutil.rmtree(state, ignore_errors=True)
