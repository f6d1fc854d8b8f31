"""Golden rendering: every shipped topology renders to exactly the files under
tests/golden/<topology>/<node>/ (regenerate with VPNLAB_UPDATE_GOLDEN=1 and review)."""
import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import yaml

from vpnlab.model.topology import load
from vpnlab.plan.build import build, gateway_subnet_ips
from vpnlab.plan.parts import never_advertised
from vpnlab.plan.render import render

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
NODES_DIR = Path("/var/lib/vpnlab/golden/nodes")
TOPOLOGIES = sorted((ROOT / "topologies").glob("*.yaml"))


def rendered(path: Path) -> dict[str, str]:
    files = render(build(load(path), "azure"), NODES_DIR)
    return {f"{node}/{name}": text for node, texts in files.items() for name, text in texts.items()}


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_rendering_matches_golden(path):
    got = rendered(path)
    folder = GOLDEN / path.stem
    if os.environ.get("VPNLAB_UPDATE_GOLDEN"):
        for rel, text in got.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
    want = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{rel} differs from the golden file"


def test_azure_defaults_in_gateway_configs():
    files = rendered(ROOT / "topologies/active-active-bgp.yaml")
    swan = files["hub-to-dev0-in0-az/swanctl.conf"]
    assert "proposals = aes256-sha1-modp1024, aes256-sha256-modp1024" in swan
    assert "rekey_time = 28800s" in swan and "rekey_time = 27000s" in swan
    assert "dpd_delay = 15s" in swan           # 45 s DPD timeout, azure timers
    assert "Lab.Dev0" not in swan               # the key is stored base64-encoded
    frr = files["hub-gw-in0/frr.conf"]
    assert "router bgp 65515" in frr
    assert "neighbor 169.254.21.10 timers 60 180" in frr
    assert "neighbor 169.254.21.10 passive" in frr   # Azure never opens from APIPA
    assert "neighbor 169.254.21.10 update-source 169.254.21.1" in frr


def test_fast_timers_profile():
    files = render(build(load(ROOT / "topologies/active-active-bgp.yaml"), "fast"), NODES_DIR)
    assert "neighbor 169.254.21.10 timers 3 9" in files["hub-gw-in0"]["frr.conf"]
    assert "dpd_delay = 3s" in files["hub-to-dev0-in0-op"]["swanctl.conf"]


def test_gateway_subnet_bgp_addresses():
    from ipaddress import IPv4Network
    net = IPv4Network("10.12.255.0/27")
    assert [str(a) for a in gateway_subnet_ips(net, True)] == ["10.12.255.4", "10.12.255.5"]
    assert [str(a) for a in gateway_subnet_ips(net, False)] == ["10.12.255.30"]   # [4.2]


def test_static_site_routes_through_the_tunnel():
    plan = build(load(ROOT / "topologies/single-site-static.yaml"), "azure")
    gw = plan.nodes["spoke-gw-in0"]
    assert ("10.40.1.0/24", "t0") in gw.frr.static
    assert "10.40.1.0/24" in gw.frr.networks
    assert ("10.30.0.0/16", "t0") in plan.nodes["branch"].frr.static
    assert plan.nodes["branch"].frr.asn is None
    assert [t.name for t in plan.tunnels] == ["spoke-to-branch-in0"]


def test_every_subnet_gets_a_vm_and_vms_start_at_dot_four(tmp_path):
    text = (ROOT / "topologies/single-site-static.yaml").read_text().replace(
        "app: {address_prefix: 10.30.1.0/24, vms: [app-vm]}",
        "app: {address_prefix: 10.30.1.0/24, vms: [app-vm, app-vm2]}\n"
        "      data: {address_prefix: 10.30.2.0/24}")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    plan = build(load(path), "azure")
    addr = lambda n: plan.nodes[n].iface("eth0").addresses[0]
    assert addr("app-vm") == "10.30.1.4/24" and addr("app-vm2") == "10.30.1.5/24"
    assert addr("spoke-data-vm") == "10.30.2.4/24"          # Azure reserves .1-.3
    assert ("spoke-data-vm", "10.40.1.10") in plan.pings


def test_gateway_bgp_policy_and_timers():
    """Azure's speaker [4.4, 4.5]: keepalive 60 / hold 180, no BFD, the 4,000-prefix
    limit, never-advertised routes out and exact VNet prefixes refused in."""
    frr = rendered(ROOT / "topologies/active-active-bgp.yaml")["hub-gw-in0/frr.conf"]
    for line in ("neighbor 169.254.21.10 timers 60 180", "neighbor 169.254.21.10 maximum-prefix 4000 restart 1",
                 "neighbor 169.254.21.10 route-map TO-BGP-PEER out",
                 "neighbor 169.254.21.10 route-map FROM-BGP-PEER in", "neighbor 169.254.21.10 passive",
                 "ip prefix-list NEVER-ADVERTISED seq 5 permit 0.0.0.0/0"):
        assert line in frr
    assert "bfd" not in frr


def test_never_advertised_covers_default_supernets_and_subnets_of_the_vnet():
    entries = never_advertised([IPv4Network("10.10.0.0/16")])
    assert entries[0] == "0.0.0.0/0" and "10.0.0.0/8" in entries and "10.10.0.0/15" in entries
    assert "10.10.0.0/16 ge 17" in entries and "10.10.0.0/16" not in entries


def test_active_standby_gateway_has_a_standby_with_the_same_addresses():
    """Two instances, one serving; the standby holds the same public IP, BGP address
    and MACs; the device has one tunnel end, whichever instance serves; the wiring is
    the same whichever serves (a takeover changes no namespace or link)."""
    topology = load(ROOT / "topologies/active-standby-bgp.yaml")
    plans = [build(topology, "azure", {"hub-gw": k}) for k in (0, 1)]
    for k, plan in enumerate(plans):
        in0, in1 = plan.nodes["hub-gw-in0"], plan.nodes["hub-gw-in1"]
        assert (in0.standby, in1.standby) == (k == 1, k == 0)
        for ifname in ("pub", "gws"):
            assert in0.iface(ifname).addresses == in1.iface(ifname).addresses
            assert in0.iface(ifname).mac == in1.iface(ifname).mac is not None
        assert [(t.name, t.gateway_instance, t.onprem_end) for t in plan.tunnels] == \
            [(f"hub-to-branch-in{k}", f"hub-gw-in{k}", "hub-to-branch-op")]
        assert {s.node for s in plan.bgp} == {f"hub-gw-in{k}", "hub-sdn", "branch"}
        assert plan.nodes["branch"].frr.neighbors[0].address == "10.50.255.30"
    assert plans[0].links == plans[1].links and sorted(plans[0].nodes) == sorted(plans[1].nodes)


def test_per_connection_apipa_selection_and_half_configured_device():
    """custom_bgp_addresses picks each instance's address; without it the first APIPA
    address of each instance is used [4.3]. connect_to_instances [0] builds no tunnel
    and no session to instance 1."""
    plan = build(load(ROOT / "scenarios/topologies/single-peered.yaml"), "azure")
    sources = {(n, x.address): x.update_source for n in ("hub-gw-in0", "hub-gw-in1")
               for x in plan.nodes[n].frr.neighbors if not x.internal}
    assert sources == {("hub-gw-in0", "169.254.21.9"): "169.254.21.1", ("hub-gw-in1", "169.254.21.9"): "169.254.22.1",
                       ("hub-gw-in0", "169.254.22.9"): "169.254.21.5", ("hub-gw-in1", "169.254.22.9"): "169.254.22.5"}
    half = {t.name: (t.onprem_end, t.expected_up) for t in plan.tunnels if t.device == "half"}
    assert half == {"hub-to-half-in0": ("hub-to-half-in0-op", True), "hub-to-half-in1": (None, False)}
    assert [n.address for n in plan.nodes["half"].frr.neighbors] == ["169.254.21.1"]
    assert not any(s.node == "hub-gw-in1" and s.peer_node == "half" for s in plan.bgp)


def test_vnet_to_vnet_tunnels_join_serving_instances():
    """Active-active east x active-standby west: two tunnels, both to west's serving
    instance; each instance of each side has an end per public IP of the other."""
    plan = build(load(ROOT / "topologies/vnet-to-vnet.yaml"), "azure")
    pair = [(t.name, t.gateway_instance, t.device) for t in plan.tunnels if t.connection == "east-to-west"]
    assert pair == [("east-to-west-in0", "east-gw-in0", "west-gw-in0"),
                    ("east-to-west-in1", "east-gw-in1", "west-gw-in0")]
    ends = sorted(n for n, x in plan.nodes.items() if n.endswith("-v2v"))
    assert ends == ["east-gw-in0-to-west-gw-v2v", "east-gw-in1-to-west-gw-v2v",
                    "west-gw-in0-to-east-gw-in0-v2v", "west-gw-in0-to-east-gw-in1-v2v",
                    "west-gw-in1-to-east-gw-in0-v2v", "west-gw-in1-to-east-gw-in1-v2v"]


def test_32_bit_asns(tmp_path):
    """Azure supports 4-byte ASNs [4.1]: on a site and on the gateway."""
    text = (ROOT / "topologies/active-standby-bgp.yaml").read_text()
    text = text.replace("asn: 65030", "asn: 4200000030").replace("bgp: {asn: 65515}", "bgp: {asn: 4200000001}")
    path = tmp_path / "asn32.yaml"
    path.write_text(text)
    files = render(build(load(path), "azure"), NODES_DIR)
    assert "router bgp 4200000001" in files["hub-gw-in0"]["frr.conf"]
    assert "neighbor 10.60.255.254 remote-as 4200000030" in files["hub-gw-in0"]["frr.conf"]
    assert "neighbor 10.50.255.30 remote-as 4200000001" in files["branch"]["frr.conf"]


def test_point_to_site_servers_and_the_third_public_ip_on_active_active(tmp_path):
    """Active-active P2S: a third public IP [5 PIP3], held by instance 0 (the lab's
    choice), where IKE and TCP 443 to it go to the P2S servers; IKE from the S2S
    device's address still goes to its tunnel end (the rule before the catch-all)."""
    design = yaml.safe_load((ROOT / "topologies/active-active-bgp.yaml").read_text())
    design["virtual_network_gateways"]["hub-gw"]["vpn_client_configuration"] = {
        "address_pool": ["172.16.201.0/24"], "root_certificates": [{"name": "Root"}]}
    path = tmp_path / "aa-p2s.yaml"
    path.write_text(yaml.safe_dump(design))
    plan = build(load(path), "azure")
    assert [(e.gateway_instance, e.protocol) for e in plan.p2s_ends] == [("hub-gw-in0", "IkeV2"),
                                                                        ("hub-gw-in0", "OpenVPN")]
    assert "203.0.113.100/32" in plan.nodes["hub-gw-in0"].iface("pub").addresses
    assert "203.0.113.100/32" not in plan.nodes["hub-gw-in1"].iface("pub").addresses
    nft = render(plan, NODES_DIR)["hub-gw-in0"]["nftables.conf"]
    s2s = nft.index("ip saddr 198.51.100.10 udp dport { 500, 4500 }")
    assert s2s < nft.index("ip daddr 203.0.113.100 udp dport { 500, 4500 }") < nft.index(
        "ip daddr 203.0.113.100 tcp dport { 443 }")
