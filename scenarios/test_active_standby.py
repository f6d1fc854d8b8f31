"""Active-standby semantics [5] on topologies/active-standby-bgp.yaml: two instances,
one active, one public IP and one BGP address; Azure's reset (`vpnlab maintenance`)
moves both to the standby, which then serves the tunnel and the BGP session."""
from ipaddress import IPv4Interface

from vpnlab.checks.probe import worst
from vpnlab.gateway import live
from vpnlab.gateway.events import read as read_events
from vpnlab.model.defaults import defaults

LAB_TOPOLOGY = "../topologies/active-standby-bgp.yaml"
PROBE = ("as-vm1", "branch-host")
GATEWAY, PUBLIC_IP, BGP_ADDRESS, SITE_PEER = "hub-gw", "203.0.113.10", "10.50.255.30", "10.60.255.254"
MARGIN = 3     # seconds for the first exchanges
# A new bgpd resets sessions until it has read its config and resolved its peers:
# measured 3.4-4 s from the takeover to Established, on every timer profile.
BGP_START = 5


def holders(lab) -> dict:
    """Which instance holds the public IP and the BGP address (link up, address on it),
    and which runs bgpd and a charon."""
    out = {"public_ip": [], "bgp_address": [], "bgpd": [], "charon": []}
    for k in (0, 1):
        node = f"{GATEWAY}-in{k}"
        for key, ifname, address in (("public_ip", "pub", PUBLIC_IP), ("bgp_address", "gws", BGP_ADDRESS)):
            ipr = lab.backend.ipr(node)
            idx = ipr.link_lookup(ifname=ifname)[0]
            has = any(a.get_attr("IFA_ADDRESS") == address for a in ipr.get_addr(index=idx))
            if has and lab.backend.link_is_up(node, ifname):
                out[key].append(node)
        if lab.backend.daemon_pids(node, "bgpd"):
            out["bgpd"].append(node)
        if lab.backend.daemon_pids(f"hub-to-branch-in{k}-az", "charon"):
            out["charon"].append(node)
    return out


def serving(lab) -> str:
    return f"{GATEWAY}-in{lab.plan.active[GATEWAY]}"


def test_one_instance_holds_the_public_ip_and_bgp_address(lab):
    """The standby has the same addresses configured but its links down and no daemon;
    status says which instance is active."""
    active = serving(lab)
    assert holders(lab) == {"public_ip": [active], "bgp_address": [active], "bgpd": [active],
                            "charon": [active]}
    roles = {g["instance"]: (g["role"], g["public_ip"], g["bgp_address"]) for g in lab.status()["gateways"]}
    other = f"{GATEWAY}-in{1 - lab.plan.active[GATEWAY]}"
    assert roles == {active: ("active", PUBLIC_IP, BGP_ADDRESS), other: ("standby", PUBLIC_IP, BGP_ADDRESS)}
    # the device peers with the BGP address, whoever holds it: Azure's is in the GatewaySubnet
    assert IPv4Interface(f"{BGP_ADDRESS}/27") in [IPv4Interface(a) for a in
                                                  lab.plan.nodes[active].iface("gws").addresses]


def _failover(lab, scenario, unplanned: bool) -> tuple[dict, float]:
    before = serving(lab)
    scenario.start(lab, *PROBE, flows=4)
    at = scenario.maintenance(GATEWAY, unplanned=unplanned)
    after = serving(lab)
    assert after != before, "the standby did not take over"
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    assert holders(lab) == {"public_ip": [after], "bgp_address": [after], "bgpd": [after], "charon": [after]}
    # the health probe on the public IP names the new primary; the diagnostic log says it changed
    answer = live.health_probe(lab.backend, "branch", PUBLIC_IP)
    assert answer and f"Primary Instance: GatewayTenantWorker_IN_{after[-1]} " in answer, answer
    changed = [e["Message"] for e in read_events(lab.backend.state.dir)
               if e.get("OperationName") == "GatewayTenantPrimaryChanged"]
    assert changed and changed[-1].endswith(f"to GatewayTenantWorker_IN_{after[-1]}"), changed
    lab.eventually(lambda: live.bgp_peers(lab.backend, after), {SITE_PEER: {"state": "Established"}},
                   "session_down", f"the device's BGP session to {BGP_ADDRESS}, now on {after}")
    result = scenario.stop(at)
    return result, worst(result, "recovered_s")


def test_planned_failover_moves_public_ip_and_bgp_address(lab, scenario):
    """Planned maintenance: the active instance says goodbye (BGP Cease, IKE DELETE);
    the standby takes over after the platform's delay and dials the device at once."""
    delays = defaults()["maintenance"][lab.timers]
    bound = delays["standby_takeover_planned"] + BGP_START + MARGIN
    before = serving(lab)
    result, outage = _failover(lab, scenario, unplanned=False)
    scenario.record("outage (worse direction)", outage, "s", f"<= {bound} s (Azure: 10-15 s)")
    assert outage <= bound, result["directions"]
    assert worst(result, "lost") > 0, "an active-standby failover cannot be hitless"
    # the diagnostic log says the tunnel moved from one instance to the other (the agent
    # writes it from VICI's events: it may come a moment after the traffic flows again)
    old, new = (f"GatewayTenantWorker_IN_{n[-1]}" for n in (before, serving(lab)))

    def moved():
        events = [(e["OperationName"], e["instance_s"]) for e in read_events(lab.backend.state.dir)
                  if e.get("OperationName", "").startswith("Tunnel")]
        return {"disconnected_from_old": ("TunnelDisconnected", old) in events,
                "last": list(events[-1]) if events else None}
    lab.eventually(moved, {"disconnected_from_old": True, "last": ["TunnelConnected", new]}, 5,
                   "the diagnostic log to show the tunnel moved to the new instance")


def test_unplanned_failover(lab, scenario):
    """The active instance dies without a word: the platform notices and promotes the
    standby; the device's stale IKE SA is replaced when the new instance dials, and its
    BGP session comes back once its hold timer or a TCP reset ends the old one."""
    delays = defaults()["maintenance"][lab.timers]
    # the device's own DPD and BGP hold run out around the takeover; its restart can
    # cross the new instance's dial and cost one more round
    bound = (delays["standby_takeover_unplanned"] + max(lab.timer("bgp_hold"), lab.timer("dpd_timeout"))
             + BGP_START + MARGIN)
    result, outage = _failover(lab, scenario, unplanned=True)
    scenario.record("outage (worse direction)", outage, "s", f"<= {bound} s (Azure: about 1-3 min)")
    assert delays["standby_takeover_unplanned"] <= outage <= bound, result["directions"]
