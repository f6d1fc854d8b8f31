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


@pytest.mark.parametrize("topology", sorted(p.name for p in (ROOT / "topologies").glob("*.yaml")))
def test_every_shipped_design_renders_on_the_kernel_data_plane(topology):
    """Point-to-site servers stay on libipsec whatever their protocols (hub-spoke's is
    IKEv2 alone: a server with only ipsec0 was once taken for a site-to-site end)."""
    plan = plan_of(topology, "kernel")
    files = render(plan, NODES_DIR)
    for end in plan.p2s_ends:
        node = plan.nodes[end.node]
        assert not node.charon_host and not any(i.kind == "xfrm" for i in node.interfaces)
        if end.protocol == "IkeV2":
            assert "kernel-libipsec" in files[end.node]["strongswan.conf"]


def test_the_userspace_plan_has_no_xfrm_interface():
    plan = plan_of("active-active-bgp.yaml", "userspace")
    assert plan.dataplane == "userspace" and not xfrm_nodes(plan)


def charon_files(plan, files) -> dict[str, dict[str, str]]:
    """The rendered files of every node that runs a charon for site-to-site tunnels."""
    return {n.name: files[n.name] for n in plan.nodes.values()
            if n.runs_charon and not n.charon.get("p2s") and n.role != "p2s-client"}


def test_kernel_charons_load_no_libipsec_and_carry_the_interface_id():
    """One charon per gateway instance carries all its tunnels, each CHILD SA with its
    tunnel end's XFRM interface ID; a device's tunnel end runs its own with ID 1."""
    plan = plan_of("active-active-bgp.yaml", "kernel")
    files = render(plan, NODES_DIR)
    charons = charon_files(plan, files)
    assert len(charons) == 6, sorted(charons)       # two instances, two devices with two ends each
    for node, f in charons.items():
        conf, swanctl = f["strongswan.conf"], f["swanctl.conf"]
        load_line = next(line for line in conf.splitlines() if line.strip().startswith("load = "))
        assert "kernel-libipsec" not in load_line and "kernel-netlink" in load_line
        assert "install_routes = no" in conf and "fwmark" not in conf
        # libipsec's forced encapsulation fakes NAT detection: ESP would never go raw
        assert "encap = yes" not in swanctl
        ends = plan.hosted_ends(node) or [plan.nodes[node]]
        assert swanctl.count("version = ") == len(ends)
        for end in ends:
            if_id = end.iface("ipsec0").if_id
            block = swanctl[swanctl.index(f"    {end.charon['connection']} {{"):]
            block = block[:block.index("\n    }\n")]
            children = block.count("esp_proposals")
            assert children and block.count(f"if_id_in = {if_id}\n") == children == block.count(f"if_id_out = {if_id}\n")
    hosts = {n.charon_host for n in plan.nodes.values() if n.charon_host}
    assert hosts == {t.gateway_instance for t in plan.tunnels}
    for host in hosts:      # one interface ID per tunnel of the instance
        ids = [e.iface("ipsec0").if_id for e in plan.hosted_ends(host)]
        assert len(ids) == len(set(ids)) > 1 and "swanctl.conf" not in files[plan.hosted_ends(host)[0].name]
    userspace = render(plan_of("active-active-bgp.yaml", "userspace"), NODES_DIR)
    assert all("kernel-libipsec" in f["strongswan.conf"] and "if_id" not in f["swanctl.conf"]
               and "encap = yes" in f["swanctl.conf"] for f in userspace.values() if "swanctl.conf" in f)


def test_kernel_tunnels_leave_the_instance_from_its_own_address_untranslated():
    """Raw ESP needs charon to see no NAT. A gateway instance's charon runs on the
    instance's public address, and its tunnel ends' XFRM interfaces are made in the
    instance (where the SAs are) and moved into the ends: nothing is translated or
    handed on. A device's tunnel end holds the device's public address; the device
    routes what the gateway sends to that address to it (a rule before local delivery,
    a table per tunnel). A device behind an ISP's NAT holds its private address: there
    the NAT is real, and charon falls back to UDP 4500 as Azure does."""
    plan = plan_of("nat-overlapping-sites.yaml", "kernel")
    files = render(plan, NODES_DIR)
    for t in plan.tunnels:
        inst, end = plan.nodes[t.gateway_instance], plan.nodes[t.azure_end]
        assert end.charon_host == inst.name and end.iface("ipsec0").made_in == inst.name
        assert end.charon["local_addr"] == inst.public_ip and inst.charon["local_addr"] == inst.public_ip
        assert f"{inst.public_ip}/32" not in end.iface("ul").addresses and not inst.local_priority
        assert f"ip saddr {t.remote_ip} udp dport {{ 500, 4500 }} dnat" not in files[inst.name]["nftables.conf"]
        end, device = plan.nodes[t.onprem_end], plan.nodes[t.device]
        peer = inst.public_ip
        assert f"{device.public_ip}/32" in end.iface("ul").addresses
        assert end.charon["local_addr"] == device.public_ip and not end.charon_host
        rule = next(r for r in device.rules if r.src == peer and r.priority == PEER_PRIORITY)
        assert (rule.iif, rule.dst) == ("pub", f"{device.public_ip}/32") and rule.table >= TABLE_FIRST_PEER
        route = next(r for r in device.routes if r.table == rule.table)
        assert route.via == end.iface("ul").addresses[0].split("/")[0]
        assert device.local_priority == LOCAL_PRIORITY > PEER_PRIORITY
        # the end sends from the device's address; the device asks for neighbours from it
        assert all(n.sysctls()["net.ipv4.conf.all.accept_local"] == 1 for n in (device, end))
        assert f"ip saddr {peer} udp dport {{ 500, 4500 }} dnat" not in files[device.name]["nftables.conf"]
    behind = plan.nodes[plan.tunnels[-1].device]
    assert plan.tunnels[-1].device == "branch3" and not behind.public_ip.startswith(("192.0.2.", "198.51.100."))
    userspace = plan_of("nat-overlapping-sites.yaml", "userspace")
    assert not any(n.local_priority or n.charon_host for n in userspace.nodes.values())
    assert all(n.charon["local_addr"] != userspace.nodes[t.gateway_instance].public_ip
               for t in userspace.tunnels for n in [userspace.nodes[t.azure_end]])


def test_containerlab_cannot_move_an_instances_xfrm_interfaces():
    """A node's setup.sh cannot reach another node's namespace: containerlab refuses a
    kernel-data-plane plan, with the reason; a device's end makes its own interface."""
    plan = plan_of("single-site-static.yaml", "kernel")
    assert "moved into their tunnel ends" in clab.unsupported(plan)
    files = clab.setup_files(plan, lambda n: PurePosixPath("/lab") / n)
    end = plan.tunnels[0].onprem_end
    assert "ip link add ipsec0 type xfrm if_id 1" in files[end]["setup.sh"]
    assert f"ip rule add table local priority {LOCAL_PRIORITY}\nip rule del table local priority 0\n" \
        in files[plan.tunnels[0].device]["setup.sh"]


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
