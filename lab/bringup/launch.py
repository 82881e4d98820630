"""Start a lab daemon and wait for it: the one "spawn, wait until ready, fail with the log tail"
every launcher uses.

    d = spawn("kdns", p.ctl.netns, [binary("kdns"), ...], log, DnsError, keep_mounts=True)
    if not wait_until(answers, [d], 30.0):          # raises DnsError with the log tail if d exits
        raise DnsError("kdns did not answer within 30s (see ...)")
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from knet import netns
from lab.errors import LabError

TAIL = 1500  # characters of a dead daemon's log shown in the error


def binary(name: str) -> str:
    """A console script of this installation (the venv's bin)."""
    return os.path.join(os.path.dirname(sys.executable), name)


@dataclass
class Daemon:
    what: str  # in messages: "kdns", "kproxy (iptables) on node1"
    proc: subprocess.Popen
    log: str
    error: type[LabError]  # the launcher's error class
    offset: int = 0  # where this run's lines start in the (appended) log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """What this run has logged so far (not a predecessor's lines in the same file)."""
        try:
            with open(self.log, errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        except FileNotFoundError:
            return ""

    def check(self) -> None:
        """Raise the launcher's error, with the log's tail, if the process has exited."""
        if self.proc.poll() is not None:
            raise self.error(f"{self.what} exited with {self.proc.returncode} (see {self.log}):\n"
                             f"{self.output()[-TAIL:]}")


def spawn(what: str, netns_name: str, argv: list[str], log: str, error: type[LabError],
          keep_mounts: bool = False) -> Daemon:
    """Start `argv` detached in a lab namespace, appending to `log` (see `knet.netns.spawn` for
    `keep_mounts`: network namespace only, as nsenter does)."""
    offset = os.path.getsize(log) if os.path.exists(log) else 0
    proc = netns.spawn(netns_name, argv, log_path=log, keep_mounts=keep_mounts)
    return Daemon(what, proc, log, error, offset)


def wait_until(ready: Callable[[], bool], daemons: Iterable[Daemon], timeout: float, interval: float = 0.2) -> bool:
    """Poll `ready()` until it is true (True) or `timeout` seconds pass (False); before every poll
    each daemon must still run (else its error is raised)."""
    deadline = time.monotonic() + timeout
    daemons = list(daemons)
    while True:
        for d in daemons:
            d.check()
        if ready():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def settle(daemons: Iterable[Daemon], seconds: float = 1.0) -> None:
    """Give freshly started daemons `seconds` to fail at start-up (their error is raised)."""
    wait_until(lambda: False, daemons, seconds, interval=0.1)
