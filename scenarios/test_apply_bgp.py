"""Rehearse a BGP change over APIPA: `vpnlab apply` on the active-active design whose
two on-prem devices peer with both instances from 169.254.21.x/22.x
(topologies/active-active-bgp.yaml). The gateway gets a second custom APIPA address per
instance, and hub-to-dev1 peers from those (custom_bgp_addresses [4.3]): dev1's BGP
sessions move to the new addresses, the tunnels stay up, and dev0's sessions and
traffic are untouched. The lab is brought back to its topology afterwards."""
import copy

import pytest

from vpnlab.checks.probe import worst
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
LAB_RUNTIMES = ("netns", "docker")
VM, DEV0_HOST, DEV1_HOST = "vm1", "onprem-dev0-host", "onprem-dev1-host"
NEW_APIPA = ("169.254.21.5", "169.254.22.5")     # one more per instance (IN_0, IN_1)
# What the other device's flows may lose: FRR's reload on each instance (frr-reload.py,
# one update-source changed) is followed by a blip of 25-60 ms through that instance
# before any session moves (CI, 2026-12-03: 0 on netns, 60 packets at 1000 pps once on
# docker). Microsoft does not say what other connections see; the lab's own cost, bounded.
OTHERS_BLIP = 150
INSTANCES = ("hub-gw-in0", "hub-gw-in1")


@pytest.fixture
def design(lab):
    original = lab.design()
    yield copy.deepcopy(original)
    lab.apply(original)


def established(lab) -> dict[str, dict[str, int]]:
    """node -> peer -> how many times that session was established (FRR's count)."""
    return {node: {peer: p["connectionsEstablished"] for peer, p in live.bgp_peers(lab.backend, node).items()}
            for node in (*INSTANCES, "onprem-dev0", "onprem-dev1")}


def addresses(lab, node: str, ifname: str) -> set[str]:
    ipr = lab.backend.ipr(node)
    return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=ipr.link_lookup(ifname=ifname)[0])}


def ike_sas(lab) -> dict[str, list]:
    return {t.name: sorted(s["uniqueid"] for s in live.ike_sas(lab.backend, t.azure_end)) for t in lab.plan.tunnels}


def test_custom_apipa_addresses_move_one_connections_bgp_sessions(lab, scenario, design):
    """Two more APIPA addresses on the gateway, chosen by hub-to-dev1: both instances
    hold the new addresses, dev1 (a managed device, reconfigured in the same apply)
    peers with them, and only dev1's sessions start again. No tunnel restarts; traffic
    to dev0's LAN loses at most FRR's reload blip (OTHERS_BLIP), and dev1's LAN is
    reachable again once its sessions are up (the outage is measured)."""
    scenario.start(lab, VM, DEV1_HOST, flows=4)
    unaffected = lab.probe(VM, DEV0_HOST, flows=4, port_offset=200)
    sas, sessions = ike_sas(lab), established(lab)
    gateway = design["virtual_network_gateways"]["hub-gw"]
    for instance, address in zip(gateway["bgp"]["peering_addresses"], NEW_APIPA):
        instance["apipa_addresses"].append(address)
    design["connections"]["hub-to-dev1"]["custom_bgp_addresses"] = dict(zip(("primary", "secondary"), NEW_APIPA))
    at, result = scenario.apply(design, "hub-to-dev1 peers from 169.254.21.5 and 169.254.22.5")
    scenario.wait_flowing(at)
    probe, other = scenario.stop(at), unaffected.stop(at)
    scenario.record("apply", result["seconds"], "s")
    scenario.record("outage to dev1's LAN (worse direction)", worst(probe, "recovered_s"), "s")
    scenario.record("lost to dev0's LAN (worse direction)", worst(other, "lost"), "packets", f"<= {OTHERS_BLIP}")

    assert result["resets"] == [] and ike_sas(lab) == sas
    for instance, address in zip(INSTANCES, NEW_APIPA):
        assert address in addresses(lab, instance, "lo"), instance
    dev1 = live.bgp_peers(lab.backend, "onprem-dev1")
    assert {peer: p["state"] for peer, p in dev1.items()} == dict.fromkeys(NEW_APIPA, "Established")
    after = established(lab)
    assert after["onprem-dev0"] == sessions["onprem-dev0"]
    for instance in INSTANCES:
        # started again: once, or twice when the device's old session came back between
        # the gateway's reload and the device's
        assert after[instance]["169.254.22.10"] > sessions[instance]["169.254.22.10"], instance
        assert {p: n for p, n in after[instance].items() if p != "169.254.22.10"} == \
            {p: n for p, n in sessions[instance].items() if p != "169.254.22.10"}, instance
    assert live.ping(lab.backend, VM, "10.20.2.10", count=2)
    assert worst(other, "lost") <= OTHERS_BLIP, other["directions"]
