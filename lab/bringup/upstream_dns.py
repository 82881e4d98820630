"""The lab's "internet" DNS: a small authoritative server in the client namespace, so kdns has
an upstream to forward names outside the cluster to (never a real resolver).

    python -m lab.bringup.upstream_dns --listen 192.168.33.100:53 --record example.com=192.168.33.100
"""

from __future__ import annotations

import argparse
import time

from dnslib import QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

DEFAULT_RECORDS = {"example.com": "192.168.33.100", "www.example.com": "192.168.33.100",
                   "outside.lab": "192.168.33.100"}


class StaticResolver(BaseResolver):
    def __init__(self, records: dict[str, str], ttl: int = 60) -> None:
        self.records = {k.rstrip(".").lower(): v for k, v in records.items()}
        self.ttl = ttl

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name in self.records:
            if request.q.qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=self.ttl, rdata=A(self.records[name])))
        else:
            reply.header.rcode = 3  # NXDOMAIN
        return reply


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the lab's upstream DNS server")
    p.add_argument("--listen", default="0.0.0.0:53")
    p.add_argument("--record", action="append", default=[], metavar="NAME=IP")
    args = p.parse_args(argv)
    records = dict(DEFAULT_RECORDS)
    for item in args.record:
        name, _, ip = item.partition("=")
        records[name] = ip
    host, _, port = args.listen.rpartition(":")
    resolver = StaticResolver(records)
    servers = [DNSServer(resolver, address=host, port=int(port), tcp=tcp) for tcp in (False, True)]
    for s in servers:
        s.start_thread()
    while all(s.isAlive() for s in servers):
        time.sleep(1)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
