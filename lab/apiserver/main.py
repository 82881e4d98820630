"""`knet-apiserver`: the lab's Kubernetes API server process, and `start_in_lab()` for the lab.

    knet-apiserver --etcd http://192.168.33.2:2379 --tokens tokens.csv \\
        --listen 192.168.33.2:6443 --listen-netns /proc/1/ns/net=127.0.0.1:0 \\
        [--listen-fd N] [--service-cidr 10.96.0.0/12] [--node-port-range 30000-32767] \\
        [--advertise-address 192.168.33.2] [--ready-file PATH]

Listening sockets are made before the event loop starts: `--listen` in the process's own network
namespace, `--listen-netns NS=ADDR:PORT` inside another one (the thread enters it only to create
the socket, which stays there), `--listen-fd` an inherited socket. The lab uses the last: it runs
the server in its ctl namespace and hands it a socket it bound on 127.0.0.1 in the root namespace
(a listening socket is the only thing the lab ever makes there, as kind does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

import uvloop
from aiohttp import web

from knet import logs, metrics, netns
from lab.apiserver import auth, nodeproxy, pki
from lab.apiserver.allocator import DEFAULT_SERVICE_CIDR, NodePortRange, parse_service_cidrs
from lab.apiserver.authorizer import MODES
from lab.apiserver.bootstrap import bootstrap, load_policy
from lab.apiserver.mirror import Mirror
from lab.apiserver.registry import Registry
from lab.apiserver.server import ApiServer
from lab.apiserver.storage import Store, StoreError
from lab.apiserver.strategy import Config

log = logging.getLogger("lab.apiserver")
LAB_PORT = 6443


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def listen_socket(host: str, port: int, netns_name: str | None = None) -> socket.socket:
    """A listening TCP socket (inside `netns_name` if given: the calling thread enters it only
    for the socket() call; the socket belongs to that namespace for good)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ctx = netns.enter(netns_name) if netns_name else contextlib.nullcontext()
    with ctx:
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(256)
    return sock


def _duration(text: str) -> int:
    """Whole seconds of a Go duration as kube-apiserver's flags take them (`1h0m0s`, `90s`), or of
    a plain number; at least one."""
    if text.isdigit():
        seconds = int(text)
    else:
        parts = re.findall(r"(\d+)([hms])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1h0m0s, 90s)")
        seconds = sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"a duration of at least 1s is needed: {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet-apiserver", description="The knet lab's Kubernetes API server")
    p.add_argument("--etcd", required=True, help="etcd client URL (its gRPC gateway), e.g. http://127.0.0.1:2379")
    p.add_argument("--etcd-prefix", default="/registry")
    p.add_argument("--tokens", required=True, help='token file: token,user[,uid[,"groups"]] per line')
    p.add_argument("--authorization-mode", choices=MODES, default="AlwaysAllow",
                   help="AlwaysAllow (kube-apiserver's default) or RBAC (the lab)")
    p.add_argument("--authorization-policy-file", action="append", default=[], metavar="YAML",
                   help="manifests whose Roles, ClusterRoles and bindings exist from the start, kept as "
                        "the file says (the lab: deploy/rbac.yaml)")
    p.add_argument("--listen", action="append", default=[], type=parse_addr, metavar="ADDR:PORT")
    p.add_argument("--listen-netns", action="append", default=[], metavar="NETNS=ADDR:PORT",
                   help="listen inside another network namespace (a name under /run/netns or a path)")
    p.add_argument("--listen-fd", action="append", default=[], type=int, metavar="FD",
                   help="an inherited listening socket")
    p.add_argument("--service-cidr", "--service-cluster-ip-range", dest="service_cidr", default=DEFAULT_SERVICE_CIDR,
                   help="the service range, or two (IPv4 and IPv6, primary first, comma-separated): dual-stack")
    p.add_argument("--node-port-range", default="30000-32767")
    p.add_argument("--advertise-address", help="address in the `kubernetes` Service's Endpoints")
    p.add_argument("--advertise-port", type=int, default=None)
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM); plain HTTP without")
    p.add_argument("--tls-private-key-file")
    p.add_argument("--kubelet-client-certificate", help="client certificate towards the node agents (PEM)")
    p.add_argument("--kubelet-client-key")
    p.add_argument("--event-ttl", type=_duration, default=3600,
                   help="how long an Event is kept after its last write (a Go duration, e.g. 1h0m0s, or seconds)")
    p.add_argument("--ready-file", help="written (JSON: the listening addresses) once serving")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("apiserver", args.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        cfg = Config.with_ranges(parse_service_cidrs(args.service_cidr), NodePortRange.parse(args.node_port_range),
                                 args.event_ttl)
    except ValueError as e:
        print(f"knet-apiserver: {e}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.authorization_policy_file)
    except (OSError, ValueError) as e:
        print(f"knet-apiserver: {e}", file=sys.stderr)
        return 2
    socks = [listen_socket(h, p) for h, p in args.listen]
    for spec in args.listen_netns:
        ns, _, addr = spec.partition("=")
        socks.append(listen_socket(*parse_addr(addr), netns_name=ns))
    socks += [socket.socket(fileno=fd) for fd in args.listen_fd]
    if not socks:
        print("knet-apiserver: nothing to listen on (--listen / --listen-netns / --listen-fd)", file=sys.stderr)
        return 2
    try:
        # uvloop: the server is all event loop (HTTP, etcd calls, watch fan-out); its loop costs
        # about half of asyncio's per request, which is most of what a create costs here.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args, cfg, socks, policy))
    except StoreError as e:
        log.error("etcd: %s", e)
        return 1
    return 0


async def serve(args: argparse.Namespace, cfg: Config, socks: list[socket.socket], policy: list[dict]) -> None:
    reg = metrics.Registry()
    store = Store(args.etcd, args.etcd_prefix, durations=reg.histogram(
        "etcd_request_duration_seconds", "etcd call latency", ["operation"]))
    registry = Registry(store, cfg)
    Mirror(registry)
    addrs = [s.getsockname()[:2] for s in socks]
    advertise = args.advertise_address or next((h for h, _ in addrs if not h.startswith("127.")), None)
    port = args.advertise_port or next((p for h, p in addrs if h == advertise), addrs[0][1])
    deadline = time.monotonic() + 30
    while True:  # etcd may still be starting next to us
        try:
            if not registry.cache.ready.is_set():
                await registry.start()
            await bootstrap(registry, advertise, port, policy)
            break
        except StoreError as e:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for etcd at %s: %s", args.etcd, e)
            await asyncio.sleep(0.5)
    kubelet_tls = nodeproxy.client_context(args.kubelet_client_certificate, args.kubelet_client_key)
    api = ApiServer(registry, auth.load_tokens(args.tokens), f"{advertise}:{port}" if advertise else "", reg,
                    args.authorization_mode, kubelet_tls=kubelet_tls)
    runner = web.AppRunner(api.app, handle_signals=False, access_log=None, handler_cancellation=True,
                           shutdown_timeout=2.0)
    await runner.setup()
    tls = None
    if args.tls_cert_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert_file, args.tls_private_key_file)
    for sock in socks:
        await web.SockSite(runner, sock, ssl_context=tls).start()
    scheme = "https" if tls else "http"
    listening = [f"{scheme}://{h}:{p}" for h, p in addrs]
    log.info("serving on %s, etcd %s, service CIDR %s, node ports %s", ", ".join(listening), args.etcd,
             ",".join(str(c.network) for c in cfg.service_cidrs), cfg.node_ports)
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "listen": listening}, f)
        os.replace(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A reloaded tokens file takes effect on SIGHUP (the lab adds a node agent's token).
    loop.add_signal_handler(signal.SIGHUP, lambda: setattr(api, "tokens", auth.load_tokens(args.tokens)))
    await stop.wait()
    log.info("stopping")
    api.stop()
    await asyncio.sleep(0.05)  # let open watches write their last chunk
    await runner.cleanup()
    await registry.stop()
    await store.close()


# --- the lab ------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_POLICY = os.path.join(REPO, "deploy", "rbac.yaml")
LAB_DNS_POLICY = os.path.join(REPO, "lab", "bringup", "dns-rbac.yaml")  # the lab's kdns with autopath

@dataclass
class LabApiServer:
    lab: str
    pid: int
    host_url: str  # https://127.0.0.1:<port> in the root namespace (kubectl on the host)
    lab_url: str  # https://192.168.33.2:6443 on the lab LAN (components)
    kubeconfig: str  # the admin kubeconfig (host URL)
    # user -> kubeconfig path with the lab URL, for use inside the lab's namespaces only
    # (the admin's is admin-lab.kubeconfig; admin.kubeconfig is the host one above)
    kubeconfigs: dict[str, str] = field(default_factory=dict)
    tokens_file: str = ""

    def stop(self, timeout: float = 5.0) -> None:
        stop_pid(self.pid, timeout)


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def start_in_lab(lab: str, etcd_url: str = "http://127.0.0.1:2379", *, host_port: int = 0, lab_port: int = LAB_PORT,
                 service_cidr: str = DEFAULT_SERVICE_CIDR, node_port_range: str = "30000-32767",
                 users: tuple[str, ...] | list[str] = auth.DEFAULT_USERS, state_dir: str | None = None,
                 timeout: float = 30.0) -> LabApiServer:
    """Start the API server in the lab's ctl namespace (call from the root namespace).

    Writes `<state>/apiserver/`: tokens.csv, pki/ (ca.crt, apiserver.crt/key), admin.kubeconfig
    (https://127.0.0.1:<host_port>, also copied to `<state>/kubeconfig`: the only ones for the
    host), `<user>.kubeconfig` for every component and admin-lab.kubeconfig
    (https://192.168.33.2:<lab_port>, for use inside the lab), apiserver.log, ready.json, pid.
    """
    from lab.net import topology  # the lab package imports pyroute2; the server itself does not need it

    ctl_ns, ctl_ip = f"{lab}-ctl", topology.CTL_IP
    base = state_dir or topology.state_dir(lab)
    sdir = os.path.join(base, "apiserver")
    os.makedirs(sdir, exist_ok=True)
    tokens_file = os.path.join(sdir, "tokens.csv")
    tokens = auth.ensure_tokens(tokens_file, users)
    certs = pki.ensure(os.path.join(sdir, "pki"), [ctl_ip, parse_service_cidrs(service_cidr)[0].api_service_ip])
    kubelet_cert, kubelet_key = pki.kubelet_client(os.path.join(sdir, "pki"))
    ready = os.path.join(sdir, "ready.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ready)
    host_sock = listen_socket("127.0.0.1", host_port)  # root namespace, loopback only
    host_port = host_sock.getsockname()[1]
    argv = [sys.executable, "-m", "lab.apiserver.main", "--etcd", etcd_url,
            "--tokens", tokens_file, "--listen", f"{ctl_ip}:{lab_port}", "--listen-fd", str(host_sock.fileno()),
            "--service-cidr", service_cidr, "--node-port-range", node_port_range,
            "--advertise-address", ctl_ip, "--advertise-port", str(lab_port), "--ready-file", ready,
            "--tls-cert-file", certs.cert, "--tls-private-key-file", certs.key,
            "--kubelet-client-certificate", kubelet_cert, "--kubelet-client-key", kubelet_key,
            # RBAC with the bindings a cluster gets from deploy/ (the one source of both).
            "--authorization-mode", "RBAC", "--authorization-policy-file", LAB_POLICY,
            "--authorization-policy-file", LAB_DNS_POLICY]
    with open(os.path.join(sdir, "apiserver.log"), "ab") as out:
        proc = subprocess.Popen(netns.exec_argv(ctl_ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, pass_fds=(host_sock.fileno(),), start_new_session=True,
                                cwd=REPO)
    host_sock.close()  # the child has its own copy
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            with open(os.path.join(sdir, "apiserver.log")) as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"knet-apiserver did not start in lab {lab}:\n{tail}")
        time.sleep(0.05)
    host_url, lab_url = f"https://127.0.0.1:{host_port}", f"https://{ctl_ip}:{lab_port}"
    ca = certs.ca_pem()
    admin = auth.write_kubeconfig(os.path.join(sdir, "admin.kubeconfig"), host_url, "admin", tokens["admin"], lab, ca)
    auth.write_kubeconfig(os.path.join(base, "kubeconfig"), host_url, "admin", tokens["admin"], lab, ca)
    # Lab-URL kubeconfigs are for processes inside the lab's namespaces only; the admin's host
    # kubeconfig above must never be overwritten by one (from the root namespace, 192.168.33.2
    # would leave through the host's default route).
    configs = {u: auth.write_kubeconfig(os.path.join(sdir, f"{u}-lab.kubeconfig" if u == "admin" else
                                                     f"{u}.kubeconfig"), lab_url, u, t, lab, ca)
               for u, t in tokens.items()}
    with open(os.path.join(sdir, "pid"), "w") as f:
        f.write(f"{proc.pid}\n")
    return LabApiServer(lab, proc.pid, host_url, lab_url, admin, configs, tokens_file)


if __name__ == "__main__":
    sys.exit(main())
