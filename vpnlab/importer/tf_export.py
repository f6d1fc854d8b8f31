"""A lab topology as Terraform (`vpnlab export --format terraform`): azurerm 4 resources
in Terraform's JSON configuration syntax (`main.tf.json`, which `terraform plan` reads
like HCL), the shared keys as sensitive variables in `terraform.tfvars.json` (mode 0600).

What azurerm has no resource for (the lab's devices, clients, revoked lab certificates)
travels in the file's top-level "//" comment, which Terraform ignores and the import
reads back. Importing main.tf.json with its tfvars gives the same topology."""
from __future__ import annotations

import json
import re
from pathlib import Path

from vpnlab.importer.arm_export import IP_CONFIGS, lab_only, radius_secret_name
from vpnlab.importer.common import PEERING_FLAGS, POLICY_FIELDS, write_private
from vpnlab.model.topology import Topology, VirtualMachine, load

COMMENT = "//"
RG = "${var.resource_group_name}"
LOCATION = "${var.location}"


def tf_name(name: str) -> str:
    """A Terraform local name: letters, digits, '_' and '-', not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else f"r_{name}"


def _ref(kind: str, name: str, attr: str = "id") -> str:
    return f"${{{kind}.{tf_name(name)}.{attr}}}"


def _key_variable(connection: str) -> str:
    return f"shared_key_{tf_name(connection)}".replace("-", "_")


class _Config:
    def __init__(self):
        self.resources: dict[str, dict] = {}
        self.variables = {"location": {"type": "string", "default": "westeurope"},
                          "resource_group_name": {"type": "string"}}

    def add(self, kind: str, name: str, body: dict):
        self.resources.setdefault(kind, {})[tf_name(name)] = body


def export_terraform(t: Topology) -> tuple[dict, dict]:
    """(main.tf.json, terraform.tfvars.json)."""
    c, keys = _Config(), {}
    for name, rt in t.route_tables.items():
        c.add("azurerm_route_table", name, {
            "name": name, "location": LOCATION, "resource_group_name": RG,
            "bgp_route_propagation_enabled": rt.bgp_route_propagation_enabled,
            "route": [{"name": r_name, "address_prefix": str(r.address_prefix), "next_hop_type": r.next_hop_type,
                       **({"next_hop_in_ip_address": str(r.next_hop_in_ip_address)} if r.next_hop_in_ip_address else {})}
                      for r_name, r in rt.routes.items()]})
    for name, vnet in t.virtual_networks.items():
        _vnet(c, name, vnet)
    if any(s.vms for v in t.virtual_networks.values() for s in v.subnets.values()):
        c.variables["vm_admin_password"] = {"type": "string", "sensitive": True}
    for name, gw in t.virtual_network_gateways.items():
        _gateway(c, name, gw, keys)
    for name, lng in t.local_network_gateways.items():
        body = {"name": name, "location": LOCATION, "resource_group_name": RG,
                "gateway_address": str(lng.gateway_ip), "address_space": [str(x) for x in lng.address_space]}
        if lng.bgp:
            body["bgp_settings"] = [{"asn": lng.bgp.asn, "bgp_peering_address": str(lng.bgp.peering_address)}]
        c.add("azurerm_local_network_gateway", name, body)
    for name, conn in t.connections.items():
        var = next((k for k, v in keys.items() if v == conn.shared_key.get_secret_value()), None) \
            if conn.type == "Vnet2Vnet" else None
        var = var or _key_variable(name)
        keys[var] = conn.shared_key.get_secret_value()
        c.variables[var] = {"type": "string", "sensitive": True}
        _connection(c, name, conn, var)
    main = {COMMENT: json.dumps({"vpnlab": lab_only(t)}),
            "terraform": {"required_providers": {"azurerm": {"source": "hashicorp/azurerm", "version": "~> 4.0"}}},
            "provider": {"azurerm": {"features": {}}},
            "variable": c.variables, "resource": c.resources}
    return main, keys


def _vnet(c: _Config, name: str, vnet):
    c.add("azurerm_virtual_network", name, {"name": name, "location": LOCATION, "resource_group_name": RG,
                                            "address_space": [str(x) for x in vnet.address_space]})
    for s_name, s in vnet.subnets.items():
        sub = f"{name}_{s_name}"
        c.add("azurerm_subnet", sub, {"name": s_name, "resource_group_name": RG,
                                      "virtual_network_name": _ref("azurerm_virtual_network", name, "name"),
                                      "address_prefixes": [str(s.address_prefix)]})
        if s.route_table:
            c.add("azurerm_subnet_route_table_association", sub, {
                "subnet_id": _ref("azurerm_subnet", sub), "route_table_id": _ref("azurerm_route_table", s.route_table)})
        for vm in s.vms:
            vm = vm if isinstance(vm, VirtualMachine) else VirtualMachine(name=vm)
            config = {"name": "internal", "subnet_id": _ref("azurerm_subnet", sub),
                      "private_ip_address_allocation": "Static" if vm.private_ip_address else "Dynamic"}
            if vm.private_ip_address:
                config["private_ip_address"] = str(vm.private_ip_address)
            c.add("azurerm_network_interface", f"{vm.name}-nic", {
                "name": f"{vm.name}-nic", "location": LOCATION, "resource_group_name": RG,
                "ip_forwarding_enabled": vm.ip_forwarding_enabled, "ip_configuration": [config]})
            c.add("azurerm_linux_virtual_machine", vm.name, {
                "name": vm.name, "location": LOCATION, "resource_group_name": RG, "size": "Standard_B1s",
                "admin_username": "azureuser", "admin_password": "${var.vm_admin_password}",
                "disable_password_authentication": False,
                "network_interface_ids": [_ref("azurerm_network_interface", f"{vm.name}-nic")],
                "os_disk": {"caching": "ReadWrite", "storage_account_type": "Standard_LRS"},
                "source_image_reference": {"publisher": "Canonical", "offer": "0001-com-ubuntu-server-jammy",
                                           "sku": "22_04-lts-gen2", "version": "latest"}})
    for p_name, p in vnet.peerings.items():
        c.add("azurerm_virtual_network_peering", f"{name}_{p_name}", {
            "name": p_name, "resource_group_name": RG,
            "virtual_network_name": _ref("azurerm_virtual_network", name, "name"),
            "remote_virtual_network_id": _ref("azurerm_virtual_network", p.remote_virtual_network),
            **{tf: getattr(p, lab) for _, lab, tf in PEERING_FLAGS}})


def _radius(c: _Config, name: str, p, keys: dict) -> dict:
    """The gateway's RADIUS servers (azurerm: radius_server_address and _secret, or
    radius_server blocks), each secret a sensitive variable."""
    servers = p.radius()
    for i, server in enumerate(servers):
        var = radius_secret_name(name, i)
        keys[var] = server.secret.get_secret_value()
        c.variables[var] = {"type": "string", "sensitive": True}
    if p.radius_servers:
        return {"radius_server": [{"address": str(r.address), "score": r.score,
                                   "secret": f"${{var.{radius_secret_name(name, i)}}}"} for i, r in enumerate(servers)]}
    return {"radius_server_address": str(servers[0].address),
            "radius_server_secret": f"${{var.{radius_secret_name(name, 0)}}}"} if servers else {}


def _gateway(c: _Config, name: str, gw, keys: dict):
    configs = IP_CONFIGS[:2 if gw.active_active else 1]
    for k in range(len(configs)):
        c.add("azurerm_public_ip", f"{name}-pip{k + 1}", {"name": f"{name}-pip{k + 1}", "location": LOCATION,
                                                           "resource_group_name": RG, "allocation_method": "Static",
                                                           "sku": "Standard"})
    body = {"name": name, "location": LOCATION, "resource_group_name": RG, "type": "Vpn", "vpn_type": gw.vpn_type,
            "sku": gw.sku, "active_active": gw.active_active, "enable_bgp": gw.bgp is not None,
            "ip_configuration": [{"name": cfg, "public_ip_address_id": _ref("azurerm_public_ip", f"{name}-pip{k + 1}"),
                                  "private_ip_address_allocation": "Dynamic",
                                  "subnet_id": _ref("azurerm_subnet", f"{gw.virtual_network}_GatewaySubnet")}
                                 for k, cfg in enumerate(configs)]}
    if gw.generation:
        body["generation"] = gw.generation
    if gw.bgp:
        body["bgp_settings"] = [{"asn": gw.bgp.asn, "peering_addresses": [
            {"ip_configuration_name": configs[k], "apipa_addresses": [str(a) for a in inst.apipa_addresses]}
            for k, inst in enumerate(gw.bgp.peering_addresses)]}]
    if gw.vpn_client_configuration:
        p = gw.vpn_client_configuration
        body["vpn_client_configuration"] = [{
            "address_space": [str(x) for x in p.address_pool], "vpn_client_protocols": list(p.vpn_client_protocols),
            "vpn_auth_types": list(p.vpn_auth_types),
            "root_certificate": [{"name": r.name, "public_cert_data": ""} for r in p.root_certificates],
            "revoked_certificate": [{"name": r.name, "thumbprint": r.thumbprint} for r in p.revoked_certificates],
            **_radius(c, name, p, keys)}]
        if p.custom_routes:
            body["custom_route"] = [{"address_prefixes": [str(x) for x in p.custom_routes]}]
    if gw.gateway_default_site:
        body["default_local_network_gateway_id"] = _ref("azurerm_local_network_gateway", gw.gateway_default_site)
    if gw.enable_bgp_route_translation_for_nat:
        body["bgp_route_translation_for_nat_enabled"] = True
    c.add("azurerm_virtual_network_gateway", name, body)
    for r_name, r in gw.nat_rules.items():
        rule = {"name": r_name, "resource_group_name": RG,
                "virtual_network_gateway_id": _ref("azurerm_virtual_network_gateway", name),
                "mode": r.mode, "type": r.type,
                "internal_mapping": [_mapping(m) for m in r.internal_mappings],
                "external_mapping": [_mapping(m) for m in r.external_mappings]}
        if r.ip_configuration_id:
            rule["ip_configuration_id"] = (f"{_ref('azurerm_virtual_network_gateway', name)}"
                                           f"/ipConfigurations/{r.ip_configuration_id}")
        c.add("azurerm_virtual_network_gateway_nat_rule", f"{name}_{r_name}", rule)


def _mapping(m) -> dict:
    out = {"address_space": str(m.address_space)}
    if m.port_range:
        out["port_range"] = m.port_range
    return out


def _connection(c: _Config, name: str, conn, key_var: str):
    gw = conn.virtual_network_gateway
    body = {"name": name, "location": LOCATION, "resource_group_name": RG, "type": conn.type,
            "virtual_network_gateway_id": _ref("azurerm_virtual_network_gateway", gw),
            "shared_key": f"${{var.{key_var}}}", "connection_protocol": conn.connection_protocol,
            "enable_bgp": conn.enable_bgp, "dpd_timeout_seconds": conn.dpd_timeout_seconds,
            "use_policy_based_traffic_selectors": conn.use_policy_based_traffic_selectors,
            "connection_mode": conn.connection_mode}
    if conn.type == "IPsec":
        body["local_network_gateway_id"] = _ref("azurerm_local_network_gateway", conn.local_network_gateway)
    else:
        body["peer_virtual_network_gateway_id"] = _ref("azurerm_virtual_network_gateway",
                                                       conn.peer_virtual_network_gateway)
    if conn.ipsec_policies:
        x = conn.ipsec_policies[0]
        body["ipsec_policy"] = [{tf: getattr(x, lab) for _, lab, tf in POLICY_FIELDS}]
    if conn.custom_bgp_addresses:
        a = conn.custom_bgp_addresses
        body["custom_bgp_addresses"] = [{"primary": str(a.primary),
                                         **({"secondary": str(a.secondary)} if a.secondary else {})}]
    body["ingress_nat_rule_ids"] = [_ref("azurerm_virtual_network_gateway_nat_rule", f"{gw}_{r}")
                                    for r in conn.ingress_nat_rule_ids]
    body["egress_nat_rule_ids"] = [_ref("azurerm_virtual_network_gateway_nat_rule", f"{gw}_{r}")
                                   for r in conn.egress_nat_rule_ids]
    c.add("azurerm_virtual_network_gateway_connection", name, body)


def write_terraform(topology_file: Path, out: Path) -> list[Path]:
    """main.tf.json and terraform.tfvars.json (the keys, mode 0600) in out."""
    main, keys = export_terraform(load(topology_file))
    out.mkdir(parents=True, exist_ok=True)
    m_path, v_path = out / "main.tf.json", out / "terraform.tfvars.json"
    m_path.write_text(json.dumps(main, indent=2) + "\n")
    write_private(v_path, json.dumps(keys, indent=2) + "\n")
    return [m_path, v_path]
