"""Names for the labs the test suites make (`kt` + 4 hex): each lab is torn down by the fixture
that named it whatever happens, and the labs of crashed sessions are swept."""

from __future__ import annotations

import re
import secrets

import pytest

from lab import api
from lab.net import state

NAME_RE = re.compile(r"^kt[0-9a-f]{4}$")


def sweep_crashed_labs() -> None:
    """Tear down the test labs whose session died before its teardown (a live session's stay)."""
    for name in api.list_labs():
        if NAME_RE.match(name) and not state.owner_alive(name):
            api.down(name)


def new_lab_name(request: pytest.FixtureRequest) -> str:
    """A fresh lab name whose lab goes when `request`'s fixture is finalized, whatever happens (the
    finalizer is registered before the lab is made, so a half-made lab goes too)."""
    name = "kt" + secrets.token_hex(2)
    request.addfinalizer(lambda: api.down(name))
    return name
