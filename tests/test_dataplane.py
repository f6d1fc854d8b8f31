"""The two data planes as planned and rendered: userspace (libipsec) and kernel (XFRM
interfaces). The kernel data plane running is tests/test_kernel_vm.py's, in a guest
kernel with ESP."""
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path, PurePosixPath

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.ipsec import ESP

from vpnlab import engine
from vpnlab.checks.throughput import across_a_tunnel, limited_by
from vpnlab.checks.wire import clear_text_leaks
from vpnlab.model.topology import load
from vpnlab.plan import clab
from vpnlab.plan.build import build
from vpnlab.plan.parts import (
    LOCAL_PRIORITY,
    PEER_PRIORITY,
    TABLE_FIRST_PEER,
    TABLE_INTO_TUNNEL,
)
from vpnlab.plan.render import render

ROOT = Path(__file__).parent.parent
NODES_DIR = Path("/var/lib/vpnlab/dataplane/nodes")


def plan_of(topology: str, dataplane: str):
    return build(load(ROOT / "topologies" / topology), "fast", dataplane=dataplane)


def xfrm_nodes(plan) -> set[str]:
    return {n.name for n in plan.nodes.values() if any(i.kind == "xfrm" for i in n.interfaces)}


def test_site_to_site_ends_get_an_xfrm_interface_and_p2s_keeps_libipsec():
    """Every site-to-site tunnel end, Azure's and the device's, routes into an XFRM
    interface ipsec0 of its own; the point-to-site server stays on libipsec."""
    plan = plan_of("point-to-site.yaml", "kernel")
    ends = {n.name for n in plan.nodes.values() if n.role == "tunnel-endpoint"}     # the standby's too
    assert {e for t in plan.tunnels for e in (t.azure_end, t.onprem_end) if e} < ends
    assert plan.dataplane == "kernel" and xfrm_nodes(plan) == ends
    for end in ends:
        node = plan.nodes[end]
        assert node.iface("ipsec0").mtu == 1400
        assert any(r.dev == "ipsec0" and r.table == TABLE_INTO_TUNNEL for r in node.routes)
    assert {e.node for e in plan.p2s_ends}.isdisjoint(xfrm_nodes(plan))


def test_the_userspace_plan_has_no_xfrm_interface():
    plan = plan_of("active-active-bgp.yaml", "userspace")
    assert plan.dataplane == "userspace" and not xfrm_nodes(plan)


def test_kernel_charons_load_no_libipsec_and_carry_the_interface_id():
    plan = plan_of("active-active-bgp.yaml", "kernel")
    files = render(plan, NODES_DIR)
    for end in xfrm_nodes(plan):
        conf, swanctl = files[end]["strongswan.conf"], files[end]["swanctl.conf"]
        load_line = next(line for line in conf.splitlines() if line.strip().startswith("load = "))
        assert "kernel-libipsec" not in load_line and "kernel-netlink" in load_line
        assert "install_routes = no" in conf and "fwmark" not in conf
        # libipsec's forced encapsulation fakes NAT detection: ESP would never go raw
        assert "encap = yes" not in swanctl
        children = swanctl.count("esp_proposals")
        assert children and swanctl.count("if_id_in = 1") == children == swanctl.count("if_id_out = 1")
    userspace = render(plan_of("active-active-bgp.yaml", "userspace"), NODES_DIR)
    assert all("kernel-libipsec" in f["strongswan.conf"] and "if_id" not in f["swanctl.conf"]
               and "encap = yes" in f["swanctl.conf"] for f in userspace.values() if "swanctl.conf" in f)


def test_kernel_tunnel_ends_hold_their_routers_public_address_untranslated():
    """Raw ESP needs charon to see no NAT: on the kernel data plane each tunnel end holds
    its router's public address and dials from it; the router routes what the peer sends
    to that address to the end (a rule before local delivery, a table per tunnel), and
    translates nothing. A device behind an ISP's NAT holds its private address: there
    the NAT is real, and charon falls back to UDP 4500 as Azure does."""
    plan = plan_of("nat-overlapping-sites.yaml", "kernel")
    files = render(plan, NODES_DIR)
    for t in plan.tunnels:
        for end_name, router_name in ((t.azure_end, t.gateway_instance), (t.onprem_end, t.device)):
            end, router = plan.nodes[end_name], plan.nodes[router_name]
            peer = t.remote_ip if router.role == "gateway-instance" else plan.nodes[t.gateway_instance].public_ip
            assert f"{router.public_ip}/32" in end.iface("ul").addresses
            assert end.charon["local_addr"] == router.public_ip
            rule = next(r for r in router.rules if r.src == peer and r.priority == PEER_PRIORITY)
            assert (rule.iif, rule.dst) == ("pub", f"{router.public_ip}/32") and rule.table >= TABLE_FIRST_PEER
            route = next(r for r in router.routes if r.table == rule.table)
            assert route.via == end.iface("ul").addresses[0].split("/")[0]
            assert router.local_priority == LOCAL_PRIORITY > PEER_PRIORITY
            # the end sends from the router's address; the router asks for neighbours from it
            assert all(n.sysctls()["net.ipv4.conf.all.accept_local"] == 1 for n in (router, end))
            assert f"ip saddr {peer} udp dport {{ 500, 4500 }} dnat" not in files[router_name]["nftables.conf"]
    behind = plan.nodes[plan.tunnels[-1].device]
    assert plan.tunnels[-1].device == "branch3" and not behind.public_ip.startswith(("192.0.2.", "198.51.100."))
    userspace = plan_of("nat-overlapping-sites.yaml", "userspace")
    assert not any(n.local_priority for n in userspace.nodes.values())
    assert all(n.charon["local_addr"] != userspace.nodes[t.gateway_instance].public_ip
               for t in userspace.tunnels for n in [userspace.nodes[t.azure_end]])


def test_containerlab_nodes_make_their_xfrm_interface():
    plan = plan_of("single-site-static.yaml", "kernel")
    files = clab.setup_files(plan, lambda n: PurePosixPath("/lab") / n)
    for end in xfrm_nodes(plan):
        assert "ip link add ipsec0 type xfrm if_id 1" in files[end]["setup.sh"]
    instance = plan.tunnels[0].gateway_instance
    assert f"ip rule add table local priority {LOCAL_PRIORITY}\nip rule del table local priority 0\n" \
        in files[instance]["setup.sh"]


@pytest.mark.parametrize("asked, esp, chosen", [("auto", True, "kernel"), ("auto", False, "userspace"),
                                                ("userspace", True, "userspace"), ("kernel", True, "kernel")])
def test_the_data_plane_chosen(asked, esp, chosen):
    assert engine._dataplane(asked, esp) == chosen


def test_the_kernel_data_plane_on_a_kernel_without_esp_is_refused():
    with pytest.raises(engine.NoKernelEsp, match="this kernel has no ESP"):
        engine._dataplane("kernel", False)


def test_an_unknown_data_plane_is_bad_input():
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "up", "--dataplane", "fast"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--dataplane" in res.stderr and "kernel" in res.stderr


def test_a_figure_names_the_data_plane_that_limited_it():
    assert limited_by(200, "VpnGw5", 10000, "kernel") == "the lab's data plane (the kernel's XFRM)"
    assert limited_by(200, "VpnGw5", 10000) == "the lab's data plane (libipsec)"
    assert limited_by(9000, "VpnGw5", 10000, "kernel") == "the SKU (VpnGw5, 10000 Mbit/s)"


def test_the_throughput_pair_crosses_a_tunnel():
    assert across_a_tunnel(plan_of("single-site-static.yaml", "kernel")) == ("app-vm", "branch-host", "10.40.1.10")


def test_the_wire_check_takes_raw_esp_and_ike_and_nothing_else():
    """Raw ESP (the kernel data plane without NAT) is IPsec on the wire like ESP in UDP
    4500; anything else between the public addresses is a leak."""
    public, protected = [IPv4Network("192.0.2.0/24"), IPv4Network("198.51.100.0/24")], [IPv4Network("10.0.0.0/8")]
    ok = [IP(src="192.0.2.10", dst="198.51.100.4") / ESP(spi=7, seq=1, data=b"x" * 40),
          IP(src="192.0.2.10", dst="198.51.100.4") / UDP(sport=4500, dport=4500) / (b"\1" * 40),
          IP(src="198.51.100.4", dst="192.0.2.10") / UDP(sport=500, dport=500) / (b"\0" * 40)]
    leak = IP(src="192.0.2.10", dst="198.51.100.4") / TCP(dport=443)
    assert clear_text_leaks(ok, protected, public) == []
    assert clear_text_leaks([leak], protected, public) == ["neither IKE nor ESP: 192.0.2.10 -> 198.51.100.4 proto 6"]
