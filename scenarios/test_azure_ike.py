"""Azure's IKE behaviour, against devices the lab does not manage.

Each site of topologies/azure-ike.yaml is `managed: false`; the tests bring its device
as a user would (scenarios/owndevice.py: own namespace, own charon, `vpnlab attach`) and
check what the emulated gateway accepts, offers and refuses, through VICI on both ends
and the device's own log ([3.1], [1.3] of docs/azure-reference.md).
"""
from __future__ import annotations

import re
import time

import pytest
from owndevice import OwnDevice

from vpnlab.gateway import control, live
from vpnlab.gateway.events import read as read_events
from vpnlab.model.defaults import defaults
from vpnlab.plan.parts import initiator_child

LAB_TOPOLOGY = "topologies/azure-ike.yaml"
AZ = defaults()["azure"]
REDIAL = AZ["redial_seconds"]
SECRETS = {"site-default": "Default.Mode.Key1", "site-initiator": "Initiator.Only.Key2",
           "site-responder": "Responder.Only.Key3", "site-pbts": "Pbts.Selectors.Key4"}

# strongSwan keyword -> what VICI reports for it (encr-alg, encr-keysize, integ-alg,
# dh-group) and how charon prints it in a proposal list
_ENCR = {"aes256gcm16": ("AES_GCM_16", "256", "AES_GCM_16_256"), "aes256": ("AES_CBC", "256", "AES_CBC_256"),
         "aes128": ("AES_CBC", "128", "AES_CBC_128"), "3des": ("3DES_CBC", "", "3DES_CBC"),
         "des": ("DES_CBC", "", "DES_CBC")}
_INTEG = {"sha1": "HMAC_SHA1_96", "sha256": "HMAC_SHA2_256_128"}
_PRF = {"sha1": "PRF_HMAC_SHA1", "sha256": "PRF_HMAC_SHA2_256"}
_DH = {"modp768": "MODP_768", "modp1024": "MODP_1024", "modp2048": "MODP_2048",
       "modp2048s256": "MODP_2048_256"}


def expected_sa(keyword: str) -> dict:
    enc, *rest = keyword.split("-")
    integ = next((p for p in rest if p in _INTEG), None)
    dh = next((p for p in rest if p in _DH), None)
    return {"encr-alg": _ENCR[enc][0], "encr-keysize": _ENCR[enc][1],
            "integ-alg": _INTEG[integ] if integ else "", "dh-group": _DH[dh] if dh else ""}


def printed(keyword: str) -> str:
    """An ESP offer as charon logs it: ESP:AES_CBC_256/HMAC_SHA1_96/NO_EXT_SEQ."""
    enc, *rest = keyword.split("-")
    parts = [_ENCR[enc][2]] + [_INTEG[p] for p in rest if p in _INTEG] + [_DH[p] for p in rest if p in _DH]
    return "ESP:" + "/".join(parts + ["NO_EXT_SEQ"])


def algorithms(sa: dict, keys=("encr-alg", "encr-keysize", "integ-alg", "dh-group")) -> dict:
    return {k: sa.get(k, b"").decode() for k in keys}


@pytest.fixture(scope="module")
def devices(lab, tmp_path_factory):
    """site -> its own device, started once per module and stopped by PID at the end."""
    made: dict[str, OwnDevice] = {}

    def get(site: str) -> OwnDevice:
        if site not in made:
            made[site] = OwnDevice(lab.name, site, tmp_path_factory.mktemp("own")).start()
        return made[site]
    yield get
    for d in made.values():
        d.stop()


def tunnel_of(lab, site: str):
    return next(t for t in lab.plan.tunnels if t.device == site)


def azure_sas(lab, site: str) -> list[dict]:
    return live.ike_sas(lab.backend, tunnel_of(lab, site).azure_end)


def azure_child(lab, site: str) -> dict:
    return next(c for ike in azure_sas(lab, site) for c in ike.get("child-sas", {}).values()
                if c["state"] == b"INSTALLED")


def log_since(device: OwnDevice, mark: int) -> str:
    return device.log()[mark:]


# ------------------------------------------------------------ proposals Azure accepts
def test_each_documented_ike_proposal_establishes(lab, devices):
    """A device offering only one of Azure's six IKE proposals (DH group 2) gets it."""
    dev = devices("site-responder")
    for keyword in AZ["ike_proposals"]:
        dev.configure(SECRETS["site-responder"], ike=keyword)
        ok, lines = dev.initiate()
        assert ok, f"{keyword}: {lines[-3:]}"
        ike = azure_sas(lab, "site-responder")[0]
        enc, integ, _ = keyword.split("-")
        want = expected_sa(keyword) | {"prf-alg": _PRF[integ]}
        assert algorithms(ike, (*want,)) == want, keyword


def test_each_documented_esp_offer_establishes_and_its_pfs_group_at_rekey(lab, devices):
    """Each of Azure's 26 responder offers, as the device's only ESP offer, establishes;
    an offer with PFS gets its group at the first rekey (PFS is negotiated only then)."""
    dev = devices("site-responder")
    for keyword in AZ["esp_proposals_responder"]:
        dev.configure(SECRETS["site-responder"], esp=keyword)
        ok, lines = dev.initiate()
        assert ok, f"{keyword}: {lines[-3:]}"
        want = expected_sa(keyword)
        assert algorithms(azure_child(lab, "site-responder")) == want | {"dh-group": ""}, keyword
        if want["dh-group"]:
            dev.rekey_child()
            lab.eventually(lambda: algorithms(azure_child(lab, "site-responder")), want,
                           "minimum", f"the rekeyed CHILD SA with {keyword}")


@pytest.mark.parametrize("ike, esp, fails_in", [
    ("aes256-sha256-modp2048", "aes256gcm16", "IKE_SA_INIT"),   # DH 14 only: not by default
    ("aes256-sha256-ecp384", "aes256gcm16", "IKE_SA_INIT"),
    ("aes256-sha256-modp1024", "aes128gcm16", "IKE_AUTH"),      # GCM-128: not offered by Azure
    ("aes256-sha256-modp1024", "aes256-sha256-ecp384", "rekey"),  # PFS group Azure has not
])
def test_an_offer_outside_azures_sets_gets_no_proposal_chosen(lab, devices, ike, esp, fails_in):
    dev = devices("site-responder")
    dev.configure(SECRETS["site-responder"], ike=ike, esp=esp)
    mark = len(dev.log())
    ok, lines = dev.initiate()
    if fails_in == "rekey":
        assert ok, lines[-3:]
        mark = len(dev.log())
        dev.rekey_child()
        lab.eventually(lambda: "received NO_PROPOSAL_CHOSEN" in log_since(dev, mark), True,
                       "minimum", "the refused CHILD_SA rekey")
        assert "parsed CREATE_CHILD_SA response" in log_since(dev, mark)
        return
    assert not ok
    text = log_since(dev, mark)
    assert re.search(rf"parsed {fails_in} response \d+ \[.*N\(NO_PROP\)", text), text[-800:]


# ------------------------------------------------------------ rekeys Azure starts
def test_azure_rekeys_with_its_six_initiator_offers(lab, devices):
    """Azure's own CHILD_SA rekey offers exactly its initiator list, without PFS. A
    device that accepts only a PFS offer (fine when it initiated) refuses it: the
    classic 'tunnel drops hours later'. A device that accepts one of the six gets a
    CHILD SA made by Azure, and Azure's next rekey of it is an in-place REKEY_SA."""
    t = tunnel_of(lab, "site-responder")
    six = [printed(k) for k in AZ["esp_proposals_initiator"]]
    dev = devices("site-responder")
    dev.configure(SECRETS["site-responder"], esp="aes128-sha256-modp2048")
    assert dev.initiate()[0]
    before = azure_child(lab, "site-responder")["uniqueid"]
    mark = len(dev.log())
    assert not control.azure_rekey(lab.backend, t.azure_end, t.connection)
    offered = re.findall(r"received proposals: (.*)", log_since(dev, mark))
    assert offered and offered[0].split(", ") == six
    assert re.search(r"generating CREATE_CHILD_SA response \d+ \[ N\(NO_PROP\) \]", log_since(dev, mark))
    assert azure_child(lab, "site-responder")["uniqueid"] == before, "the old CHILD SA stays"

    dev.configure(SECRETS["site-responder"], esp="aes256-sha256")
    assert dev.initiate()[0]
    mark = len(dev.log())
    assert control.azure_rekey(lab.backend, t.azure_end, t.connection)
    child = azure_child(lab, "site-responder")
    assert child["name"].decode() == initiator_child(t.connection)
    assert algorithms(child) == expected_sa("aes256-sha256")
    assert re.findall(r"received proposals: (.*)", log_since(dev, mark))[0].split(", ") == six
    mark = len(dev.log())
    assert control.azure_rekey(lab.backend, t.azure_end, t.connection)     # in place: asynchronous
    rekey = r"parsed CREATE_CHILD_SA request \d+ \[ N\(REKEY_SA\) SA No TSi TSr \]"
    lab.eventually(lambda: bool(re.search(rekey, log_since(dev, mark))), True, "minimum",
                   "Azure's in-place CHILD_SA rekey at the device")
    text = log_since(dev, mark)
    assert re.findall(r"received proposals: (.*)", text)[0].split(", ") == six
    lab.eventually(lambda: [c["state"].decode() for ike in azure_sas(lab, "site-responder")
                            for c in ike.get("child-sas", {}).values()], ["INSTALLED"],
                   10, "one CHILD SA after the rekey (charon keeps the old one 5 s)")


# ------------------------------------------------------------ connection modes
def azure_initiated(lab, site: str):
    """True/False: who set up the gateway's IKE SA; None: there is none."""
    sas = [s for s in azure_sas(lab, site) if s["state"] == b"ESTABLISHED"]
    return (sas[0].get("initiator") == b"yes") if sas else None


def wait_azure_dials(lab, site: str):
    budget = REDIAL + lab.detection_budget() + 10
    try:
        lab.eventually(lambda: azure_initiated(lab, site), True, budget,
                       f"the gateway to dial {site}'s passive device")
    except AssertionError as err:
        peer = tunnel_of(lab, site).remote_ip
        seen = [e["Message"] for e in read_events(lab.state.dir, "IKEDiagnosticLog") if e["remoteIP_s"] == peer]
        agent = (lab.state.dir / "agent.log").read_text()
        raise AssertionError(f"{err}\nIKE log: {seen[-12:]}\nagent: {agent[-1500:]}") from None


@pytest.mark.parametrize("site", ["site-default", "site-initiator"])
def test_azure_dials_a_passive_device_in_default_and_initiator_only(lab, devices, site):
    dev = devices(site)
    dev.configure(SECRETS[site])          # never initiates
    wait_azure_dials(lab, site)
    assert [s.get("initiator") for s in dev.ike_sas()] == [None], "the device only answered"


@pytest.mark.parametrize("site", ["site-default", "site-responder"])
def test_device_initiates_in_default_and_responder_only(lab, devices, site):
    dev = devices(site)
    dev.configure(SECRETS[site])
    ok, lines = dev.initiate()
    assert ok, lines[-3:]
    assert azure_initiated(lab, site) is False


def test_a_device_that_reconnected_first_keeps_one_child_sa(lab, devices):
    """The device reconnected just before the gateway dialed (a failover's race): the
    gateway does not dial beside it, and when its CHILD SA still lands in the device's IKE
    SA (strongSwan reuses it), the gateway deletes its own; the device's stays."""
    site = "site-default"
    t = tunnel_of(lab, site)
    dev = devices(site)
    dev.configure(SECRETS[site])
    ok, lines = dev.initiate()
    assert ok, lines[-3:]
    device_child = [c["uniqueid"] for ike in dev.ike_sas() for c in ike.get("child-sas", {}).values()]
    assert len(device_child) == 1
    assert control.dial(lab.backend, lab.plan, t) is False, "dialed beside an installed CHILD SA"
    control.initiate(lab.backend, t.azure_end, initiator_child(t.connection), timeout=5, ike=t.connection)
    assert len(list(dev.ike_sas()[0]["child-sas"])) == 2, "the race was not reproduced"

    def children() -> dict:
        ids = [c["uniqueid"] for ike in dev.ike_sas() for c in ike.get("child-sas", {}).values()]
        return {"child_sas": len(ids), "device_child_kept": device_child[0] in ids}
    lab.eventually(children, {"child_sas": 1, "device_child_kept": True}, 3 * REDIAL,
                   "the gateway to delete its duplicate CHILD SA, leaving the device's")


def test_initiator_only_refuses_a_device_that_dials(lab, devices):
    """InitiatorOnly: the device's own IKE_SA_INIT goes unanswered (how Azure refuses is
    UNCONFIRMED: the lab drops it); the tunnel comes up when Azure dials."""
    site = "site-initiator"
    t = tunnel_of(lab, site)
    dev = devices(site)
    dev.configure(SECRETS[site])
    before = refused(lab, t.gateway_instance)
    ok, lines = dev.initiate(timeout=3)
    assert not ok and any("retransmit" in x for x in lines), lines[-3:]
    assert refused(lab, t.gateway_instance) > before
    wait_azure_dials(lab, site)


def refused(lab, instance: str) -> int:
    rules = lab.backend.nft_json(instance, "list", "chain", "ip", "vpnlab", "refuse_peer_init")
    return sum(r["rule"]["expr"][-2]["counter"]["packets"] for r in rules.get("nftables", [])
               if "rule" in r)


def test_responder_only_never_dials(lab, devices):
    site = "site-responder"
    dev = devices(site)
    dev.configure(SECRETS[site])          # passive as well: nobody dials
    window = 2 * REDIAL + lab.detection_budget()
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        assert azure_sas(lab, site) == [] and dev.ike_sas() == [], "someone dialed"
        time.sleep(0.5)


# ------------------------------------------------------------ policy-based traffic selectors
def test_pbts_connection_takes_every_prefix_pair(lab, devices):
    """use_policy_based_traffic_selectors: the device lists every site prefix x every
    VNet prefix and the gateway's CHILD SA carries exactly those; a device that offers a
    prefix outside the local network gateway's address space gets TS_UNACCEPTABLE."""
    dev = devices("site-pbts")
    dev.add_lan("10.74.1.1/32", "10.74.2.1/32")
    dev.configure(SECRETS["site-pbts"], local_ts=["10.74.1.0/24", "10.74.2.0/24"], remote_ts=["10.70.0.0/16"])
    ok, lines = dev.initiate()
    assert ok, lines[-3:]
    child = azure_child(lab, "site-pbts")
    assert (child["local-ts"], child["remote-ts"]) == ([b"10.70.0.0/16"], [b"10.74.1.0/24", b"10.74.2.0/24"])
    dev.configure(SECRETS["site-pbts"], local_ts=["10.75.0.0/24"], remote_ts=["10.70.0.0/16"])
    mark = len(dev.log())
    assert not dev.initiate()[0]
    assert re.search(r"parsed IKE_AUTH response \d+ \[.*N\(TS_UNACCEPT\)", log_since(dev, mark))


# ------------------------------------------------------------ diagnostic log
def test_tunnel_events_in_azures_shape(lab, devices):
    site = "site-responder"
    t = tunnel_of(lab, site)
    dev = devices(site)
    dev.configure(SECRETS[site])
    assert dev.initiate()[0]
    dev.terminate()

    def tunnel_events():
        return [[e["OperationName"], e["instance_s"], e["remoteIP_s"]]
                for e in read_events(lab.state.dir, "TunnelDiagnosticLog") if e["connectionName_s"] == t.connection]
    lab.eventually(lambda: tunnel_events()[-2:], [
        ["TunnelConnected", "GatewayTenantWorker_IN_0", t.remote_ip],
        ["TunnelDisconnected", "GatewayTenantWorker_IN_0", t.remote_ip]], "minimum",
        "TunnelConnected then TunnelDisconnected")
    ike = [e["Message"] for e in read_events(lab.state.dir, "IKEDiagnosticLog")]
    assert any(re.match(rf"Remote {t.remote_ip}:\d+: Local 203\.0\.113\.\d+:\d+: \[RECEIVED\] parsed IKE_SA_INIT request", m)
               for m in ike)
