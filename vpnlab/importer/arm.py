"""ARM templates (JSON, and Bicep through `az bicep build`) to a lab topology.

Parameters come from the parameters file, else their defaults; allowed values are
checked. Resources are taken top level and nested, with their conditions and copy
loops; the VPN resource types map field by field (ARM's camelCase to the lab's
snake_case, as docs/topology-reference.md names them), everything else is reported."""
from __future__ import annotations

from vpnlab.importer.arm_expr import ArmError, Evaluator, Unknown
from vpnlab.importer.common import (
    LEGACY_SKUS,
    PEERING_FLAGS,
    POLICY_FIELDS,
    Names,
    Report,
    Required,
    as_bool,
    as_int,
)
from vpnlab.model.p2s_rules import UNEMULATED_AUTH
from vpnlab.model.yamlsrc import SourceError

NET = "microsoft.network/"
VNET, SUBNET, PEERING = NET + "virtualnetworks", NET + "virtualnetworks/subnets", NET + "virtualnetworks/virtualnetworkpeerings"
GATEWAY, NAT_RULE = NET + "virtualnetworkgateways", NET + "virtualnetworkgateways/natrules"
SITE, CONNECTION = NET + "localnetworkgateways", NET + "connections"
ROUTE_TABLE, ROUTE = NET + "routetables", NET + "routetables/routes"
NIC, VM, PUBLIC_IP = NET + "networkinterfaces", "microsoft.compute/virtualmachines", NET + "publicipaddresses"
NOT_EMULATED = {
    NET + "networksecuritygroups": "network security groups are not emulated (Azure does not support one on the GatewaySubnet)",
    NET + "expressroutecircuits": "ExpressRoute needs Microsoft's edge; the lab emulates VPN Gateway only",
    NET + "bastionhosts": "Azure Bastion is not part of a VPN design the lab emulates",
    NET + "azurefirewalls": "Azure Firewall is not emulated (a VM with ip_forwarding_enabled stands in for an NVA)",
    "microsoft.resources/deployments": "nested and linked deployments are not followed: import that template itself",
}


def parameter_values(template: dict, given: dict, report: Report) -> dict:
    """Each parameter's value: given, else its default; an Unknown where neither exists."""
    declared = template.get("parameters", {})
    for name in given:
        if name not in declared:
            raise SourceError(f"parameters file: '{name}' is not a parameter of the template; "
                              f"it has: {', '.join(declared) or '(none)'}")
    values = {}
    ev = Evaluator(values, template.get("variables", {}))
    for name, spec in declared.items():
        if name in given:
            entry = given[name]
            if "reference" in entry:
                secret = entry["reference"].get("secretName", "?")
                value = Unknown(f"parameter {name}: Key Vault secret {secret}")
            else:
                value = entry.get("value")
        elif "defaultValue" in spec:
            try:
                value = ev.value(spec["defaultValue"])
            except ArmError as e:
                raise SourceError(f"{report.source}: parameter '{name}': its defaultValue: {e}") from None
        else:
            secure = spec.get("type", "").lower() in ("securestring", "secureobject")
            value = Unknown(f"{'secure ' if secure else ''}parameter {name} has no value")
        value = _typed(name, spec.get("type", "").lower(), value)
        allowed = spec.get("allowedValues")
        if allowed and not isinstance(value, Unknown) and value not in allowed:
            raise SourceError(f"parameter '{name}': {value!r} is not allowed; allowed: "
                              f"{', '.join(map(str, allowed))}")
        values[name] = value
    return values


def _typed(name: str, kind: str, value):
    """Booleans and integers written as strings ("false", "65010") become what they say."""
    if isinstance(value, str) and kind == "bool":
        if value.lower() not in ("true", "false"):
            raise SourceError(f"parameter '{name}': '{value}' is not a boolean")
        return value.lower() == "true"
    if isinstance(value, str) and kind == "int":
        try:
            return int(value)
        except ValueError:
            raise SourceError(f"parameter '{name}': '{value}' is not an integer") from None
    return value


def resources(template: dict, ev: Evaluator, report: Report):
    """(lower-case full type, full name, evaluated resource) of every resource deployed.
    The caller takes them all before using the evaluator: a copy loop's index is set on
    it while the loop's resources (and their children) are evaluated."""
    def walk(items, parent_type="", parent_name=""):
        for res in (items.values() if isinstance(items, dict) else items):
            rtype = res["type"]
            if parent_type and not rtype.lower().startswith(parent_type.lower() + "/"):
                rtype = f"{parent_type}/{rtype}"
            outer = ev.copy_index
            for index in _copies(res, ev, report):
                ev.copy_index = outer if index is None else index
                try:
                    if not ev.value(res.get("condition", True)):
                        continue
                    name = ev.value(res["name"])
                    if parent_name and not name.startswith(parent_name + "/"):
                        name = f"{parent_name}/{name}"
                    body = {k: ev.value(v) for k, v in res.items() if k not in ("resources", "copy", "condition")}
                except ArmError as e:
                    raise SourceError(f"{report.source}: resource {res.get('name')} ({res['type']}): {e}") from None
                yield rtype.lower(), name, body
                yield from walk(res.get("resources", []), rtype, name)
            ev.copy_index = outer
    yield from walk(template.get("resources", []))


def _copies(res: dict, ev: Evaluator, report: Report):
    copy = res.get("copy")
    if not copy:
        return [None]
    count = ev.value(copy["count"])
    if isinstance(count, Unknown):
        report.not_mapped(f"resource {res['name']}", f"its copy count is not known ({count.why})")
        return []
    return range(int(count))


def id_name(resource_id, segment: str) -> str | None:
    """The name after `segment` ("virtualNetworks") in a resource ID."""
    if not isinstance(resource_id, str):
        return None
    parts = resource_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if segment.lower() in lowered[:-1]:
        return parts[lowered.index(segment.lower()) + 1]
    return None


class ArmImport:
    def __init__(self, report: Report):
        self.report = report
        self.name = Names(report)
        self.t = {"virtual_networks": {}, "virtual_network_gateways": {}, "local_network_gateways": {},
                  "connections": {}, "route_tables": {}}
        self.ip_configs: dict[str, list[str]] = {}     # gateway -> its ipConfigurations' names
        self.nics: dict[str, dict] = {}                # network interfaces no VM has taken yet

    @staticmethod
    def value(v):
        """A mapped value; an Unknown becomes a placeholder to fill in."""
        return Required(v.why) if isinstance(v, Unknown) else v

    def run(self, items: list[tuple[str, str, dict]]) -> dict:
        by_type = {}
        for rtype, name, body in items:
            by_type.setdefault(rtype, []).append((name, body))
        order = (VNET, SUBNET, PEERING, ROUTE_TABLE, ROUTE, GATEWAY, NAT_RULE, SITE, CONNECTION, NIC, VM, PUBLIC_IP)
        handlers = dict(zip(order, (self.vnet, self.subnet, self.peering, self.route_table, self.route,
                                    self.gateway, self.nat_rule, self.site, self.connection, self.nic, self.vm,
                                    self.public_ip)))
        for rtype in order:
            for name, body in by_type.pop(rtype, []):
                handlers[rtype](name, body.get("properties", {}) or {}, body)
        for rtype, found in sorted(by_type.items()):
            why = NOT_EMULATED.get(rtype, "not part of a VPN design the lab emulates")
            for name, _ in found:
                self.report.not_mapped(f"{name} ({rtype})", why)
        return self.t

    # ---------------------------------------------------------------- networks

    def vnet(self, name, p, body):
        v = self.t["virtual_networks"].setdefault(self.name(name), {"address_space": [], "subnets": {}, "peerings": {}})
        v["address_space"] = list(p.get("addressSpace", {}).get("addressPrefixes", []))
        for sub in p.get("subnets", []):
            self.subnet(f"{name}/{sub['name']}", sub.get("properties", {}), sub)
        for peer in p.get("virtualNetworkPeerings", []):
            self.peering(f"{name}/{peer['name']}", peer.get("properties", {}), peer)

    def subnet(self, name, p, body):
        vnet, sub = name.split("/", 1)
        prefix = p.get("addressPrefix") or (p.get("addressPrefixes") or [None])[0]
        entry = {"address_prefix": prefix}
        if table := id_name((p.get("routeTable") or {}).get("id"), "routeTables"):
            entry["route_table"] = self.name(table)
        if (p.get("networkSecurityGroup") or {}).get("id"):
            self.report.not_mapped(f"subnet {name} networkSecurityGroup", NOT_EMULATED[NET + "networksecuritygroups"])
        if len(p.get("addressPrefixes") or []) > 1:
            self.report.not_mapped(f"subnet {name}: {', '.join(p['addressPrefixes'][1:])}",
                                   "a subnet has one prefix in the lab")
        self._vnet(vnet)["subnets"][sub if sub == "GatewaySubnet" else self.name(sub)] = entry

    def _vnet(self, name):
        return self.t["virtual_networks"].setdefault(self.name(name), {"address_space": [], "subnets": {}, "peerings": {}})

    def peering(self, name, p, body):
        vnet, peer = name.split("/", 1)
        remote = id_name((p.get("remoteVirtualNetwork") or {}).get("id"), "virtualNetworks")
        self._vnet(vnet)["peerings"][self.name(peer)] = {
            "remote_virtual_network": self.name(remote) if remote else Required("the remote virtual network's id"),
            **{lab: as_bool(p[arm]) for arm, lab, _ in PEERING_FLAGS if arm in p}}

    def route_table(self, name, p, body):
        table = self.t["route_tables"].setdefault(self.name(name), {"routes": {}})
        if as_bool(p.get("disableBgpRoutePropagation")):
            table["bgp_route_propagation_enabled"] = False
        for r in p.get("routes", []):
            self.route(f"{name}/{r['name']}", r.get("properties", {}), r)

    def route(self, name, p, body):
        table, route = name.split("/", 1)
        entry = {"address_prefix": p.get("addressPrefix"), "next_hop_type": p.get("nextHopType")}
        if p.get("nextHopIpAddress"):
            entry["next_hop_in_ip_address"] = p["nextHopIpAddress"]
        self.t["route_tables"].setdefault(self.name(table), {"routes": {}})["routes"][self.name(route)] = entry

    # ---------------------------------------------------------------- the gateway

    def gateway(self, name, p, body):
        lab = self.name(name)
        if str(p.get("gatewayType", "Vpn")).lower() != "vpn":
            self.report.not_mapped(f"gateway {name}", f"gatewayType {p.get('gatewayType')}: the lab emulates VPN gateways")
            return
        configs = p.get("ipConfigurations", [])
        self.ip_configs[lab] = [c.get("name", "") for c in configs]
        vnet = next((id_name(c.get("properties", {}).get("subnet", {}).get("id"), "virtualNetworks")
                     for c in configs), None)
        sku = (p.get("sku") or body.get("sku") or {}).get("name", "VpnGw1")
        if sku in LEGACY_SKUS:
            self.report.change(f"gateway {name} sku", f"{sku} -> {LEGACY_SKUS[sku]}: Azure retired the legacy SKUs and "
                                                      f"migrates {sku} to {LEGACY_SKUS[sku]}")
            sku = LEGACY_SKUS[sku]
        gw = {"virtual_network": self.name(vnet) if vnet else Required("the GatewaySubnet's id"), "sku": sku}
        if p.get("vpnGatewayGeneration") in ("Generation1", "Generation2"):
            gw["generation"] = p["vpnGatewayGeneration"]
        gw["vpn_type"] = p.get("vpnType", "RouteBased")
        gw["active_active"] = bool(as_bool(p.get("activeActive", False)))
        if as_bool(p.get("enableBgp")):
            bgp = p.get("bgpSettings") or {}
            gw["bgp"] = {"asn": as_int(bgp.get("asn", 65515))}
            peering = self._peering_addresses(lab, bgp.get("bgpPeeringAddresses", []))
            if any(peering):
                gw["bgp"]["peering_addresses"] = [{"apipa_addresses": a} for a in peering]
        if p.get("vpnClientConfiguration"):
            gw["vpn_client_configuration"] = self.p2s(name, p["vpnClientConfiguration"], p.get("customRoutes"))
        if site := id_name((p.get("gatewayDefaultSite") or {}).get("id"), "localNetworkGateways"):
            gw["gateway_default_site"] = self.name(site)
        gw["nat_rules"] = {}
        if as_bool(p.get("enableBgpRouteTranslationForNat")):
            gw["enable_bgp_route_translation_for_nat"] = True
        self.t["virtual_network_gateways"][lab] = gw
        for rule in p.get("natRules", []):
            self.nat_rule(f"{name}/{rule['name']}", rule.get("properties", {}), rule)

    def _peering_addresses(self, gw: str, entries: list) -> list[list[str]]:
        """Each instance's custom APIPA addresses, in the ipConfigurations' order."""
        out = [[] for _ in self.ip_configs[gw]] or [[]]
        for e in entries:
            k = self._instance(gw, e.get("ipconfigurationId"))
            out[k] = list(e.get("customBgpIpAddresses", []))
        while out and not out[-1]:
            out.pop()
        return out

    def _instance(self, gw: str, config_id) -> int:
        config = id_name(config_id, "ipConfigurations")
        configs = self.ip_configs.get(gw, [])
        return configs.index(config) if config in configs else 0

    def p2s(self, name, c, custom_routes) -> dict:
        protocols = list(c.get("vpnClientProtocols", ["IkeV2", "OpenVPN"]))
        auth = []
        for kind in c.get("vpnAuthenticationTypes", ["Certificate"]):
            if kind in UNEMULATED_AUTH:
                self.report.not_mapped(f"gateway {name} point-to-site authentication {kind}", UNEMULATED_AUTH[kind])
            else:
                auth.append(kind)
        for key in ("aadTenant", "aadAudience", "aadIssuer"):
            if c.get(key):
                self.report.not_mapped(f"gateway {name} vpnClientConfiguration.{key}", "its authentication is not emulated")
        roots = [{"name": self.name(r["name"])} for r in c.get("vpnClientRootCertificates", [])]
        if roots:
            self.report.change(f"gateway {name} root certificates",
                               "the lab makes its own CA for each root and issues the clients' certificates "
                               "(publicCertData is not used)")
        out = {"address_pool": list(c.get("vpnClientAddressPool", {}).get("addressPrefixes", [])),
               "vpn_client_protocols": protocols or Required("an IkeV2 or OpenVPN protocol"),
               "vpn_auth_types": auth or ["Certificate"],
               "root_certificates": roots,
               "revoked_certificates": [{"name": self.name(r["name"]),
                                         "thumbprint": r.get("properties", {}).get("thumbprint")}
                                        for r in c.get("vpnClientRevokedCertificates", [])],
               "custom_routes": list((custom_routes or {}).get("addressPrefixes", []))}
        if "Radius" in auth:
            out |= self.radius(name, c)
        if not auth:
            self.report.change(f"gateway {name} point-to-site authentication", "Certificate, the one the lab emulates")
        return out

    def radius(self, name: str, c: dict) -> dict:
        """The gateway's RADIUS servers; their secrets are secure values an export leaves
        out. The lab runs a server only where radius_hosts names a VM or on-prem host."""
        self.report.change(f"gateway {name} RADIUS servers",
                           "the lab runs FreeRADIUS on a VM or on-prem host at each server's address: "
                           "add it to radius_hosts with its users")
        def secret(value):
            return self.value(value) if value else Required("the RADIUS server's shared secret (a secure value)")
        if c.get("radiusServers"):
            return {"radius_servers": [{"address": self.value(r.get("radiusServerAddress")),
                                        "secret": secret(r.get("radiusServerSecret")),
                                        "score": self.value(r.get("radiusServerScore", 1))} for r in c["radiusServers"]]}
        return {"radius_server_address": self.value(c.get("radiusServerAddress"))
                or Required("the RADIUS server's address"),
                "radius_server_secret": secret(c.get("radiusServerSecret"))}

    def nat_rule(self, name, p, body):
        gw, rule = name.split("/", 1)
        lab = self.name(gw)
        if lab not in self.t["virtual_network_gateways"]:
            self.report.not_mapped(f"NAT rule {name}", f"its gateway {gw} is not mapped")
            return
        entry = {"type": p.get("type", "Static"), "mode": p.get("mode", "EgressSnat"),
                 "internal_mappings": [self._mapping(m) for m in p.get("internalMappings", [])],
                 "external_mappings": [self._mapping(m) for m in p.get("externalMappings", [])]}
        if p.get("ipConfigurationId"):
            entry["ip_configuration_id"] = ("default", "activeActive")[min(self._instance(lab, p["ipConfigurationId"]), 1)]
        self.t["virtual_network_gateways"][lab].setdefault("nat_rules", {})[self.name(rule)] = entry

    @staticmethod
    def _mapping(m: dict) -> dict:
        out = {"address_space": m.get("addressSpace")}
        if m.get("portRange"):
            out["port_range"] = m["portRange"]
        return out

    # ---------------------------------------------------------------- sites and connections

    def site(self, name, p, body):
        site = {"gateway_ip": p.get("gatewayIpAddress")}
        if not site["gateway_ip"]:
            site["gateway_ip"], site["_fqdn"] = None, p.get("fqdn", "?")
        site["address_space"] = list((p.get("localNetworkAddressSpace") or {}).get("addressPrefixes", []))
        if p.get("bgpSettings"):
            site["bgp"] = {"asn": as_int(p["bgpSettings"].get("asn")),
                           "peering_address": p["bgpSettings"].get("bgpPeeringAddress")}
        self.t["local_network_gateways"][self.name(name)] = site

    def connection(self, name, p, body):
        lab = self.name(name)
        kind = p.get("connectionType", "IPsec")
        if kind not in ("IPsec", "Vnet2Vnet"):
            self.report.not_mapped(f"connection {name}", f"connectionType {kind}: the lab emulates IPsec and Vnet2Vnet")
            return
        gw = self.name(id_name((p.get("virtualNetworkGateway1") or {}).get("id"), "virtualNetworkGateways") or "?")
        c = {"type": kind, "virtual_network_gateway": gw}
        if kind == "IPsec":
            c["local_network_gateway"] = self.name(id_name((p.get("localNetworkGateway2") or {}).get("id"),
                                                           "localNetworkGateways") or "?")
        else:
            c["peer_virtual_network_gateway"] = self.name(id_name((p.get("virtualNetworkGateway2") or {}).get("id"),
                                                                  "virtualNetworkGateways") or "?")
        c["shared_key"] = self.value(p.get("sharedKey", Unknown(f"connection {name} has no sharedKey")))
        # Azure's defaults are left out: the lab refuses some fields on VNet-to-VNet even when
        # they say what the default says
        for camel, snake, default in (("connectionProtocol", "connection_protocol", "IKEv2"),
                                      ("enableBgp", "enable_bgp", False),
                                      ("dpdTimeoutSeconds", "dpd_timeout_seconds", None),
                                      ("connectionMode", "connection_mode", "Default"),
                                      ("usePolicyBasedTrafficSelectors", "use_policy_based_traffic_selectors", False)):
            if camel in p and as_int(as_bool(p[camel])) not in (default, None):
                c[snake] = as_int(as_bool(p[camel]))
        c["ipsec_policies"] = [self._policy(x) for x in p.get("ipsecPolicies", [])]
        custom = p.get("gatewayCustomBgpIpAddresses") or []
        if custom:
            by_instance = {self._instance(gw, e.get("ipConfigurationId")): e.get("customBgpIpAddress") for e in custom}
            c["custom_bgp_addresses"] = {"primary": by_instance.get(0)}
            if 1 in by_instance:
                c["custom_bgp_addresses"]["secondary"] = by_instance[1]
        c["ingress_nat_rule_ids"] = [self.name(id_name(r.get("id"), "natRules")) for r in p.get("ingressNatRules", [])]
        c["egress_nat_rule_ids"] = [self.name(id_name(r.get("id"), "natRules")) for r in p.get("egressNatRules", [])]
        if p.get("trafficSelectorPolicies"):
            self.report.not_mapped(f"connection {name} trafficSelectorPolicies",
                                   "custom traffic selectors are not emulated; the lab builds them from the address spaces")
        if p.get("routingWeight"):
            self.report.not_mapped(f"connection {name} routingWeight",
                                   "reserved for ExpressRoute; VPN connections use AS-path prepending")
        self.t["connections"][lab] = c

    @staticmethod
    def _policy(x: dict) -> dict:
        return {lab: as_int(x[arm]) for arm, lab, _ in POLICY_FIELDS if arm in x}

    # ---------------------------------------------------------------- VMs

    def nic(self, name, p, body):
        config = (p.get("ipConfigurations") or [{}])[0].get("properties", {})
        subnet_id = (config.get("subnet") or {}).get("id")
        self.nics[name] = {"vnet": id_name(subnet_id, "virtualNetworks"), "subnet": id_name(subnet_id, "subnets"),
                           "forwarding": bool(as_bool(p.get("enableIPForwarding"))),
                           "address": config.get("privateIPAddress")
                           if str(config.get("privateIPAllocationMethod", "")).lower() == "static" else None}

    def vm(self, name, p, body):
        nic_ids = [n.get("id") for n in (p.get("networkProfile") or {}).get("networkInterfaces", [])]
        nic = self.nics.pop(id_name(nic_ids[0], "networkInterfaces") if nic_ids else None, None)
        if nic is None or not nic["vnet"] or not nic["subnet"]:
            self.report.not_mapped(f"virtual machine {name}", "its network interface is not in the template")
            return
        vm = {"name": self.name(name)}
        self.report.change(f"virtual machine {name}", "a lab host (a namespace) with its network interface's "
                                                      "address and forwarding; its size, image and OS are not used")
        if nic["forwarding"]:
            vm["ip_forwarding_enabled"] = True
        if nic["address"]:
            vm["private_ip_address"] = nic["address"]
        if len(nic_ids) > 1:
            self.report.not_mapped(f"virtual machine {name}: its other network interfaces", "a lab VM has one")
        sub = self._vnet(nic["vnet"])["subnets"].setdefault(self.name(nic["subnet"]), {})
        sub.setdefault("vms", []).append(vm if len(vm) > 1 else vm["name"])

    def public_ip(self, name, p, body):
        self.report.not_mapped(f"public IP {name}", "the lab gives each gateway instance its own address "
                                                    "(from 203.0.113.0/24, inside the lab)")


def import_arm(template: dict, parameters: dict, report: Report) -> dict:
    if "resources" not in template:
        raise SourceError(f"{report.source}: not an ARM template (no 'resources')")
    values = parameter_values(template, parameters, report)
    ev = Evaluator(values, template.get("variables", {}))
    imp = ArmImport(report)
    topology = imp.run(list(resources(template, ev, report)))
    for nic in imp.nics:
        report.not_mapped(f"network interface {nic}", "no virtual machine of the template uses it")
    apply_lab_settings(template.get("metadata", {}).get("vpnlab", {}), topology, imp.name, report)
    return topology


def apply_lab_settings(lab: dict, topology: dict, name, report: Report):
    """What vpnlab export keeps beside Azure's resources (ARM metadata, a Terraform
    comment): the lab's devices, clients and revoked lab certificates."""
    if not lab:
        return
    for site, entry in lab.get("local_network_gateways", {}).items():
        if name(site) in topology["local_network_gateways"]:
            topology["local_network_gateways"][name(site)].update(entry)
    topology["clients"] = dict(lab.get("clients", {}))
    for gw, revoked in lab.get("revoked_lab_certificates", {}).items():
        p2s = topology["virtual_network_gateways"].get(name(gw), {}).get("vpn_client_configuration", {})
        for entry in p2s.get("revoked_certificates", []):
            if entry["name"] in revoked and not entry.get("thumbprint"):
                entry.pop("thumbprint", None)
                entry["certificate"] = revoked[entry["name"]]
    report.change("metadata.vpnlab", "the lab's own settings (on-prem devices, point-to-site clients) read back")
