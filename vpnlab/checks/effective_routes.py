"""Azure's effective routes, from the design alone: where a packet goes from a subnet
(or from the gateway, for what arrives from on-premises) [7.3a UDRO, PEER].

A subnet's routes are the system routes (its VNet's address space, each VNet peered
both ways, 0.0.0.0/0 to the Internet), the routes its VNet's gateway learned (unless
its route table turns propagation off) and its route table's user routes. The longest
prefix wins; for one prefix, a user route beats a BGP route beats a system route.
`reaches` follows next hops from subnet to appliance to gateway, as vpnlab.checks.routing
does with the lab's live tables, so the two can be compared. Not modelled: transit over
BGP across a VNet-to-VNet connection (a site behind the other gateway).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

USER, BGP, SYSTEM = 0, 1, 2          # the order Azure breaks a tie between one prefix's routes
GATEWAY_SUBNET = "GatewaySubnet"
MAX_HOPS = 8


def routes(t, vnet: str, subnet: str) -> list[tuple[IPv4Network, int, str, str | None]]:
    """(prefix, origin, next hop type, next hop) of a subnet of a VNet."""
    out = [(p, SYSTEM, "VnetLocal", vnet) for p in t.virtual_networks[vnet].address_space]
    for remote, peering in t.peered(vnet).items():
        if peering.allow_virtual_network_access and t.peered(remote)[vnet].allow_virtual_network_access:
            out += [(p, SYSTEM, "VNetPeering", remote) for p in t.virtual_networks[remote].address_space]
    out.append((IPv4Network("0.0.0.0/0"), SYSTEM, "Internet", None))
    table = t.route_tables.get(t.virtual_networks[vnet].subnets[subnet].route_table or "")
    gateway = t.gateway_of(vnet)
    if gateway and (table is None or table.bgp_route_propagation_enabled or subnet == GATEWAY_SUBNET):
        out += [(p, BGP, "VirtualNetworkGateway", gateway) for p in learned(t, gateway)]
    for r in (table.routes.values() if table else ()):
        out.append((r.address_prefix, USER, r.next_hop_type,
                    str(r.next_hop_in_ip_address) if r.next_hop_in_ip_address else None))
    return out


def learned(t, gateway: str) -> list[IPv4Network]:
    """What the gateway routes away from the VNet: its connected sites' prefixes
    (address space and, over BGP, the device's LAN and a default route), the VNets it
    is joined to by VNet-to-VNet connections, and its P2S pool."""
    out = t.connection_prefixes(gateway)
    if any(c.virtual_network_gateway == gateway and c.enable_bgp and c.local_network_gateway
           and t.local_network_gateways[c.local_network_gateway].device.advertise_default_route
           for c in t.connections.values()):
        out.append(IPv4Network("0.0.0.0/0"))
    cfg = t.virtual_network_gateways[gateway].vpn_client_configuration
    return out + (list(cfg.address_pool) if cfg else [])


def next_hop(t, vnet: str, subnet: str, dst: IPv4Address) -> tuple[str, str | None]:
    matching = [r for r in routes(t, vnet, subnet) if dst in r[0]]
    best = max(matching, key=lambda r: (r[0].prefixlen, -r[1]))
    return best[2], best[3]


def reaches(t, src: tuple[str, str] | str, dst: IPv4Address, dst_site: str | None = None) -> bool:
    """Whether a packet from src (VNet, subnet), or from a site through its gateway, is
    delivered to dst (a VNet subnet's address, or dst_site's LAN)."""
    if isinstance(src, str):      # a site: its gateway's VNet takes it in at the GatewaySubnet
        gateway = next(c.virtual_network_gateway for c in t.connections.values()
                       if c.local_network_gateway == src)
        origin, at = None, (t.virtual_network_gateways[gateway].virtual_network, GATEWAY_SUBNET)
    else:
        origin, at = src[0], src
    for _ in range(MAX_HOPS):
        vnet, subnet = at
        kind, hop = next_hop(t, vnet, subnet, dst)
        if kind == "VnetLocal":
            return dst_site is None
        if kind == "VNetPeering":
            return dst_site is None and _enters(t, vnet, hop, origin)
        if kind == "VirtualNetworkGateway":      # a user route's: the VNet's own (or its hub's)
            gateway = hop or t.gateway_of(vnet)
            if dst_site is not None:
                return _serves(t, gateway, dst_site)
            peer = _vnet_to_vnet_peer(t, gateway, dst)
            if peer is None:
                return False
            at = (t.virtual_network_gateways[peer].virtual_network, GATEWAY_SUBNET)
            continue
        if kind != "VirtualAppliance":
            return False                   # Internet (no private address there), None
        at = _appliance(t, IPv4Address(hop))
        if at is None:
            return False
    return False                           # a loop between appliances


def _enters(t, sender: str, into: str, origin: str | None) -> bool:
    """A peering takes in what sender's VNet sends, unless it is forwarded traffic (from
    a VNet peered with the sender's, through an appliance there) and the receiving side
    refuses it: the lab's reading of allow_forwarded_traffic (UNCONFIRMED)."""
    forwarded = origin not in (None, sender, into) and origin in t.peered(sender)
    return not forwarded or t.peered(into)[sender].allow_forwarded_traffic


def _serves(t, gateway: str, site: str) -> bool:
    return any(c.virtual_network_gateway == gateway and c.local_network_gateway == site
               for c in t.connections.values())


def _vnet_to_vnet_peer(t, gateway: str, dst: IPv4Address) -> str | None:
    """The gateway a VNet-to-VNet connection joins, whose VNet holds dst."""
    for c in t.connections.values():
        if c.virtual_network_gateway == gateway and c.type == "Vnet2Vnet":
            peer = t.virtual_network_gateways[c.peer_virtual_network_gateway]
            if any(dst in p for p in t.virtual_networks[peer.virtual_network].address_space):
                return c.peer_virtual_network_gateway
    return None


def _appliance(t, address: IPv4Address) -> tuple[str, str] | None:
    for vnet in t.virtual_networks:
        for vm, subnet in t.appliances(vnet).items():
            if t.vm_address(vnet, vm) == address:
                return vnet, subnet
    return None
