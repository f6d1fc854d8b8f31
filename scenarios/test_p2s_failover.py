"""Point-to-site through an active-standby failover [5, 6]: Azure drops the P2S sessions
and the clients reconnect, to the same public IP, now served by the other instance.
The probe runs between a client's virtual IP and a VNet VM and measures the outage."""
import pytest

from vpnlab.checks import p2s_clients as p2s
from vpnlab.checks.probe import worst
from vpnlab.gateway import live
from vpnlab.gateway.events import read as read_events
from vpnlab.model import names
from vpnlab.model.defaults import defaults

LAB_TOPOLOGY = "../topologies/point-to-site.yaml"
LAB_RUNTIMES = ("netns", "docker")     # openvpn and charon stopped and started by PID in containers too
GATEWAY, VM = "hub-gw", "p2s-vm1"
MARGIN = 3     # seconds for the client's first exchanges with the new instance
# The VNet learns the pool from the new instance once its bgpd is up: 3.4-4 s after the
# takeover (scenarios/test_active_standby.py)
BGP_START = 5


def _serving(lab) -> str:
    return f"{GATEWAY}-in{lab.plan.active[GATEWAY]}"


def _sessions(lab) -> dict:
    """client certificate -> the instance whose P2S server holds its session."""
    return {c["certificate"]: s["instance"] for s in live.p2s_sessions(lab.backend, lab.plan) for c in s["clients"]}


@pytest.mark.parametrize("client,unplanned", [("alice", False), ("bob", False), ("alice", True)],
                         ids=["ikev2-planned", "openvpn-planned", "ikev2-unplanned"])
def test_failover_drops_p2s_clients_and_they_reconnect(lab, scenario, client, unplanned):
    connected = p2s.connect(lab.session, client)
    vip = connected["virtual_ips"][0]
    before = _serving(lab)
    assert _sessions(lab).get(client) == before
    scenario.start(lab, client, VM, a_addr=vip, flows=2, tcp=False)
    at = scenario.maintenance(GATEWAY, unplanned=unplanned)
    after = _serving(lab)
    assert after != before, "the standby did not take over"
    recovered = scenario.wait_flowing(at)
    scenario.record("traffic recovered after", recovered, "s")
    lab.eventually(lambda: _sessions(lab).get(client), after, "traffic_recovered",
                   f"{client}'s session on the new active instance {after}")
    result = scenario.stop(at)
    outage = worst(result, "recovered_s")
    delays = defaults()["maintenance"][lab.timers]
    takeover = delays["standby_takeover_unplanned" if unplanned else "standby_takeover_planned"]
    # unplanned: the client notices the silence first (IKEv2 DPD, or OpenVPN's ping-restart)
    detect = lab.detection_budget() if unplanned else 0
    # an OpenVPN client's TCP connect may be in flight when the new instance comes up
    retry = defaults()["p2s"]["openvpn_client"][lab.timers]
    redial = retry["connect_timeout"] + retry["connect_retry_max"] if client == "bob" else 0
    bound = takeover + detect + BGP_START + redial + MARGIN
    scenario.record("client outage (worse direction)", outage, "s", f"<= {bound} s")
    assert worst(result, "lost") > 0, "Azure drops P2S sessions on failover: it cannot be hitless"
    assert outage <= bound, result["directions"]
    state = p2s.client_state(lab.backend, next(c for c in lab.plan.clients if c.name == client))
    assert state[client]["state"] == "CONNECTED" and state[client]["virtual_ip"] == vip
    # the gateway's P2SDiagnosticLog: the user left the old instance, joined the new one
    lab.eventually(lambda: [[e["instance_s"], "disconnected" in e["Message"]]
                            for e in read_events(lab.state.dir, "P2SDiagnosticLog")
                            if e["userName_s"] == client][-2:],
                   [[names.azure_instance_name(before), True], [names.azure_instance_name(after), False]], "traffic_recovered",
                   f"P2SLogEvents of {client}: disconnected on {before}, connected on {after}")
    p2s.disconnect(lab.session, client)
