"""NAT rules on a gateway instance [7.2], planned: nftables entries, the mark routing
that keeps overlapping sites apart, the prefixes routed and announced after
translation, and the BGP route maps and learned-route translation.

Per connection with rules on an instance (its tunnel interface t<j>):
- IngressSnat: what comes from the site with a source in the internal prefix leaves
  with the external one; traffic to the external prefix is marked before NAT (two sites
  may share the internal space), routed by the mark to t<j> and given the internal
  address back.
- EgressSnat: what leaves to the site from the VNet's internal prefix takes the
  external one; what the site sends to the external prefix reaches the internal one.
- Static rules are stateless, as Azure's [7.2]: every packet is rewritten by itself,
  so a flow may come back through the other instance. Dynamic rules are stateful
  (conntrack, a zone per connection so that two sites' identical addresses are two
  flows) and translate only flows begun on the internal side; the rest is dropped and
  counted (TunnelNatPacketDrop).
"""
from __future__ import annotations

from ipaddress import IPv4Network

from vpnlab.model import nat_rules
from vpnlab.model.nat_rules import (
    EGRESS,
    INGRESS,
    external,
    internal,
    translate,
)
from vpnlab.plan.parts import NAT_PRIORITY, TABLE_FIRST_NAT, Node, Route, Rule

MARK_BASE = 0x100       # mark and conntrack zone of tunnel interface t<j>: 0x100 + j


def seen(t, conn_name: str, mode: str, slot: int, prefix: IPv4Network) -> IPv4Network:
    """A prefix as the other side of the connection sees it on the instance in slot."""
    return nat_rules.seen_on(t, conn_name, mode, slot, prefix)[0]


def vnet_as_seen(t, conn_name: str, slot: int) -> list[IPv4Network]:
    """What a site reaches the gateway's side at: its VNet (and spokes) as EgressSnat
    rules show them, and each rule's external prefix (a rule may map a part of them)."""
    own = t.gateway_prefixes(t.connections[conn_name].virtual_network_gateway)
    seen_ = [seen(t, conn_name, EGRESS, slot, p) for p in own]
    return list(dict.fromkeys(seen_ + [external(r) for _, r in nat_rules.rules_on(t, conn_name, EGRESS, slot)]))


def translated_address(t, conn_name: str, mode: str, slot: int, address: str) -> str | None:
    """A host's address as the other side sees it; None when a dynamic rule holds it
    (the other side cannot begin a flow to it)."""
    hit = nat_rules.covering(t, conn_name, mode, slot, IPv4Network(f"{address}/32"))
    if hit is None:
        return address
    if hit[1].type == "Dynamic":
        return None
    return str(translate(IPv4Network(f"{address}/32"), hit[1]).network_address)


def bgp_translated(t, conn_name: str) -> bool:
    c = t.connections[conn_name]
    return c.enable_bgp and t.virtual_network_gateways[c.virtual_network_gateway].enable_bgp_route_translation_for_nat


def plan_connection(t, inst: Node, slot: int, conn_name: str, az_if: str):
    """The instance's nftables entries, mark rule and table for one connection."""
    ingress, egress = nat_rules.rules_on(t, conn_name, INGRESS, slot), nat_rules.rules_on(t, conn_name, EGRESS, slot)
    if not (ingress or egress):
        return
    j = int(az_if[1:])
    mark = MARK_BASE + j
    for mode, rules in ((INGRESS, ingress), (EGRESS, egress)):
        for name, rule in rules:
            inst.nft.setdefault("nat", []).append(dict(
                rule=name, connection=conn_name, iface=az_if, mode=mode, type=rule.type,
                internal=str(internal(rule)), external=str(external(rule)),
                hostmask=str(internal(rule).hostmask),
                ports=rule.external_mappings[0].port_range, mark=mark, zone=mark))
    if ingress:
        inst.rules.append(Rule(None, TABLE_FIRST_NAT + j, NAT_PRIORITY, fwmark=mark))
        inst.routes.append(Route("0.0.0.0/0", dev=az_if, table=TABLE_FIRST_NAT + j))
    # an EgressSnat external prefix is routed towards the VNet: the tunnel end hands the
    # instance only what the instance answers ARP for (proxy ARP needs a route)
    towards_vnet = next(via for p, via in inst.frr.static if p in inst.frr.vnet_prefixes) if egress else None
    for _, r in egress:
        if (str(external(r)), towards_vnet) not in inst.frr.static:
            inst.frr.static.append((str(external(r)), towards_vnet))


def plan_bgp(t, inst: Node, slot: int, conn_name: str, az_if: str, peer: str, local: str):
    """BGP on a connection with NAT rules [7.2]. The device peers with the instance's
    post-NAT address where an EgressSnat rule maps it, so the routes it hears carry that
    next hop. With BGP route translation: the site's internal prefixes stay out of the
    routing table (the agent announces them translated, vpnlab.gateway.nat_routes), and
    the site hears the VNet through its EgressSnat rules' external prefixes, the other
    connections' routes post-NAT, not its own."""
    ingress, egress = nat_rules.rules_on(t, conn_name, INGRESS, slot), nat_rules.rules_on(t, conn_name, EGRESS, slot)
    if not (ingress or egress):
        return
    neighbor = next(n for n in inst.frr.neighbors if n.address == peer)
    seen_local = translated_address(t, conn_name, EGRESS, slot, local) or local
    entries = []
    if bgp_translated(t, conn_name):
        if ingress:
            neighbor.route_map_in = f"NAT-IN-{conn_name}"
            neighbor.soft_reconfiguration = True
            inst.frr.nat_maps.append(dict(
                name=neighbor.route_map_in, base="in", next_hop=None,
                why=f"{conn_name}: learned routes inside IngressSnat internal prefixes are announced translated",
                entries=[["deny", [f"{internal(r)} le 32" for _, r in ingress]]]))
            inst.frr.nat_learned.append(dict(
                connection=conn_name, peer=peer, dev=az_if,
                mappings=[[name, str(internal(r)), str(external(r)), r.type] for name, r in ingress]))
        entries = [["permit", [str(external(r)) for _, r in egress]],
                   ["deny", [str(internal(r)) for _, r in egress] + [str(external(r)) for _, r in ingress]]]
        for _, r in egress:
            if str(external(r)) not in inst.frr.networks:
                inst.frr.networks.append(str(external(r)))
            if str(external(r)) not in inst.frr.nat_externals:
                inst.frr.nat_externals.append(str(external(r)))
    if entries or seen_local != local:
        neighbor.route_map_out = f"NAT-OUT-{conn_name}"
        inst.frr.nat_maps.append(dict(name=neighbor.route_map_out, base="out",
                                      next_hop=seen_local if seen_local != local else None,
                                      why=f"{conn_name}: what the site hears, translated",
                                      entries=[e for e in entries if e[1]]))


def announce(inst: Node, prefix: str, via: str):
    if (prefix, via) not in inst.frr.static:
        inst.frr.static.append((prefix, via))
    if prefix not in inst.frr.networks:
        inst.frr.networks.append(prefix)
