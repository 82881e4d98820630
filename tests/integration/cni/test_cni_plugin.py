"""knet-cni as a runtime calls it, with real namespaces, veths and packets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from knet import links, netns
from tests.integration.cni.conftest import KNET_CNI
from tests.netutil import icmp_echo, tcp_request, tcp_server, udp_exchange

pytestmark = pytest.mark.integration


def pod_ip(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def test_add_result_is_spec_valid_and_pod_is_wired(node):
    pod = node.new_pod()
    rc, res = node.cni("ADD", node.conf(), "c1", pod)
    assert rc == 0, res
    assert res["cniVersion"] == "1.0.0"
    bridge, host, inside = res["interfaces"]
    assert bridge["name"] == "cni0" and "sandbox" not in host
    assert inside == {"name": "eth0", "mac": inside["mac"], "sandbox": netns.path(pod)}
    assert res["ips"] == [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 2}]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}]
    with links.iproute(pod) as ipr:
        assert links.addresses(ipr, "eth0")[0] == "10.99.0.2/24"
        assert links.mac_of(links.get_link(ipr, "eth0")) == inside["mac"]
        assert {"dst": "0.0.0.0/0", "gw": "10.99.0.1"} in [
            {"dst": r["dst"], "gw": r["gw"]} for r in links.routes(ipr)]
        assert links.get_link(ipr, "lo")["state"] == "up"
    with links.iproute(node.name) as ipr:
        assert "10.99.0.1/24" in links.addresses(ipr, "cni0")
        veth = links.get_link(ipr, host["name"])
        assert veth.get("IFLA_MASTER") == links.index(ipr, "cni0")
    # DEL removes the veth and frees the address; a second DEL still succeeds
    assert node.cni("DEL", node.conf(), "c1", pod)[0] == 0
    assert host["name"] not in node.link_names()
    assert node.ipam_files() == set()
    assert node.cni("DEL", node.conf(), "c1", pod)[0] == 0


def test_pods_on_one_bridge_talk_tcp_udp_icmp(agent_node):
    node = agent_node
    a, b = node.new_pod(), node.new_pod()
    ra, rb = node.cni("ADD", node.conf(), "a", a)[1], node.cni("ADD", node.conf(), "b", b)[1]
    ip_a, ip_b = pod_ip(ra), pod_ip(rb)
    with tcp_server(b) as port:
        # the server sees the client's real pod address: no NAT between pods
        assert tcp_request(a, ip_b, port, b"knet") == f"from {ip_a}:knet".encode()
    reply, seen = udp_exchange(a, b, ip_b, b"dgram")
    assert reply == b"dgram" and seen == ip_a
    echo = icmp_echo(a, ip_b)
    assert echo is not None and echo.src == ip_b and bytes(echo.payload.payload) == b"knet-probe"
    # and the node itself reaches its pods through the bridge gateway
    with tcp_server(a) as port:
        assert tcp_request(node.name, ip_a, port, b"n") == b"from 10.99.0.1:n"


def dual_conf(node, **overrides) -> dict:
    """Both families, as a dual-stack node's CNI config has them (flannel's subnet.env gives the same)."""
    ipam = {"type": "host-local", "dataDir": os.path.join(node.state, "ipam"),
            "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd00:99:0:1::/64"}]]}
    return node.conf(ipam=ipam, **overrides)


def v6_of(result: dict) -> str:
    return next(e["address"].split("/")[0] for e in result["ips"] if ":" in e["address"])


def test_dual_stack_pods_get_both_families_and_talk_over_each(node):
    """An address from each range set, a default route per family, IPv6 usable at once (no DAD: the
    conf has hairpinMode, which would make DAD fail), forwarding and ipMasq per family; pods on one
    bridge reach each other over IPv6 and IPv4, the node reaches them over IPv6 through the gateway."""
    a, b = node.new_pod(), node.new_pod()
    rc, ra = node.cni("ADD", dual_conf(node), "a", a)
    assert rc == 0, ra
    rc, rb = node.cni("ADD", dual_conf(node), "b", b)
    assert rc == 0, rb
    assert ra["ips"] == [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 2},
                         {"address": "fd00:99:0:1::2/64", "gateway": "fd00:99:0:1::1", "interface": 2}]
    assert ra["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}, {"dst": "::/0", "gw": "fd00:99:0:1::1"}]
    assert ra["interfaces"][2]["sandbox"] == netns.path(a)
    shown = netns.run(a, ["ip", "-6", "addr", "show", "dev", "eth0", "scope", "global"]).stdout
    assert "fd00:99:0:1::2/64" in shown and "tentative" not in shown and "dadfailed" not in shown, shown
    assert "default via fd00:99:0:1::1 dev eth0" in netns.run(a, ["ip", "-6", "route"]).stdout
    assert netns.run(node.name, ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "1"
    assert "fd00:99:0:1::1/64" in netns.run(node.name, ["ip", "-6", "addr", "show", "dev", "cni0"]).stdout
    ip6_a, ip6_b = v6_of(ra), v6_of(rb)
    with tcp_server(b, "::") as port:
        # no NAT between pods: the server sees the client's own IPv6 address
        assert tcp_request(a, ip6_b, port, b"six", timeout=10) == f"from {ip6_a}:six".encode()
        assert tcp_request(a, pod_ip(rb), port, b"four", timeout=10) == f"from ::ffff:{pod_ip(ra)}:four".encode()
    ping = netns.run(a, ["ping", "-6", "-c", "1", "-W", "5", ip6_b])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    with tcp_server(a, "::") as port:
        assert tcp_request(node.name, ip6_a, port, b"n", timeout=10) == b"from fd00:99:0:1::1:n"
    # ipMasq: each family's chain in its own table, jumped to from the pod's own address
    v4_rules = netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout
    v6_rules = netns.run(node.name, ["ip6tables", "-t", "nat", "-S"]).stdout
    assert f"-A POSTROUTING -s {pod_ip(ra)}/32" in v4_rules and ip6_a not in v4_rules
    assert f"-A POSTROUTING -s {ip6_a}/128" in v6_rules and "! -d ff00::/8" in v6_rules and "-j MASQUERADE" in v6_rules
    # CHECK sees both families; a lost IPv6 default route or address is reported
    checked = dict(dual_conf(node), prevResult=ra)
    assert node.cni("CHECK", checked, "a", a) == (0, {})
    netns.run(a, ["ip", "-6", "route", "del", "default"], check=True)
    rc, err = node.cni("CHECK", checked, "a", a)
    assert rc == 1 and "route ::/0" in err["msg"], err
    netns.run(a, ["ip", "-6", "addr", "del", "fd00:99:0:1::2/64", "dev", "eth0"], check=True)
    rc, err = node.cni("CHECK", checked, "a", a)
    assert rc == 1 and "fd00:99:0:1::2/64" in err["msg"], err
    # DEL: both addresses released, both families' chains gone; a second DEL is fine
    for cid, pod in (("a", a), ("b", b)):
        assert node.cni("DEL", dual_conf(node), cid, pod)[0] == 0
    assert node.ipam_files() == set()
    assert "CNI-" not in netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout
    assert "CNI-" not in netns.run(node.name, ["ip6tables", "-t", "nat", "-S"]).stdout
    assert not [n for n in node.link_names() if n.startswith("veth")]
    assert node.cni("DEL", dual_conf(node), "a", a)[0] == 0


def test_dual_stack_del_without_ipam_state_removes_both_chains(agent_node):
    """DEL with the reservations gone (a wiped dataDir): the chains are found by listing each table."""
    node = agent_node
    pod = node.new_pod()
    assert node.cni("ADD", dual_conf(node), "c1", pod)[0] == 0
    shutil.rmtree(os.path.join(node.state, "ipam"))
    assert node.cni("DEL", dual_conf(node), "c1", pod)[0] == 0
    assert "CNI-" not in netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout
    assert "CNI-" not in netns.run(node.name, ["ip6tables", "-t", "nat", "-S"]).stdout


def test_hairpin_and_mtu_and_promisc(agent_node):
    node = agent_node
    pod = node.new_pod()
    rc, res = node.cni("ADD", node.conf(mtu=1400, promiscMode=True), "c1", pod)
    assert rc == 0, res
    with links.iproute(pod) as ipr:
        assert links.get_link(ipr, "eth0").get("IFLA_MTU") == 1400
    out = netns.run(node.name, ["ip", "-d", "link", "show", res["interfaces"][1]["name"]]).stdout
    assert "hairpin on" in out and "mtu 1400" in out
    assert "PROMISC" in netns.run(node.name, ["ip", "link", "show", "cni0"]).stdout


def test_ip_masq_rules_and_their_removal(agent_node):
    node = agent_node
    pod = node.new_pod()
    ip = pod_ip(node.cni("ADD", node.conf(), "c1", pod)[1])
    rules = netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout
    assert f"-A POSTROUTING -s {ip}/32" in rules and "-j MASQUERADE" in rules
    node.cni("DEL", node.conf(), "c1", pod)
    assert "CNI-" not in netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout


def test_check_detects_removed_address_and_route(agent_node):
    node = agent_node
    pod = node.new_pod()
    conf = node.conf()
    rc, res = node.cni("ADD", conf, "c1", pod)
    assert rc == 0
    checked = dict(conf, prevResult=res)
    assert node.cni("CHECK", checked, "c1", pod) == (0, {})
    netns.run(pod, ["ip", "route", "del", "default"], check=True)
    rc, err = node.cni("CHECK", checked, "c1", pod)
    assert rc == 1 and "route 0.0.0.0/0" in err["msg"]
    netns.run(pod, ["ip", "addr", "flush", "dev", "eth0"], check=True)
    rc, err = node.cni("CHECK", checked, "c1", pod)
    assert rc == 1 and "10.99.0.2/24" in err["msg"]


def test_portmap_chained_after_knet(agent_node):
    """The reference portmap accepts our result as prevResult and maps a host port to the pod."""
    node = agent_node
    pod, client = node.new_pod(), node.new_pod()
    # a small "outside" link: client 172.30.0.2 <-> node 172.30.0.1
    with links.iproute(node.name) as ipr:
        fd = os.open(netns.path(client), os.O_RDONLY)
        ipr.link("add", ifname="ext0", kind="veth", peer={"ifname": "ext0", "net_ns_fd": fd})
        links.set_up(ipr, "ext0")
        links.add_address(ipr, "ext0", "172.30.0.1/24")
    with links.iproute(client) as ipr:
        links.set_up(ipr, "ext0")
        links.add_address(ipr, "ext0", "172.30.0.2/24")
    conf = node.conf()
    rc, res = node.cni("ADD", conf, "pm", pod)
    assert rc == 0
    pm_conf = {"cniVersion": "1.0.0", "name": "kt", "type": "portmap", "snat": True,
               "capabilities": {"portMappings": True}, "prevResult": res,
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}}
    rc, pm_res = node.cni("ADD", pm_conf, "pm", pod, exe="/usr/lib/cni/portmap")
    assert rc == 0, pm_res
    assert pm_res["ips"] == res["ips"]
    with tcp_server(pod, port=8080):
        reply = tcp_request(client, "172.30.0.1", 18080, b"mapped")
    assert reply == b"from 172.30.0.2:mapped"
    assert node.cni("DEL", pm_conf, "pm", pod, exe="/usr/lib/cni/portmap")[0] == 0


def test_fifty_concurrent_adds_get_distinct_addresses(agent_node):
    node = agent_node
    pods = [node.new_pod() for _ in range(50)]
    conf = node.conf(ipMasq=False)
    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(lambda ip: node.cni("ADD", conf, f"c{ip[0]}", ip[1]), enumerate(pods)))
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    addresses = [pod_ip(r) for _, r in results]
    assert len(set(addresses)) == 50
    assert node.ipam_files() == set(addresses)
    with ThreadPoolExecutor(max_workers=25) as pool:
        dels = list(pool.map(lambda ip: node.cni("DEL", conf, f"c{ip[0]}", ip[1]), enumerate(pods)))
    assert all(rc == 0 for rc, _ in dels)
    assert node.ipam_files() == set()
    assert not [n for n in node.link_names() if n.startswith("veth")]


def test_gc_releases_stale_attachments(agent_node):
    node = agent_node
    conf = node.conf(cniVersion="1.1.0")
    pods = [node.new_pod() for _ in range(3)]
    ips = [pod_ip(node.cni("ADD", conf, f"g{i}", p)[1]) for i, p in enumerate(pods)]
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}]})
    assert node.cni("GC", gc)[0] == 0
    assert node.ipam_files() == {ips[1]}
    rules = netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout
    assert ips[1] in rules and ips[0] not in rules and ips[2] not in rules


def test_status_reports_readiness(agent_node, tmp_path):
    node = agent_node
    ok = node.conf(cniVersion="1.1.0")
    assert node.cni("STATUS", ok) == (0, {})
    tiny = node.conf(cniVersion="1.1.0", ipam={
        "type": "host-local", "dataDir": str(tmp_path),
        "ranges": [[{"subnet": "10.98.0.0/24", "rangeStart": "10.98.0.5", "rangeEnd": "10.98.0.5"}]]})
    assert node.cni("ADD", tiny, "only", node.new_pod())[0] == 0
    rc, err = node.cni("STATUS", tiny)
    assert rc == 1 and err["code"] == 50
    rc, err = node.cni("STATUS", node.conf(cniVersion="1.1.0", subnetFile=str(tmp_path / "missing.env")))
    assert rc == 1 and err["code"] == 50


def test_flannel_mode_takes_subnet_and_mtu_from_subnet_env(agent_node, tmp_path):
    node = agent_node
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n"
                   "FLANNEL_IPMASQ=true\n")
    conf = {"cniVersion": "1.0.0", "name": "kt", "type": "knet-cni", "subnetFile": str(env),
            "agentSocket": node.agent_socket, "ipam": {"dataDir": str(tmp_path / "ipam")}}
    pod = node.new_pod()
    rc, res = node.cni("ADD", conf, "f1", pod)
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.244.7.2/24"
    assert {"dst": "10.244.0.0/16", "gw": "10.244.7.1"} in res["routes"]
    with links.iproute(pod) as ipr:
        assert links.get_link(ipr, "eth0").get("IFLA_MTU") == 1450
    assert "MASQUERADE" not in netns.run(node.name, ["iptables", "-t", "nat", "-S"]).stdout


def test_delegated_ipam_plugin_from_cni_path(agent_node):
    """Any IPAM type other than host-local is executed from CNI_PATH (here the reference `static`)."""
    node = agent_node
    conf = node.conf(ipMasq=False, ipam={"type": "static", "addresses": [
        {"address": "10.97.0.9/24", "gateway": "10.97.0.1"}], "routes": [{"dst": "0.0.0.0/0"}]})
    pod = node.new_pod()
    rc, res = node.cni("ADD", conf, "s1", pod)
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.97.0.9/24"
    assert node.cni("DEL", conf, "s1", pod)[0] == 0


def test_reference_conflist_with_only_type_changed(agent_node, tmp_path):
    """The upstream bridge + host-local example, `type` switched to knet-cni."""
    node = agent_node
    conf = {"cniVersion": "1.0.0", "name": "mynet", "type": "knet-cni", "bridge": "mynet0",
            "isDefaultGateway": True, "forceAddress": False, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "subnet": "10.10.0.0/16", "dataDir": str(tmp_path)}}
    pod = node.new_pod()
    rc, res = node.cni("ADD", conf, "ref", pod)
    assert rc == 0, res
    assert res["ips"][0]["address"] == "10.10.0.2/16"
    assert node.cni("DEL", conf, "ref", pod)[0] == 0


@pytest.mark.parametrize(("case", "code"), [
    ("malformed-json", 6), ("missing-env", 4), ("bad-version", 1), ("no-netns", 3), ("bad-subnet", 7),
    ("exhausted", 100), ("not-a-netns", 3),
    ("v6-not-a-subnet", 7), ("v6-host-bits", 7), ("overlapping-v6-ranges", 7), ("v6-exhausted", 100),
])
def test_bad_input_leaves_nothing_behind(node, case, code, tmp_path):
    pod = node.new_pod()
    conf: dict | bytes = node.conf()
    env: dict = {}
    target = pod
    if case == "malformed-json":
        conf = b'{"cniVersion": "1.0.0", "name": '
    elif case == "missing-env":
        env = {"CNI_IFNAME": None}
    elif case == "bad-version":
        conf = node.conf(cniVersion="0.0.1")
    elif case == "no-netns":
        env = {"CNI_NETNS": "/run/netns/does-not-exist-kt"}
    elif case == "not-a-netns":
        (tmp_path / "plain").write_text("")
        env = {"CNI_NETNS": str(tmp_path / "plain")}
    elif case == "bad-subnet":
        conf = node.conf(ipam={"type": "host-local", "subnet": "10.300.0.0/24", "dataDir": node.state})
    elif case == "exhausted":
        conf = node.conf(ipam={"type": "host-local", "dataDir": f"{node.state}/ipam", "ranges": [[{
            "subnet": "10.99.0.0/24", "rangeStart": "10.99.0.7", "rangeEnd": "10.99.0.7"}]]})
        assert node.cni("ADD", conf, "first", node.new_pod())[0] == 0
    elif case.startswith(("v6-", "overlapping-")):
        v6 = {"v6-not-a-subnet": [[{"subnet": "fd00:99::/129"}]],
              "v6-host-bits": [[{"subnet": "fd00:99::5/64"}]],
              "overlapping-v6-ranges": [[{"subnet": "fd00:99::/56"}], [{"subnet": "fd00:99:0:1::/64"}]],
              "v6-exhausted": [[{"subnet": "fd00:99::/64", "rangeStart": "fd00:99::7", "rangeEnd": "fd00:99::7"}]]}
        conf = node.conf(ipam={"type": "host-local", "dataDir": f"{node.state}/ipam",
                               "ranges": [[{"subnet": "10.99.0.0/24"}], *v6[case]]})
        if case == "v6-exhausted":
            assert node.cni("ADD", conf, "first", node.new_pod())[0] == 0
    before_links, before_ips = node.link_names(), node.ipam_files()
    before_nat = [netns.run(node.name, [t, "-t", "nat", "-S"]).stdout for t in ("iptables", "ip6tables")]
    rc, err = node.cni("ADD", conf, "bad", target, **env)
    assert rc == 1
    assert err["code"] == code, err
    assert err["msg"] and len(err["msg"]) > 10
    assert node.link_names() == before_links
    assert node.ipam_files() == before_ips  # (v6-exhausted: the IPv4 address it took is given back)
    assert [netns.run(node.name, [t, "-t", "nat", "-S"]).stdout for t in ("iptables", "ip6tables")] == before_nat
    with links.iproute(pod) as ipr:
        assert links.get_link(ipr, "eth0") is None


def test_knet_cni_executable_runs_via_subprocess_and_version():
    out = subprocess.run([KNET_CNI],
                         input=b'{"cniVersion":"0.4.0"}', env={"CNI_COMMAND": "VERSION"}, capture_output=True)
    assert out.returncode == 0
    assert json.loads(out.stdout)["cniVersion"] == "0.4.0"


def test_bridge_mac_is_stable_when_pods_go(agent_node):
    """The gateway MAC must not follow the lowest port MAC (pods would keep a stale neighbour)."""
    node = agent_node
    pods = [node.new_pod() for _ in range(3)]
    host_macs = []
    for i, p in enumerate(pods):
        rc, res = node.cni("ADD", node.conf(), f"m{i}", p)
        assert rc == 0
        host_macs.append(res["interfaces"][1]["mac"])
    with links.iproute(node.name) as ipr:
        before = links.mac_of(links.get_link(ipr, "cni0"))
    lowest = host_macs.index(min(host_macs))  # the port a MAC-less bridge would copy
    assert node.cni("DEL", node.conf(), f"m{lowest}", pods[lowest])[0] == 0
    with links.iproute(node.name) as ipr:
        assert links.mac_of(links.get_link(ipr, "cni0")) == before
