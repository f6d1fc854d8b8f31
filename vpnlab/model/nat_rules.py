"""NAT rules on the gateway [7.2]: how a connection's rules translate prefixes, and
Azure's rules for them. Validation yields (field path, message) like the rest of
vpnlab.model.topology's.

IngressSnat maps an on-prem space (internal) to the space the gateway and the VNet see
(external); EgressSnat maps the VNet's space to the space one site sees. A rule applies
on the instances its ip_configuration_id names, on the connections that list it.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from vpnlab.model.defaults import defaults

INGRESS, EGRESS = "IngressSnat", "EgressSnat"
IP_CONFIGURATIONS = ("default", "activeActive")     # instance 0, instance 1 [7.2]


def limits() -> dict:
    return defaults()["azure"]["nat"]


def connection_rules(t, conn_name: str, mode: str) -> list[tuple[str, object]]:
    """(rule name, rule) the connection lists for this mode, known rules only."""
    c = t.connections[conn_name]
    gw = t.virtual_network_gateways.get(c.virtual_network_gateway)
    ids = c.ingress_nat_rule_ids if mode == INGRESS else c.egress_nat_rule_ids
    if gw is None:
        return []
    return [(n, gw.nat_rules[n]) for n in ids if n in gw.nat_rules and gw.nat_rules[n].mode == mode]


def applies_on(rule, slot: int) -> bool:
    """Whether a rule applies on the instance that holds public IP configuration slot
    (0: `default`, 1: `activeActive`)."""
    return rule.ip_configuration_id in (None, IP_CONFIGURATIONS[slot])


def internal(rule) -> IPv4Network:
    return rule.internal_mappings[0].address_space


def external(rule) -> IPv4Network:
    return rule.external_mappings[0].address_space


def translate(prefix: IPv4Network, rule) -> IPv4Network:
    """A prefix inside the rule's internal mapping as it looks after the rule."""
    return map_prefix(prefix, internal(rule), external(rule), rule.type)


def map_prefix(prefix: IPv4Network, inside: IPv4Network, outside: IPv4Network, kind: str) -> IPv4Network:
    """Static rules map 1:1 (the same offset in the external prefix); a dynamic rule's
    flows all take its external prefix."""
    if kind == "Dynamic":
        return outside
    offset = int(prefix.network_address) - int(inside.network_address)
    return IPv4Network((int(outside.network_address) + offset, prefix.prefixlen))


def rules_on(t, conn_name: str, mode: str, slot: int) -> list[tuple[str, object]]:
    """The connection's rules of this mode that apply on the instance in slot."""
    return [(n, r) for n, r in connection_rules(t, conn_name, mode) if applies_on(r, slot)]


def covering(t, conn_name: str, mode: str, slot: int, prefix: IPv4Network):
    """(name, rule) of the first rule on the instance in slot whose internal mapping
    holds the prefix, or None."""
    return next(((n, r) for n, r in rules_on(t, conn_name, mode, slot) if prefix.subnet_of(internal(r))), None)


def seen_on(t, conn_name: str, mode: str, slot: int, prefix: IPv4Network) -> tuple[IPv4Network, str | None]:
    """A prefix as the other side of the connection sees it through the instance in
    slot, and the rule that translated it (None: untranslated): the gateway's view of a
    site prefix (IngressSnat), a site's view of a VNet prefix (EgressSnat)."""
    hit = covering(t, conn_name, mode, slot, prefix)
    return (translate(prefix, hit[1]), hit[0]) if hit else (prefix, None)


def slots(t, conn_name: str) -> range:
    gw = t.virtual_network_gateways[t.connections[conn_name].virtual_network_gateway]
    return range(2 if gw.active_active else 1)


def view(t, conn_name: str, mode: str, prefix: IPv4Network) -> list[IPv4Network]:
    """A prefix as the other side of the connection sees it, over the instances."""
    return list(dict.fromkeys(seen_on(t, conn_name, mode, s, prefix)[0] for s in slots(t, conn_name)))


def site_connections(t, site: str) -> list[str]:
    return sorted(n for n, c in t.connections.items()
                  if c.type == "IPsec" and c.local_network_gateway == site)


def site_space_as_seen(t, site: str, prefix: IPv4Network) -> list[tuple[IPv4Network, str | None]]:
    """(prefix, the rule that translated it or None) as the gateways see a site prefix
    over all its connections: what must not overlap other networks."""
    out: dict[IPv4Network, str | None] = {}     # one entry per prefix (a rule per instance maps alike)
    for conn in site_connections(t, site):
        if t.connections[conn].virtual_network_gateway in t.virtual_network_gateways:
            for s in slots(t, conn):
                seen, rule = seen_on(t, conn, INGRESS, s, prefix)
                out.setdefault(seen, rule)
    return list(out.items()) or [(prefix, None)]


# ---------------------------------------------------------------- validation

def nat_errors(t):
    for gw_name, gw in t.virtual_network_gateways.items():
        yield from _gateway_errors(gw_name, gw)
    for conn_name, c in t.connections.items():
        yield from _connection_errors(t, conn_name, c)
    yield from _shared_ingress_errors(t)
    yield from _external_overlap_errors(t)


def _gateway_errors(gw_name: str, gw):
    loc = ("virtual_network_gateways", gw_name)
    if not gw.nat_rules:
        if gw.enable_bgp_route_translation_for_nat:
            yield loc + ("enable_bgp_route_translation_for_nat",), "the gateway has no nat_rules to translate by"
        return
    lim = limits()
    if gw.sku not in lim["skus"]:
        yield loc + ("nat_rules",), (f"NAT is supported on {', '.join(lim['skus'])} only, Azure says "
                                     f"(this gateway is {gw.sku})")
    if gw.vpn_type != "RouteBased":
        yield loc + ("nat_rules",), "NAT needs a route-based gateway"
    if len(gw.nat_rules) > lim["max_rules"]:
        yield loc + ("nat_rules",), (f"{len(gw.nat_rules)} rules; Azure allows up to {lim['max_rules']} "
                                     "per gateway (ingress and egress together)")
    for name, rule in gw.nat_rules.items():
        yield from _rule_errors(gw, loc + ("nat_rules", name), rule)


def _rule_errors(gw, loc: tuple, rule):
    for field in ("internal_mappings", "external_mappings"):
        if len(getattr(rule, field)) > 1:
            yield loc + (field,), ("one prefix per rule, Azure says: create one rule for each prefix "
                                   "of the address space")
    inside, outside = internal(rule), external(rule)
    if rule.type == "Static" and inside.prefixlen != outside.prefixlen:
        yield loc + ("external_mappings", 0, "address_space"), (
            f"a static rule maps 1:1: {outside} must be as large as {inside} (/{inside.prefixlen}); "
            "a smaller pool needs type Dynamic")
    if rule.type == "Dynamic" and outside.prefixlen < limits()["dynamic_max_external_prefixlen"]:
        yield loc + ("external_mappings", 0, "address_space"), (
            f"the largest external mapping of a dynamic rule is /{limits()['dynamic_max_external_prefixlen']}, "
            f"Azure says (got /{outside.prefixlen})")
    for field in ("internal_mappings", "external_mappings"):
        ports = getattr(rule, field)[0].port_range
        if ports is None:
            continue
        floc = loc + (field, 0, "port_range")
        low, high = map(int, ports.split("-"))
        if not 1 <= low <= high <= 65535:
            yield floc, f"'{ports}' is not a port range: low-high, 1 to 65535, low <= high"
        elif rule.type == "Static" or field == "internal_mappings":
            yield floc, ("not emulated by the lab: port ranges are taken on a dynamic rule's "
                         "external mapping only (the ports its translation uses)")
    if rule.ip_configuration_id == "activeActive" and not gw.active_active:
        yield loc + ("ip_configuration_id",), (
            "an active-standby gateway has one IP configuration, 'default' (activeActive is "
            "the second instance's of an active-active gateway)")


def _connection_errors(t, conn_name: str, c):
    loc = ("connections", conn_name)
    lists = (("ingress_nat_rule_ids", INGRESS), ("egress_nat_rule_ids", EGRESS))
    if not (c.ingress_nat_rule_ids or c.egress_nat_rule_ids):
        return
    if c.type != "IPsec":
        field = "ingress_nat_rule_ids" if c.ingress_nat_rule_ids else "egress_nat_rule_ids"
        yield loc + (field,), "NAT is supported on IPsec site-to-site connections only, not VNet-to-VNet"
        return
    gw = t.virtual_network_gateways.get(c.virtual_network_gateway)
    lng = t.local_network_gateways.get(c.local_network_gateway)
    if gw is None or lng is None:
        return
    for field, mode in lists:
        for i, rule_name in enumerate(getattr(c, field)):
            rule = gw.nat_rules.get(rule_name)
            if rule is None:
                yield loc + (field, i), (f"gateway '{c.virtual_network_gateway}' has no NAT rule "
                                         f"'{rule_name}'; known: {', '.join(sorted(gw.nat_rules)) or '(none)'}")
            elif rule.mode != mode:
                yield loc + (field, i), f"rule '{rule_name}' is {rule.mode}; this list takes {mode} rules"
    if c.use_policy_based_traffic_selectors:
        yield loc + ("use_policy_based_traffic_selectors",), (
            "NAT rules are not supported on connections with policy-based traffic selectors, Azure says")
    site_space = list(lng.address_space) + t.site_lan(c.local_network_gateway)
    for i, rule_name in enumerate(c.ingress_nat_rule_ids):
        rule = gw.nat_rules.get(rule_name)
        if rule is None or rule.mode != INGRESS:
            continue
        if not any(internal(rule).subnet_of(p) or p.subnet_of(internal(rule)) for p in site_space):
            yield loc + ("ingress_nat_rule_ids", i), (
                f"rule '{rule_name}' maps {internal(rule)}, which is not in local network gateway "
                f"'{c.local_network_gateway}''s address space or LAN (the lab's rule: it would translate nothing)")
    vnet_space = t.gateway_prefixes(c.virtual_network_gateway)
    for i, rule_name in enumerate(c.egress_nat_rule_ids):
        rule = gw.nat_rules.get(rule_name)
        if rule is not None and rule.mode == EGRESS and not any(internal(rule).subnet_of(p) for p in vnet_space):
            yield loc + ("egress_nat_rule_ids", i), (
                f"rule '{rule_name}' maps {internal(rule)}, which is not inside the address space the "
                f"gateway serves ({', '.join(map(str, vnet_space))})")
    if c.enable_bgp and lng.bgp is not None:
        peer = lng.bgp.peering_address
        if peer.is_link_local:
            yield loc + ("enable_bgp",), "NAT is not supported with BGP APIPA addresses, Azure says"
        for name, rule in connection_rules(t, conn_name, INGRESS):
            if peer in internal(rule):
                yield (("local_network_gateways", c.local_network_gateway, "bgp", "peering_address"),
                       f"{peer} is inside rule '{name}''s internal mapping {internal(rule)}: Azure would see "
                       "the peer translated and asks for the post-NAT address here; the lab's device "
                       "peers from its own address: use one outside the translated range")


def _shared_ingress_errors(t):
    """An IngressSnat rule serves several connections only to the same on-prem network."""
    seen: dict[tuple[str, str], tuple[str, frozenset]] = {}
    for conn_name, c in sorted(t.connections.items()):
        lng = t.local_network_gateways.get(c.local_network_gateway or "")
        if c.type != "IPsec" or lng is None:
            continue
        space = frozenset(map(str, list(lng.address_space) + t.site_lan(c.local_network_gateway)))
        for i, rule_name in enumerate(c.ingress_nat_rule_ids):
            key = (c.virtual_network_gateway, rule_name)
            if key in seen and seen[key][1] != space:
                yield (("connections", conn_name, "ingress_nat_rule_ids", i),
                       f"rule '{rule_name}' already serves connection '{seen[key][0]}' to another on-prem "
                       "network; Azure allows one ingress rule on several connections only to the same "
                       "network: give this site a rule of its own")
            seen.setdefault(key, (conn_name, space))


def _external_overlap_errors(t):
    """External mappings must not overlap each other [7.2]; the same mapping twice is one
    translation (a rule per instance of an active-active gateway, say)."""
    for gw_name, gw in t.virtual_network_gateways.items():
        rules = sorted(gw.nat_rules.items())
        for i, (a_name, a) in enumerate(rules):
            for b_name, b in rules[i + 1:]:
                same = (internal(a), external(a), a.mode, a.type) == (internal(b), external(b), b.mode, b.type)
                if not same and external(a).overlaps(external(b)):
                    yield (("virtual_network_gateways", gw_name, "nat_rules", b_name, "external_mappings", 0,
                            "address_space"),
                           f"{external(b)} overlaps rule '{a_name}''s external mapping {external(a)}: "
                           "external mappings must not overlap, Azure says")
