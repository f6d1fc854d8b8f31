"""Point-to-site's RADIUS and SSTP rules, and the client route limits, from the model
to the rendered configs (no lab runs here; scenarios/test_p2s_radius.py runs them)."""
import json
from ipaddress import IPv4Network
from pathlib import Path

import yaml

from vpnlab.importer.arm import ArmImport
from vpnlab.model.defaults import defaults
from vpnlab.model.p2s_rules import ikev2_openvpn_pool, pool_addresses, sstp_pool
from vpnlab.model.topology import load
from vpnlab.plan import document
from vpnlab.plan.build import build
from vpnlab.plan.parts import TABLE_MAIN
from vpnlab.plan.render import render

ROOT = Path(__file__).parent.parent
RADIUS = ROOT / "scenarios/topologies/p2s-radius.yaml"
P2S = ROOT / "topologies/point-to-site.yaml"
NODES = Path("/var/lib/vpnlab/t/nodes")


def _variant(tmp_path, path: Path, change) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(data))
    return out


def test_sstp_takes_half_of_each_prefix_and_the_others_the_upper_half(tmp_path):
    def sstp(d):
        d["virtual_network_gateways"]["hub-gw"]["vpn_client_configuration"]["vpn_client_protocols"] = \
            ["IkeV2", "OpenVPN", "SSTP"]
    t = load(_variant(tmp_path, P2S, sstp))
    cfg = t.virtual_network_gateways["hub-gw"].vpn_client_configuration
    assert sstp_pool(cfg) == [IPv4Network("172.16.201.0/25")]
    assert ikev2_openvpn_pool(cfg) == [IPv4Network("172.16.201.128/25")]
    assert pool_addresses(cfg) == 126 - 1          # less openvpn's own address
    plan = build(t, "fast")
    assert {e.protocol: e.pool for e in plan.p2s_ends} == {"IkeV2": ["172.16.201.128/25"],
                                                            "OpenVPN": ["172.16.201.128/25"]}
    server = plan.nodes["hub-gw-in0-p2s"].openvpn
    assert (server["server_ip"], server["pool_start"], server["pool_end"]) == \
        ("172.16.201.129", "172.16.201.130", "172.16.201.254")
    # the instance routes and announces only what the lab serves
    assert ("172.16.201.128/25", "t1") in plan.nodes["hub-gw-in0"].frr.static
    # without SSTP nothing is split
    plain = load(P2S).virtual_network_gateways["hub-gw"].vpn_client_configuration
    assert ikev2_openvpn_pool(plain) == plain.address_pool and sstp_pool(plain) == []


def test_clients_take_at_most_their_documented_routes(tmp_path):
    """Windows' IKEv2 client 255 routes, OpenVPN 1,000 [FAQ26]; the first ones."""
    routes = [f"10.{100 + i // 250}.{i % 250}.0/24" for i in range(1100)]

    def many(d):
        d["virtual_network_gateways"]["hub-gw"]["vpn_client_configuration"]["custom_routes"] = routes
    plan = build(load(_variant(tmp_path, P2S, many)), "fast")
    limits = defaults()["p2s"]["client_route_limits"]
    windows = plan.nodes["dave"].charon["remote_ts"]
    assert len(windows) == limits["ikev2_windows"] == 255
    assert windows[:3] == ["10.70.0.0/16", "172.16.201.0/24", routes[0]]
    assert len(plan.nodes["hub-gw-in0-p2s"].openvpn["push"]) == limits["openvpn"]
    assert len(next(c for c in plan.clients if c.name == "bob").pushed) == 1000
    # a Linux IKEv2 client asks for everything (0.0.0.0/0) and is narrowed by the gateway
    assert plan.nodes["alice"].charon["remote_ts"] == ["0.0.0.0/0"]
    assert len(plan.nodes["hub-gw-in0-p2s"].charon["local_ts"]) > 1000


def test_radius_servers_and_the_path_to_them():
    plan = build(load(RADIUS), "fast")
    hub = plan.nodes["nps-azure"].radius
    assert hub["address"] == "10.71.2.10" and hub["port"] == 1812
    assert hub["clients"] == [{"name": "hub-gw", "prefix": "10.71.255.0/27", "secret": "Lab.Radius.Secret.1"}]
    assert [u["name"] for u in hub["users"]] == ["alice", "bob"]
    assert plan.nodes["nps-onprem"].radius["clients"][0]["prefix"] == "10.72.255.0/27"
    inst = plan.nodes["hub-gw-in0"]
    gateway_subnet_ip = "10.71.255.30"          # the active-standby instance's own
    assert inst.nft["radius_snat"] == [{"src": "100.64.0.2", "dst": "10.71.2.10", "to": gateway_subnet_ip}]
    # the request leaves by the VNet's routes, not the public path of the tunnel namespaces
    rule = next(r for r in inst.rules if r.dst == "10.71.2.10/32")
    assert rule.table == TABLE_MAIN and rule.iif == "t0u"
    # both gateways' IKEv2 servers: certificates and RADIUS on hub-gw, RADIUS alone on branch-gw
    assert [a["auth"] for a in plan.nodes["hub-gw-in0-p2s"].charon["auths"]] == ["pubkey", "eap-radius"]
    assert [a["auth"] for a in plan.nodes["branch-gw-in0-p2s"].charon["auths"]] == ["eap-radius"]
    assert plan.nodes["branch-gw-in0-p2s"].charon["radius"][0]["preference"] == 30


def test_rendered_radius_configs():
    files = render(build(load(RADIUS), "fast"), NODES)
    server = files["hub-gw-in0-p2s"]
    assert "eap-radius {" in server["strongswan.conf"] and "address = 10.71.2.10" in server["strongswan.conf"]
    assert "load = " in server["strongswan.conf"] and "eap-radius" in server["strongswan.conf"].split("load = ")[1]
    swanctl = server["swanctl.conf"]
    assert "    p2s {" in swanctl and "    p2s-radius {" in swanctl and "auth = eap-radius" in swanctl
    conf = server["openvpn.conf"]
    assert "verify-client-cert optional" in conf and "auth-user-pass-optional" in conf
    assert "openvpn-radius.sh" in conf and "crl-verify" in conf
    assert "radclient -r 3 -t 10" in server["openvpn-radius.sh"]
    assert server["radius-s0.secret"] == "Lab.Radius.Secret.1\n"
    only_radius = files["branch-gw-in0-p2s"]["openvpn.conf"]
    assert "verify-client-cert none" in only_radius and "crl-verify" not in only_radius
    radiusd = files["nps-azure"]["radiusd.conf"]
    assert "ipaddr = 10.71.255.0/27" in radiusd and "ipaddr = 10.71.2.10" in radiusd
    assert files["nps-azure"]["users"] == ('"alice" Cleartext-Password := "Alice.Pa55"\n'
                                           '"bob" Cleartext-Password := "Bob.Pa55"\n')
    alice = files["alice"]["swanctl.conf"]
    assert "auth = eap-mschapv2" in alice and "eap_id = alice" in alice and "certs =" not in alice
    assert "eap-mschapv2" in files["alice"]["strongswan.conf"]
    assert "auth-user-pass" in files["bob"]["openvpn.conf"] and "client.pem" not in files["bob"]["openvpn.conf"]
    assert files["bob"]["credentials"] == "bob\nBob.Pa55\n"
    # a certificate user of the same gateway keeps its certificate
    assert "certs = erin.pem" in files["erin"]["swanctl.conf"]


def test_secrets_and_passwords_are_redacted_from_the_shown_plan():
    shown = json.dumps(document.redacted(build(load(RADIUS), "fast")))
    for secret in ("Lab.Radius.Secret.1", "Lab.Radius.Secret.2", "Alice.Pa55", "Carol.Pa55", "guessed"):
        assert secret not in shown


def test_arm_import_keeps_the_radius_servers():
    body = {"vpnClientAddressPool": {"addressPrefixes": ["172.16.0.0/24"]},
            "vpnClientProtocols": ["IkeV2", "SSTP"], "vpnAuthenticationTypes": ["Radius"],
            "radiusServers": [{"radiusServerAddress": "10.1.2.10", "radiusServerScore": 30}]}
    imp = ArmImport.__new__(ArmImport)
    imp.report = _Report()
    out = imp.p2s("gw", body, None)
    assert out["vpn_client_protocols"] == ["IkeV2", "SSTP"] and out["vpn_auth_types"] == ["Radius"]
    server = out["radius_servers"][0]
    assert server["address"] == "10.1.2.10" and server["score"] == 30
    assert "secure value" in str(server["secret"])
    assert any("radius_hosts" in why for _, why in imp.report.changes)


class _Report:
    def __init__(self):
        self.changes = []

    def change(self, what, why):
        self.changes.append((what, why))

    def not_mapped(self, what, why):
        raise AssertionError(f"{what} was not mapped: {why}")


def test_exports_carry_the_radius_servers_with_their_secrets_as_parameters():
    from vpnlab.importer.arm_export import export_arm
    from vpnlab.importer.tf_export import export_terraform
    t = load(RADIUS)
    template, parameters = export_arm(t)
    gateways = {r["name"]: r["properties"] for r in template["resources"]
                if r["type"] == "Microsoft.Network/virtualNetworkGateways"}
    hub = gateways["hub-gw"]["vpnClientConfiguration"]
    assert hub["radiusServerAddress"] == "10.71.2.10"
    assert hub["radiusServerSecret"] == "[parameters('radiusSecret_hub_gw_0')]"
    assert template["parameters"]["radiusSecret_hub_gw_0"] == {"type": "securestring"}
    assert parameters["parameters"]["radiusSecret_hub_gw_0"]["value"] == "Lab.Radius.Secret.1"
    branch = gateways["branch-gw"]["vpnClientConfiguration"]["radiusServers"]
    assert branch == [{"radiusServerAddress": "10.82.1.10", "radiusServerScore": 30,
                       "radiusServerSecret": "[parameters('radiusSecret_branch_gw_0')]"}]
    # passwords stay out of the template (the lab's metadata names the users only)
    text = json.dumps(template)
    assert "Alice.Pa55" not in text and "Lab.Radius.Secret" not in text
    assert template["metadata"]["vpnlab"]["clients"]["alice"] == {
        "virtual_network_gateway": "hub-gw", "protocol": "IkeV2", "username": "alice"}
    main, variables = export_terraform(t)
    gw = main["resource"]["azurerm_virtual_network_gateway"]["branch-gw"]["vpn_client_configuration"][0]
    assert gw["radius_server"] == [{"address": "10.82.1.10", "score": 30,
                                    "secret": "${var.radiusSecret_branch_gw_0}"}]
    assert variables["radiusSecret_branch_gw_0"] == "Lab.Radius.Secret.2"
    assert "Lab.Radius.Secret" not in json.dumps(main)


def test_vpnlab_logs_takes_radius_secrets_and_passwords_out():
    from vpnlab.engine import radius_secrets
    hidden = set(radius_secrets(load(RADIUS)))
    assert {"Lab.Radius.Secret.1", "Lab.Radius.Secret.2", "Alice.Pa55", "Dave.Pa55", "guessed"} <= hidden
