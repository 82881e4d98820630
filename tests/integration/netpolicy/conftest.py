"""One long-lived 2-node lab for the whole netpolicy suite (`knet_testing.netpolicy.testbed.matrix_lab`):
namespaces x, y, z with pods a, b, c spread over both nodes (so the matrix covers same-node
bridged and cross-node vxlan traffic), the matrix servers in every pod, an nftables backend per
node. Scenarios re-program the same backends one after the other (each update incremental, as
the daemon does). The lab is named `kt` + 4 hex digits and removed at the end whatever happens;
all rules live in the lab's node namespaces.
"""

from __future__ import annotations

import os
import re
import secrets

import pytest

from knet_testing.netpolicy.testbed import MatrixLab, matrix_lab
from lab import api
from lab.net import state

NAME_RE = re.compile(r"^kt[0-9a-f]{4}$")


@pytest.fixture(scope="session")
def harness() -> MatrixLab:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for name in api.list_labs():  # leftovers of crashed sessions (never a live session's lab)
        if NAME_RE.match(name) and not state.owner_alive(name):
            api.down(name)
    with matrix_lab("kt" + secrets.token_hex(2)) as ml:
        yield ml
