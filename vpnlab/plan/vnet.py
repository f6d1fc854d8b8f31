"""The network around the gateway: a router per virtual network (Azure's SDN for that
VNet), its Internet egress, VNet peering with gateway transit, and route tables (UDRs)
with network virtual appliances. Functions of the plan builder (vpnlab.plan.build).

How Azure's route selection is reproduced on a VNet router [UDR]: a subnet with a route
table has its own policy rules. For each prefix length of its user routes, longest
first, the base table is asked for a route longer than that length, then the user
routes of that length: the longest prefix wins, and for the same prefix a user route
beats BGP and system routes. The base table is the router's main table (system routes
and BGP), or with BGP route propagation disabled a table of the system routes alone.
A next hop in a peered VNet (an appliance, the hub's gateway) is reached over a link of
its own to that VNet's router, which sends what arrives there to the next hop.
"""
from __future__ import annotations

import itertools
import zlib
from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

from vpnlab.model import names
from vpnlab.plan.parts import (
    TABLE_FIRST_UDR,
    TABLE_SYSTEM,
    Frr,
    Iface,
    Node,
    Route,
    Rule,
    instance_count,
)

HOP_TABLE_BASE = TABLE_FIRST_UDR + 500     # tables of next-hop links, one each
HOP_PRIORITY = 500                          # their rules: before any subnet's
UDR_PRIORITY = 1000


def internet_host(b):
    """A host on the lab's internet: where VMs' Internet traffic goes unless forced."""
    node = b.add(Node(names.INTERNET_HOST, "internet-host"))
    gw = b.attach_public(node, IPv4Address(b.d["internal"]["internet_host"]))
    node.routes.append(Route("0.0.0.0/0", via=gw))


def router(b, index: int, vnet: str):
    """A VNet's router: a bridge per subnet with its VMs, and Azure's default outbound
    access (the system route 0.0.0.0/0 to the Internet, source NAT to a public address),
    which a default route from the gateway beats. Its public address is a /32
    (attach_public's host_only)."""
    t = b.t
    gw_name = t.gateway_of(vnet)
    gw = t.virtual_network_gateways[gw_name] if gw_name else None
    asn = (gw.bgp.asn if gw.bgp else b.d["azure"]["asn"]) if gw else None
    node = b.add(Node(names.vnet_router(vnet), "vnet-router", forwarding=True))
    egress = IPv4Network(b.d["internal"]["azure_public"]).network_address \
        + b.d["internal"]["vnet_egress_first"] + index
    inet_gw = b.attach_public(node, egress, host_only=True)
    b.egress_gw[vnet] = inet_gw
    node.frr = Frr(asn, str(egress), b.timers, system=[("0.0.0.0/0", f"{inet_gw} pub onlink")])
    node.nft = dict(dnat=[], inner=[], mss_clamp=None, snat_all=True, peering_drops=[])
    for sub_name, sub in sorted(t.virtual_networks[vnet].subnets.items()):
        vms = t.subnet_vms(vnet, sub_name)
        if vms:
            b.lan(node, subnet_bridge(sub_name), sub.address_prefix, {vm: t.vm_address(vnet, vm) for vm in vms}, "vm")
    for vm in t.appliances(vnet):
        b.nodes[vm].forwarding = True
        b.nodes[vm].nft = dict(appliance=True)


def subnet_bridge(subnet: str) -> str:
    """A subnet's bridge on its VNet router, named by the subnet's name alone (a hash:
    interface names are short), so that subnets added or removed in a running lab
    leave the others' names as they are."""
    return f"s{zlib.crc32(subnet.encode()):08x}"


def _spaces(b, vnet: str) -> list[str]:
    return [str(p) for p in b.t.virtual_networks[vnet].address_space]


def peerings(b):
    """A link between the routers of each peered pair, the system routes to each other's
    address space, what each side's settings keep out, and gateway transit: a spoke's
    router joins the hub gateway's instances in the SDN's iBGP, so that it learns the
    on-premises routes, and the instances route and advertise the spoke's space."""
    t = b.t
    base = IPv4Network(b.d["internal"]["peering"]).network_address
    pairs = sorted({tuple(sorted((a, r))) for a in t.virtual_networks for r in t.peered(a)})
    for idx, (a, c) in enumerate(pairs):
        ip_a, ip_c = base + 4 * idx + 1, base + 4 * idx + 2
        b.link(b.nodes[names.vnet_router(a)], Iface(f"v{idx}", [f"{ip_a}/30"]),
               b.nodes[names.vnet_router(c)], Iface(f"v{idx}", [f"{ip_c}/30"]))
        b.peer_links[(a, c)] = (f"v{idx}", str(ip_c), str(ip_a))
        b.peer_links[(c, a)] = (f"v{idx}", str(ip_a), str(ip_c))
    for (x, y), (ifname, far, _own) in sorted(b.peer_links.items()):
        rx = b.nodes[names.vnet_router(x)]
        rx.frr.static += [(p, far) for p in _spaces(b, y)]
        setting = t.peered(x)[y]
        if not setting.allow_virtual_network_access:
            rx.nft["peering_drops"].append(dict(
                iif=ifname, sources=_spaces(b, y),
                why=f"peering to {y}: allow_virtual_network_access is false"))
        # forwarded traffic: from a VNet peered with y (through an appliance in y)
        forwarded = [p for v in sorted(t.peered(y)) if v != x for p in _spaces(b, v)]
        if not setting.allow_forwarded_traffic and forwarded:
            rx.nft["peering_drops"].append(dict(
                iif=ifname, sources=forwarded,
                why=f"peering to {y}: allow_forwarded_traffic is false"))
    for spoke in sorted(t.virtual_networks):
        hub = t.transit_hub(spoke)
        if hub:
            _gateway_transit(b, spoke, hub)


def _gateway_transit(b, spoke: str, hub: str):
    t = b.t
    gw_name = t.gateway_of(hub)
    gw = t.virtual_network_gateways[gw_name]
    sdn_ip = str(t.virtual_networks[hub].subnets["GatewaySubnet"].address_prefix.network_address + 1)
    spoke_router = b.nodes[names.vnet_router(spoke)]
    own = b.peer_links[(spoke, hub)][2]
    for k in range(instance_count(gw)):
        inst = b.nodes[names.instance(gw_name, k)]
        inst.frr.static.append((f"{own}/32", sdn_ip))
        slot = k if gw.active_active else 0
        b.sdn_peer(inst, spoke_router, own, b.bgp_addresses[inst.name]["bgp_ip"], slot == k, spoke=True)


def route_tables(b):
    """Each subnet's route table on its VNet's router (the module's docstring says how)."""
    t = b.t
    for vnet in sorted(t.virtual_networks):
        node = b.nodes[names.vnet_router(vnet)]
        tables = itertools.count(TABLE_FIRST_UDR)
        priority = itertools.count(UDR_PRIORITY)
        for sub_name, sub in sorted(t.virtual_networks[vnet].subnets.items()):
            iif = "gws" if sub_name == "GatewaySubnet" else subnet_bridge(sub_name)
            if sub.route_table is None or not any(x.name == iif for x in node.interfaces):
                continue
            rt = t.route_tables[sub.route_table]
            base = 254 if rt.bgp_route_propagation_enabled else _system_table(b, vnet, node)
            by_length = defaultdict(list)
            for r in rt.routes.values():
                by_length[r.address_prefix.prefixlen].append(r)
            for length in sorted(by_length, reverse=True):
                table = next(tables)
                node.rules.append(Rule(iif, base, next(priority), suppress_prefixlength=length))
                node.rules.append(Rule(iif, table, next(priority)))
                for r in by_length[length]:
                    node.routes += _user_route(b, vnet, node, r, table)
            node.rules.append(Rule(iif, base, next(priority)))
            if base != 254:
                node.rules.append(Rule(iif, 0, next(priority), unreachable=True))


def _system_table(b, vnet: str, node: Node) -> int:
    """The router's system routes alone (subnets, peered spaces, the Internet), once."""
    if not any(r.table == TABLE_SYSTEM for r in node.routes):
        for sub_name, sub in sorted(b.t.virtual_networks[vnet].subnets.items()):
            bridge = subnet_bridge(sub_name)
            if any(x.name == bridge for x in node.interfaces):
                node.routes.append(Route(str(sub.address_prefix), dev=bridge, table=TABLE_SYSTEM))
        for (x, y), (_ifname, far, _own) in sorted(b.peer_links.items()):
            if x == vnet:
                node.routes += [Route(p, via=far, table=TABLE_SYSTEM) for p in _spaces(b, y)]
        node.routes.append(_internet(b, vnet, "0.0.0.0/0", TABLE_SYSTEM))
    return TABLE_SYSTEM


def _user_route(b, vnet: str, node: Node, r, table: int) -> list[Route]:
    dst = str(r.address_prefix)
    kind = r.next_hop_type
    if kind == "None":
        return [Route(dst, table=table, blackhole=True)]
    if kind == "Internet":
        return [_internet(b, vnet, dst, table)]
    if kind == "VnetLocal":     # within the VNet's subnets; the rest of the prefix is dropped
        out = [Route(dst, table=table, blackhole=True)]
        for sub_name, sub in sorted(b.t.virtual_networks[vnet].subnets.items()):
            bridge = subnet_bridge(sub_name)
            if sub.address_prefix.overlaps(r.address_prefix) and any(x.name == bridge for x in node.interfaces):
                inside = max(sub.address_prefix, r.address_prefix, key=lambda n: n.prefixlen)
                out.append(Route(str(inside), dev=bridge, table=table))
        return out
    if kind == "VirtualNetworkGateway":
        if any(gw.virtual_network == vnet for gw in b.t.virtual_network_gateways.values()):
            return [_to_gateway(b, vnet, dst, table)]
        hub = b.t.transit_hub(vnet)
        return [Route(dst, via=_hop_link(b, vnet, hub, "gateway"), table=table)]
    ip = str(r.next_hop_in_ip_address)          # VirtualAppliance
    owner = next(v for v in (vnet, *sorted(b.t.peered(vnet)))
                 if ip in {str(b.t.vm_address(v, vm)) for vm in b.t.appliances(v)})
    if owner == vnet:
        return [Route(dst, via=ip, table=table)]
    return [Route(dst, via=_hop_link(b, vnet, owner, ip), table=table)]


def _internet(b, vnet: str, dst: str, table: int) -> Route:
    return Route(dst, via=b.egress_gw[vnet], dev="pub", onlink=True, table=table)


def _to_gateway(b, vnet: str, dst: str, table: int) -> Route:
    """To the VNet's own gateway: its serving instances' BGP addresses, equal cost."""
    gw_name = next(g for g, gw in b.t.virtual_network_gateways.items() if gw.virtual_network == vnet)
    hops = list(dict.fromkeys(b.bgp_addresses[names.instance(gw_name, k)]["bgp_ip"]
                              for k in b.serving(gw_name)))
    return Route(dst, via=hops[0], table=table) if len(hops) == 1 else Route(dst, nexthops=hops, table=table)


def _hop_link(b, src: str, dst: str, target: str) -> str:
    """A link from src's router to dst's router for one next hop in dst (an appliance's
    address, or "gateway"): what arrives at dst on it goes to that next hop. Returns
    the address to route to on src's side."""
    key = (src, dst, target)
    if key not in b.hop_links:
        idx = len(b.hop_links)
        base = IPv4Network(b.d["internal"]["peering"]).network_address + 0x8000 + 4 * idx
        rs, rd = b.nodes[names.vnet_router(src)], b.nodes[names.vnet_router(dst)]
        ifname = f"h{idx}"
        b.link(rs, Iface(ifname, [f"{base + 1}/30"]), rd, Iface(ifname, [f"{base + 2}/30"]))
        table = HOP_TABLE_BASE + idx
        rd.nft.setdefault("hop_links", []).append(ifname)
        rd.rules.append(Rule(ifname, table, HOP_PRIORITY + idx))
        if target == "gateway":
            rd.routes.append(_to_gateway(b, dst, "0.0.0.0/0", table))
        else:
            rd.routes.append(Route("0.0.0.0/0", via=target, table=table))
        b.hop_links[key] = str(base + 2)
    return b.hop_links[key]
