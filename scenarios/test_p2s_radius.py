"""Point-to-site with RADIUS authentication [RADIUSGW]: users log on with a name and a
password, which the gateway checks with the customer's RADIUS server (FreeRADIUS), in
its VNet (hub-gw) or on-prem behind a site-to-site tunnel (branch-gw). IKEv2 clients
use EAP-MSCHAPv2, relayed by the gateway; OpenVPN clients a user name and password.
"""
import time
from datetime import datetime

import pytest

from vpnlab.checks import p2s_clients as p2s
from vpnlab.checks.probe import worst
from vpnlab.errors import LabError
from vpnlab.gateway import control, live
from vpnlab.gateway.events import read as read_events
from vpnlab.model.defaults import defaults
from vpnlab.waits import wait_until

LAB_TOPOLOGY = "topologies/p2s-radius.yaml"
LAB_RUNTIMES = ("netns", "docker")     # FreeRADIUS and the EAP plugins come from the node image too
VNET_VM, ONPREM_SERVER, AZURE_SERVER = "radius-vm1", "nps-onprem", "nps-azure"
BRANCH_VM = "radius-vm2"
RADIUS_TIMEOUT = defaults()["p2s"]["radius"]["timeout_seconds"]
REFUSED_WITHIN = 15          # a wrong password is answered at once: the client hears it in seconds
MARGIN = 10


def _vip(connected: dict) -> str:
    return connected["virtual_ips"][0]


def _p2s_log(lab, since: float) -> list[dict]:
    return [e for e in read_events(lab.state.dir, "P2SDiagnosticLog")
            if datetime.fromisoformat(e["TimeGenerated"].replace("Z", "+00:00")).timestamp() >= since]


def _logins(lab, server: str) -> str:
    """FreeRADIUS's own record of its answers (its auth log: user, result, which client)."""
    return (lab.backend.node_dir(server) / "radius.log").read_text(errors="replace")


def test_radius_users_connect_over_ikev2_and_openvpn_and_reach_the_vnet(lab):
    """alice (IKEv2, EAP-MSCHAPv2) and bob (OpenVPN) log on with their passwords; erin
    still uses a certificate (the gateway takes both). Each reaches a VNet VM from its
    virtual IP, and FreeRADIUS saw the requests come from the gateway's GatewaySubnet."""
    since = time.time()
    for client in ("alice", "bob", "erin"):
        vip = _vip(p2s.connect(lab.session, client))
        assert live.ping(lab.backend, client, lab.node(VNET_VM).address, count=2), f"{client} ({vip}) -> {VNET_VM}"
    logins = _logins(lab, AZURE_SERVER)
    # the client named hub-gw in radiusd.conf is the gateway's GatewaySubnet (10.71.255.0/27)
    assert "Login OK: [alice] (from client hub-gw" in logins
    assert "Login OK: [bob] (from client hub-gw" in logins
    lab.eventually(lambda: sorted((e["userName_s"], e["protocol_s"], e["authentication_s"])
                                  for e in _p2s_log(lab, since) if "connected from" in e["Message"]),
                   [("alice", "IkeV2", "Radius"), ("bob", "OpenVPN", "Radius"), ("erin", "IkeV2", "Certificate")],
                   "traffic_recovered", "P2SLogEvents of the three users connecting")
    for client in ("alice", "bob", "erin"):
        p2s.disconnect(lab.session, client)


@pytest.mark.parametrize("client,user,protocol", [("mallory", "alice", "IkeV2"), ("trent", "bob", "OpenVPN")])
def test_wrong_password_is_refused_and_logged(lab, client, user, protocol):
    """mallory and trent give alice's and bob's names with a guessed password: the
    RADIUS server refuses them, the client is told so, and P2SDiagnosticLog says why."""
    since, start = time.time(), time.monotonic()
    with pytest.raises(LabError, match="refused by the gateway"):
        p2s.connect(lab.session, client, budget=REFUSED_WITHIN)
    assert time.monotonic() - start < REFUSED_WITHIN
    lab.eventually(lambda: [(e["userName_s"], e["protocol_s"], e["authentication_s"]) for e in _p2s_log(lab, since)
                            if "the RADIUS server refused the user name or password" in e["Message"]],
                   [(user, protocol, "Radius")], "traffic_recovered", f"P2SLogEvent: {user} refused ({client})")
    assert "Login incorrect" in _logins(lab, AZURE_SERVER)
    # no password, tried or right, in what the lab logs or reports
    logs = [lab.state.dir / "events.jsonl", lab.state.dir / "agent.log",
            lab.backend.node_dir(AZURE_SERVER) / "radius.log"] + \
        [lab.backend.node_dir(e.node) / name for e in lab.plan.p2s_ends if e.gateway == "hub-gw"
         for name in ("charon.log", "openvpn.out")]
    for path in logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        for secret in ("guessed", "Alice.Pa55", "Bob.Pa55", "Lab.Radius.Secret.1"):
            assert secret not in text, f"{secret!r} in {path}"


def test_a_password_changed_by_apply_takes_effect(lab):
    """alice's password changes on the RADIUS server and on her laptop: vpnlab apply
    starts FreeRADIUS again with its users (nothing of Azure's changes), and she logs on
    with the new one; the server refuses the old one."""
    original, design = lab.design(), lab.design()
    design["radius_hosts"][AZURE_SERVER]["users"]["alice"] = "Alice.New.Pa55"
    design["clients"]["alice"]["password"] = "Alice.New.Pa55"
    result = lab.apply(design)
    assert {(s["node"], s["kind"]) for s in result["steps"]} >= {(AZURE_SERVER, "radius"), ("alice", "charon")}, \
        result["steps"]
    assert [c["resource"] for c in result["changes"]] == ["clients.alice", f"radius_hosts.{AZURE_SERVER}"]
    assert "Alice.New.Pa55" not in str(result)
    p2s.connect(lab.session, "alice")
    p2s.disconnect(lab.session, "alice")
    design["clients"]["alice"]["password"] = "Alice.Pa55"      # the old one, on the laptop
    lab.apply(design)
    with pytest.raises(LabError, match="refused by the gateway"):
        p2s.connect(lab.session, "alice", budget=REFUSED_WITHIN)
    lab.apply(original)


def test_radius_server_loss_refuses_new_users_and_keeps_connected_ones(lab, scenario):
    """FreeRADIUS on nps-azure is killed. alice, connected before, keeps her session and
    her traffic (RADIUS is asked at logon only; Azure documents nothing else); bob is
    refused after Azure's 30 s RADIUS timeout. Once it is back, bob logs on."""
    vip = _vip(p2s.connect(lab.session, "alice"))
    scenario.start(lab, "alice", VNET_VM, a_addr=vip, flows=2, tcp=False)
    at = scenario.fail("crash", AZURE_SERVER, daemon="freeradius")
    start = time.monotonic()
    # bob over IKEv2 (victor, his phone) and over OpenVPN at once
    control.initiate(lab.backend, "victor", "victor", timeout=-1, ike="victor")
    with pytest.raises(LabError, match="refused by the gateway"):
        p2s.connect(lab.session, "bob", budget=RADIUS_TIMEOUT + MARGIN)
    refused = time.monotonic() - start
    scenario.record("new user refused after (RADIUS server lost)", round(refused, 1), "s",
                    f"~{RADIUS_TIMEOUT} s (Azure's RADIUS timeout)")
    assert RADIUS_TIMEOUT - 2 <= refused <= RADIUS_TIMEOUT + MARGIN
    scenario.heal()
    healed = time.monotonic()
    p2s.connect(lab.session, "bob")
    scenario.record("new user connected after the server came back", round(time.monotonic() - healed, 1), "s")
    result = scenario.stop(at)
    scenario.record("connected user's probe loss", worst(result, "lost"), "packets", "0")
    assert worst(result, "lost") == 0, result["directions"]
    # victor dials again and again while the server is away: bob's refusals, once or more
    refusals = lambda: {(e["userName_s"], e["protocol_s"]) for e in read_events(lab.state.dir, "P2SDiagnosticLog")
                        if "no RADIUS server answered" in e["Message"]}
    lab.eventually(lambda: sorted(map(list, refusals() & {("bob", "IkeV2"), ("bob", "OpenVPN")})),
                   [["bob", "IkeV2"], ["bob", "OpenVPN"]], "traffic_recovered",
                   "P2SLogEvents: bob refused over both protocols, no RADIUS server answering")
    assert all(user == "bob" for user, _ in refusals()), refusals()
    for client in ("alice", "bob", "victor"):
        p2s.disconnect(lab.session, client)


def test_onprem_radius_needs_the_site_to_site_tunnel(lab, scenario):
    """branch-gw's RADIUS server is on-prem: Azure reaches it through the S2S tunnel
    only. carol logs on while the tunnel is up; with the device's uplink silent, the
    tunnel goes down (DPD) and dave is refused; after the heal, new users connect again
    once the tunnel is back (measured)."""
    p2s.connect(lab.session, "carol")
    assert live.ping(lab.backend, "carol", lab.node(BRANCH_VM).address, count=2)
    p2s.disconnect(lab.session, "carol")
    # the probe crosses the same tunnel the RADIUS requests take: its outage is the tunnel's
    scenario.start(lab, BRANCH_VM, ONPREM_SERVER, flows=2, tcp=False)
    at = scenario.fail("blackhole", "onprem:pub")
    tunnel = next(t for t in lab.plan.tunnels if t.device == "onprem")
    lab.eventually(lambda: live.tunnel_state(lab.backend, tunnel.azure_end)["state"] == "ESTABLISHED", False,
                   "session_down", "the site-to-site tunnel to go down")
    down = scenario.event("S2S tunnel down", "state")
    scenario.record("tunnel down after", round((down - at) / 1e9, 1), "s", f"<= {lab.detection_budget()} s")
    with pytest.raises(LabError, match="refused by the gateway"):
        p2s.connect(lab.session, "dave", budget=RADIUS_TIMEOUT + MARGIN)
    healed = scenario.heal()

    def logon():
        try:
            return p2s.connect(lab.session, "carol", budget=10)
        except LabError as err:       # the tunnel, or RADIUS through it, is not back yet
            return str(err)
    wait_until(logon, lambda got: isinstance(got, dict), "carol to log on again after the tunnel came back",
               lab.budget("reconverge"))
    back = scenario.event("carol logged on again", "state")
    scenario.record("new users log on again after heal", round((back - healed) / 1e9, 1), "s")
    result = scenario.stop(at)
    scenario.record("tunnel outage (probe, worse direction)", worst(result, "recovered_s"), "s")
    assert worst(result, "lost") > 0, "a silent uplink must show in the probe"
    p2s.disconnect(lab.session, "carol")
