"""RoutingTable -> nginx.conf text (pure; golden-tested).

How the routing semantics map onto nginx (nginx 1.22, no Lua, no njs):
  * hosts: one `server` per host. Precise hosts are plain `server_name`s; `*.example.com` becomes
    the regex `~^[^.]+\\.example\\.com$`, because nginx's own `*.example.com` matches any number of
    leading labels and the Ingress spec says exactly one. nginx tries exact names before regexes,
    which is the spec's "precise before wildcard". Unknown hosts reach the `default_server`.
  * paths: Exact `/foo` -> `location = /foo`; Prefix `/foo` -> `location = /foo` plus
    `location /foo/` (nginx prefix locations are string prefixes, so `location /foo` would also
    take `/foobar`); nginx picks the longest prefix location and exact locations first, which is
    the spec's longest-match and Exact-over-Prefix. `location /` is the host's default backend
    unless a rule claims Prefix `/`.
  * each upstream is one Service port; its servers are the ready endpoints, with keep-alive
    connections, `max_fails`/`fail_timeout` passive health shared by all workers through the
    upstream `zone`, and `proxy_next_upstream error timeout` (nginx never retries non-idempotent
    methods there unless told to, so POSTs are not replayed).
  * listening: every IPv4 address and (`ipv6`) every IPv6 address (`listen 80` + `listen [::]:80`,
    as ingress-nginx does unless `disable-ipv6`), or exactly `listen_addresses`; upstream servers
    of IPv6 endpoints are bracketed (`server [fd00:10:244:1::5]:80`).
  * nginx's 494 (a header line larger than one buffer) is answered as 431 through `error_page`;
    413, 502, 503, 504 get short text bodies that say what happened.
The config carries a hash of itself on the internal status server, so the controller can tell
when a reload has taken effect.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from ingress.accesslog import LOG_FORMAT
from ingress.model import EXACT, Route, RoutingTable, Server, Target, is_wildcard
from ingress.tls import DEFAULT_CERT


@dataclass
class Settings:
    run_dir: str
    http_port: int = 80
    https_port: int = 443
    status_port: int = 10246          # 127.0.0.1 only: stub_status + the config hash
    worker_processes: str = "auto"
    worker_connections: int = 8192
    rlimit_nofile: int | None = None  # worker_rlimit_nofile (the daemon sets it from its hard limit)
    max_body_size: str = "1m"         # larger bodies: 413
    header_buffer: str = "8k"         # one header line larger than this: 431
    header_buffers: int = 4           # all header lines together: at most this many buffers
    connect_timeout: str = "5s"
    read_timeout: str = "60s"
    send_timeout: str = "60s"
    upstream_keepalive: int = 64      # idle keep-alive connections per upstream and worker
    max_fails: int = 1
    fail_timeout: str = "10s"
    next_upstream_tries: int = 3
    shutdown_timeout: str = "60s"     # old workers of a reload: how long open connections may linger
    access_log: bool = True
    ipv6: bool = True                 # with no listen_addresses: every IPv6 address too ([::])
    listen_addresses: tuple[str, ...] = ()  # IPv4/IPv6 addresses to listen on; () = every address

    def listens(self, port: int) -> list[str]:
        """nginx `listen` targets for `port` (IPv6 literals bracketed)."""
        if self.listen_addresses:
            return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in self.listen_addresses]
        return [str(port), f"[::]:{port}"] if self.ipv6 else [str(port)]

    @property
    def cert_dir(self) -> str:
        return os.path.join(self.run_dir, "certs")

    @property
    def access_log_path(self) -> str:
        return os.path.join(self.run_dir, "access.log")


# The access log is the metrics feed, so it carries only what the metrics need: each variable
# costs nginx time on every request (a 13-field JSON format measured ~5 us of ~34 us per proxied
# request; the reference proxy logs nothing). Fields: ingress.accesslog.FIELDS.


def quote(text: str, newline: bool = False) -> str:
    """A double-quoted nginx string (`newline`: ending in a newline escape). `$` is dropped: nginx
    would expand it as a variable and has no escape for it; messages are ours or object names,
    where it never belongs."""
    clean = "".join(c for c in text if 0x20 <= ord(c) < 0x7F and c != "$")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + ("\\n" if newline else "") + '"'


def quote_path(path: str) -> str:
    """A rule path as a quoted location argument, byte for byte (`model.valid_path` has already
    refused quotes, backslashes and whitespace; `$` is literal in a location)."""
    return '"' + path + '"'


def server_name(host: str) -> str:
    if not host:
        return "_"
    if is_wildcard(host):
        return "~^[^.]+" + re.escape(host[1:]).replace("\\-", "-") + "$"
    return host


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = "") -> None:
        self.lines.append(("    " * self.depth + line) if line else "")

    def open(self, line: str) -> None:
        self(line + " {")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self("}")


REASONS = {404: "Not Found", 503: "Service Unavailable"}


def _answer(w: _Writer, target: Target) -> None:
    if target.proxied:
        w(f"proxy_pass http://{target.upstream};")
    else:
        text = f"knet-ingress: {target.status} {REASONS.get(target.status, '')}: {target.message}"
        w(f"return {target.status} {quote(text, True)};")


def _location(w: _Writer, match: str, route: Route) -> None:
    w.open(f"location {match}")
    w(f"set $knet_ingress {quote(route.ingress)};")
    w(f"set $knet_service {quote(route.target.service)};")
    if route.read_timeout and route.target.proxied:
        w(f"proxy_read_timeout {route.read_timeout}s;")
    _answer(w, route.target)
    w.close()


def _error_pages(w: _Writer, s: Settings) -> None:
    total = f"{s.header_buffers} x {s.header_buffer}"
    pages = {
        431: ("494 =431", f"Request Header Fields Too Large: a header line exceeds {s.header_buffer} "
                          f"or the request line and headers exceed {total}"),
        413: ("413", f"Payload Too Large: the request body exceeds {s.max_body_size}"),
        502: ("502", "Bad Gateway: no endpoint of the backend service accepted the request"),
        503: ("503", "Service Unavailable: the backend service has no endpoint that can take the request"),
        504: ("504", "Gateway Timeout: the backend service did not answer in time"),
    }
    for code, (match, _) in pages.items():
        w(f"error_page {match} @knet_{code};")
    for code, (_, text) in pages.items():
        w(f"location @knet_{code} {{ return {code} {quote(f'knet-ingress: {code} {text}', True)}; }}")


def _server_head(w: _Writer, s: Settings, server: Server, http: bool, https: bool, cert: str | None) -> None:
    default = " default_server" if not server.host else ""
    w.open("server")
    if http:
        for target in s.listens(s.http_port):
            w(f"listen {target}{default};")
    if https:
        for target in s.listens(s.https_port):
            w(f"listen {target} ssl{default};")
    w(f"server_name {server_name(server.host)};")
    w(f"set $knet_host {quote(server.host or '_')};")
    if https and cert:
        path = os.path.join(s.cert_dir, cert)
        w(f"ssl_certificate {path};")
        w(f"ssl_certificate_key {path};")
    _error_pages(w, s)


def _routes(w: _Writer, server: Server) -> None:
    exact = {r.path for r in server.routes if r.kind == EXACT}
    has_root = False
    for r in server.routes:
        if r.kind == EXACT:
            _location(w, f"= {quote_path(r.path)}", r)
        elif r.path == "/":
            has_root = True
            _location(w, quote_path("/"), r)
        else:
            if r.path not in exact:
                _location(w, f"= {quote_path(r.path)}", r)
            _location(w, quote_path(r.path + "/"), r)
    # nginx answers a request for `/foo` with a 301 to `/foo/` when a proxy_pass location named
    # `/foo/` exists (exact ones too) and no location `= /foo` does. For an Exact `/foo/` the spec
    # says `/foo` does not match it: give `/foo` an exact location with whatever the table says.
    claimed = exact | {r.path for r in server.routes if r.kind != EXACT}
    for p in sorted(exact):
        bare = p.rstrip("/")
        if bare and bare != p and bare not in claimed:
            claimed.add(bare)
            _location(w, f"= {quote_path(bare)}", server.lookup(bare))
    if not has_root:
        _location(w, quote_path("/"), server.fallback)


def _server(w: _Writer, s: Settings, server: Server) -> None:
    tls = server.tls
    if tls is not None and tls.error:
        # A broken secret: answer with the reason on both ports, never serve the host's content
        # over plain HTTP or under another certificate.
        _server_head(w, s, server, True, True, None)
        broken = Route("/", "Prefix", Target(status=503, message=f"TLS for host {server.host} is unavailable: "
                                                                  f"{tls.error}"), "")
        _location(w, quote_path("/"), broken)
        w.close()
        return
    cert = tls.file_name if tls is not None else None
    if server.ssl_redirect:
        _server_head(w, s, server, True, False, None)
        port = "" if s.https_port == 443 else f":{s.https_port}"
        w.open('location "/"')
        w(f"return 308 https://$host{port}$request_uri;")
        w.close()
        w.close()
        _server_head(w, s, server, False, True, cert)
    else:
        _server_head(w, s, server, True, True, cert)
    _routes(w, server)
    w.close()


def _http(table: RoutingTable, s: Settings) -> list[str]:
    w = _Writer()
    run = s.run_dir
    w.depth = 1
    w("default_type text/plain;")
    w("server_tokens off;")
    w("uninitialized_variable_warn off;")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        w(f"{kind}_temp_path {run}/tmp/{kind};")
    w("sendfile on;")
    w("tcp_nodelay on;")
    w("keepalive_timeout 75s;")
    w(f"client_max_body_size {s.max_body_size};")
    w("client_header_buffer_size 1k;")
    w(f"large_client_header_buffers {s.header_buffers} {s.header_buffer};")
    w("server_names_hash_bucket_size 256;")  # room for the longest DNS name (253)
    w("server_names_hash_max_size 16384;")
    w("map $http_upgrade $knet_connection { default upgrade; \"\" \"\"; }")
    w(f"log_format knet escape=json '{LOG_FORMAT}';")  # tab-separated, see ingress.accesslog
    w(f"access_log {s.access_log_path} knet buffer=64k flush=1s;" if s.access_log else "access_log off;")
    w("proxy_http_version 1.1;")
    w("proxy_set_header Host $http_host;")
    w("proxy_set_header Upgrade $http_upgrade;")
    w("proxy_set_header Connection $knet_connection;")
    w("proxy_set_header X-Real-IP $remote_addr;")
    w("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
    w("proxy_set_header X-Forwarded-Proto $scheme;")
    w("proxy_set_header X-Forwarded-Host $host;")
    w("proxy_set_header X-Forwarded-Port $server_port;")
    w(f"proxy_connect_timeout {s.connect_timeout};")
    w(f"proxy_read_timeout {s.read_timeout};")
    w(f"proxy_send_timeout {s.send_timeout};")
    w("proxy_buffer_size 8k;")
    w("proxy_next_upstream error timeout;")
    w(f"proxy_next_upstream_tries {s.next_upstream_tries};")
    w("proxy_next_upstream_timeout 15s;")
    default_cert = os.path.join(s.cert_dir, DEFAULT_CERT)
    w(f"ssl_certificate {default_cert};")
    w(f"ssl_certificate_key {default_cert};")
    w("ssl_protocols TLSv1.2 TLSv1.3;")
    w("ssl_session_cache shared:knet_ssl:10m;")
    w("ssl_session_timeout 10m;")
    for up in sorted(table.upstreams.values(), key=lambda u: u.name):
        w()
        w.open(f"upstream {up.name}")
        # One shared zone: the passive-health state (max_fails) is seen by every worker.
        w("zone knet_upstreams 4m;")
        for addr in up.servers:
            w(f"server {addr} max_fails={s.max_fails} fail_timeout={s.fail_timeout};")
        w(f"keepalive {s.upstream_keepalive};")
        w("keepalive_timeout 60s;")
        w.close()
    for host in sorted(table.servers):
        w()
        _server(w, s, table.servers[host])
    return w.lines


def render(table: RoutingTable, s: Settings) -> str:
    http = _http(table, s)
    digest = hashlib.sha256("\n".join(http).encode()).hexdigest()[:16]
    head = [
        f"# generated by knet-ingress (config {digest}); do not edit",
        f"worker_processes {s.worker_processes};",
        *([f"worker_rlimit_nofile {s.rlimit_nofile};"] if s.rlimit_nofile else []),
        f"worker_shutdown_timeout {s.shutdown_timeout};",
        f"pid {s.run_dir}/nginx.pid;",
        f"error_log {s.run_dir}/error.log notice;",
        "events {",
        f"    worker_connections {s.worker_connections};",
        "}",
        "http {",
    ]
    status = [
        "",
        "    server {",
        f"        listen 127.0.0.1:{s.status_port};",
        "        access_log off;",
        "        location = /nginx_status { stub_status; }",
        f'        location = /knet/config {{ return 200 "{digest}\\n"; }}',
        "        location / { return 404; }",
        "    }",
        "}",
    ]
    return "\n".join(head + http + status) + "\n"


def config_digest(text: str) -> str:
    """The digest a rendered config announces (first line)."""
    m = re.search(r"\(config ([0-9a-f]+)\)", text.split("\n", 1)[0])
    return m.group(1) if m else ""
