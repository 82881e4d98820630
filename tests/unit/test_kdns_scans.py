"""kdns's handling of one change: the Service and its slices are looked up through the informers
(SERVICE index), one service is recomputed, no informer cache is scanned."""

from __future__ import annotations

import asyncio

from kdns.daemon import Kdns, parse_args
from knet_testing.kdns import endpoint_slice, service
from tests.informer_feed import feed, remove, scans, settle

FQDN = "{}.default.svc.cluster.local"


def test_one_slice_change_recomputes_one_service_without_scanning():
    async def scenario():
        kdns = Kdns(parse_args(["--upstream", "127.0.0.1:1"]))
        kdns.make_informers(None, asyncio.get_running_loop())  # no API client: fed below
        for i, name in enumerate(("web", "db", "api")):
            feed(kdns.services, service(name, cluster_ip="None"))
            feed(kdns.slices, endpoint_slice(name, endpoints=[{"addresses": [f"10.244.{i}.1"]}]))
        await settle()
        assert FQDN.format("db") in kdns.store.names
        recomputed: list[str] = []
        update = kdns.store.update_service
        kdns.store.update_service = lambda key, *a: recomputed.append(key) or update(key, *a)
        before = scans(kdns.informers)

        feed(kdns.slices, endpoint_slice("web", endpoints=[{"addresses": ["10.244.0.1"]},
                                                           {"addresses": ["10.244.0.2"], "hostname": "w2"}]))
        await settle()
        assert recomputed == ["default/web"]
        assert f"w2.{FQDN.format('web')}" in kdns.store.names

        # A slice relabelled to another Service: both Services are recomputed.
        recomputed.clear()
        moved = endpoint_slice("api", endpoints=[{"addresses": ["10.244.0.9"]}], name="web-abcde")
        feed(kdns.slices, moved)
        await settle()
        assert sorted(recomputed) == ["default/api", "default/web"]
        assert FQDN.format("web") not in kdns.store.names  # its only slice moved away

        recomputed.clear()
        remove(kdns.services, service("db", cluster_ip="None"))
        await settle()
        assert recomputed == ["default/db"] and FQDN.format("db") not in kdns.store.names
        assert scans(kdns.informers) == before

    asyncio.run(scenario())
