"""What a container's image runs, since the lab pulls no images (pure).

- agnhost (`registry.k8s.io/e2e-test-images/agnhost:2.x`): its subcommands netexec,
  serve-hostname and pause run the built-in equivalents in `lab.workloads`; `command: [/agnhost]`
  is dropped, the arguments are passed through.
- serve_hostname / serve-hostname images: `lab.workloads serve-hostname`; the pause image: pause.
- a container with `command` (or only `args`) runs exactly that, as the image's shell would.
- a base OS image without a command (busybox, alpine, debian, ...) runs `sh` with no input: it
  exits at once, as the real image does without a TTY, and so crash-loops.
- any other image without a command is taken for an HTTP server image (nginx, the seeds' node-js,
  golang, whale images): `lab.workloads http` on each TCP containerPort (80 if none), answering
  "<hostname> <version>" where the version is the image's tag.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from knet.kube.models import Container

BASE_IMAGES = frozenset({"busybox", "alpine", "debian", "ubuntu", "centos", "fedora", "bash", "archlinux",
                         "rockylinux", "almalinux", "amazonlinux", "opensuse", "photon", "oraclelinux"})
AGNHOST_MODES = ("netexec", "serve-hostname", "pause")


@dataclass(frozen=True)
class ImageRef:
    repository: str  # full path without tag/digest
    tag: str

    @property
    def name(self) -> str:
        """The last path element: "registry.k8s.io/e2e-test-images/agnhost" -> "agnhost"."""
        return self.repository.rsplit("/", 1)[-1]


def parse_image(image: str) -> ImageRef:
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
    else:
        repo, tag = ref, "latest"
    return ImageRef(repo, tag)


def version_of(image: str) -> str:
    return parse_image(image).tag


def is_knet(image: str) -> bool:
    """The project's own image (`knet`, `ghcr.io/<owner>/knet:<tag>`): its executables are this
    installation's."""
    return parse_image(image).name == "knet"


def knet_path(path: str, python: str = sys.executable) -> str:
    """PATH with the installed project's executables (the console scripts beside its python) first."""
    return os.path.dirname(python) + ":" + path


def _workload(mode: str, *args: str, python: str) -> list[str]:
    return [python, "-m", "lab.workloads", mode, *args]


def container_argv(container: Container, python: str = sys.executable) -> list[str]:
    ref = parse_image(container.image)
    command, args = list(container.command), list(container.args)
    if "agnhost" in ref.name:
        if command and command[0].rsplit("/", 1)[-1] == "agnhost":
            command = command[1:]
        argv = command + args or ["netexec"]
        if argv[0] in AGNHOST_MODES:
            return _workload(*argv, python=python)
        return _workload("unsupported-agnhost-" + argv[0], python=python)  # exits 2: crash-loops visibly
    if ref.name in ("serve_hostname", "serve-hostname") and not command:
        return _workload("serve-hostname", *args, python=python)
    if ref.name == "pause" and not command:
        return _workload("pause", python=python)
    if command or args:
        return command + args
    if ref.name in BASE_IMAGES:
        return ["sh", "-c", "exit 0"]
    argv = ["--version", ref.tag, "--image", container.image]
    tcp = [p.container_port for p in container.ports if p.protocol == "TCP"]
    udp = [p.container_port for p in container.ports if p.protocol == "UDP"]
    for port in tcp or ([] if udp else [80]):
        argv += ["--port", str(port)]
    for port in udp:
        argv += ["--udp-port", str(port)]
    return _workload("http", *argv, python=python)
