"""The lint rules' checks: one function per rule id (rules.yaml has their words). Each
takes a validated Topology and yields (field path, message); the path gives the line.

A check reads only what the validator has already accepted, so it never has to guard
against unknown names. Messages never show a shared key."""
from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

from vpnlab.model.defaults import defaults
from vpnlab.model.topology import Topology, reverse_connection

CHECKS = {}

# Strength of the IKE and PFS groups, in equivalent symmetric bits (RFC 8247's table and
# NIST SP 800-57's sizes); None has no exchange.
GROUP_BITS = {"DHGroup1": 60, "PFS1": 60, "DHGroup2": 80, "PFS2": 80,
              "DHGroup14": 112, "DHGroup2048": 112, "PFS2048": 112, "DHGroup24": 112, "PFS24": 112,
              "ECP256": 128, "ECP384": 192, "None": 0}
STRONG_BITS = 112                     # RFC 8247: groups below 2048-bit MODP are weak
DPD_RECOMMENDED = (30, 45)            # seconds [FAQ]
SHARED_KEY_MIN = 32                   # characters [RSK]
GATEWAY_SUBNET_RECOMMENDED = 27       # prefix length [FAQ]
TRAFFIC_SELECTORS_MAX = 100           # per connection [LIM]
WINDOWS_IKEV2_ROUTES = 25             # before Windows 10 2004 [LIM, FAQ]


def check(rule_id: str):
    def register(fn):
        CHECKS[rule_id] = fn
        return fn
    return register


def _site_connections(t: Topology):
    """(name, connection, gateway, local network gateway) of every IPsec connection."""
    for name, c in t.connections.items():
        if c.type == "IPsec":
            yield name, c, t.virtual_network_gateways[c.virtual_network_gateway], \
                t.local_network_gateways[c.local_network_gateway]


def _policies(t: Topology):
    """(field path of the policy, policy) of every custom policy."""
    for name, c in t.connections.items():
        for i, p in enumerate(c.ipsec_policies):
            yield ("connections", name, "ipsec_policies", i), p


@check("active-active-one-instance")
def _(t):
    for name, c, gw, lng in _site_connections(t):
        if gw.active_active and lng.managed and len(lng.device.connect_to_instances) == 1:
            k = lng.device.connect_to_instances[0]
            yield (("local_network_gateways", c.local_network_gateway, "device", "connect_to_instances"),
                   f"{c.local_network_gateway} builds a tunnel to instance {k} of {c.virtual_network_gateway} "
                   f"only: its traffic stops while instance {k} is serviced")


@check("active-standby-gateway")
def _(t):
    skus = defaults()["skus"]
    for name, gw in t.virtual_network_gateways.items():
        if not gw.active_active and skus[gw.sku]["active_active"] and gw.vpn_type == "RouteBased":
            yield (("virtual_network_gateways", name, "active_active"),
                   f"{name} is active-standby on {gw.sku}, which can run active-active")


@check("not-zone-redundant")
def _(t):
    for name, gw in t.virtual_network_gateways.items():
        if gw.sku.startswith("VpnGw") and not gw.sku.endswith("AZ"):
            yield ("virtual_network_gateways", name, "sku"), f"{gw.sku}: use {gw.sku}AZ for new gateways"


@check("basic-sku")
def _(t):
    for name, gw in t.virtual_network_gateways.items():
        if gw.sku == "Basic":
            yield ("virtual_network_gateways", name, "sku"), f"{name} is on the legacy Basic SKU"


@check("policy-based-gateway")
def _(t):
    for name, gw in t.virtual_network_gateways.items():
        if gw.vpn_type == "PolicyBased":
            yield (("virtual_network_gateways", name, "vpn_type"),
                   f"{name} is policy-based: one tunnel, IKEv1, and its type cannot change")


@check("default-ike-policy")
def _(t):
    for name, c in t.connections.items():
        gw = t.virtual_network_gateways[c.virtual_network_gateway]
        if not c.ipsec_policies and gw.sku != "Basic":      # Basic cannot have one: basic-sku
            yield ("connections", name), f"{name} runs Azure's default proposals (DH group 2, SHA1, 3DES offered)"


def _policy_rule(rule_id: str, field: str, weak, say):
    """A rule on one field of each custom policy: weak(value, policy), say(value, policy)."""
    @check(rule_id)
    def _(t):
        for loc, p in _policies(t):
            value = getattr(p, field)
            if weak(value, p):
                yield loc + (field,), say(value, p)


_policy_rule("weak-dh-group", "dh_group", lambda v, p: GROUP_BITS[v] < STRONG_BITS,
             lambda v, p: f"{v} is too weak for the IKE SA")
_policy_rule("weak-pfs-group", "pfs_group", lambda v, p: 0 < GROUP_BITS[v] < STRONG_BITS,
             lambda v, p: f"{v} is too weak for the child SAs' rekeys")
_policy_rule("pfs-weaker-than-dh", "pfs_group",
             lambda v, p: STRONG_BITS <= GROUP_BITS[v] < GROUP_BITS[p.dh_group],
             lambda v, p: f"{v} ({GROUP_BITS[v]}-bit strength) is weaker than the IKE group "
                          f"{p.dh_group} ({GROUP_BITS[p.dh_group]}-bit)")
_policy_rule("weak-ike-integrity", "ike_integrity", lambda v, p: v in ("MD5", "SHA1"),
             lambda v, p: f"{v} for IKE integrity and PRF")
_policy_rule("weak-ipsec-encryption", "ipsec_encryption", lambda v, p: v in ("DES", "DES3", "None"),
             lambda v, p: "None: the traffic is not encrypted" if v == "None" else f"{v} encrypts the traffic")
_policy_rule("weak-ipsec-integrity", "ipsec_integrity", lambda v, p: v in ("MD5", "SHA1"),
             lambda v, p: f"HMAC-{v} protects the traffic")


@check("ikev1-connection")
def _(t):
    for name, c in t.connections.items():
        gw = t.virtual_network_gateways[c.virtual_network_gateway]
        if c.connection_protocol == "IKEv1" and gw.vpn_type == "RouteBased":
            yield (("connections", name, "connection_protocol"),
                   f"{name} runs IKEv1: it drops for up to 5 s at every main-mode rekey")


@check("dpd-timeout-short")
def _(t):
    for name, c in t.connections.items():
        if c.dpd_timeout_seconds < DPD_RECOMMENDED[0]:
            yield (("connections", name, "dpd_timeout_seconds"),
                   f"{c.dpd_timeout_seconds} s is below the recommended {DPD_RECOMMENDED[0]}-{DPD_RECOMMENDED[1]} s")


@check("dpd-timeout-long")
def _(t):
    for name, c in t.connections.items():
        if c.dpd_timeout_seconds > DPD_RECOMMENDED[1]:
            yield (("connections", name, "dpd_timeout_seconds"),
                   f"{c.dpd_timeout_seconds} s: a dead peer goes unnoticed that long "
                   f"(recommended {DPD_RECOMMENDED[0]}-{DPD_RECOMMENDED[1]} s)")


@check("shared-key-short")
def _(t):
    for name, c in t.connections.items():
        if len(c.shared_key.get_secret_value()) < SHARED_KEY_MIN:
            yield (("connections", name, "shared_key"),
                   f"{len(c.shared_key.get_secret_value())} characters (value not shown); "
                   f"use at least {SHARED_KEY_MIN}")


@check("shared-key-reused")
def _(t):
    first = {}
    for name, c in t.connections.items():
        key = c.shared_key.get_secret_value()
        other = first.setdefault(key, name)
        if other != name and not (c.type == "Vnet2Vnet" and reverse_connection(t, name) == other):
            yield (("connections", name, "shared_key"),
                   f"the same key as connection {other} (value not shown)")


def _gateway_subnets(t: Topology):
    for vnet_name, vnet in t.virtual_networks.items():
        sub = vnet.subnets.get("GatewaySubnet")
        if sub is not None:
            yield vnet_name, sub


@check("gateway-subnet-small")
def _(t):
    for vnet_name, sub in _gateway_subnets(t):
        if sub.address_prefix.prefixlen > GATEWAY_SUBNET_RECOMMENDED:
            yield (("virtual_networks", vnet_name, "subnets", "GatewaySubnet", "address_prefix"),
                   f"{sub.address_prefix}: /{GATEWAY_SUBNET_RECOMMENDED} or larger is recommended")


@check("gateway-subnet-route-overlap")
def _(t):
    for vnet_name, sub in _gateway_subnets(t):
        table = t.route_tables.get(sub.route_table) if sub.route_table else None
        for r_name, r in (table.routes.items() if table else ()):
            if r.address_prefix.overlaps(sub.address_prefix):
                yield (("route_tables", sub.route_table, "routes", r_name, "address_prefix"),
                       f"{r.address_prefix} covers {vnet_name}'s GatewaySubnet {sub.address_prefix}")


@check("propagation-off-without-route")
def _(t):
    for vnet_name, vnet in t.virtual_networks.items():
        gw = t.gateway_of(vnet_name)
        if gw is None:
            continue
        sites = t.connection_prefixes(gw)
        for sub_name, sub in vnet.subnets.items():
            table = t.route_tables.get(sub.route_table) if sub.route_table else None
            if table is None or table.bgp_route_propagation_enabled or sub_name == "GatewaySubnet":
                continue
            lost = [p for p in sites if not any(p.subnet_of(r.address_prefix) for r in table.routes.values()
                                                if r.next_hop_type in ("VirtualNetworkGateway", "VirtualAppliance"))]
            if lost:
                shown = ", ".join(map(str, lost[:3])) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
                yield (("route_tables", sub.route_table, "bgp_route_propagation_enabled"),
                       f"subnet {vnet_name}/{sub_name} has no route to {shown}")


@check("bgp-site-static-prefixes")
def _(t):
    for name, c, gw, lng in _site_connections(t):
        if not (c.enable_bgp and lng.address_space):
            continue
        peer = IPv4Network(f"{lng.bgp.peering_address}/32")
        static = [p for p in lng.address_space if p != peer]
        said = [f"{', '.join(map(str, static))}: static routes to {c.local_network_gateway} besides "
                "what BGP learns"] if static else []
        if peer in lng.address_space:
            said.append(f"{peer} (the BGP peer) is redundant: Azure adds that route itself")
        yield ("local_network_gateways", c.local_network_gateway, "address_space"), "; ".join(said)


@check("apipa-device-must-initiate")
def _(t):
    low, high = map(IPv4Address, defaults()["azure"]["apipa_range"])
    for name, c, gw, lng in _site_connections(t):
        if c.enable_bgp and not lng.managed and low <= lng.bgp.peering_address <= high:
            yield (("local_network_gateways", c.local_network_gateway, "bgp", "peering_address"),
                   f"{lng.bgp.peering_address} is APIPA: your device must open the BGP session")


@check("vnet-to-vnet-without-bgp")
def _(t):
    count = defaultdict(int)
    for c in t.connections.values():
        count[c.virtual_network_gateway] += 1
    for name, c in t.connections.items():
        if c.type == "Vnet2Vnet" and not c.enable_bgp:
            busy = [g for g in (c.virtual_network_gateway, c.peer_virtual_network_gateway)
                    if count[g] > 1]            # connections besides its own direction of this pair
            if busy:
                yield (("connections", name, "enable_bgp"),
                       f"{' and '.join(busy)} {'have' if len(busy) > 1 else 'has'} other connections, "
                       "which do not reach across this one without BGP")


@check("gateway-transit-unused")
def _(t):
    for vnet_name, vnet in t.virtual_networks.items():
        if t.gateway_of(vnet_name) is None or t.transit_hub(vnet_name):
            continue                                      # not a hub with its own gateway
        for p_name, p in vnet.peerings.items():
            remote = p.remote_virtual_network
            back = t.peered(remote).get(vnet_name) if remote in t.virtual_networks else None
            has_own = any(g.virtual_network == remote for g in t.virtual_network_gateways.values())
            if p.allow_gateway_transit and back is not None and not back.use_remote_gateways and not has_own:
                yield (("virtual_networks", vnet_name, "peerings", p_name, "allow_gateway_transit"),
                       f"{remote} does not use it: its peering back has use_remote_gateways false")


@check("nat-rule-unused")
def _(t):
    for gw_name, gw in t.virtual_network_gateways.items():
        used = {r for c in t.connections.values() if c.virtual_network_gateway == gw_name
                for r in (*c.ingress_nat_rule_ids, *c.egress_nat_rule_ids)}
        for r_name in gw.nat_rules:
            if r_name not in used:
                yield (("virtual_network_gateways", gw_name, "nat_rules", r_name),
                       f"no connection of {gw_name} lists {r_name}")


@check("nat-bgp-without-route-translation")
def _(t):
    for name, c in t.connections.items():
        gw = t.virtual_network_gateways[c.virtual_network_gateway]
        if c.enable_bgp and (c.ingress_nat_rule_ids or c.egress_nat_rule_ids) \
                and not gw.enable_bgp_route_translation_for_nat:
            yield (("connections", name, "enable_bgp"),
                   f"{name} runs BGP with NAT rules; {c.virtual_network_gateway} does not translate its routes")


@check("traffic-selectors-over-limit")
def _(t):
    for name, c, gw, lng in _site_connections(t):
        if c.use_policy_based_traffic_selectors:
            pairs = len(lng.address_space) * len(t.gateway_prefixes(c.virtual_network_gateway))
            if pairs > TRAFFIC_SELECTORS_MAX:
                yield (("connections", name, "use_policy_based_traffic_selectors"),
                       f"{len(lng.address_space)} site prefixes x "
                       f"{len(t.gateway_prefixes(c.virtual_network_gateway))} VNet prefixes = {pairs} "
                       f"selectors; Azure allows {TRAFFIC_SELECTORS_MAX}")


@check("p2s-windows-route-limit")
def _(t):
    for name, gw in t.virtual_network_gateways.items():
        p2s = gw.vpn_client_configuration
        if p2s is None or "IkeV2" not in p2s.vpn_client_protocols:
            continue
        routes = len(t.gateway_prefixes(name)) + len(p2s.custom_routes)
        if routes > WINDOWS_IKEV2_ROUTES:
            yield (("virtual_network_gateways", name, "vpn_client_configuration", "vpn_client_protocols"),
                   f"{routes} routes for every client; Windows before 10 version 2004 takes "
                   f"{WINDOWS_IKEV2_ROUTES}")


@check("alert-timing-not-azure")
def _(t):
    m = defaults()["monitoring"]
    for name, rule in t.metric_alerts.items():
        for field, allowed in (("evaluation_frequency", "azure_evaluation_frequencies"),
                               ("window_size", "azure_window_sizes")):
            value = getattr(rule, field)
            if value not in m[allowed]:
                yield (("metric_alerts", name, field),
                       f"{field} {value}: Azure offers {', '.join(m[allowed])}")
