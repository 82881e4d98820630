"""Uninstall steps: how a component says what it put on a node and how that goes again.

Each component exports `uninstall_steps(...) -> list[Step]` from its own `uninstall` module, built
on its own facts (chain names, devices, files) and cleanup code; `knet uninstall-node`
(knet_cli/uninstall.py) composes them, prints them (`--dry-run`) and runs them. The helpers here
are generic (iptables chains by owner, links by name, paths under a root): no component's facts.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from knet import links, netfilter


@dataclass(frozen=True)
class Step:
    """One removal. `lines`: what it removes, one line per object (as `--dry-run` prints them);
    `run()` removes it, raising an exception whose message says why it could not; `label` names
    the step in that error."""
    label: str
    lines: tuple[str, ...]
    run: Callable[[], None]


def at(root: str, path: str) -> str:
    """`path` of the node whose / is mounted at `root` (a host root inside a container)."""
    return os.path.join(root, path.lstrip("/"))


# --- iptables ------------------------------------------------------------------------------------

def iptables_cleanup(save: str, owned: Callable[[str], bool]) -> str:
    """iptables-restore --noflush input removing the chains `owned` accepts from `iptables-save`
    output: first the rules in other chains that jump to them, then flush, then delete (a chain can
    only go once nothing refers to it)."""
    out: list[str] = []
    table: str | None = None
    ours: list[str] = []
    deletes: list[str] = []

    def flush() -> None:
        if table and ours:
            out.extend([f"*{table}", *deletes, *(f"-F {c}" for c in ours), *(f"-X {c}" for c in ours), "COMMIT"])

    for line in save.splitlines():
        if line.startswith("*"):
            table, ours, deletes = line[1:].strip(), [], []
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if owned(chain):
                ours.append(chain)
        elif line.startswith("-A "):
            parts = line.split()
            chain = parts[1]
            target = parts[parts.index("-j") + 1] if "-j" in parts else (parts[parts.index("-g") + 1] if "-g" in parts
                                                                          else None)
            if chain not in ours and target in ours:
                deletes.append("-D" + line[2:])
        elif line.strip() == "COMMIT":
            flush()
            table = None
    return "\n".join(out) + ("\n" if out else "")


def iptables_steps(owned: Callable[[str], bool]) -> list[Step]:
    """One step per address family (iptables, ip6tables) that has chains `owned` accepts."""
    steps = []
    for cmd in ("iptables", "ip6tables"):
        if not shutil.which(f"{cmd}-save"):
            continue
        script = iptables_cleanup(netfilter.run([f"{cmd}-save"]).stdout, owned)
        if script:
            lines = tuple(f"{cmd}: {line}" for line in script.splitlines() if line.startswith(("-D", "-X", "*")))
            steps.append(Step(cmd, lines, functools.partial(netfilter.restore, script, cmd)))
    return steps


# --- links and paths -----------------------------------------------------------------------------

def link_steps(names: Iterable[str]) -> list[Step]:
    """Delete links by name (in the caller's network namespace); one already gone is fine. Routes,
    neighbours and FDB entries on a link go with it; deleting either end of a veth removes both."""
    return [Step(f"link {name}", (f"link {name}",), _delete_link(name)) for name in names]


def _delete_link(name: str) -> Callable[[], None]:
    def run() -> None:
        with links.iproute() as ipr:
            idx = links.index(ipr, name)
            if idx is not None:
                ipr.link("del", index=idx)
    return run


def path_steps(paths: Iterable[str]) -> list[Step]:
    """Remove the paths that exist (files, symlinks, directory trees)."""
    return [Step(f"file {p}", (f"file {p}",), _remove_path(p)) for p in paths if os.path.lexists(p)]


def _remove_path(path: str) -> Callable[[], None]:
    def run() -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return run
