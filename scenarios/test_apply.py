"""Rehearse a change: `vpnlab apply` on a running lab, as Azure applies the same change,
measured while traffic flows (vpnlab.change). On the dual-site-transit design: an
active-active gateway, two BGP sites (site-a, site-b) and a static one (site-c).

Each test changes site-c's side of the design, or the gateway, and brings the lab back to
its topology at the end (but the SKU upgrade, last); what the change must leave alone (the other tunnels' IKE SAs,
every BGP session that was not reconfigured) is compared before and after."""
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpnlab.change import apply as change
from vpnlab.checks.probe import worst
from vpnlab.gateway import events, live
from vpnlab.model.yamlsrc import SourceError
from vpnlab.waits import WaitTimeout, wait_until

LAB_TOPOLOGY = "../topologies/dual-site-transit.yaml"
LAB_RUNTIMES = ("netns", "docker")
VM = "dt-vm1"
UNAFFECTED = "site-a-host"         # through the BGP sites' tunnels
AFFECTED = "site-c-host"           # through site-c's tunnels
FEW_SECONDS = 5             # "a few seconds of disruption" while IKE restarts [3.3]
NEW_POLICY = {"ike_encryption": "AES256", "ike_integrity": "SHA256", "dh_group": "DHGroup14",
              "ipsec_encryption": "GCMAES256", "ipsec_integrity": "GCMAES256", "pfs_group": "PFS2048"}


@pytest.fixture
def design(lab):
    """The lab's topology to edit; the lab is brought back to it afterwards."""
    original = lab.design()
    yield copy.deepcopy(original)
    lab.apply(original)


def untouched(lab, but: str = "site-c") -> dict:
    """What a change to `but` must leave alone: every other tunnel's IKE SA, and every
    BGP session's count of establishments."""
    rt, plan = lab.backend, lab.plan
    sas = {t.name: sorted(s["uniqueid"] for s in live.ike_sas(rt, t.azure_end))
           for t in plan.tunnels if t.device != but}
    bgp = {f"{n}:{peer}": p["connectionsEstablished"]
           for n in sorted({s.node for s in plan.bgp}) for peer, p in live.bgp_peers(rt, n).items()}
    return {"ike_sas": sas, "bgp_established": bgp}


def site_c_sas(lab) -> list:
    """site-c's established IKE SAs (not the half-open ones of a dial that will fail),
    each as (tunnel end, unique ID): each end's charon numbers its own."""
    return sorted((t.azure_end, s["uniqueid"]) for t in lab.plan.tunnels if t.device == "site-c"
                  for s in live.ike_sas(lab.backend, t.azure_end) if s["state"] == b"ESTABLISHED")


def test_a_no_op_apply_changes_nothing(lab):
    """Applying the running topology again: no change, no step, nothing restarted, the
    saved plan as it was."""
    before, plan_file = untouched(lab, but=""), lab.session.plan_file.read_bytes()
    result = lab.apply(lab.state.topology_file)
    assert result["changes"] == [] and result["steps"] == [] and result["resets"] == []
    assert untouched(lab, but="") == before
    assert lab.session.plan_file.read_bytes() == plan_file


def test_site_prefix_added_while_traffic_flows(lab, scenario, design):
    """A prefix added to site-c's local network gateway: the gateway's static route and
    announcement follow (FRR by its differences), the device gets the new LAN; no tunnel
    or BGP session restarts, and traffic through the other sites loses nothing."""
    scenario.start(lab, VM, UNAFFECTED, flows=4)
    before = untouched(lab)
    design["local_network_gateways"]["site-c"]["address_space"].append("10.82.2.0/24")
    at, result = scenario.apply(design, "site-c address space + 10.82.2.0/24")
    probe = scenario.stop(at)
    scenario.record("apply", result["seconds"], "s")
    scenario.record("lost through site-a (worse direction)", worst(probe, "lost"), "packets", "0")
    assert [c["resource"] for c in result["changes"]] == ["local_network_gateways.site-c"]
    assert result["resets"] == []
    for instance in ("hub-gw-in0", "hub-gw-in1"):
        assert "10.82.2.0/24" in live.static_routes(lab.backend, instance)
    assert live.ping(lab.backend, VM, "10.82.2.1", count=2)
    assert untouched(lab) == before
    assert worst(probe, "lost") == 0, probe["directions"]
    # Azure's diagnostic log of the update: the connection's configuration, and the new
    # static route on each instance
    logged = events.read(lab.state.dir)
    assert any(e.get("OperationName") == "SetConnectionConfiguration" and e["connectionName_s"] == "hub-to-site-c"
               for e in logged), logged[-5:]
    routes = {(e["instance_s"], e["Message"]) for e in logged if e.get("OperationName") == "StaticRouteUpdate"}
    assert {(f"GatewayTenantWorker_IN_{k}", "Static route 10.82.2.0/24 via connection hub-to-site-c added")
            for k in (0, 1)} <= routes, routes


SITE_D = {"gateway_ip": "198.51.100.44", "address_space": ["10.83.1.0/24"]}
TO_SITE_D = {"virtual_network_gateway": "hub-gw", "local_network_gateway": "site-d",
             "shared_key": "Lab.SiteD.Psk.ChangeMe"}


def test_a_site_and_a_vm_added_then_removed_while_traffic_flows(lab, scenario, design):
    """A new site (local network gateway and connection) and a new VM: their nodes are
    made and started, the new VM reaches the new site; the running tunnels and sessions
    are untouched and traffic through them loses nothing. Taken away again, nothing of
    them is left."""
    scenario.start(lab, VM, UNAFFECTED, flows=4)
    before, nodes = untouched(lab, but="site-d"), set(lab.plan.nodes)
    design["local_network_gateways"]["site-d"] = SITE_D
    design["connections"]["hub-to-site-d"] = TO_SITE_D
    design["virtual_networks"]["hub"]["subnets"]["workload"]["vms"].append("dt-vm2")
    at, result = scenario.apply(design, "site-d, its connection and dt-vm2 added")
    scenario.record("apply", result["seconds"], "s")
    scenario.record("converged", result["converged_s"], "s")
    assert {c["resource"]: c["action"] for c in result["changes"]} == {
        "virtual_networks.hub": "change", "local_network_gateways.site-d": "add", "connections.hub-to-site-d": "add"}
    assert live.ping(lab.backend, "dt-vm2", "10.83.1.10", count=2)
    assert untouched(lab, but="site-d") == before
    original = lab.design()
    del original["local_network_gateways"]["site-d"], original["connections"]["hub-to-site-d"]
    original["virtual_networks"]["hub"]["subnets"]["workload"]["vms"].remove("dt-vm2")
    lab.apply(original)
    probe = scenario.stop(at)
    assert set(lab.plan.nodes) == nodes
    assert not [ns for ns in lab.backend.state.namespaces if "site-d" in ns or "dt-vm2" in ns]
    assert not [p for p in lab.state.processes if p["node"] not in nodes | {"agent"}]
    assert untouched(lab, but="site-d") == before
    assert worst(probe, "lost") == 0, probe["directions"]


def test_an_address_range_and_a_subnet_added_then_removed_while_traffic_flows(lab, scenario, design):
    """A second address range with a subnet and a VM in it, the subnet first in name
    order [VNETMANAGE, SUBNETMANAGE]: the gateway announces the range to the BGP sites
    and the static site's device routes it (FRR and the devices by their differences),
    the new VM reaches every site; no tunnel or BGP session restarts, and the other
    subnet's VM loses nothing. Taken away again, nothing of it is left."""
    scenario.start(lab, VM, UNAFFECTED, flows=4)
    before, nodes = untouched(lab, but=""), set(lab.plan.nodes)
    hub = design["virtual_networks"]["hub"]
    hub["address_space"].append("10.71.0.0/16")
    hub["subnets"]["apps"] = {"address_prefix": "10.71.1.0/24", "vms": ["dt-vm3"]}
    at, result = scenario.apply(design, "address range 10.71.0.0/16 and subnet apps added")
    scenario.record("apply", result["seconds"], "s")
    assert [c["resource"] for c in result["changes"]] == ["virtual_networks.hub"]
    assert result["resets"] == []
    for host in ("site-a-host", "site-b-host", "site-c-host"):
        lab.eventually(lambda h=host: live.ping(lab.backend, "dt-vm3", lab.node(h).address, count=1), True,
                       "reconverge", f"dt-vm3 (10.71.1.4) reaches {host}")
    assert "10.71.0.0/16" in live.fib_prefixes(lab.backend, "site-a"), "announced over BGP"
    assert untouched(lab, but="") == before
    original = lab.design()
    original["virtual_networks"]["hub"]["address_space"].remove("10.71.0.0/16")
    del original["virtual_networks"]["hub"]["subnets"]["apps"]
    lab.apply(original)
    probe = scenario.stop(at)
    assert set(lab.plan.nodes) == nodes
    assert not [ns for ns in lab.backend.state.namespaces if "dt-vm3" in ns]
    lab.eventually(lambda: "10.71.0.0/16" in live.fib_prefixes(lab.backend, "site-a"), False, "reconverge",
                   "site-a's device to lose the route to 10.71.0.0/16")
    assert untouched(lab, but="") == before
    assert worst(probe, "lost") == 0, probe["directions"]


def test_a_sites_new_public_ip_rebuilds_its_tunnels_only(lab, scenario, design):
    """The device's public IP changes (its ISP renumbered it): Azure rebuilds the
    connection toward the new address [LNGMOD]. site-c's tunnels come up from the new
    address; the other sites' tunnels and BGP sessions are untouched and lose nothing."""
    scenario.start(lab, VM, UNAFFECTED, flows=4)
    before = untouched(lab)
    design["local_network_gateways"]["site-c"]["gateway_ip"] = "198.51.100.53"
    at, result = scenario.apply(design, "site-c gateway_ip 198.51.100.43 -> 198.51.100.53")
    scenario.record("apply", result["seconds"], "s")
    scenario.record("converged", result["converged_s"], "s")
    assert [c["impact"] for c in result["changes"]] == ["tunnel-reset"]
    assert sorted(result["resets"]) == ["hub-to-site-c-in0", "hub-to-site-c-in1"]
    peers = {s["remote-host"].decode() for t in lab.plan.tunnels if t.device == "site-c"
             for s in live.ike_sas(lab.backend, t.azure_end) if s["state"] == b"ESTABLISHED"}
    assert peers == {"198.51.100.53"}, peers
    assert live.ping(lab.backend, VM, lab.node(AFFECTED).address, count=2)
    probe = scenario.stop(at)
    assert untouched(lab) == before
    assert worst(probe, "lost") == 0, probe["directions"]


def test_a_vm_removed_before_another_leaves_its_address_and_traffic_alone(lab, scenario, design):
    """Azure keeps a VM's dynamic address until its NIC is deleted [IPADDR]: dt-vm1,
    first in the subnet's list, removed; dt-vm2 after it keeps 10.70.1.5, its node and
    its flows to site-a untouched."""
    design["virtual_networks"]["hub"]["subnets"]["workload"]["vms"].append("dt-vm2")
    lab.apply(design)
    assert lab.node("dt-vm2").address == "10.70.1.5"
    scenario.start(lab, "dt-vm2", UNAFFECTED, flows=2)
    design["virtual_networks"]["hub"]["subnets"]["workload"]["vms"].remove("dt-vm1")
    at, result = scenario.apply(design, "dt-vm1 removed")
    probe = scenario.stop(at)
    assert [s["node"] for s in result["steps"] if s["kind"] == "node"] == ["dt-vm1"]
    assert not [s for s in result["steps"] if s["node"] == "dt-vm2"]
    assert lab.node("dt-vm2").address == "10.70.1.5"
    assert worst(probe, "lost") == 0, probe["directions"]


def test_shared_key_reset_on_azure_first_then_the_device(lab, scenario, design):
    """Azure's "reset the key" on hub-to-site-c, Azure's side first (--azure-only): the
    tunnel goes down and stays down (the device still offers the old key) until the
    device gets the new one; the other sites' tunnels and sessions are untouched."""
    scenario.start(lab, VM, AFFECTED, flows=4)
    before = untouched(lab)
    design["connections"]["hub-to-site-c"]["shared_key"] = "Rotated.SiteC.Key.2026"
    at, result = scenario.apply(design, "hub-to-site-c shared key (Azure's side)", azure_only=True)
    assert result["device_not_updated"] == ["hub-to-site-c-in0", "hub-to-site-c-in1"]
    assert {f["path"]: (f["old"], f["new"]) for f in result["changes"][0]["fields"]} == \
        {"shared_key": ("(secret)", "(secret)")}
    # down until both ends agree: still down a DPD timeout later
    wait_until(lambda: site_c_sas(lab), lambda sas: not sas, "site-c's tunnels to go down", 10)
    with pytest.raises(WaitTimeout):
        wait_until(lambda: site_c_sas(lab), bool, "a site-c tunnel up with the device's old key",
                   lab.timer("dpd_timeout"))
    device_at, device = scenario.apply(design, "hub-to-site-c shared key (the device)")
    scenario.wait_flowing(device_at)
    probe = scenario.stop(at)
    scenario.record("outage until the device had the key", worst(probe, "recovered_s"), "s")
    scenario.record("up after the device's apply", device["converged_s"], "s")
    assert device["device_not_updated"] == [] and sorted(device["resets"]) == ["hub-to-site-c-in0", "hub-to-site-c-in1"]
    assert untouched(lab) == before
    assert worst(probe, "recovered_s") >= (device_at - at) / 1e9 - 0.5, probe["directions"]


def test_custom_policy_restarts_ike_for_a_few_seconds(lab, scenario, design):
    """A custom IPsec/IKE policy on hub-to-site-c: the connection is torn down and IKE
    restarts with the new proposals; the outage stays within a few seconds, the other
    tunnels keep their SAs."""
    scenario.start(lab, VM, AFFECTED, flows=4)
    before = untouched(lab)
    design["connections"]["hub-to-site-c"]["ipsec_policies"] = [NEW_POLICY]
    at, result = scenario.apply(design, "hub-to-site-c custom policy")
    scenario.wait_flowing(at)
    probe = scenario.stop(at)
    outage = worst(probe, "recovered_s")
    scenario.record("outage (worse direction)", outage, "s", f"<= {FEW_SECONDS} s")
    assert result["changes"][0]["impact"] == "ike-restart"
    for t in (t for t in lab.plan.tunnels if t.device == "site-c"):
        ike = live.ike_sas(lab.backend, t.azure_end)[0]
        child = next(iter(ike["child-sas"].values()))
        assert (ike["encr-alg"], ike["dh-group"], child["encr-alg"]) == (b"AES_CBC", b"MODP_2048", b"AES_GCM_16")
    assert untouched(lab) == before
    assert outage <= FEW_SECONDS, probe["directions"]


def test_connection_settings_without_a_restart(lab, design):
    """A connection mode (ResponderOnly: Azure stops dialing site-c) and BGP turned off
    on hub-to-site-a (its prefix stays reachable through the site's address space, a
    static route): both applied without an IKE restart; site-b's sessions and every
    tunnel's SA are untouched."""
    sas = untouched(lab, but="")["ike_sas"]
    bgp_b = {k: v for k, v in untouched(lab)["bgp_established"].items() if "10.81.255.254" in k}
    design["connections"]["hub-to-site-c"]["connection_mode"] = "ResponderOnly"
    design["connections"]["hub-to-site-a"]["enable_bgp"] = False
    result = lab.apply(design)
    assert result["resets"] == []
    assert {t.connection_mode for t in lab.plan.tunnels if t.device == "site-c"} == {"ResponderOnly"}
    sessions = {f"{b.node}:{b.peer}" for b in lab.plan.bgp}
    assert not [s for s in sessions if "10.80.255.254" in s]
    for instance in ("hub-gw-in0", "hub-gw-in1"):
        assert "10.80.255.254" not in live.bgp_peers(lab.backend, instance)
        assert "10.80.1.0/24" in live.static_routes(lab.backend, instance)
    assert live.ping(lab.backend, VM, "10.80.1.10", count=2)
    assert untouched(lab, but="")["ike_sas"] == sas
    assert {k: v for k, v in untouched(lab)["bgp_established"].items() if "10.81.255.254" in k} == bgp_b


def test_policy_based_traffic_selectors_rebuild_the_tunnel(lab, design):
    """use_policy_based_traffic_selectors on hub-to-site-c: new traffic selectors need
    new CHILD SAs, so its tunnels start again with one CHILD SA per prefix pair; the VM
    still reaches the site."""
    before, sas = untouched(lab), site_c_sas(lab)
    design["connections"]["hub-to-site-c"]["use_policy_based_traffic_selectors"] = True
    result = lab.apply(design)
    assert sorted(result["resets"]) == ["hub-to-site-c-in0", "hub-to-site-c-in1"]
    assert not set(site_c_sas(lab)) & set(sas)
    for t in (t for t in lab.plan.tunnels if t.device == "site-c"):
        children = [c for ike in live.ike_sas(lab.backend, t.azure_end) for c in ike["child-sas"].values()]
        assert {(tuple(c["local-ts"]), tuple(c["remote-ts"])) for c in children} == \
            {((b"10.70.0.0/16",), (b"10.82.1.0/24",))}
    assert live.ping(lab.backend, VM, "10.82.1.10", count=2)
    assert untouched(lab) == before


REFUSED = {
    "swapped-sites": (lambda d: (d["connections"]["hub-to-site-b"].update(local_network_gateway="site-c", enable_bgp=False),
                                 d["connections"]["hub-to-site-c"].update(local_network_gateway="site-b", enable_bgp=True)),
                      "remove the connection and add a new one"),
    "subnet-range-with-a-vm": (lambda d: d["virtual_networks"]["hub"]["subnets"]["workload"].update(
        address_prefix="10.70.1.0/25"), "move or delete dt-vm1 first [SUBNETMANAGE]"),
    "new-vnet": (lambda d: d["virtual_networks"].update(spoke={
        "address_space": ["10.72.0.0/16"], "subnets": {"apps": {"address_prefix": "10.72.1.0/24"}}}),
        "adding or removing a virtual network is not applied to a running lab yet"),
}


@pytest.mark.parametrize("change_id", sorted(REFUSED))
def test_refused_changes_touch_nothing(lab, design, change_id):
    """What Azure refuses (a connection moved to another site, a subnet's range changed
    with a VM in it) or the lab's apply can't make yet (a virtual network added) is
    refused before anything is touched: the plan, the rendered configs and the SAs stay
    exactly as they were."""
    mutate, words = REFUSED[change_id]
    mutate(design)
    before = (_configs(lab), untouched(lab, but=""))
    with pytest.raises(SourceError) as refused:
        lab.apply(design)
    assert "the running lab is untouched" in str(refused.value) and words in str(refused.value), refused.value
    assert (_configs(lab), untouched(lab, but="")) == before


def test_a_dpd_timeout_change_restarts_ike_with_the_new_timeout(lab_factory):
    """On a lab with Azure's timers (the fast profile fixes one DPD timeout for every
    tunnel): a connection's dpd_timeout_seconds changed. The lab restarts IKE so that
    the new timeout is the one in force (UNCONFIRMED what Azure does), and both ends'
    charons run it: a DPD every timeout/3."""
    lab = lab_factory(Path(__file__).parent / "../topologies/single-site-static.yaml", "apply-dpd", timers="azure")
    design = lab.design()
    design["connections"]["spoke-to-branch"]["dpd_timeout_seconds"] = 90
    before = {t.name: [s["uniqueid"] for s in live.ike_sas(lab.backend, t.azure_end)] for t in lab.plan.tunnels}
    result = lab.apply(design)
    assert [f["impact"] for c in result["changes"] for f in c["fields"]] == ["ike-restart"]
    assert sorted(result["resets"]) == sorted(before)
    for t in lab.plan.tunnels:
        new = [s["uniqueid"] for s in live.ike_sas(lab.backend, t.azure_end)]
        assert new and not set(new) & set(before[t.name]), (t.name, before[t.name], new)
        for end in (t.azure_end, t.onprem_end):
            conns = {name: conn for c in live.vici_conns(lab.backend, end) for name, conn in c.items()}
            assert conns[t.connection]["dpd_delay"] == b"30", (end, conns[t.connection])


def test_reset_connection_restarts_only_that_connection(lab):
    """Azure's "Reset connection": hub-to-site-c's tunnels get new IKE SAs, nothing else
    moves [RESET]."""
    before, sas = untouched(lab), site_c_sas(lab)
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "reset", "connection", "hub-to-site-c",
                          "--name", lab.name, "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    after = site_c_sas(lab)
    assert len(after) == 2 and not set(after) & set(sas)
    assert untouched(lab) == before


def test_an_interrupted_apply_is_completed_by_the_next(lab, design, tmp_path):
    """kill -9 in the middle of an apply: status says the apply was interrupted, and the
    next apply of the same file completes the change."""
    design["local_network_gateways"]["site-c"]["address_space"].append("10.82.2.0/24")
    path = tmp_path / "prefix.yaml"
    path.write_text(yaml.safe_dump(design, sort_keys=False))
    journal = lab.state.dir / change.JOURNAL
    proc = subprocess.Popen([sys.executable, "-m", "vpnlab.cli", "apply", str(path), "--name", lab.name, "--yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(journal.exists, bool, "the apply to begin", 30, interval=0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    status = lab.status()
    assert status["phase"] == "applying" and status["apply"]["alive"] is False
    result = lab.apply(path)
    assert result["interrupted_apply_completed"] and not journal.exists()
    assert lab.status()["phase"] == "up"
    assert live.ping(lab.backend, VM, "10.82.2.1", count=2)


def test_active_active_to_active_standby_and_back(lab, scenario, design):
    """Azure's conversion [CHAA], both ways: to active-standby, instance 1 stands by
    (one tunnel per site, the gateway's one BGP address), then active-active again; the
    managed devices are reconfigured in the same apply, and the VM reaches every site
    after each."""
    design["virtual_network_gateways"]["hub-gw"]["active_active"] = False
    result = lab.apply(design)
    scenario.record("to active-standby: applied", result["seconds"], "s")
    scenario.record("to active-standby: converged", result["converged_s"], "s")
    assert result["changes"][0]["impact"] == "downtime"
    roles = {g["instance"]: g["role"] for g in lab.status()["gateways"]}
    assert roles == {"hub-gw-in0": "active", "hub-gw-in1": "standby"}
    assert sorted(t["tunnel"] for t in lab.status()["tunnels"]) == \
        ["hub-to-site-a-in0", "hub-to-site-b-in0", "hub-to-site-c-in0"]
    for host in ("10.80.1.10", "10.81.1.10", "10.82.1.10"):
        assert live.ping(lab.backend, VM, host, count=2), host
    design["virtual_network_gateways"]["hub-gw"]["active_active"] = True
    back = lab.apply(design)
    scenario.record("to active-active: converged", back["converged_s"], "s")
    assert {g["role"] for g in lab.status()["gateways"]} == {"active"}
    assert len([t for t in lab.status()["tunnels"] if t["state"] == "ESTABLISHED"]) == 6
    for host in ("10.80.1.10", "10.81.1.10", "10.82.1.10"):
        assert live.ping(lab.backend, VM, host, count=2), host


# The last two: Azure has no way back from an upgrade but delete and create, so the lab
# stays on VpnGw2 after them.
def test_sku_resize_changes_the_cap_without_a_reset(lab, scenario):
    """VpnGw1 -> VpnGw2: the throughput cap changes on both instances, no tunnel resets
    and no packet is lost."""
    design = lab.design()
    scenario.start(lab, VM, AFFECTED, flows=4)
    before = untouched(lab, but="")
    design["virtual_network_gateways"]["hub-gw"]["sku"] = "VpnGw2"
    at, result = scenario.apply(design, "hub-gw VpnGw1 -> VpnGw2")
    probe = scenario.stop(at)
    assert result["resets"] == [] and {s["kind"] for s in result["steps"]} == {"shaping"}
    for instance in ("hub-gw-in0", "hub-gw-in1"):
        qdisc = lab.backend.tc(instance, "-j", "qdisc", "show", "dev", "pub").stdout
        assert json.loads(qdisc)[0]["options"]["rate"] == lab.plan.nodes[instance].shaping_mbps * 125000
    assert untouched(lab, but="") == before
    assert worst(probe, "lost") == 0, probe["directions"]


def test_a_downgrade_is_refused_with_microsofts_reason(lab, tmp_path):
    """VpnGw2 -> VpnGw1 through the command line: exit 2, the file and field named, with
    Microsoft's reason and source."""
    smaller = lab.design()
    if smaller["virtual_network_gateways"]["hub-gw"]["sku"] != "VpnGw2":     # run alone
        smaller["virtual_network_gateways"]["hub-gw"]["sku"] = "VpnGw2"
        lab.apply(smaller)
    smaller["virtual_network_gateways"]["hub-gw"]["sku"] = "VpnGw1"
    path = tmp_path / "downgrade.yaml"
    path.write_text(yaml.safe_dump(smaller, sort_keys=False))
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "apply", str(path), "--name", lab.name, "--yes"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert f"{path}:" in res.stderr and "can't be downgraded" in res.stderr and "[SKUUP]" in res.stderr


def _configs(lab) -> dict:
    """Every rendered config of the lab, and the saved plan, by content."""
    files = [lab.session.plan_file, *sorted(lab.state.nodes_dir.rglob("*.conf"))]
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in files}
