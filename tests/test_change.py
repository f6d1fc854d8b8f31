"""vpnlab apply's planning, without a lab: what a new topology changes in Azure's
resources and with which impact (vpnlab.change.diff), and which steps the plan diff
makes (vpnlab.change.steps). The steps themselves run on real labs in
scenarios/test_apply.py and scenarios/test_hub_spoke.py."""
from __future__ import annotations

import copy
import ipaddress
import json
import os
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from vpnlab.change import apply as change
from vpnlab.change import diff, p2s, steps
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan import pki, render
from vpnlab.plan.build import build

ROOT = Path(__file__).parent.parent
DUAL = yaml.safe_load((ROOT / "topologies/dual-site-transit.yaml").read_text())


def topology(data: dict, tmp_path: Path, name: str = "t.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load(path)


class Runtime:
    """What steps.work asks of a runtime while planning (nothing runs)."""
    @staticmethod
    def cannot_change_nodes():
        return None


def planned(old: dict, new: dict, tmp_path: Path) -> steps.Work:
    a, b = build(topology(old, tmp_path, "a.yaml"), "fast"), build(topology(new, tmp_path, "b.yaml"), "fast")
    return steps.work(Runtime, a, b, render.render(a, tmp_path), render.render(b, tmp_path))


def test_the_docs_page_shows_the_impact_table_as_the_data_has_it():
    page = (ROOT / "docs/rehearsing-a-change.md").read_text()
    shown = page.split("<!-- impact table -->\n", 1)[1].split("<!-- end impact table -->", 1)[0]
    assert shown == diff.impact_table()


def test_every_row_has_a_known_impact_and_a_source_in_the_reference():
    reference = (ROOT / "docs/azure-reference.md").read_text()
    rows = [r for fields in diff.table()["impacts"].values() for r in fields] + list(diff.table()["lifecycle"].values())
    for r in rows:
        assert r["impact"] in diff.ORDER, r
        assert f"| {r['source']} |" in reference, f"source {r['source']} not in docs/azure-reference.md §0"
        assert r.get("says") or r.get("unconfirmed") or r.get("lab"), f"{r}: nothing says why"


def test_no_change_is_no_change(tmp_path):
    assert diff.changes(topology(DUAL, tmp_path), topology(copy.deepcopy(DUAL), tmp_path, "b.yaml")) == []
    work = planned(DUAL, DUAL, tmp_path)
    assert (work.steps, work.resets, work.cannot, work.agent) == ([], [], [], False)


def test_a_shared_key_change_is_a_tunnel_reset_and_never_shows_the_key(tmp_path):
    new = copy.deepcopy(DUAL)
    new["connections"]["hub-to-site-c"]["shared_key"] = "Rotated.Secret.Value"
    found = diff.changes(topology(DUAL, tmp_path), topology(new, tmp_path, "b.yaml"))
    assert [(c.address, c.action, c.impact) for c in found] == [("connections.hub-to-site-c", "change", "tunnel-reset")]
    shown = json.dumps([c.to_json() for c in found])
    assert "Rotated" not in shown and "ChangeMe" not in shown and '"(secret)"' in shown
    work = planned(DUAL, new, tmp_path)
    assert {s.node for s in work.steps} == {f"hub-to-site-c-in{k}-{side}" for k in (0, 1) for side in ("az", "op")}
    assert {s.kind for s in work.steps} == {"charon"}
    assert sorted(t.name for t in work.resets) == ["hub-to-site-c-in0", "hub-to-site-c-in1"]


@pytest.mark.parametrize("old, new, refused", [
    ("VpnGw1", "VpnGw2", False), ("VpnGw1", "VpnGw1AZ", False), ("VpnGw2AZ", "VpnGw3AZ", False),
    ("VpnGw2", "VpnGw1", True), ("VpnGw1AZ", "VpnGw1", True), ("Basic", "VpnGw1", True), ("VpnGw1", "Basic", True)])
def test_sku_moves_follow_microsofts_upgrade_table(old, new, refused):
    why = diff.sku_refusal(old, new)
    assert bool(why) == refused and (not why or "[SKUUP]" in why)


def test_a_moved_connection_is_refused_at_its_line(tmp_path):
    new = copy.deepcopy(DUAL)
    new["connections"]["hub-to-site-b"].update(local_network_gateway="site-c", enable_bgp=False)
    new["connections"]["hub-to-site-c"].update(local_network_gateway="site-b", enable_bgp=True)
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(new, sort_keys=False))
    found = diff.changes(topology(DUAL, tmp_path), load(path))
    with pytest.raises(SourceError) as err:
        change._refuse(found, path)
    text = str(err.value)
    assert f"{path}:" in text and "connections.hub-to-site-b.local_network_gateway" in text
    assert "remove the connection and add a new one" in text


def test_a_new_site_is_new_nodes_and_links_and_leaves_the_others_alone(tmp_path):
    new = copy.deepcopy(DUAL)
    new["local_network_gateways"]["site-d"] = {"gateway_ip": "198.51.100.44", "address_space": ["10.83.1.0/24"]}
    new["connections"]["hub-to-site-d"] = {"virtual_network_gateway": "hub-gw", "local_network_gateway": "site-d",
                                           "shared_key": "Lab.SiteD.Psk.ChangeMe"}
    work = planned(DUAL, new, tmp_path)
    assert work.cannot == [] and work.resets == []
    made = next(s for s in work.steps if s.kind == "nodes")
    assert "site-d" in made.node and "hub-to-site-d-in1-op" in made.node
    touched = {s.node for s in work.steps if s.kind not in ("nodes", "daemons")}
    assert touched == {"hub-gw-in0", "hub-gw-in1"}       # their new tunnel interfaces' rules, FRR, nftables


def test_a_prefix_added_to_a_static_site_restarts_no_tunnel(tmp_path):
    new = copy.deepcopy(DUAL)
    new["local_network_gateways"]["site-c"]["address_space"].append("10.82.2.0/24")
    work = planned(DUAL, new, tmp_path)
    assert work.resets == [] and {s.kind for s in work.steps} == {"frr", "addresses", "bridge"}


def test_keep_ike_follows_the_impact_of_each_connections_changes(tmp_path):
    new = copy.deepcopy(DUAL)
    new["connections"]["hub-to-site-c"]["connection_mode"] = "ResponderOnly"
    new["connections"]["hub-to-site-a"]["ipsec_policies"] = [{
        "ike_encryption": "AES256", "ike_integrity": "SHA256", "dh_group": "DHGroup14",
        "ipsec_encryption": "GCMAES256", "ipsec_integrity": "GCMAES256", "pfs_group": "PFS2048"}]
    t = topology(new, tmp_path, "b.yaml")
    keep = change.keep_ike(diff.changes(topology(DUAL, tmp_path), t), t)
    assert "hub-to-site-c" in keep and "hub-to-site-a" not in keep


def test_azure_only_keeps_the_devices_as_they_run(tmp_path):
    new = copy.deepcopy(DUAL)
    new["connections"]["hub-to-site-c"]["shared_key"] = "Rotated.Secret.Value"
    a, b = build(topology(DUAL, tmp_path), "fast"), build(topology(new, tmp_path, "b.yaml"), "fast")
    kept = change.device_kept(a, b)
    assert kept.nodes["hub-to-site-c-in0-op"] == a.nodes["hub-to-site-c-in0-op"]
    assert kept.nodes["hub-to-site-c-in0-az"] == b.nodes["hub-to-site-c-in0-az"]
    work = steps.work(Runtime, a, kept, render.render(a, tmp_path), render.render(kept, tmp_path))
    assert {s.node for s in work.steps} == {"hub-to-site-c-in0-az", "hub-to-site-c-in1-az"}
    # the next apply: the topology is already saved (no change in Azure's resources),
    # the devices catch up and start IKE again
    catch_up = steps.work(Runtime, kept, b, render.render(kept, tmp_path), render.render(b, tmp_path),
                          keep_ike=frozenset(new["connections"]))
    assert {s.node for s in catch_up.steps} == {"hub-to-site-c-in0-op", "hub-to-site-c-in1-op"}
    assert sorted(t.name for t in catch_up.resets) == ["hub-to-site-c-in0", "hub-to-site-c-in1"]


def test_a_subnet_added_before_others_leaves_them_alone(tmp_path):
    """Bridges are named by their subnet: one added first in name order is a new bridge
    and new VMs, and the other subnets' bridges and VMs are not touched."""
    new = copy.deepcopy(DUAL)
    new["virtual_networks"]["hub"]["subnets"]["a-first"] = {"address_prefix": "10.70.2.0/24", "vms": ["dt-vm3"]}
    work = planned(DUAL, new, tmp_path)
    assert not work.cannot
    assert {(s.node, s.kind) for s in work.steps if s.kind in ("bridge", "nodes")} == {
        ("hub-sdn", "bridge"), ("dt-vm3", "nodes")}
    assert not [s for s in work.steps if s.node == "dt-vm1"]


def test_a_vm_moved_to_another_subnet_is_made_again(tmp_path):
    new = copy.deepcopy(DUAL)
    subnets = new["virtual_networks"]["hub"]["subnets"]
    subnets["workload"]["vms"].remove("dt-vm1")
    subnets["app"] = {"address_prefix": "10.70.2.0/24", "vms": ["dt-vm1"]}
    work = planned(DUAL, new, tmp_path)
    assert not work.cannot
    assert ("dt-vm1", "node") in {(s.node, s.kind) for s in work.steps}


def test_a_secret_anywhere_in_a_field_is_shown_as_secret():
    """A list of models with a secret inside is masked whole, not only a top-level key."""
    key = diff._Secret("Hidden.Value.1")
    found = diff.field_changes("connections", {"keys": [{"name": "a", "secret": key}]},
                               {"keys": [{"name": "a", "secret": diff._Secret("Hidden.Value.2")}]})
    assert [(f.old, f.new) for f in found] == [("(secret)", "(secret)")]
    assert "Hidden" not in json.dumps([f.to_json() for f in found])


# ------------------------------------------------------------------ point-to-site
P2S = yaml.safe_load((ROOT / "topologies/point-to-site.yaml").read_text())


def _p2s(design: dict) -> dict:
    return design["virtual_network_gateways"]["hub-gw"]["vpn_client_configuration"]


def test_the_pki_keeps_what_it_issued_and_adds_what_is_missing(tmp_path):
    """A change issues only what is missing: the CAs (their keys kept, 0600), the
    server's and every client's certificate stay byte for byte; a revocation is a new
    CRL of its root, a root added a new CA in the bundle."""
    folder = tmp_path / "pki"
    pki.issue(topology(P2S, tmp_path, "a.yaml"), folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert oct(os.stat(folder / "ca-P2SRootCert.key").st_mode & 0o777) == "0o600"
    pki.issue(topology(P2S, tmp_path, "a.yaml"), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "issued again: nothing changes"
    new = copy.deepcopy(P2S)
    _p2s(new)["revoked_certificates"].append({"name": "stolen", "certificate": "alice"})
    _p2s(new)["root_certificates"].append({"name": "EveRoot"})
    index = pki.issue(topology(new, tmp_path, "b.yaml"), folder)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    changed = {n for n in after if after[n] != before.get(n)}
    assert changed == {"bundle-hub-gw.pem", "crl-hub-gw-P2SRootCert.crl", "crl-hub-gw-EveRoot.crl",
                       "crl-hub-gw.pem", pki.INDEX}
    crl = x509.load_pem_x509_crl(after["crl-hub-gw-P2SRootCert.crl"])
    assert int(index["certificates"]["alice"]["serial"], 16) in {r.serial_number for r in crl}
    assert after["ca-EveRoot.pem"] in after["bundle-hub-gw.pem"]


def test_the_pki_is_made_again_only_when_what_it_is_made_of_changes(tmp_path):
    """apply stages a new PKI only when pki.inputs differ: a revocation, a client added
    or reissued do; a site prefix or custom routes do not."""
    base = topology(P2S, tmp_path, "a.yaml")
    same = copy.deepcopy(P2S)
    _p2s(same)["custom_routes"].append("10.98.0.0/16")
    next(iter(same["local_network_gateways"].values()))["address_space"] = ["10.99.0.0/24"]
    assert pki.inputs(topology(same, tmp_path, "b.yaml")) == pki.inputs(base)
    revoked, client = copy.deepcopy(P2S), copy.deepcopy(P2S)
    _p2s(revoked)["revoked_certificates"].append({"name": "stolen", "certificate": "alice"})
    client["clients"]["frank"] = {"virtual_network_gateway": "hub-gw", "protocol": "IkeV2"}
    for other in (revoked, client):
        assert pki.inputs(topology(other, tmp_path, "c.yaml")) != pki.inputs(base)


def test_the_users_a_change_ends_are_the_revoked_and_the_untrusted(tmp_path):
    old, new = copy.deepcopy(P2S), copy.deepcopy(P2S)
    _p2s(old)["root_certificates"].append({"name": "EveRoot"})
    _p2s(new)["revoked_certificates"].append({"name": "stolen", "certificate": "alice"})
    a, b = topology(old, tmp_path, "a.yaml"), topology(new, tmp_path, "b.yaml")
    index = pki.issue(b, tmp_path / "pki")
    assert p2s.ended_users(index, index, a, b) == {"hub-gw": ["alice", "eve"]}
    assert p2s.ended_users(index, index, b, b) == {}
    assert p2s.ended_users(index, index, b, a) == {}, "a revocation removed, a root added: nobody leaves"


def test_a_new_pool_makes_the_p2s_server_again_and_custom_routes_do_not(tmp_path):
    new = copy.deepcopy(P2S)
    _p2s(new)["custom_routes"].append("10.98.0.0/16")
    work = planned(P2S, new, tmp_path)
    assert not work.cannot and "node" not in {s.kind for s in work.steps}
    # the server's selectors, and the Windows client's, which asks for the routes by name
    assert {s.node for s in work.steps if s.kind == "charon"} == {"hub-gw-in0-p2s", "dave"}
    _p2s(new)["address_pool"] = ["172.16.202.0/24"]
    work = planned(P2S, new, tmp_path)
    assert not work.cannot
    assert {s.node for s in work.steps if s.kind == "node"} == {"hub-gw-in0-p2s", "hub-gw-in1-p2s"}


def test_a_client_keeps_its_public_address_when_others_come_and_go(tmp_path):
    new = copy.deepcopy(P2S)
    del new["clients"]["bob"]
    new["clients"]["aaron"] = {"virtual_network_gateway": "hub-gw", "protocol": "IkeV2"}
    a, b = build(topology(P2S, tmp_path, "a.yaml"), "fast"), build(topology(new, tmp_path, "b.yaml"), "fast")
    for client in ("alice", "carol", "dave", "eve", "mallory"):
        assert a.nodes[client].interfaces == b.nodes[client].interfaces, client


def test_a_subnet_with_resources_in_it_keeps_its_range(tmp_path):
    """Azure changes a subnet's range only with no resources in it [SUBNETMANAGE]: a VM
    that stays, or the gateway in GatewaySubnet, is refused at its line."""
    new = copy.deepcopy(DUAL)
    new["virtual_networks"]["hub"]["subnets"]["workload"]["address_prefix"] = "10.70.3.0/24"
    with pytest.raises(SourceError, match=r"subnets\.workload\.address_prefix: .*move or delete dt-vm1 first"):
        change._refuse(diff.changes(topology(DUAL, tmp_path, "a.yaml"), topology(new, tmp_path, "b.yaml")),
                       tmp_path / "b.yaml")
    new["virtual_networks"]["hub"]["subnets"]["workload"]["vms"] = []
    assert not diff.changes(topology(DUAL, tmp_path, "a.yaml"), topology(new, tmp_path, "b.yaml"))[0].refused
    new = copy.deepcopy(DUAL)
    new["virtual_networks"]["hub"]["subnets"]["GatewaySubnet"]["address_prefix"] = "10.70.254.0/27"
    [c] = diff.changes(topology(DUAL, tmp_path, "a.yaml"), topology(new, tmp_path, "b.yaml"))
    assert "the virtual network gateway" in c.refused


def test_a_vm_removed_before_others_leaves_their_addresses(tmp_path):
    """Azure keeps a dynamic address until its NIC is deleted or moved [IPADDR]: with
    the running lab's addresses held, removing the first VM of a subnet leaves the VMs
    after it alone; a new VM takes the lowest free address, a static one its own."""
    old = copy.deepcopy(DUAL)
    old["virtual_networks"]["hub"]["subnets"]["workload"]["vms"] = ["dt-vm1", "dt-vm2", "dt-vm3"]
    running = build(topology(old, tmp_path, "a.yaml"), "fast")
    assert running.vm_addresses()["dt-vm3"] == ipaddress.ip_address("10.70.1.6")
    new = copy.deepcopy(old)
    new["virtual_networks"]["hub"]["subnets"]["workload"]["vms"] = [
        "dt-vm2", "dt-vm3", "dt-vm4", {"name": "dt-vm5", "private_ip_address": "10.70.1.50"}]
    t = topology(new, tmp_path, "b.yaml").holding(running.vm_addresses())
    assert {vm: str(a) for vm, a in t.subnet_addresses("hub", "workload").items()} == {
        "dt-vm2": "10.70.1.5", "dt-vm3": "10.70.1.6", "dt-vm4": "10.70.1.4", "dt-vm5": "10.70.1.50"}
    after = build(t, "fast")
    work = steps.work(Runtime, running, after, render.render(running, tmp_path), render.render(after, tmp_path))
    assert not work.cannot
    assert not [s for s in work.steps if s.node in ("dt-vm2", "dt-vm3")], work.steps
    assert topology(new, tmp_path, "b.yaml").vm_address("hub", "dt-vm2") == ipaddress.ip_address("10.70.1.4"), \
        "a fresh lab numbers them from .4"
