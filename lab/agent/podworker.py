"""One thread per pod (the kubelet's pod worker): make or adopt the sandbox, run the init
containers to completion in order, start the containers, restart them (restartPolicy,
CrashLoopBackOff, failed liveness), run the probes, report status, and on removal stop everything
and give the sandbox back (CNI DEL, namespace removed).

A `hostNetwork: true` pod has no sandbox: its containers run in the node's network namespace and
its IP is the node's (no CNI ADD/DEL, the node's resolv.conf and hosts). Every container start
makes the pod's volumes afresh (lab.agent.volumes: ConfigMaps and Secrets read then) and runs the
process in a mount namespace of its own with its volumeMounts bound in."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

from knet.kube import client
from knet.kube.models import Container, Pod
from knet.kube.models.core import LifecycleHandler, Probe
from knet.kube.recorder import NORMAL, WARNING
from lab.agent import images, podenv, volumes
from lab.agent.containers import Backoff, ContainerIO, Process
from lab.agent.probes import LIVENESS, READINESS, STARTUP, Tracker, run_probe
from lab.agent.status import ContainerState, comparable, now, pod_status

if TYPE_CHECKING:
    from lab.agent.runtime import Runtime

log = logging.getLogger("lab.agent.pod")


class PodWorker(threading.Thread):
    def __init__(self, rt: Runtime, pod: Pod, saved: dict[str, Any] | None = None) -> None:
        super().__init__(name=f"pod {pod.key}", daemon=True)
        self.rt, self.pod, self.saved = rt, pod, saved
        self.key, self.uid = pod.key, pod.metadata.uid or ""
        self.ns, self.name = pod.namespace or "default", pod.name
        self.host_network = pod.spec.host_network
        # hostNetwork: the node's namespace ("": the agent's own, when it is not told its name)
        self.podns: str = (rt.node_info.get("netns") or "") if self.host_network else rt.pod_netns(self.ns, self.name)
        self.record: dict[str, Any] | None = None
        self.states = {c.name: ContainerState(c.name, c.image) for c in pod.spec.containers}
        self.init_states = {c.name: ContainerState(c.name, c.image) for c in pod.spec.init_containers}
        self.procs: dict[str, Process | None] = {}
        self.backoffs = {c.name: Backoff() for c in (*pod.spec.init_containers, *pod.spec.containers)}
        self.next_start: dict[str, float] = {}
        self.run_since: dict[str, float] = {}
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.finalize = False  # set by terminate(): delete the pod from the API after the teardown
        self.start_time = saved.get("start_time") if saved else None
        self.reported: Any = comparable(pod.status.to_dict()) if saved else None

    # --- called from the agent's informer thread -------------------------------------------------

    def update(self, pod: Pod) -> None:
        self.pod = pod
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def terminate(self, pod: Pod) -> None:
        """The pod is being deleted gracefully: stop it within its grace period (preStop hooks,
        SIGTERM, SIGKILL at the deadline), then delete it for good."""
        if not self.finalize:
            self.pod, self.finalize = pod, True
            log.info("pod %s: terminating (grace %ss)", self.key, pod.metadata.deletion_grace_period_seconds)
        self.stop()

    # --- the thread ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._setup()
                    break
                except Exception as e:
                    log.warning("pod %s: sandbox not made: %s; retrying", self.key, e)
                    self._report_waiting("ContainerCreating", f"sandbox: {e}")
                    self.stopping.wait(2.0)
            if not self.stopping.is_set():
                threading.Thread(target=self._probe_loop, name=f"probes {self.key}", daemon=True).start()
            while not self.stopping.is_set():
                self._tick()
                self.wake.wait(0.25)
                self.wake.clear()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
        finally:
            try:
                self._teardown()
            finally:
                self.done.set()

    def _setup(self) -> None:
        saved = self.saved
        if self.host_network:
            self.record = {"ip": self.rt.node_ip, "host_network": True}
            if saved and saved.get("uid") == self.uid:
                self._adopt(saved)
            else:
                self.start_time = now()
            log.info("pod %s: host network (%s)", self.key, self.rt.node_ip)
            self._save()
            return
        if saved and saved.get("uid") == self.uid and os.path.exists(f"/run/netns/{self.podns}"):
            self.record = saved["record"]
            self._adopt(saved)
            log.info("pod %s: adopted sandbox %s (%s) and %d running container(s)", self.key, self.podns,
                     self.record.get("ip"), sum(1 for p in self.procs.values() if p))
            return
        if os.path.exists(f"/run/netns/{self.podns}"):
            log.info("pod %s: removing a stale sandbox %s first", self.key, self.podns)
            self.rt.sandbox_del(self.ns, self.name, saved.get("record") if saved else None)
        ports = [{"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.lower(),
                  **({"hostIP": p.host_ip} if p.host_ip else {})}
                 for c in self.pod.spec.containers for p in c.ports if p.host_port]
        self.record = self.rt.sandbox_add(self.ns, self.name, ports, self.uid)
        self.start_time = now()
        self.rt.write_dns_files(self.pod, self.podns, self.record.get("ip"))
        log.info("pod %s: sandbox %s ip %s (CNI ADD %.0f ms)", self.key, self.podns, self.record.get("ip"),
                 self.record.get("cni_add_ms", 0))
        self._save()

    def _adopt(self, saved: dict[str, Any]) -> None:
        ready_now = {c.name: c.ready for c in self.pod.status.container_statuses}
        self.start_time = saved.get("start_time") or self.start_time
        for name, info in (saved.get("init") or {}).items():
            if name in self.init_states:
                self.init_states[name].ever_started = True
                self.init_states[name].restart_count = info.get("restart_count", 0)
                self.init_states[name].terminated = info.get("terminated")
        for c in self.pod.spec.containers:
            info = saved.get("containers", {}).get(c.name)
            st = self.states[c.name]
            if not info:
                continue
            st.restart_count = info.get("restart_count", 0)
            st.last_terminated = info.get("last_terminated")
            st.ever_started = True
            proc = Process.adopt(info["pid"], info.get("started"))
            self.procs[c.name] = proc
            if proc is None:
                continue  # died while no agent watched: restarted by the first tick
            st.running, st.pid, st.started_at = True, proc.pid, info.get("started_at")
            self.run_since[c.name] = time.monotonic()
            # Probe at once, from the state the API shows: an agent restart must not flap readiness.
            self._new_trackers(c, time.monotonic(), adopted_ready=ready_now.get(c.name, False))

    def _save(self) -> None:
        data = {"uid": self.uid, "namespace": self.ns, "name": self.name, "record": self.record,
                "start_time": self.start_time,
                "containers": {n: {"pid": p.pid, "started": p.started, "restart_count": self.states[n].restart_count,
                                   "started_at": self.states[n].started_at,
                                   "last_terminated": self.states[n].last_terminated}
                               for n, p in self.procs.items() if p is not None and n in self.states},
                "init": {n: {"restart_count": st.restart_count, "terminated": st.terminated}
                         for n, st in self.init_states.items() if st.terminated is not None}}
        self.rt.save_pod_state(self.ns, self.name, data)

    # --- containers ------------------------------------------------------------------------------

    def _new_trackers(self, c: Container, started: float, adopted_ready: bool | None = None) -> None:
        with self.lock:
            for kind in (READINESS, LIVENESS, STARTUP):
                self.trackers.pop((c.name, kind), None)
            for kind, probe in ((READINESS, c.readiness_probe), (LIVENESS, c.liveness_probe),
                                (STARTUP, c.startup_probe)):
                if probe is None:
                    continue
                t = Tracker(probe, kind, started)
                if adopted_ready is not None:
                    t.started = started - probe.initial_delay_seconds  # due now
                    if kind == READINESS:
                        t.result = adopted_ready
                self.trackers[(c.name, kind)] = t

    def container_io(self, c: Container, instance: int) -> ContainerIO:
        log_path = self.rt.container_log(self.ns, self.name, self.uid, c.name, instance)
        cdir = os.path.dirname(log_path)
        return ContainerIO(log_path, tty=c.tty, stdin_fifo=os.path.join(cdir, "stdin") if c.stdin else None,
                           control_fifo=os.path.join(cdir, "control") if c.tty or c.stdin else None)

    def _start(self, c: Container, st: ContainerState) -> None:
        pod = self.pod
        ip = (self.record or {}).get("ip")
        links = (pod.spec.model_extra or {}).get("enableServiceLinks", True) is not False
        # The Services that exist now: a container started later sees later ones (as in Kubernetes).
        svc_env = podenv.service_env(self.rt.services(), self.ns, links)
        env = podenv.container_env(c, pod, svc_env, ip, self.rt.node_ip, self.rt.lookup)
        if images.is_knet(c.image):
            env["PATH"] = images.knet_path(env["PATH"])
        vols = volumes.plan(pod, self.rt.pod_volume_dir(self.uid), self.rt.node_root, self.rt.lookup, self.rt.token)
        mounts = volumes.container_mounts((c.model_extra or {}).get("volumeMounts") or [], vols)
        volumes.materialize(vols)
        argv = volumes.mount_argv(mounts, podenv.expand_argv(images.container_argv(c), env))
        instance = st.restart_count + 1 if st.ever_started else 0
        self._pull_events(c)
        io = self.container_io(c, instance)
        proc = Process.spawn(self.podns, argv, env, io, c.working_dir,
                             cgroup=self.rt.container_cgroup(self.uid, c.name))
        self._prune_logs(io.log_path, instance)
        st.restart_count = instance
        st.ever_started, st.running, st.pid, st.started_at = True, True, proc.pid, now()
        st.terminated, st.waiting_reason, st.waiting_message = None, "", ""
        self.procs[c.name] = proc
        self.run_since[c.name] = time.monotonic()
        self._new_trackers(c, time.monotonic())
        log.info("pod %s: started container %s (pid %d): %s", self.key, c.name, proc.pid, " ".join(argv)[:200])
        self.rt.event(pod, NORMAL, "Created", f"Created container {c.name}", c.name)
        self.rt.event(pod, NORMAL, "Started", f"Started container {c.name}", c.name)
        self._save()

    def _pull_events(self, c: Container) -> None:
        """Pulling/Pulled as the kubelet reports them (the lab pulls nothing: host binaries run):
        an image that is always pulled (policy Always, or a :latest tag by default) is "pulled",
        others are "already present"."""
        policy = (c.model_extra or {}).get("imagePullPolicy") or (
            "Always" if images.parse_image(c.image).tag == "latest" else "IfNotPresent")
        if policy == "Always":
            self.rt.event(self.pod, NORMAL, "Pulling", f'Pulling image "{c.image}"', c.name)
            self.rt.event(self.pod, NORMAL, "Pulled", f'Successfully pulled image "{c.image}" in 0s '
                                                      "(0s including waiting)", c.name)
        else:
            self.rt.event(self.pod, NORMAL, "Pulled", f'Container image "{c.image}" already present on machine',
                          c.name)

    @staticmethod
    def _prune_logs(log_path: str, instance: int) -> None:
        """Keep the logs of this instance and the one before (`kubectl logs --previous`)."""
        cdir = os.path.dirname(log_path)
        with contextlib.suppress(OSError):
            for name in os.listdir(cdir):
                head = name.split(".", 1)[0]
                if (name.endswith(".log") or ".log." in name) and head.isdigit() and int(head) < instance - 1:
                    os.unlink(os.path.join(cdir, name))

    def _exited(self, c: Container, proc: Process, reason: str | None = None, init: bool = False) -> None:
        st = self.init_states[c.name] if init else self.states[c.name]
        code = proc.exit_code()
        code = 137 if reason == "Unhealthy" and code is None else (code if code is not None else 0)
        term = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"),
                "startedAt": st.started_at, "finishedAt": now()}
        self.procs[c.name] = None
        st.running, st.ready, st.pid = False, False, None
        policy = self.pod.spec.restart_policy
        if init and code == 0:
            st.terminated = term  # done: the next init container (or the app containers) starts
        elif (policy == "Always" and not init) or (policy in ("Always", "OnFailure") and code != 0):
            ran = time.monotonic() - self.run_since.get(c.name, time.monotonic())
            delay = 0.0 if reason == "Unhealthy" else self.backoffs[c.name].on_exit(ran)
            self.next_start[c.name] = time.monotonic() + delay
            st.last_terminated, st.terminated = term, None
            st.waiting_reason = "CrashLoopBackOff" if delay else "ContainerCreating"
            st.waiting_message = f"back-off {delay:.0f}s restarting failed container={c.name}" if delay else ""
            if delay and ran < self.backoffs[c.name].reset_after:
                self.rt.event(self.pod, WARNING, "BackOff", f"Back-off restarting failed container {c.name} in pod "
                                                            f"{self.name}_{self.ns}({self.uid})", c.name)
        else:
            st.terminated = term
        log.info("pod %s: container %s exited with %d (%s)", self.key, c.name, code, term["reason"])

    def _start_or_wait(self, c: Container, st: ContainerState, t: float) -> None:
        try:
            self._start(c, st)
        except (podenv.ConfigError, volumes.VolumeError) as e:
            st.waiting_reason, st.waiting_message = "CreateContainerConfigError", str(e)
            self.rt.event(self.pod, WARNING, "Failed", f"Error: {e}", c.name)
            self.next_start[c.name] = t + self.backoffs[c.name].on_exit(0)
        except OSError as e:
            st.waiting_reason, st.waiting_message = "RunContainerError", str(e)
            self.rt.event(self.pod, WARNING, "Failed", f"Error: {e}", c.name)
            self.next_start[c.name] = t + self.backoffs[c.name].on_exit(0)

    def _init_tick(self, t: float) -> bool:
        """Run the init containers in order; True once all have completed."""
        for c in self.pod.spec.init_containers:
            st = self.init_states.setdefault(c.name, ContainerState(c.name, c.image))
            if st.terminated is not None and st.terminated.get("exitCode") == 0:
                continue
            if st.terminated is not None:
                return False  # failed with restartPolicy Never: the pod has failed
            proc = self.procs.get(c.name)
            if proc is not None and proc.alive():
                return False
            if proc is not None:
                self._exited(c, proc, init=True)
                if st.terminated is not None and st.terminated.get("exitCode") == 0:
                    self._save()
                    continue
                if st.terminated is not None:
                    return False
            if t >= self.next_start.get(c.name, 0.0):
                self._start_or_wait(c, st, t)
            return False
        return True

    def _tick(self) -> None:
        pod = self.pod
        t = time.monotonic()
        if not self._init_tick(t):
            self._report()
            return
        for c in pod.spec.containers:
            st = self.states.setdefault(c.name, ContainerState(c.name, c.image))
            proc = self.procs.get(c.name)
            if proc is not None and proc.alive():
                with self.lock:
                    live = self.trackers.get((c.name, LIVENESS))
                    ready_t = self.trackers.get((c.name, READINESS))
                    startup = self.trackers.get((c.name, STARTUP))
                if live is not None and not live.result:
                    log.info("pod %s: container %s failed liveness (%s): restarting", self.key, c.name,
                             live.last_message)
                    self.rt.event(pod, NORMAL, "Killing", f"Container {c.name} failed liveness probe, will be "
                                                          "restarted", c.name)
                    proc.stop(grace=min(float(pod.spec.termination_grace_period_seconds or 2), 2.0))
                    self._exited(c, proc, "Unhealthy")
                    continue
                st.started = startup is None or startup.result
                st.ready = st.started and (ready_t is None or ready_t.result)
                continue
            if proc is not None:
                self._exited(c, proc)
            if st.terminated is None and t >= self.next_start.get(c.name, 0.0):
                self._start_or_wait(c, st, t)
        self._report()

    # --- probes ----------------------------------------------------------------------------------

    def _probe_loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                trackers = list(self.trackers.items())
            due = min(trackers, key=lambda kv: kv[1].next_due(), default=None)
            if due is None:
                self.stopping.wait(0.5)
                continue
            (cname, _kind), tracker = due
            delay = tracker.next_due() - time.monotonic()
            if delay > 0:
                self.stopping.wait(min(delay, 0.5))  # re-plan often: containers restart, trackers change
                continue
            container = next((c for c in self.pod.spec.containers if c.name == cname), None)
            if container is None:
                tracker.last_run = time.monotonic()
                continue
            ok, msg = run_probe(tracker.probe, container, (self.record or {}).get("ip"), self.podns)
            with self.lock:
                current = self.trackers.get(due[0]) is tracker
                flipped = tracker.record(ok, time.monotonic(), msg)
            if current and not ok:  # every failure, as the kubelet's prober (deduplicated into counts)
                self.rt.event(self.pod, WARNING, "Unhealthy", f"{tracker.kind.capitalize()} probe failed: {msg}",
                              cname)
            if current and flipped:
                log.info("pod %s: %s probe of %s %s%s", self.key, tracker.kind, cname,
                         "succeeded" if ok else "failed", f": {msg}" if msg else "")
                self.wake.set()

    # --- status ----------------------------------------------------------------------------------

    def _report(self) -> None:
        ip = (self.record or {}).get("ip")
        status = pod_status(self.pod, [self.states[c.name] for c in self.pod.spec.containers if c.name in self.states],
                            self.record is not None, [ip] if ip else [], self.rt.node_ip, self.start_time,
                            [self.init_states[c.name] for c in self.pod.spec.init_containers
                             if c.name in self.init_states])
        if comparable(status) == self.reported:
            return
        try:
            client.patch_status(self.rt.api, "Pod", self.name, status, self.ns)
            self.reported = comparable(status)
        except client.ApiException as e:
            if e.status == 404:
                self.stop()  # the pod is gone; the DELETE event is on its way
                return
            log.warning("pod %s: status update failed: %s %s", self.key, e.status, e.reason)

    def _report_waiting(self, reason: str, message: str) -> None:
        for st in self.states.values():
            st.waiting_reason, st.waiting_message = reason, message[:300]
        with contextlib.suppress(Exception):
            self._report()

    # --- removal ---------------------------------------------------------------------------------

    def _teardown(self) -> None:
        if not self.stopping.is_set():
            return  # the thread died on a bug: leave the pod running for the next agent to adopt
        if self.finalize:
            deadline = time.monotonic() + float(self.pod.metadata.deletion_grace_period_seconds or 0)
            self._pre_stop(deadline)
            grace = max(0.1, deadline - time.monotonic())
        else:  # removed at once (force delete, or gone while we were away)
            grace = min(float(self.pod.spec.termination_grace_period_seconds or 0), 2.0)
        for cname, proc in self.procs.items():
            if proc is not None:
                if proc.alive():
                    self.rt.event(self.pod, NORMAL, "Killing", f"Stopping container {cname}", cname)
                proc.stop(grace)
        if not self.host_network:  # the node's namespace and /etc/netns files are not the pod's
            error = self.rt.sandbox_del(self.ns, self.name, self.record)
            if error:
                log.warning("pod %s: CNI DEL: %s", self.key, error)
            shutil.rmtree(f"/etc/netns/{self.podns}", ignore_errors=True)
        self.rt.forget_pod(self.ns, self.name, self.uid)
        log.info("pod %s: removed (processes stopped, CNI DEL, namespace %s gone)", self.key, self.podns)
        if self.finalize:
            finish_deletion(self.rt.api, self.ns, self.name, self.uid)

    def _pre_stop(self, deadline: float) -> None:
        """The containers' preStop hooks, each in its own thread as the kubelet runs them, all
        bounded by the grace period (SIGTERM follows when they end or the time is up)."""
        hooks = [(c, c.lifecycle.pre_stop) for c in self.pod.spec.containers
                 if c.lifecycle and c.lifecycle.pre_stop and self.procs.get(c.name) is not None]
        threads = [threading.Thread(target=self._run_hook, args=(c, h, deadline), daemon=True) for c, h in hooks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run_hook(self, c: Container, hook: LifecycleHandler, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if hook.sleep is not None:
            time.sleep(max(0.0, min(float(hook.sleep.seconds), remaining)))
            return
        probe = Probe(exec=hook.exec, http_get=hook.http_get, tcp_socket=hook.tcp_socket,
                      timeout_seconds=max(1, int(remaining)))
        ok, message = run_probe(probe, c, (self.record or {}).get("ip"), self.podns)
        if not ok:
            log.warning("pod %s: preStop hook of %s failed: %s", self.key, c.name, message)


def finish_deletion(api: Any, namespace: str, name: str, uid: str) -> None:
    """The last step of a graceful deletion: remove the pod object (grace 0, only this incarnation)."""
    try:
        client.delete(api, "Pod", name, namespace, grace_period_seconds=0, uid=uid)
        log.info("pod %s/%s: deleted after termination", namespace, name)
    except client.ApiException as e:
        if e.status not in (404, 409):  # gone already / a new pod of that name
            log.warning("pod %s/%s: final delete failed: %s %s", namespace, name, e.status, e.reason)


def load_state(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
