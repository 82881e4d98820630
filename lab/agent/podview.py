"""A pod worker as the node API sees it (lab.agent.nodeapi.server.PodView): which containers it
has, how to run a command in one, attach to one, and which log file is which instance.

Read from the node API's thread while the worker runs: it only reads the worker's state, and a
container that stops in between is caught where it matters (the exec finds no process)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lab.agent.containers import Process
from lab.agent.nodeapi.remotecommand import AttachTarget, ExecTarget
from lab.agent.nodeapi.server import Conflict, NotFound

if TYPE_CHECKING:
    from lab.agent.podworker import PodWorker


def environ(pid: int) -> dict[str, str] | None:
    """The environment a process started with (a container's: what its exec'd commands get)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


class WorkerView:
    def __init__(self, worker: PodWorker) -> None:
        self.w = worker
        self.name, self.namespace, self.uid, self.pod_netns = worker.name, worker.ns, worker.uid, worker.podns

    def container_names(self) -> list[str]:
        return [c.name for c in self.w.pod.spec.containers]

    def _running(self, container: str) -> Process:
        proc = self.w.procs.get(container)
        if proc is None or not proc.alive():
            raise Conflict(f'container "{container}" in pod "{self.name}" is not running')
        return proc

    def running(self, container: str) -> bool:
        proc = self.w.procs.get(container)
        return proc is not None and proc.alive()

    def exec_target(self, container: str) -> ExecTarget:
        proc = self._running(container)
        spec = next(c for c in self.w.pod.spec.containers if c.name == container)
        env = environ(proc.pid) or {"PATH": os.defpath}
        return ExecTarget(self.pod_netns, env, spec.working_dir, self.w.rt.container_cgroup(self.uid, container))

    def attach_target(self, container: str) -> AttachTarget:
        proc = self._running(container)
        spec = next(c for c in self.w.pod.spec.containers if c.name == container)
        io = self.w.container_io(spec, self.w.states[container].restart_count)
        return AttachTarget(io.log_path, io.tty, io.stdin_fifo, io.control_fifo, spec.stdin_once, proc.alive)

    def log_file(self, container: str, previous: bool) -> str:
        """The kubelet's choice: the running instance, else the last one that ended; previous:
        the last one that ended before (or is) the newest."""
        st = self.w.states[container]
        running = self.running(container)
        if previous:
            if st.last_terminated is None:
                raise NotFound(f'previous terminated container "{container}" in pod "{self.name}" not found')
            instance = st.restart_count - 1 if running else st.restart_count
        elif st.ever_started:
            instance = st.restart_count
        else:
            raise Conflict(f'container "{container}" in pod "{self.name}" is waiting to start: '
                           f"{st.waiting_reason or 'ContainerCreating'}")
        return self.w.rt.container_log(self.namespace, self.name, self.uid, container, max(0, instance))
