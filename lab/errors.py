"""The lab's one error base.

`LabError`: a failure a user can act on (bad input, a missing lab or pod, a daemon that did not
come up, a plugin that failed): `knet` prints its message as one line and exits 1. Every lab
error class derives from it (PlanError, PodError, CniExecError, the launchers' errors, ...);
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class LabError(RuntimeError):
    pass


class NoSuchLab(LabError, LookupError):
    """No lab.json for that name (a LookupError too, as callers have always caught it)."""
