"""Hub-and-spoke [PEER, UDR] on topologies/hub-spoke.yaml: spokes peered to the hub
with gateway transit, a firewall appliance (fw1, 10.10.2.4) that the spokes' web
subnets and the GatewaySubnet's route table send traffic through, spoke3 peered without
gateway transit, and a point-to-site client. Every check reads live state: the routers'
BGP tables and FIBs (`vtysh ... json`), pings, the appliance's nftables counter."""
from __future__ import annotations

from vpnlab.checks import p2s_clients as p2s
from vpnlab.checks import routing
from vpnlab.checks.wire import Capture
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/hub-spoke.yaml"
ONPREM_HOST, ONPREM_LAN = "10.20.1.10", "10.20.1.0/24"
SPOKES = {"spoke1": "10.11.0.0/16", "spoke2": "10.12.0.0/16"}
APP = {"app1": "10.11.1.4", "app2": "10.12.1.4", "app3": "10.13.1.4"}
WEB = {"web1": "10.11.2.4", "web2": "10.12.2.4"}
INTERNET_HOST = "203.0.113.254"
PLANNED_LOSS_MS = 300     # the hub-only design's bound (scenarios/test_instance_failover.py)


def forwarded(lab) -> int:
    """Packets the firewall appliance forwarded (its nftables counter)."""
    out = lab.backend.nft_json("fw1", "list", "counter", "inet", "vpnlab_nva", "forwarded")
    return next(o["counter"]["packets"] for o in out["nftables"] if "counter" in o)


def bgp_paths(lab, node: str) -> dict[str, list[str]]:
    routes = live.vtysh_json(lab.backend, node, "show bgp ipv4 unicast json").get("routes", {})
    return {p: [x.get("path", "") for x in paths if x.get("valid")] for p, paths in routes.items()}


def test_spokes_and_onprem_reach_each_other_through_the_hub_gateway(lab):
    """Gateway transit: on-prem learns the spokes from the hub gateway (AS path 65515,
    both instances), the spokes learn on-prem, and traffic flows both ways."""
    for prefix in SPOKES.values():
        lab.eventually(lambda: bgp_paths(lab, "onprem").get(prefix), ["65515", "65515"],
                       "routes_withdrawn", f"onprem to learn {prefix} from both instances")
    for spoke in SPOKES:
        lab.eventually(lambda: ONPREM_LAN in live.fib_prefixes(lab.backend, f"{spoke}-sdn"), True,
                       "routes_withdrawn", f"{spoke}'s router to learn on-prem from the hub gateway")
    for vm in ("app1", "app2", "web1", "web2"):
        assert live.ping(lab.backend, vm, ONPREM_HOST, count=2), f"{vm} -> on-prem"
        assert live.ping(lab.backend, "onprem-host", APP.get(vm) or WEB[vm], count=2), f"on-prem -> {vm}"


def test_without_use_remote_gateways_a_spoke_has_no_way_to_onprem(lab):
    """spoke3 is peered with the hub but does not use its gateway: it reaches the hub,
    not on-prem, and on-prem never learns its prefix."""
    assert live.ping(lab.backend, "app3", "10.10.1.4", count=2)
    assert ONPREM_LAN not in live.fib_prefixes(lab.backend, "spoke3-sdn")
    assert "10.13.0.0/16" not in bgp_paths(lab, "onprem")
    assert not live.ping(lab.backend, "app3", ONPREM_HOST, count=1, timeout=1)
    assert not live.ping(lab.backend, "onprem-host", APP["app3"], count=1, timeout=1)


def test_peering_is_not_transitive(lab):
    """Spokes peered to one hub do not reach each other: neither knows the other's space."""
    for a, b in (("spoke1", "spoke2"), ("spoke2", "spoke1")):
        assert SPOKES[b] not in live.fib_prefixes(lab.backend, f"{a}-sdn")
    assert not live.ping(lab.backend, "app1", APP["app2"], count=1, timeout=1)
    assert not live.ping(lab.backend, "app2", APP["app1"], count=1, timeout=1)


def test_spoke_to_spoke_only_through_the_appliance(lab):
    """The web subnets' route table sends 0.0.0.0/0 to the firewall in the hub: web1 and
    web2 reach each other through it, and its counter shows every packet twice (there
    and back); the app subnets, without a route table, do not."""
    before = forwarded(lab)
    assert live.ping(lab.backend, "web1", WEB["web2"], count=3)
    assert live.ping(lab.backend, "web2", WEB["web1"], count=3)
    assert forwarded(lab) - before >= 2 * 2 * 3
    assert not live.ping(lab.backend, "app1", APP["app2"], count=1, timeout=1)


def test_route_table_without_propagation_sends_onprem_traffic_through_the_appliance(lab):
    """web1's table disables BGP propagation: on-prem is reached through the firewall,
    which forwards each ping both ways (the GatewaySubnet's table brings replies back to
    it); app1, without a route table, goes to the gateway directly."""
    before = forwarded(lab)
    assert live.ping(lab.backend, "web1", ONPREM_HOST, count=3)
    through_web = forwarded(lab) - before
    assert live.ping(lab.backend, "app1", ONPREM_HOST, count=3)
    assert forwarded(lab) - before == through_web
    assert through_web >= 2 * 3


def test_vms_reach_the_internet_from_their_vnet_address(lab, tmp_path):
    """Azure's default outbound access: a spoke VM reaches the Internet host, seen there
    from its VNet router's public address; a web VM through the firewall too."""
    with Capture(lab.backend, "internet-host", "pub", tmp_path / "inet.pcap") as cap:
        assert live.ping(lab.backend, "app1", INTERNET_HOST, count=2)
        assert live.ping(lab.backend, "web1", INTERNET_HOST, count=2)
    sources = {p["IP"].src for p in cap.packets() if p.haslayer("ICMP") and p["IP"].dst == INTERNET_HOST}
    spoke1_egress = lab.plan.nodes["spoke1-sdn"].public_ip
    hub_egress = lab.plan.nodes["hub-sdn"].public_ip
    assert sources == {spoke1_egress, hub_egress}, sources


def test_p2s_client_reaches_a_spoke(lab):
    """The gateway pushes the spokes' address spaces to its point-to-site clients."""
    client = next(c for c in lab.plan.clients if c.name == "laptop")
    assert set(SPOKES.values()) <= set(client.pushed)
    p2s.connect(lab.session, "laptop")
    try:
        assert live.ping(lab.backend, "laptop", APP["app1"], count=2)
    finally:
        p2s.disconnect(lab.session, "laptop")


def test_planned_instance_maintenance_spoke_to_onprem(lab, scenario):
    """Instance 0 is patched (planned): the spoke's traffic to on-prem moves to instance 1
    with the hub-only design's bound on probe loss."""
    scenario.start(lab, "app1", "onprem-host", flows=8)
    lost_ms = scenario.planned_instance_loss("hub-gw-in0", PLANNED_LOSS_MS,
                                           "spoke <-> on-prem probe loss (worse direction)")
    assert lost_ms <= PLANNED_LOSS_MS, scenario.probes[-1]["directions"]


def test_routing_matrix_spans_the_spokes(lab):
    """The intended matrix (networkx, from the design) spans the spokes, says peering is
    not transitive, and the routers' FIBs agree with it."""
    want = routing.intended(lab.plan, lab.topology)
    assert want["10.11.1.0/24 -> 10.20.1.0/24"]["reaches"]           # spoke1 app -> on-prem
    assert not want["10.11.1.0/24 -> 10.12.1.0/24"]["reaches"]       # spoke to spoke: no
    assert not want["10.13.1.0/24 -> 10.20.1.0/24"]["reaches"]       # spoke3: no transit
    assert want["10.13.1.0/24 -> 10.10.1.0/24"]["reaches"]           # spoke3 -> hub: peered
    seen = routing.observe(lab.backend, lab.plan, lab.topology)
    assert routing.problems(want, seen) == []


def test_routing_matrix_follows_route_tables_through_the_appliance(lab):
    """Subnets with a route table are walked hop by hop, by Azure's effective routes
    (intended) and by the kernel's policy routing (observed): web1 <-> on-prem and
    web1 <-> web2 pass the firewall both ways, web1 -> spoke3 is forwarded traffic that
    spoke3's peering drops. With the firewall's forwarding off, the check says which
    pairs it breaks."""
    want = routing.intended(lab.plan, lab.topology)
    firewalled = ["10.11.2.0/24 -> 10.20.1.0/24", "10.11.2.0/24 -> 10.12.2.0/24"]
    assert all(want[p]["reaches"] for p in firewalled)
    assert not want["10.11.2.0/24 -> 10.13.1.0/24"]["reaches"]
    seen = routing.observe(lab.backend, lab.plan, lab.topology)
    assert routing.problems(want, seen) == []
    for p in firewalled:
        assert all("fw1" in way for way in seen[p]["via"]), seen[p]["via"]
    assert seen["10.11.2.0/24 -> 10.13.1.0/24"]["ends"][0] == "drop:peering drop at spoke3-sdn:v2"
    forwarding = ["sysctl", "-qw", "net.ipv4.ip_forward={}"]
    lab.node("fw1").exec([*forwarding[:2], forwarding[2].format(0)])
    try:
        broken = routing.problems(want, routing.observe(lab.backend, lab.plan, lab.topology))
    finally:
        lab.node("fw1").exec([*forwarding[:2], forwarding[2].format(1)])
    through_firewall = ("10.11.2.0/24", "10.12.2.0/24", ONPREM_LAN)
    assert sorted(p.split(":")[0] for p in broken) == sorted(
        f"{a} -> {b}" for a in through_firewall for b in through_firewall if a != b), broken


def test_forwarded_traffic_is_kept_out_without_allow_forwarded_traffic(lab):
    """spoke3's peering leaves allow_forwarded_traffic off: what the hub's firewall
    forwards from spoke1 (web1's route table sends everything to it) is dropped at
    spoke3, and counted there; spoke1's own peering allows it."""
    def dropped() -> int:
        out = lab.backend.nft_json("spoke3-sdn", "list", "chain", "ip", "vpnlab", "peering")
        return sum(e["counter"]["packets"] for o in out["nftables"] if "rule" in o
                   for e in o["rule"]["expr"] if "counter" in e)
    before = dropped()
    assert not live.ping(lab.backend, "web1", APP["app3"], count=2, timeout=1)
    assert dropped() - before >= 2


# ------------------------------------------------------------------ rehearsing a change
def test_apply_gateway_transit_to_spoke3_and_back(lab):
    """vpnlab apply of spoke3's peering with gateway transit (hub side allows, spoke3
    uses the remote gateway): spoke3 and on-prem reach each other, the routing matrix
    of the new design agrees with the routers; applied back, spoke3 is cut off again."""
    original = lab.design()
    design = lab.design()
    design["virtual_networks"]["hub"]["peerings"]["hub-to-spoke3"]["allow_gateway_transit"] = True
    design["virtual_networks"]["spoke3"]["peerings"]["spoke3-to-hub"]["use_remote_gateways"] = True
    try:
        result = lab.apply(design)
        assert result["resets"] == [] and {c["resource"] for c in result["changes"]} == \
            {"virtual_networks.hub", "virtual_networks.spoke3"}
        lab.eventually(lambda: ONPREM_LAN in live.fib_prefixes(lab.backend, "spoke3-sdn"), True,
                       "routes_withdrawn", "spoke3's router to learn on-prem")
        assert live.ping(lab.backend, "app3", ONPREM_HOST, count=2)
        want = routing.intended(lab.plan, lab.topology)
        assert want["10.13.1.0/24 -> 10.20.1.0/24"]["reaches"]
        assert routing.problems(want, routing.observe(lab.backend, lab.plan, lab.topology)) == []
    finally:
        lab.apply(original)
    assert ONPREM_LAN not in live.fib_prefixes(lab.backend, "spoke3-sdn")
    assert not live.ping(lab.backend, "app3", ONPREM_HOST, count=1, timeout=1)


def test_apply_a_route_to_none_blackholes_the_subnet(lab):
    """The GatewaySubnet's route to spoke1's web subnet changed from the firewall to
    next hop None: on-prem no longer reaches web1, the matrix of the new design says so
    and the routers agree; applied back, web1 is reached through the firewall again."""
    original = lab.design()
    design = lab.design()
    design["route_tables"]["gateway-rt"]["routes"]["spoke1-web"] = {"address_prefix": "10.11.2.0/24",
                                                                   "next_hop_type": "None"}
    try:
        result = lab.apply(design)
        assert [c["resource"] for c in result["changes"]] == ["route_tables.gateway-rt"]
        assert {s["kind"] for s in result["steps"]} == {"routes"}
        assert not live.ping(lab.backend, "onprem-host", WEB["web1"], count=1, timeout=1)
        want = routing.intended(lab.plan, lab.topology)
        assert not want["10.20.1.0/24 -> 10.11.2.0/24"]["reaches"]
        assert routing.problems(want, routing.observe(lab.backend, lab.plan, lab.topology)) == []
    finally:
        lab.apply(original)
    assert live.ping(lab.backend, "onprem-host", WEB["web1"], count=2)
