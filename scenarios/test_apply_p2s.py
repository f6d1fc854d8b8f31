"""Rehearse a point-to-site change: `vpnlab apply` on a running lab whose gateway serves
IKEv2 and OpenVPN users (topologies/point-to-site.yaml), as Azure applies the same change
[P2SPORTAL]. The lab's PKI is kept and grows: a root added is a new CA, a revocation a
new CRL; the users a change does not concern keep their sessions (the same IKE SA, the
same TCP connection to openvpn).

Each test brings the lab back to its topology at the end (but the SKU upgrade, last)."""
import copy
import ipaddress
import json
import time

import pytest

from vpnlab.checks import p2s_clients as p2s
from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.gateway.events import read as read_events
from vpnlab.model.defaults import defaults

LAB_TOPOLOGY = "../topologies/point-to-site.yaml"
LAB_RUNTIMES = ("netns", "docker")
GATEWAY, VM = "hub-gw", "p2s-vm1"
VM_IP, BRANCH_HOST = "10.70.1.4", "10.80.1.10"


@pytest.fixture
def design(lab):
    """The lab's topology to edit; the lab is brought back to it afterwards, its users
    disconnected."""
    original = lab.design()
    yield copy.deepcopy(original)
    for c in lab.plan.clients:
        p2s.disconnect(lab.session, c.name)
    lab.apply(original)


def p2s_config(design) -> dict:
    return design["virtual_network_gateways"][GATEWAY]["vpn_client_configuration"]


def sessions(lab) -> dict[str, str]:
    """certificate -> what identifies its session on the gateway: the IKE SA's unique
    ID, or the TCP connection (address:port) to openvpn."""
    out = {}
    for e in lab.plan.p2s_ends:
        if e.protocol == "IkeV2":
            out |= {c["certificate"]: f"ike#{c['ike_sa']}" for c in live.ikev2_server_clients(lab.backend, e.node)}
        else:
            out |= {c["certificate"]: f"tcp {c['address']}:{c['source_port']}"
                    for c in live.openvpn_server_clients(lab.backend, e.node)}
    return out


def connect(lab, *clients) -> dict[str, str]:
    """Connect the clients; their virtual IPs."""
    return {c: p2s.connect(lab.session, c)["virtual_ips"][0] for c in clients}


def refused(lab, client) -> str:
    with pytest.raises(LabError) as err:
        p2s.connect(lab.session, client, budget=30)
    assert "refused by the gateway" in str(err.value), err.value
    return str(err.value)


def reconnect_budget(lab) -> float:
    """How long a client takes to notice a server that went and dial again: IKEv2's DPD,
    or OpenVPN's keepalive, then its connect retries; and the new server's start."""
    retry = defaults()["p2s"]["openvpn_client"][lab.timers]
    return lab.detection_budget() + retry["connect_timeout"] + retry["connect_retry_max"] + 15


def test_a_revoked_certificate_ends_its_sessions_only(lab, scenario, design):
    """Azure: after the update, the revoked certificate "can no longer be used to
    connect"; other certificates from the root go on working [P2SPORTAL]. The lab ends
    the revoked user's session; everyone else's stays (same IKE SA, same TCP
    connection). Reinstated, it connects again."""
    connect(lab, "alice", "dave", "bob")
    before = sessions(lab)
    p2s_config(design)["revoked_certificates"].append({"name": "stolen-laptop", "certificate": "alice"})
    result = lab.apply(design)
    scenario.record("apply", result["seconds"], "s")
    assert result["p2s_users_ended"] == {GATEWAY: ["alice"]}
    assert result["p2s_sessions_ended"] == ["alice (IkeV2)"]
    assert [c["impact"] for c in result["changes"]] == ["may-disconnect"]
    kinds = {s["kind"] for s in result["steps"]}
    assert kinds == {"pki", "charon"}, result["steps"]     # a new CRL; openvpn reads it by itself
    after = sessions(lab)
    assert "alice" not in after
    assert {k: after.get(k) for k in ("dave", "bob")} == {k: before[k] for k in ("dave", "bob")}
    assert live.ping(lab.backend, "bob", VM_IP, count=2)
    assert "AUTHENTICATION_FAILED" in refused(lab, "alice")
    lab.eventually(lambda: any(e["userName_s"] == "alice" and "certificate revoked" in e["Message"]
                               for e in read_events(lab.state.dir, "P2SDiagnosticLog")),
                   True, 10, "P2SDiagnosticLog: alice refused, certificate revoked")
    reinstated = lab.design()
    p2s_config(reinstated)["revoked_certificates"].pop()
    assert lab.apply(reinstated)["p2s_users_ended"] == {}
    assert connect(lab, "alice")["alice"]
    assert sessions(lab)["dave"] == before["dave"]


def test_a_root_added_lets_its_clients_in_and_removed_ends_their_sessions(lab, scenario, design):
    """eve's certificate is issued by EveRoot, which the gateway does not trust. With the
    root uploaded she connects; with it removed again, her clients "can't connect"
    [P2SPORTAL] and the lab ends her session. IKEv2 users of the other root keep theirs;
    openvpn reads its roots at start: it starts again and its users reconnect."""
    connect(lab, "alice", "bob")
    before = sessions(lab)
    refused(lab, "eve")
    p2s_config(design)["root_certificates"].append({"name": "EveRoot"})
    result = lab.apply(design)
    scenario.record("apply (root added)", result["seconds"], "s")
    steps = {(s["node"], s["kind"]) for s in result["steps"]}
    ikev2, openvpn = (next(e.node for e in lab.plan.p2s_ends if e.protocol == p) for p in ("IkeV2", "OpenVPN"))
    assert {(ikev2, "pki"), (ikev2, "charon"), (openvpn, "openvpn")} <= steps, steps
    assert connect(lab, "eve")["eve"]
    assert live.ping(lab.backend, "eve", VM_IP, count=2)
    lab.eventually(lambda: "bob" in sessions(lab), True, reconnect_budget(lab), "bob back on the OpenVPN server")
    assert sessions(lab)["alice"] == before["alice"]
    assert sessions(lab)["bob"] != before["bob"], "openvpn started again: bob's is a new session"
    alice = sessions(lab)["alice"]
    result = lab.apply(_without_root(lab, "EveRoot"))
    scenario.record("apply (root removed)", result["seconds"], "s")
    assert result["p2s_users_ended"] == {GATEWAY: ["eve"]}
    assert "eve" not in sessions(lab) and sessions(lab)["alice"] == alice
    refused(lab, "eve")


def _without_root(lab, root: str) -> dict:
    d = lab.design()
    cfg = d["virtual_network_gateways"][GATEWAY]["vpn_client_configuration"]
    cfg["root_certificates"] = [r for r in cfg["root_certificates"] if r["name"] != root]
    return d


def test_custom_routes_reach_each_session_that_begins_after_the_change(lab, scenario, design):
    """Clients get the routes the gateway offers when they connect [P2SRT]: sessions up
    keep theirs (nothing restarts), a session that begins after the change gets the new
    custom route, over IKEv2 (a traffic selector) and OpenVPN (a pushed route)."""
    connect(lab, "alice", "bob")
    before = sessions(lab)
    p2s_config(design)["custom_routes"].append("10.98.0.0/16")
    result = lab.apply(design)
    scenario.record("apply", result["seconds"], "s")
    assert {s["kind"] for s in result["steps"]} <= {"charon", "addresses", "routes"}, result["steps"]
    assert sessions(lab) == before
    assert "10.98.0.0/16" not in _routes(lab, "alice") | _routes(lab, "bob")
    for client in ("alice", "bob"):
        p2s.disconnect(lab.session, client)
        connect(lab, client)
        assert "10.98.0.0/16" in _routes(lab, client), client


def _routes(lab, client: str) -> set[str]:
    c = next(c for c in lab.plan.clients if c.name == client)
    if c.protocol == "IkeV2":
        return {ts.decode() for _, ike in live.ike_sas_named(lab.backend, client)
                for child in ike["child-sas"].values() for ts in child["remote-ts"]}
    routes = json.loads(lab.backend.exec(client, ["ip", "-j", "route", "show", "dev", "tun0"]).stdout)
    return {r["dst"] for r in routes if r.get("gateway")}


def test_a_new_pool_makes_the_server_again_and_the_clients_reconnect_from_it(lab, scenario, design):
    """The pool changed: the lab makes the gateway's P2S server again (UNCONFIRMED what
    Azure does to connected users): every session ends, the clients (always on) dial
    again and get addresses from the new pool, which the gateway now announces to the
    branch over BGP."""
    connect(lab, "alice", "bob")
    pool = ipaddress.ip_network("172.16.202.0/24")
    p2s_config(design)["address_pool"] = [str(pool)]
    start = time.monotonic()
    result = lab.apply(design)
    scenario.record("apply", result["seconds"], "s")
    assert any(s["kind"] == "node" for s in result["steps"]), result["steps"]

    def vips():
        return {c: p2s.client_state(lab.backend, next(x for x in lab.plan.clients if x.name == c))[c]["virtual_ip"]
                for c in ("alice", "bob")}
    lab.eventually(lambda: all(v and ipaddress.ip_address(v) in pool for v in vips().values()), True,
                   reconnect_budget(lab), "alice and bob connected again, from 172.16.202.0/24")
    scenario.record("both users connected again", round(time.monotonic() - start, 1), "s")
    for client in ("alice", "bob"):
        lab.eventually(lambda c=client: live.ping(lab.backend, c, BRANCH_HOST, count=1), True, 15,
                       f"{client} reaches the branch from the new pool")
        assert live.ping(lab.backend, client, VM_IP, count=2)


def test_a_protocol_removed_and_a_client_added(lab, design):
    """OpenVPN removed from the gateway's tunnel types (and with it its clients, which
    the topology may no longer hold): the gateway's P2S server is made again without
    openvpn, and IKEv2 users come back on it. A client added (a new laptop with a
    certificate from the trusted root) connects; removed, its node is gone."""
    p2s_config(design)["vpn_client_protocols"] = ["IkeV2"]
    for openvpn_user in ("bob", "carol"):
        del design["clients"][openvpn_user]
    p2s_config(design)["revoked_certificates"] = [r for r in p2s_config(design)["revoked_certificates"]
                                                  if r["certificate"] != "carol"]
    design["clients"]["frank"] = {"virtual_network_gateway": GATEWAY, "protocol": "IkeV2"}
    connect(lab, "alice")
    lab.apply(design)
    assert {e.protocol for e in lab.plan.p2s_ends} == {"IkeV2"}
    server = lab.plan.p2s_ends[0].node
    assert not lab.backend.daemon_pids(server, "openvpn")
    assert not [ns for ns in lab.backend.state.namespaces if "bob" in ns or "carol" in ns]
    assert connect(lab, "frank")["frank"]
    assert live.ping(lab.backend, "frank", VM_IP, count=2)
    lab.eventually(lambda: "alice" in sessions(lab), True, reconnect_budget(lab), "alice back on the new server")
    p2s.disconnect(lab.session, "frank")
    del design["clients"]["frank"]
    lab.apply(design)
    assert "frank" not in lab.plan.nodes
    assert not [ns for ns in lab.backend.state.namespaces if "frank" in ns]


def test_sku_upgrade_raises_the_users_limit(lab, scenario):
    """VpnGw1 -> VpnGw2: the gateway's point-to-site limit follows (250 -> 500 [2.1]),
    in charon's IKE SA limit and openvpn's max-clients (read at start: openvpn starts
    again, its users reconnect); IKEv2 users keep their sessions. Last: Azure refuses
    the downgrade back."""
    connect(lab, "alice", "bob")
    before = sessions(lab)
    ikev2, openvpn = (next(e.node for e in lab.plan.p2s_ends if e.protocol == p) for p in ("IkeV2", "OpenVPN"))
    openvpn_pids = lab.backend.daemon_pids(openvpn, "openvpn")
    design = lab.design()
    design["virtual_network_gateways"][GATEWAY]["sku"] = "VpnGw2"
    result = lab.apply(design)
    scenario.record("apply", result["seconds"], "s")
    assert {s["kind"] for s in result["steps"]} >= {"charon", "openvpn"}, result["steps"]
    assert lab.plan.nodes[ikev2].charon["ikesa_limit"] == 500
    assert "max-clients 500" in (lab.backend.node_dir(openvpn) / "openvpn.conf").read_text()
    assert lab.backend.daemon_pids(openvpn, "openvpn") not in ([], openvpn_pids), "openvpn started again"
    lab.eventually(lambda: "bob" in sessions(lab), True, reconnect_budget(lab), "bob back on the OpenVPN server")
    assert sessions(lab)["alice"] == before["alice"]
