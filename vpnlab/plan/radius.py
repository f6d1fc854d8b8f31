"""RADIUS in the lab plan [RADIUSGW]: FreeRADIUS on the VMs and on-prem hosts that
radius_hosts names, each gateway that names its address a client of it. Azure's
requests come from the GatewaySubnet [RADIUSMFA]: the gateway's point-to-site servers
send from their tunnel namespace, and their instance translates that to its own
GatewaySubnet address (which address Azure uses is UNCONFIRMED) and routes it into the
VNet, or into the site-to-site tunnel for a server on-prem."""
from __future__ import annotations

from vpnlab.model.defaults import defaults
from vpnlab.model.p2s_rules import radius_host_addresses
from vpnlab.plan.parts import TABLE_MAIN, UNDERLAY_PRIORITY, Node, Rule


def servers(t, gw_name: str) -> list[dict]:
    """The gateway's RADIUS servers for its point-to-site servers, highest score first."""
    cfg = t.virtual_network_gateways[gw_name].vpn_client_configuration
    if cfg is None or "Radius" not in cfg.vpn_auth_types:
        return []
    ordered = sorted(cfg.radius(), key=lambda s: -s.score)
    return [dict(name=f"s{i}", address=str(s.address), secret=s.secret.get_secret_value(), preference=s.score)
            for i, s in enumerate(ordered)]


def build(b):
    """FreeRADIUS's context on each RADIUS host that some gateway names."""
    port = defaults()["p2s"]["radius"]["port"]
    for host, (_kind, _where, address) in sorted(radius_host_addresses(b.t).items()):
        clients = []
        for gw_name, gw in sorted(b.t.virtual_network_gateways.items()):
            for s in servers(b.t, gw_name):
                if s["address"] == str(address):
                    prefix = b.t.virtual_networks[gw.virtual_network].subnets["GatewaySubnet"].address_prefix
                    clients.append(dict(name=gw_name, prefix=str(prefix), secret=s["secret"]))
        users = [dict(name=u, password=p.get_secret_value())
                 for u, p in sorted(b.t.radius_hosts[host].users.items())]
        b.nodes[host].radius = dict(address=str(address), port=port, clients=clients, users=users)


def reach_servers(b, inst: Node, end: Node, underlay_if: str, gw_name: str):
    """What the P2S server end sends to a RADIUS server leaves its instance from the
    instance's GatewaySubnet address, by the VNet's routes (not the public path every
    other packet from a tunnel namespace takes)."""
    source = end.iface("ul").addresses[0].split("/")[0]
    to = b.bgp_addresses[inst.name]["bgp_ip"]
    for s in servers(b.t, gw_name):
        inst.rules.append(Rule(underlay_if, TABLE_MAIN, UNDERLAY_PRIORITY - 1, dst=f"{s['address']}/32"))
        inst.nft.setdefault("radius_snat", []).append(dict(src=source, dst=s["address"], to=to))
