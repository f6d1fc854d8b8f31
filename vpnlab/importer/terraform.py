"""Terraform's JSON (`terraform show -json` of a plan or of the state) to a lab topology.

The azurerm resources are rewritten in ARM's shape (their Azure resource type and
camelCase properties) and mapped by the ARM import, so that both read Azure's model
one way. In a plan, the IDs of resources still to be created are unknown: a reference
(`azurerm_virtual_network_gateway.hub.id`) is then read from the configuration's
expressions. A value known only after apply (a Key Vault secret) is a placeholder."""
from __future__ import annotations

from vpnlab.importer.arm import ArmImport, apply_lab_settings
from vpnlab.importer.arm_expr import RESOURCE_GROUP, SUBSCRIPTION, Unknown
from vpnlab.importer.common import PEERING_FLAGS, POLICY_FIELDS, Report
from vpnlab.model.yamlsrc import SourceError

PROVIDER = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP['name']}/providers/Microsoft.Network"
ARM_TYPES = {  # azurerm type -> (ARM type, ID path segment)
    "azurerm_virtual_network": ("virtualNetworks", "virtualNetworks"),
    "azurerm_virtual_network_gateway": ("virtualNetworkGateways", "virtualNetworkGateways"),
    "azurerm_local_network_gateway": ("localNetworkGateways", "localNetworkGateways"),
    "azurerm_route_table": ("routeTables", "routeTables"),
    "azurerm_network_interface": ("networkInterfaces", "networkInterfaces"),
}


def _first(block):
    """A nested block: Terraform writes a list of one mapping."""
    return (block or [{}])[0] if isinstance(block, list) else (block or {})


def _flag(values: dict, new: str, old: str, default=None):
    """azurerm renames flags across versions (enable_ip_forwarding -> ip_forwarding_enabled
    in 4.0): either spelling."""
    return values[new] if values.get(new) is not None else values.get(old, default)


class Resources:
    """The document's resources, their values, and the configuration's references."""

    def __init__(self, doc: dict, report: Report):
        self.report = report
        plan = "planned_values" in doc
        root = (doc.get("planned_values") if plan else doc.get("values") or {}).get("root_module", {})
        self.items = list(self._walk(root))
        self.by_address = {r["address"]: r for r in self.items}
        self.unknown = {}
        for change in doc.get("resource_changes", []):
            self.unknown[change["address"]] = (change.get("change") or {}).get("after_unknown") or {}
        self.expressions = {r["address"]: r.get("expressions", {})
                            for r in doc.get("configuration", {}).get("root_module", {}).get("resources", [])}

    def _walk(self, module: dict):
        yield from module.get("resources", [])
        for child in module.get("child_modules", []):
            yield from self._walk(child)

    def value(self, res: dict, *path):
        """A value inside a resource, or Unknown when the plan knows it only after apply."""
        v, unknown = res.get("values", {}), self.unknown.get(res["address"], {})
        for key in path:
            v = _step(v, key)
            unknown = unknown if unknown is True else _step(unknown, key)
        if v is None and unknown is True:
            return Unknown(f"{res['address']}.{'.'.join(map(str, path))} is known only after apply")
        return v

    def referenced(self, res: dict, *path) -> dict | None:
        """The resource an ID attribute points at: by its value's name, else by the
        configuration's reference."""
        v = self.value(res, *path)
        if isinstance(v, str) and v.startswith("/subscriptions/"):
            exact = next((r for r in self.items if r.get("values", {}).get("id") == v), None)
            if exact:
                return exact
            name = v.rstrip("/").split("/")[-1]
            return next((r for r in self.items if r.get("values", {}).get("name") == name
                         and r["type"] in _types_for(path[-1])), {"values": {"name": name}, "type": "", "address": v})
        expr = self.expressions.get(res["address"], {})
        for key in path:
            expr = _step(expr, key) or {}
        for ref in expr.get("references", []) if isinstance(expr, dict) else []:
            address = ".".join(ref.split(".")[:2])         # type.name, whatever attribute follows
            if address in self.by_address:
                return self.by_address[address]
        return None


def _step(container, key):
    """container[key], or None where there is no such item."""
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return None


def _types_for(attribute: str) -> tuple[str, ...]:
    return {"subnet_id": ("azurerm_subnet",), "route_table_id": ("azurerm_route_table",),
            "remote_virtual_network_id": ("azurerm_virtual_network",),
            "virtual_network_gateway_id": ("azurerm_virtual_network_gateway",),
            "peer_virtual_network_gateway_id": ("azurerm_virtual_network_gateway",),
            "local_network_gateway_id": ("azurerm_local_network_gateway",),
            "default_local_network_gateway_id": ("azurerm_local_network_gateway",)}.get(attribute, ())


class ToArm:
    """azurerm resources as ARM resources: (lower-case type, name, {"properties": ...})."""

    def __init__(self, res: Resources, report: Report):
        self.r, self.report = res, report
        self.out: list[tuple[str, str, dict]] = []

    def id_of(self, target: dict | None, what: str) -> str | None:
        if target is None:
            return None
        name = target.get("values", {}).get("name")
        if target["type"] == "azurerm_subnet":
            return f"{PROVIDER}/virtualNetworks/{target['values'].get('virtual_network_name')}/subnets/{name}"
        segment = ARM_TYPES.get(target["type"], (what, what))[1]
        return f"{PROVIDER}/{segment}/{name}"

    def ref_id(self, res, *path, what=""):
        v = self.r.value(res, *path)
        if isinstance(v, str) and v.startswith("/subscriptions/"):     # the state knows it
            return {"id": v}
        return {"id": self.id_of(self.r.referenced(res, *path), what)}

    def add(self, arm_type: str, name: str, properties: dict, **extra):
        self.out.append((f"microsoft.network/{arm_type}".lower(), name, {"properties": properties, **extra}))

    def run(self) -> list:
        for res in self.r.items:
            if res.get("mode") == "data":
                self.report.not_mapped(f"{res['address']} (data source)", "read at plan time, not deployed")
                continue
            handler = getattr(self, res["type"], None)
            if handler is None:
                self.out.append((res["type"], res["values"].get("name", res["address"]), {"properties": {}}))
                continue
            handler(res, res.get("values", {}))
        return self.out

    # ---------------------------------------------------------------- networks

    def azurerm_virtual_network(self, res, v):
        subnets = [{"name": s["name"], "properties": {"addressPrefix": (s.get("address_prefixes") or [s.get("address_prefix")])[0]}}
                   for s in v.get("subnet", []) or []]
        self.add("virtualNetworks", v["name"], {"addressSpace": {"addressPrefixes": v.get("address_space", [])},
                                                "subnets": subnets})

    def azurerm_subnet(self, res, v):
        self.add("virtualNetworks/subnets", f"{v['virtual_network_name']}/{v['name']}",
                 {"addressPrefixes": v.get("address_prefixes") or [v.get("address_prefix")]})

    def azurerm_subnet_route_table_association(self, res, v):
        subnet, table = self.r.referenced(res, "subnet_id"), self.r.referenced(res, "route_table_id")
        if subnet is None or table is None:
            self.report.not_mapped(res["address"], "its subnet or route table is not in the document")
            return
        key = f"{subnet['values']['virtual_network_name']}/{subnet['values']['name']}"
        for i, (t, name, body) in enumerate(self.out):
            if t == "microsoft.network/virtualnetworks/subnets" and name == key:
                body["properties"]["routeTable"] = {"id": self.id_of(table, "routeTables")}
                return
        self.report.not_mapped(res["address"], f"subnet {key} must come before its association")

    def azurerm_virtual_network_peering(self, res, v):
        self.add("virtualNetworks/virtualNetworkPeerings", f"{v['virtual_network_name']}/{v['name']}", {
            "remoteVirtualNetwork": self.ref_id(res, "remote_virtual_network_id", what="virtualNetworks"),
            **{arm: v[tf] for arm, _, tf in PEERING_FLAGS if v.get(tf) is not None}})

    def azurerm_route_table(self, res, v):
        propagation = v.get("bgp_route_propagation_enabled")
        if propagation is None:
            propagation = not v.get("disable_bgp_route_propagation", False)
        self.add("routeTables", v["name"], {
            "disableBgpRoutePropagation": not propagation,
            "routes": [{"name": r["name"], "properties": {"addressPrefix": r["address_prefix"], "nextHopType": r["next_hop_type"],
                                                          "nextHopIpAddress": r.get("next_hop_in_ip_address")}}
                       for r in v.get("route", []) or []]})

    def azurerm_route(self, res, v):
        self.add("routeTables/routes", f"{v['route_table_name']}/{v['name']}", {
            "addressPrefix": v["address_prefix"], "nextHopType": v["next_hop_type"],
            "nextHopIpAddress": v.get("next_hop_in_ip_address")})

    # ---------------------------------------------------------------- the gateway

    def azurerm_virtual_network_gateway(self, res, v):
        configs = v.get("ip_configuration", []) or []
        bgp = _first(v.get("bgp_settings"))
        p = {"gatewayType": v.get("type", "Vpn"), "vpnType": v.get("vpn_type", "RouteBased"),
             "sku": {"name": v.get("sku")}, "vpnGatewayGeneration": v.get("generation"),
             "activeActive": v.get("active_active", False),
             "enableBgp": _flag(v, "bgp_enabled", "enable_bgp", False),
             "ipConfigurations": [{"name": c.get("name") or f"ipconfig{i}", "properties": {
                 "subnet": self.ref_id(res, "ip_configuration", i, "subnet_id", what="subnets")}}
                 for i, c in enumerate(configs)],
             "bgpSettings": {"asn": bgp.get("asn", 65515), "bgpPeeringAddresses": [
                 {"ipconfigurationId": f"{PROVIDER}/virtualNetworkGateways/{v['name']}/ipConfigurations/"
                                       f"{a.get('ip_configuration_name')}",
                  "customBgpIpAddresses": a.get("apipa_addresses", [])}
                 for a in bgp.get("peering_addresses", []) or []]}}
        if v.get("vpn_client_configuration"):
            c = _first(v["vpn_client_configuration"])
            p["vpnClientConfiguration"] = {
                "vpnClientAddressPool": {"addressPrefixes": c.get("address_space", [])},
                "vpnClientProtocols": c.get("vpn_client_protocols") or ["IkeV2", "OpenVPN"],
                "vpnAuthenticationTypes": c.get("vpn_auth_types") or ["Certificate"],
                "vpnClientRootCertificates": [{"name": r["name"]} for r in c.get("root_certificate", []) or []],
                "vpnClientRevokedCertificates": [{"name": r["name"], "properties": {"thumbprint": r.get("thumbprint")}}
                                                 for r in c.get("revoked_certificate", []) or []],
                "aadTenant": c.get("aad_tenant"), "radiusServerAddress": c.get("radius_server_address"),
                "radiusServerSecret": c.get("radius_server_secret"),
                "radiusServers": [{"radiusServerAddress": r.get("address"), "radiusServerSecret": r.get("secret"),
                                   "radiusServerScore": r.get("score", 1)} for r in c.get("radius_server", []) or []]}
        routes = [x for r in v.get("custom_route", []) or [] for x in r.get("address_prefixes", [])]
        if routes:
            p["customRoutes"] = {"addressPrefixes": routes}
        if v.get("default_local_network_gateway_id") or self.r.referenced(res, "default_local_network_gateway_id"):
            p["gatewayDefaultSite"] = self.ref_id(res, "default_local_network_gateway_id", what="localNetworkGateways")
        if v.get("bgp_route_translation_for_nat_enabled"):
            p["enableBgpRouteTranslationForNat"] = True
        self.add("virtualNetworkGateways", v["name"], p)

    def azurerm_virtual_network_gateway_nat_rule(self, res, v):
        gw = self.r.referenced(res, "virtual_network_gateway_id")
        if gw is None:
            self.report.not_mapped(res["address"], "its gateway is not in the document")
            return
        self.add("virtualNetworkGateways/natRules", f"{gw['values']['name']}/{v['name']}", {
            "type": v.get("type", "Static"), "mode": v.get("mode", "EgressSnat"),
            "internalMappings": [{"addressSpace": m["address_space"], "portRange": m.get("port_range")}
                                 for m in v.get("internal_mapping", [])],
            "externalMappings": [{"addressSpace": m["address_space"], "portRange": m.get("port_range")}
                                 for m in v.get("external_mapping", [])],
            "ipConfigurationId": v.get("ip_configuration_id")})

    # ---------------------------------------------------------------- sites and connections

    def azurerm_local_network_gateway(self, res, v):
        bgp = _first(v.get("bgp_settings"))
        p = {"gatewayIpAddress": v.get("gateway_address"), "fqdn": v.get("gateway_fqdn"),
             "localNetworkAddressSpace": {"addressPrefixes": v.get("address_space", []) or []}}
        if bgp:
            p["bgpSettings"] = {"asn": bgp.get("asn"), "bgpPeeringAddress": bgp.get("bgp_peering_address")}
        self.add("localNetworkGateways", v["name"], p)

    def azurerm_virtual_network_gateway_connection(self, res, v):
        kind = v.get("type", "IPsec")
        policy = _first(v.get("ipsec_policy")) if v.get("ipsec_policy") else None
        custom = _first(v.get("custom_bgp_addresses")) if v.get("custom_bgp_addresses") else None
        gw = self.r.referenced(res, "virtual_network_gateway_id")
        p = {"connectionType": kind,
             "virtualNetworkGateway1": {"id": self.id_of(gw, "virtualNetworkGateways")},
             "sharedKey": self.r.value(res, "shared_key")
             if self.r.value(res, "shared_key") is not None else Unknown(f"{res['address']} has no shared_key"),
             "connectionProtocol": v.get("connection_protocol") or "IKEv2",
             "enableBgp": _flag(v, "bgp_enabled", "enable_bgp", False),
             "usePolicyBasedTrafficSelectors": v.get("use_policy_based_traffic_selectors", False),
             "connectionMode": v.get("connection_mode") or "Default",
             "trafficSelectorPolicies": v.get("traffic_selector_policy") or [],
             "routingWeight": v.get("routing_weight") or 0,
             "ingressNatRules": [{"id": self._nat_id(res, "ingress_nat_rule_ids", i, x)}
                                 for i, x in enumerate(v.get("ingress_nat_rule_ids") or [])],
             "egressNatRules": [{"id": self._nat_id(res, "egress_nat_rule_ids", i, x)}
                                for i, x in enumerate(v.get("egress_nat_rule_ids") or [])]}
        if v.get("dpd_timeout_seconds"):
            p["dpdTimeoutSeconds"] = v["dpd_timeout_seconds"]
        if kind == "IPsec":
            p["localNetworkGateway2"] = self.ref_id(res, "local_network_gateway_id", what="localNetworkGateways")
        else:
            p["virtualNetworkGateway2"] = self.ref_id(res, "peer_virtual_network_gateway_id", what="virtualNetworkGateways")
        if policy:
            p["ipsecPolicies"] = [{arm: policy[tf] for arm, _, tf in POLICY_FIELDS if policy.get(tf) is not None}]
        if custom and gw is not None:
            configs = [c.get("name") for c in gw["values"].get("ip_configuration", []) or []]
            p["gatewayCustomBgpIpAddresses"] = [
                {"ipConfigurationId": f"{PROVIDER}/virtualNetworkGateways/{gw['values']['name']}/ipConfigurations/{configs[k]}",
                 "customBgpIpAddress": custom[key]}
                for k, key in enumerate(("primary", "secondary")) if custom.get(key) and k < len(configs)]
        self.add("connections", v["name"], p)

    def _nat_id(self, res, attribute, i, value):
        if isinstance(value, str) and value.startswith("/subscriptions/"):
            return value
        target = self.r.referenced(res, attribute, i) or self.r.referenced(res, attribute)
        if target is None:
            return None
        gw = self.r.referenced(target, "virtual_network_gateway_id")
        return f"{PROVIDER}/virtualNetworkGateways/{gw['values']['name'] if gw else '?'}/natRules/{target['values']['name']}"

    # ---------------------------------------------------------------- VMs

    def azurerm_network_interface(self, res, v):
        config = _first(v.get("ip_configuration"))
        self.add("networkInterfaces", v["name"], {
            "enableIPForwarding": _flag(v, "ip_forwarding_enabled", "enable_ip_forwarding", False),
            "ipConfigurations": [{"properties": {
                "subnet": self.ref_id(res, "ip_configuration", 0, "subnet_id", what="subnets"),
                "privateIPAllocationMethod": config.get("private_ip_address_allocation", "Dynamic"),
                "privateIPAddress": config.get("private_ip_address")}}]})

    def _vm(self, res, v):
        nics = [{"id": self.id_of(self.r.referenced(res, "network_interface_ids", i)
                                  or self.r.referenced(res, "network_interface_ids"), "networkInterfaces")}
                for i in range(len(v.get("network_interface_ids") or [None]))]
        self.out.append(("microsoft.compute/virtualmachines", v["name"],
                         {"properties": {"networkProfile": {"networkInterfaces": nics}}}))

    azurerm_linux_virtual_machine = azurerm_windows_virtual_machine = azurerm_virtual_machine = _vm

    def azurerm_public_ip(self, res, v):
        self.add("publicIPAddresses", v["name"], {})

    def azurerm_resource_group(self, res, v):
        self.report.not_mapped(f"{res['address']} (resource group)", "the lab has no resource groups")


def import_terraform(doc: dict, report: Report, lab: dict | None = None) -> dict:
    if not ("planned_values" in doc or "values" in doc):
        raise SourceError(f"{report.source}: not Terraform's JSON (`terraform show -json` of a plan or "
                          "the state has planned_values or values)")
    items = ToArm(Resources(doc, report), report).run()
    imp = ArmImport(report)
    topology = imp.run(items)
    for nic in imp.nics:
        report.not_mapped(f"network interface {nic}", "no virtual machine of the document uses it")
    apply_lab_settings(lab or {}, topology, imp.name, report)
    return topology
