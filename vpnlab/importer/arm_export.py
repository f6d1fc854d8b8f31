"""A lab topology as an ARM template (`vpnlab export --format arm`): the inverse of the
ARM import, so that a design rehearsed here can be deployed, and a template exported and
imported again gives the same topology.

The shared keys become secure parameters, written to a parameters file of their own
(mode 0600). What Azure has no resource for (the lab's on-prem devices, point-to-site
clients, unmanaged sites) travels in the template's `metadata.vpnlab`, which Azure
ignores and the import reads back."""
from __future__ import annotations

import json
from pathlib import Path

from vpnlab.importer.common import PEERING_FLAGS, POLICY_FIELDS, write_private
from vpnlab.model.topology import Connection, Topology, VirtualMachine, load

API = "2023-09-01"
SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
PARAMETERS_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"
IP_CONFIGS = ("default", "activeActive")


def _rid(kind: str, *names: str) -> str:
    return f"[resourceId('Microsoft.Network/{kind}', {', '.join(repr(n) for n in names)})]"


def _res(kind: str, name: str, properties: dict, **extra) -> dict:
    return {"type": f"Microsoft.Network/{kind}", "apiVersion": API, "name": name,
            "location": "[parameters('location')]", **extra, "properties": properties}


def _key_parameter(connection: str) -> str:
    return f"sharedKey_{connection}".replace("-", "_")


def export_arm(t: Topology) -> tuple[dict, dict]:
    """(template, parameters file)."""
    resources, keys = [], {}
    resources += [_route_table(name, rt) for name, rt in t.route_tables.items()]
    for name, vnet in t.virtual_networks.items():
        resources.append(_vnet(name, vnet))
        resources += _vms(name, vnet)
    for name, gw in t.virtual_network_gateways.items():
        resources += _gateway(name, gw, keys)
    for name, lng in t.local_network_gateways.items():
        p = {"gatewayIpAddress": str(lng.gateway_ip),
             "localNetworkAddressSpace": {"addressPrefixes": [str(x) for x in lng.address_space]}}
        if lng.bgp:
            p["bgpSettings"] = {"asn": lng.bgp.asn, "bgpPeeringAddress": str(lng.bgp.peering_address)}
        resources.append(_res("localNetworkGateways", name, p))
    for name, c in t.connections.items():
        # the two directions of a VNet-to-VNet pair share one key, and so one parameter
        param = next((k for k, v in keys.items() if v == c.shared_key.get_secret_value()), None) \
            if c.type == "Vnet2Vnet" else None
        param = param or _key_parameter(name)
        keys[param] = c.shared_key.get_secret_value()
        resources.append(_connection(t, name, c, param))
    template = {
        "$schema": SCHEMA, "contentVersion": "1.0.0.0",
        "metadata": {"description": "exported by vpnlab export --format arm", "vpnlab": lab_only(t)},
        "parameters": {"location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
                       **{k: {"type": "securestring"} for k in keys}},
        "resources": resources,
    }
    parameters = {"$schema": PARAMETERS_SCHEMA, "contentVersion": "1.0.0.0",
                  "parameters": {k: {"value": v} for k, v in keys.items()}}
    return template, parameters


def _route_table(name, rt) -> dict:
    routes = []
    for r_name, r in rt.routes.items():
        p = {"addressPrefix": str(r.address_prefix), "nextHopType": r.next_hop_type}
        if r.next_hop_in_ip_address:
            p["nextHopIpAddress"] = str(r.next_hop_in_ip_address)
        routes.append({"name": r_name, "properties": p})
    return _res("routeTables", name, {"disableBgpRoutePropagation": not rt.bgp_route_propagation_enabled,
                                      "routes": routes})


def _vnet(name, vnet) -> dict:
    subnets = []
    for s_name, s in vnet.subnets.items():
        p = {"addressPrefix": str(s.address_prefix)}
        if s.route_table:
            p["routeTable"] = {"id": _rid("routeTables", s.route_table)}
        subnets.append({"name": s_name, "properties": p})
    peerings = [{"name": p_name, "properties": {
        "remoteVirtualNetwork": {"id": _rid("virtualNetworks", p.remote_virtual_network)},
        **{arm: getattr(p, lab) for arm, lab, _ in PEERING_FLAGS}}} for p_name, p in vnet.peerings.items()]
    return _res("virtualNetworks", name, {"addressSpace": {"addressPrefixes": [str(x) for x in vnet.address_space]},
                                          "subnets": subnets, "virtualNetworkPeerings": peerings},
                dependsOn=[_rid("routeTables", s.route_table) for s in vnet.subnets.values() if s.route_table])


def _vms(vnet_name, vnet) -> list[dict]:
    out = []
    for s_name, s in vnet.subnets.items():
        for vm in s.vms:
            vm = vm if isinstance(vm, VirtualMachine) else VirtualMachine(name=vm)
            config = {"subnet": {"id": _rid("virtualNetworks/subnets", vnet_name, s_name)},
                      "privateIPAllocationMethod": "Static" if vm.private_ip_address else "Dynamic"}
            if vm.private_ip_address:
                config["privateIPAddress"] = str(vm.private_ip_address)
            out.append(_res("networkInterfaces", f"{vm.name}-nic",
                            {"enableIPForwarding": vm.ip_forwarding_enabled,
                             "ipConfigurations": [{"name": "ipconfig1", "properties": config}]},
                            dependsOn=[_rid("virtualNetworks", vnet_name)]))
            out.append({"type": "Microsoft.Compute/virtualMachines", "apiVersion": API, "name": vm.name,
                        "location": "[parameters('location')]",
                        "dependsOn": [_rid("networkInterfaces", f"{vm.name}-nic")],
                        "properties": {"networkProfile": {"networkInterfaces": [
                            {"id": _rid("networkInterfaces", f"{vm.name}-nic")}]}}})
    return out


def radius_secret_name(gateway: str, index: int) -> str:
    """The secure parameter (Terraform: sensitive variable) of a gateway's RADIUS secret."""
    return f"radiusSecret_{gateway}_{index}".replace("-", "_")


def _radius(name: str, c, keys: dict) -> dict:
    """The gateway's RADIUS servers, each secret a secure parameter."""
    servers = c.radius()
    for i, server in enumerate(servers):
        keys[radius_secret_name(name, i)] = server.secret.get_secret_value()
    if c.radius_servers:
        return {"radiusServers": [{"radiusServerAddress": str(r.address), "radiusServerScore": r.score,
                                   "radiusServerSecret": f"[parameters('{radius_secret_name(name, i)}')]"}
                                  for i, r in enumerate(servers)]}
    return {"radiusServerAddress": str(servers[0].address),
            "radiusServerSecret": f"[parameters('{radius_secret_name(name, 0)}')]"} if servers else {}


def _gateway(name, gw, keys: dict) -> list[dict]:
    configs = IP_CONFIGS[:2 if gw.active_active else 1]
    pips = [_res("publicIPAddresses", f"{name}-pip{k + 1}", {"publicIPAllocationMethod": "Static"},
                 sku={"name": "Standard"}) for k in range(len(configs))]
    p = {"gatewayType": "Vpn", "vpnType": gw.vpn_type, "sku": {"name": gw.sku, "tier": gw.sku},
         "activeActive": gw.active_active, "enableBgp": gw.bgp is not None,
         "ipConfigurations": [{"name": c, "properties": {
             "subnet": {"id": _rid("virtualNetworks/subnets", gw.virtual_network, "GatewaySubnet")},
             "publicIPAddress": {"id": _rid("publicIPAddresses", f"{name}-pip{k + 1}")}}}
             for k, c in enumerate(configs)]}
    if gw.generation:
        p["vpnGatewayGeneration"] = gw.generation
    if gw.bgp:
        p["bgpSettings"] = {"asn": gw.bgp.asn, "bgpPeeringAddresses": [
            {"ipconfigurationId": f"[concat({_rid('virtualNetworkGateways', name)[1:-1]}, '/ipConfigurations/{configs[k]}')]",
             "customBgpIpAddresses": [str(a) for a in inst.apipa_addresses]}
            for k, inst in enumerate(gw.bgp.peering_addresses)]}
    if gw.vpn_client_configuration:
        c = gw.vpn_client_configuration
        p["vpnClientConfiguration"] = {
            "vpnClientAddressPool": {"addressPrefixes": [str(x) for x in c.address_pool]},
            "vpnClientProtocols": list(c.vpn_client_protocols), "vpnAuthenticationTypes": list(c.vpn_auth_types),
            "vpnClientRootCertificates": [{"name": r.name, "properties": {"publicCertData": ""}}
                                          for r in c.root_certificates],
            "vpnClientRevokedCertificates": [{"name": r.name, "properties": {"thumbprint": r.thumbprint}}
                                             for r in c.revoked_certificates],
            **_radius(name, c, keys)}
        if c.custom_routes:
            p["customRoutes"] = {"addressPrefixes": [str(x) for x in c.custom_routes]}
    if gw.gateway_default_site:
        p["gatewayDefaultSite"] = {"id": _rid("localNetworkGateways", gw.gateway_default_site)}
    if gw.enable_bgp_route_translation_for_nat:
        p["enableBgpRouteTranslationForNat"] = True
    p["natRules"] = [{"name": r_name, "properties": {
        "type": r.type, "mode": r.mode,
        "internalMappings": [_mapping(m) for m in r.internal_mappings],
        "externalMappings": [_mapping(m) for m in r.external_mappings],
        **({"ipConfigurationId": f"[concat({_rid('virtualNetworkGateways', name)[1:-1]}, "
                                 f"'/ipConfigurations/{r.ip_configuration_id}')]"} if r.ip_configuration_id else {})}}
        for r_name, r in gw.nat_rules.items()]
    depends = [_rid("virtualNetworks", gw.virtual_network)] + [_rid("publicIPAddresses", x["name"]) for x in pips]
    return pips + [_res("virtualNetworkGateways", name, p, dependsOn=depends)]


def _mapping(m) -> dict:
    out = {"addressSpace": str(m.address_space)}
    if m.port_range:
        out["portRange"] = m.port_range
    return out


def _connection(t: Topology, name: str, c: Connection, key_param: str) -> dict:
    gw_id = _rid("virtualNetworkGateways", c.virtual_network_gateway)
    p = {"connectionType": c.type, "virtualNetworkGateway1": {"id": gw_id},
         "sharedKey": f"[parameters('{key_param}')]", "connectionProtocol": c.connection_protocol,
         "enableBgp": c.enable_bgp, "dpdTimeoutSeconds": c.dpd_timeout_seconds,
         "usePolicyBasedTrafficSelectors": c.use_policy_based_traffic_selectors,
         "connectionMode": c.connection_mode}
    depends = [gw_id]
    if c.type == "IPsec":
        p["localNetworkGateway2"] = {"id": _rid("localNetworkGateways", c.local_network_gateway)}
        depends.append(p["localNetworkGateway2"]["id"])
    else:
        p["virtualNetworkGateway2"] = {"id": _rid("virtualNetworkGateways", c.peer_virtual_network_gateway)}
        depends.append(p["virtualNetworkGateway2"]["id"])
    p["ipsecPolicies"] = [{arm: getattr(x, lab) for arm, lab, _ in POLICY_FIELDS} for x in c.ipsec_policies]
    if c.custom_bgp_addresses:
        gw = gw_id[1:-1]
        p["gatewayCustomBgpIpAddresses"] = [
            {"ipConfigurationId": f"[concat({gw}, '/ipConfigurations/{IP_CONFIGS[k]}')]", "customBgpIpAddress": str(a)}
            for k, a in enumerate((c.custom_bgp_addresses.primary, c.custom_bgp_addresses.secondary)) if a]
    p["ingressNatRules"] = [{"id": f"[concat({gw_id[1:-1]}, '/natRules/{r}')]"} for r in c.ingress_nat_rule_ids]
    p["egressNatRules"] = [{"id": f"[concat({gw_id[1:-1]}, '/natRules/{r}')]"} for r in c.egress_nat_rule_ids]
    return _res("connections", name, p, dependsOn=depends)


def lab_only(t: Topology) -> dict:
    """The lab's own settings, which no Azure resource holds."""
    sites = {}
    for name, lng in t.local_network_gateways.items():
        entry = {}
        if not lng.managed:
            entry["managed"] = False
        device = lng.device.model_dump(mode="json", exclude_defaults=True)
        if device:
            entry["device"] = device
        if entry:
            sites[name] = entry
    # a revoked certificate the lab issues, named: its thumbprint exists once the lab made it
    revoked = {gw_name: {r.name: r.certificate for r in gw.vpn_client_configuration.revoked_certificates
                         if r.certificate}
               for gw_name, gw in t.virtual_network_gateways.items() if gw.vpn_client_configuration}
    # RADIUS users' passwords are secrets: no template or comment holds them (nor the
    # RADIUS hosts' users): an import asks for them
    out = {"local_network_gateways": sites,
           "clients": {n: c.model_dump(mode="json", exclude_defaults=True, exclude={"password"})
                       for n, c in t.clients.items()},
           "revoked_lab_certificates": {k: v for k, v in revoked.items() if v}}
    return {k: v for k, v in out.items() if v}


def write_arm(topology_file: Path, out: Path) -> list[Path]:
    """<name>.json (the template) and <name>.parameters.json (the keys, mode 0600)."""
    template, parameters = export_arm(load(topology_file))
    out.mkdir(parents=True, exist_ok=True)
    stem = topology_file.stem
    t_path, p_path = out / f"{stem}.json", out / f"{stem}.parameters.json"
    t_path.write_text(json.dumps(template, indent=2) + "\n")
    write_private(p_path, json.dumps(parameters, indent=2) + "\n")
    return [t_path, p_path]
