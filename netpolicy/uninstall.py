"""What netpolicy leaves on a node, as an uninstall step (`knet uninstall-node` runs it): its
nftables table (`inet knet-netpol`), removed with the backend's own `NftBackend.remove()`."""

from __future__ import annotations

import shutil

from knet import netfilter
from knet.uninstall import Step
from netpolicy import nft
from netpolicy.backend import NftBackend


def uninstall_steps() -> list[Step]:
    """The table, if this network namespace has it."""
    if not shutil.which("nft"):
        return []
    if not netfilter.nft_list(["list", "table", nft.FAMILY, nft.TABLE]):
        return []
    return [Step("nft", (f"nft table {nft.FAMILY} {nft.TABLE}",), NftBackend().remove)]
