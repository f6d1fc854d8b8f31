"""NAT rules on the gateway [7.2], on topologies/nat-overlapping-sites.yaml: two branches
with the same 10.1.0.0/24 reach one VNet through IngressSnat rules (branch1 as
172.16.1.0/24, static routing; branch2 as 172.16.2.0/24, BGP with route translation),
and branch2 sees the VNet as 172.20.0.0/16 through an EgressSnat rule. Active-active:
each mapping has a rule per instance. Every check reads live state: packets captured in
the nodes, nftables counters, BGP tables (`vtysh ... json`), the diagnostic log."""
from __future__ import annotations

import time

from vpnlab.checks.probe import worst
from vpnlab.checks.wire import Capture
from vpnlab.gateway import events, live
from vpnlab.gateway.metrics import metrics

LAB_TOPOLOGY = "../topologies/nat-overlapping-sites.yaml"
LAB_RUNTIMES = ("netns", "docker")     # nftables NAT, marks and zones in containers too
VM, VM_AT_BRANCH2 = "10.10.1.4", "172.20.1.4"
HOST = "10.1.0.10"                     # both branches' host
SEEN = {"branch1-host": "172.16.1.10", "branch2-host": "172.16.2.10"}
INSTANCES = ("hub-gw-in0", "hub-gw-in1")
PLANNED_LOSS_MS = 300     # the planned-failover bound (scenarios/test_instance_failover.py)


def nat_counters(lab) -> dict[str, int]:
    """Packets per counter (<what>.<rule>.<connection>), both instances together, with
    the per-instance rule names folded into one (branch1-in0, branch1-in1 -> branch1-in)."""
    out: dict[str, int] = {}
    for node in INSTANCES:
        for name, c in live.nat_counters(lab.backend, node).items():
            what, rule, conn = name.split(".")
            key = f"{what}.{rule.rstrip('01')}.{conn}"
            out[key] = out.get(key, 0) + c["packets"]
    return out


def bgp_paths(lab, node: str) -> dict[str, list[str]]:
    routes = live.vtysh_json(lab.backend, node, "show bgp ipv4 unicast json").get("routes", {})
    return {p: [x.get("path", "") for x in paths if x.get("valid")] for p, paths in routes.items()}


def test_overlapping_branches_reach_the_vm_from_their_translated_ranges(lab, tmp_path):
    """Both branches' host is 10.1.0.10. The VM sees them as 172.16.1.10 and 172.16.2.10
    (captured in its namespace), answers them there, and the rules' counters move both
    ways."""
    before = nat_counters(lab)
    with Capture(lab.backend, "nat-vm1", "eth0", tmp_path / "vm.pcap") as cap:
        assert live.ping(lab.backend, "branch1-host", VM, count=3)
        assert live.ping(lab.backend, "branch2-host", VM_AT_BRANCH2, count=3)
    requests = {p["IP"].src for p in cap.packets() if p.haslayer("ICMP") and p["ICMP"].type == 8}
    assert requests == set(SEEN.values()), requests
    after = nat_counters(lab)
    for key in ("nated.branch1-in.hub-to-branch1", "reverse.branch1-in.hub-to-branch1",
                "nated.branch2-in.hub-to-branch2", "reverse.branch2-in.hub-to-branch2",
                "nated.vnet-to-branch2-out.hub-to-branch2", "reverse.vnet-to-branch2-out.hub-to-branch2"):
        assert after[key] > before[key], (key, before, after)


def test_each_translated_range_reaches_its_own_branch(lab, tmp_path):
    """From the VNet, 172.16.1.10 is branch1's host and 172.16.2.10 branch2's: each
    request arrives at the right branch with its own address given back (10.1.0.10),
    and never at the other; branch2 sees the VM as 172.20.1.4."""
    for host, address in SEEN.items():
        other = next(h for h in SEEN if h != host)
        with Capture(lab.backend, host, "eth0", tmp_path / f"{host}.pcap") as mine, \
                Capture(lab.backend, other, "eth0", tmp_path / f"{other}.pcap") as theirs:
            assert live.ping(lab.backend, "nat-vm1", address, count=3)
        got = [(p["IP"].src, p["IP"].dst) for p in mine.packets() if p.haslayer("ICMP") and p["ICMP"].type == 8]
        assert got and set(got) == {(VM if host == "branch1-host" else VM_AT_BRANCH2, HOST)}, got
        assert not [p for p in theirs.packets() if p.haslayer("ICMP") and p["ICMP"].type == 8]


def test_bgp_route_translation_follows_what_the_branch_announces(lab):
    """branch2 announces 10.1.0.0/24. The gateway learns it (Adj-RIB-In) but routes and
    announces 172.16.2.0/24, from both instances, to the VNet; branch2 hears the VNet as
    172.20.0.0/16 and branch1's space as 172.16.1.0/24, never 10.10.0.0/16 or its own
    space back. branch2 peers with the instances' post-NAT BGP addresses (172.20.255.4
    and .5), the next hop of what it hears. When branch2 withdraws its route, the
    translated route goes; the diagnostic log says which rule translated and withdrew
    what."""
    peers = live.bgp_peers(lab.backend, "branch2")
    assert {p: peers.get(p, {}).get("state") for p in ("172.20.255.4", "172.20.255.5")} == \
        {"172.20.255.4": "Established", "172.20.255.5": "Established"}, peers
    sdn = bgp_paths(lab, "hub-sdn")
    assert "10.1.0.0/24" not in sdn and len(sdn.get("172.16.2.0/24", [])) == 2, sdn
    heard = bgp_paths(lab, "branch2")
    assert heard.get("172.20.0.0/16") == ["65515", "65515"] and "10.10.0.0/16" not in heard, heard
    assert "172.16.1.0/24" in heard and "172.16.2.0/24" not in heard, heard
    for node in INSTANCES:
        assert "10.1.0.0/24" in live.received_routes(lab.backend, node, "10.255.2.1")
    announce = ["configure terminal", "router bgp 65062", "address-family ipv4 unicast"]
    lab.backend.vtysh_config("branch2", announce + ["no network 10.1.0.0/24"])
    try:
        lab.eventually(lambda: "172.16.2.0/24" in live.fib_prefixes(lab.backend, "hub-sdn"), False,
                       "routes_withdrawn", "the VNet to lose 172.16.2.0/24 after branch2 withdrew 10.1.0.0/24")
    finally:
        lab.backend.vtysh_config("branch2", announce + ["network 10.1.0.0/24"])
    lab.eventually(lambda: "172.16.2.0/24" in live.fib_prefixes(lab.backend, "hub-sdn"), True,
                   "reconverge", "the VNet to learn 172.16.2.0/24 again")
    log = [e for e in events.read(lab.session.state.dir, "RouteDiagnosticLog")
           if e.get("connectionName_s") == "hub-to-branch2"]
    ops = {(e["OperationName"], e["natRule_s"]) for e in log}
    assert {("NatRouteTranslated", "branch2-in0"), ("NatRouteWithdrawn", "branch2-in0"),
            ("NatRouteTranslated", "branch2-in1"), ("NatRouteWithdrawn", "branch2-in1")} <= ops, ops


def test_nat_metrics_name_the_rule(lab):
    """TunnelNatedPackets and TunnelReverseNatedPackets per NatRule, ConnectionName and
    Instance, moved by traffic through the rule."""
    def nated(rows) -> dict:
        return {(r["dimensions"]["NatRule"], r["dimensions"]["Instance"]): r["value"]
                for r in rows if r["name"] == "TunnelNatedPackets"}
    before = nated(metrics(lab.session))
    assert {rule for rule, _ in before} == {"branch1-in0", "branch1-in1", "branch2-in0", "branch2-in1",
                                            "vnet-to-branch2-out0", "vnet-to-branch2-out1"}
    assert live.ping(lab.backend, "branch1-host", VM, count=4)
    after = nated(metrics(lab.session))
    moved = {rule for (rule, instance), value in after.items() if value > before[(rule, instance)]}
    assert moved & {"branch1-in0", "branch1-in1"}, (before, after)


def test_instance_maintenance_keeps_translated_flows(lab, scenario):
    """Instance 0 is patched (planned): the translated flows between the VM and branch2
    (each side sees the other translated) move to instance 1, whose own rules
    (branch2-in1, vnet-to-branch2-out1) translate them the same way, within the
    planned-failover bound. branch2 speaks BGP: it moves its routes to instance 1 when
    instance 0 sends its Cease (a static site keeps its route through the dead tunnel:
    docs/azure-behaviours.md)."""
    scenario.start(lab, "nat-vm1", "branch2-host", flows=8, a_seen_as=VM_AT_BRANCH2,
                   b_seen_as=SEEN["branch2-host"])
    lost_ms = scenario.planned_instance_loss("hub-gw-in0", PLANNED_LOSS_MS)
    assert lost_ms <= PLANNED_LOSS_MS, scenario.probes[-1]["directions"]


# ------------------------------------------------------------ branch3, behind carrier-grade NAT
BRANCH3_PUBLIC, BRANCH3_WAN, BRANCH3_HOST = "198.51.100.63", "100.66.0.2", "10.3.0.10"
BRANCH3_ENDS = ("hub-to-branch3-in0-op", "hub-to-branch3-in1-op")     # the device's tunnel ends


def esp_mappings(lab) -> dict[str, str]:
    """The CGN's UDP 4500 mappings: Azure public IP -> the public port it gave the device."""
    found = {}
    for line in lab.node("branch3-isp").exec(["cat", "/proc/net/nf_conntrack"]).stdout.splitlines():
        pairs = [f.split("=", 1) for f in line.split() if "=" in f]
        values = {k: [v for key, v in pairs if key == k] for k in ("src", "dst", "sport", "dport")}
        if " udp " in line and values["src"][:1] == [BRANCH3_WAN] and values["sport"][:1] == ["4500"]:
            found[values["dst"][0]] = values["dport"][1]     # the answer's destination port
    return found


def unsolicited(lab) -> int:
    out = lab.backend.nft_json("branch3-isp", "list", "counter", "ip", "vpnlab_isp", "unsolicited")
    return next(o["counter"]["packets"] for o in out["nftables"] if "counter" in o)


def test_behind_nat_esp_comes_in_udp_4500_from_the_nat_address(lab, tmp_path):
    """The device sends from its private 100.66.0.2; Azure sees the CGN's public address
    and a port the CGN picked, ESP in UDP to 4500; nothing from the private address
    reaches the internet."""
    with Capture(lab.backend, "hub-gw-in0", "pub", tmp_path / "azure.pcap") as cap:
        assert live.ping(lab.backend, "branch3-host", VM, count=3)
        assert live.ping(lab.backend, "nat-vm1", BRANCH3_HOST, count=3)
    udp = [(p["IP"].src, p["UDP"].sport, p["UDP"].dport) for p in cap.packets() if p.haslayer("UDP")]
    from_branch3 = [u for u in udp if u[0] == BRANCH3_PUBLIC]
    assert from_branch3 and all(dport == 4500 for _, _, dport in from_branch3), udp
    assert {str(sport) for _, sport, _ in from_branch3} <= set(esp_mappings(lab).values()), (from_branch3, esp_mappings(lab))
    assert not [u for u in udp if u[0] == BRANCH3_WAN]


def test_azure_cannot_dial_a_device_behind_nat(lab):
    """With the device's charons down, Azure (Default mode) notices by DPD and dials the
    site's public address: the CGN has no mapping for it and drops it (counted there),
    and the tunnels stay down. When the device dials again, they come up."""
    before = unsolicited(lab)
    for end in BRANCH3_ENDS:
        lab.fail("crash", end, daemon="charon")
    try:
        budget = 3 * lab.timer("dpd_timeout")
        lab.eventually(lambda: unsolicited(lab) > before, True, budget,
                       "Azure's dial to the site's public address to be dropped at the CGN")
        states = [t["state"] for t in live.tunnels(lab.backend, lab.plan) if t["device"] == "branch3"]
        assert "ESTABLISHED" not in states, states
    finally:
        for end in BRANCH3_ENDS:
            lab.heal(f"crash:{end}")
    lab.eventually(lambda: sorted(t["state"] for t in live.tunnels(lab.backend, lab.plan) if t["device"] == "branch3"),
                   ["ESTABLISHED", "ESTABLISHED"], "reconverge", "the device to dial both instances again")


def test_dpd_and_keepalives_hold_the_nat_mapping(lab):
    """The CGN forgets an idle UDP mapping after nat_udp_timeout (30 s). Without any
    traffic of the lab's, DPD and NAT-T keepalives keep both ESP mappings, with their
    ports, for longer than that; then the VNet reaches branch3 at once."""
    first = esp_mappings(lab)
    assert len(first) == 2, first
    timeout = lab.plan.nodes["branch3-isp"].nat_udp_timeout
    deadline = time.monotonic() + timeout + 5
    while time.monotonic() < deadline:       # watched the whole time: a lost mapping fails here
        assert esp_mappings(lab) == first, (first, esp_mappings(lab))
        time.sleep(1)                        # the observation interval
    assert live.ping(lab.backend, "nat-vm1", BRANCH3_HOST, count=1, timeout=1)


def test_nat_reboot_outage_and_recovery(lab, scenario):
    """The CGN reboots (every mapping forgotten): the device's packets leave from new
    random ports, Azure's go to the old ones and are dropped. The device's DPD (its
    inbound has stopped) reaches Azure from the new port; the gateway closes the SA on
    the old one; the device's next DPD finds it gone and the device dials again. The
    outage: up to two DPD delays, a DPD timeout and a new SA, within three DPD timeouts
    (measured here 2.3 to 18.6 s with 9 s)."""
    scenario.start(lab, "nat-vm1", "branch3-host", flows=4)
    at = scenario.fail("nat-flush", "branch3-isp")
    bound = 3 * lab.timer("dpd_timeout")
    recovered = scenario.wait_flowing(at, bound + 5)
    scenario.record("traffic recovered after", recovered, "s")
    scenario.heal()
    result = scenario.stop(at)
    outage = worst(result, "recovered_s")
    scenario.record("outage (worse direction)", outage, "s", f"<= {bound} s")
    assert worst(result, "lost") > 0, "the reboot lost nothing: the NAT kept its mappings"
    assert outage <= bound, result["directions"]


# ------------------------------------------------------------------ rehearsing a change
def test_apply_a_new_external_mapping_for_branch1(lab):
    """vpnlab apply of branch1's IngressSnat rules with another external range
    (172.16.1.0/24 -> 172.17.1.0/24): the instances translate to the new range at once,
    the VNet reaches branch1's host there and no longer at the old address; no tunnel
    restarts, and branch2's BGP sessions and translated routes are untouched. Applied
    back, the old range works again."""
    original, design = lab.design(), lab.design()
    for rule in ("branch1-in0", "branch1-in1"):
        design["virtual_network_gateways"]["hub-gw"]["nat_rules"][rule]["external_mappings"] = \
            [{"address_space": "172.17.1.0/24"}]
    sas = {t.name: sorted(s["uniqueid"] for s in live.ike_sas(lab.backend, t.azure_end)) for t in lab.plan.tunnels}
    sessions = {node: {p: v["connectionsEstablished"] for p, v in live.bgp_peers(lab.backend, node).items()}
                for node in (*INSTANCES, "branch2")}
    try:
        result = lab.apply(design)
        assert result["resets"] == [] and [c["resource"] for c in result["changes"]] == \
            ["virtual_network_gateways.hub-gw"]
        lab.eventually(lambda: "172.17.1.0/24" in live.fib_prefixes(lab.backend, "hub-sdn"), True,
                       "reconverge", "the VNet to route 172.17.1.0/24 to the gateway")
        assert live.ping(lab.backend, "nat-vm1", "172.17.1.10", count=2)
        assert not live.ping(lab.backend, "nat-vm1", SEEN["branch1-host"], count=1, timeout=1)
        assert live.ping(lab.backend, "nat-vm1", SEEN["branch2-host"], count=2)
        assert {t.name: sorted(s["uniqueid"] for s in live.ike_sas(lab.backend, t.azure_end))
                for t in lab.plan.tunnels} == sas
        assert {node: {p: v["connectionsEstablished"] for p, v in live.bgp_peers(lab.backend, node).items()}
                for node in (*INSTANCES, "branch2")} == sessions
    finally:
        lab.apply(original)
    assert live.ping(lab.backend, "nat-vm1", SEEN["branch1-host"], count=2)
