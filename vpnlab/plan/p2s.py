"""Point-to-site in the lab plan [6]: each serving gateway instance gets a P2S server
(a namespace beside it, like a tunnel end) running charon for IkeV2 and openvpn for
OpenVPN, both from the one address pool, and each client a namespace on the lab's
internet.

Active-standby: both instances hold P2S servers, the standby's idle, so that a takeover
drops the clients and they reconnect to the same public IP [5]. Active-active: Azure
gives P2S a third public IP [5 PIP3]; which instance serves it is not documented
(UNCONFIRMED): in the lab instance 0 holds it.
"""
from __future__ import annotations

import zlib
from ipaddress import IPv4Address, IPv4Network

from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.p2s_rules import free_client_addresses, ikev2_openvpn_pool
from vpnlab.plan import radius as radius_plan
from vpnlab.plan import timers as timers_of
from vpnlab.plan.parts import (
    TABLE_INTO_TUNNEL,
    Iface,
    Node,
    P2sClient,
    P2sEnd,
    Route,
    Rule,
    instance_count,
    selector_anchors,
)

SERVER_ROOT = "VpnServerRoot"    # the CA of the gateways' own certificates (Azure's name)
P2S_DEVICES = {"IkeV2": "ipsec0", "OpenVPN": "tun0"}     # where each protocol's clients are
# the IKEv2 server's connection per authentication type (what its SAs are named after)
IKEV2_CONNECTIONS = {"Certificate": "p2s", "Radius": "p2s-radius"}


def gateway_fqdn(gw_name: str) -> str:
    """The gateway's identity in its certificate (Azure: azuregateway-<id>.vpn.azure.com)."""
    return f"azuregateway-{gw_name}.vpnlab.test"


def pushed_routes(t, gw_name: str, os: str = "Linux") -> list[str]:
    """The routes a client gets [6 P2SRT]: the VNet's address space (and its spokes',
    with gateway transit [PEER]), the pool and custom routes; a non-Windows client (and
    any OpenVPN client) also the prefixes of the gateway's connections (site address
    spaces, the prefixes BGP learns from the lab's devices, peer VNets)."""
    gw = t.virtual_network_gateways[gw_name]
    cfg = gw.vpn_client_configuration
    out = [*t.gateway_prefixes(gw_name), *cfg.address_pool, *cfg.custom_routes]
    if os != "Windows":
        out += t.connection_prefixes(gw_name)
    return [str(p) for p in dict.fromkeys(out)]


def client_route_limit(protocol: str, os: str) -> int | None:
    """How many routes a client takes [FAQ26]: Windows' IKEv2 client (Windows 10 2004
    on), OpenVPN clients; None: no documented limit."""
    limits = defaults()["p2s"]["client_route_limits"]
    if protocol == "OpenVPN":
        return limits["openvpn"]
    return limits["ikev2_windows"] if os == "Windows" else None


def taken_routes(routes: list[str], protocol: str, os: str) -> list[str]:
    """The routes a client installs: the first ones up to its limit."""
    limit = client_route_limit(protocol, os)
    return routes if limit is None else routes[:limit]


def p2s_public_ip(b, gw_name: str) -> str:
    """Where clients connect: the gateway's public IP (active-standby), or its third
    public IP (active-active), 203.0.113.100 + the gateway's index."""
    if not b.gw(gw_name).active_active:
        return b.nodes[names.instance(gw_name, 0)].public_ip
    index = sorted(b.t.virtual_network_gateways).index(gw_name)
    return str(IPv4Network(b.d["internal"]["azure_public"]).network_address + 100 + index)


def build(b) -> tuple[list[P2sEnd], list[P2sClient]]:
    ends = []
    for gw_name in sorted(b.t.virtual_network_gateways):
        if b.gw(gw_name).vpn_client_configuration is not None:
            ends += _gateway(b, gw_name)
    addresses = _client_addresses(b.t)
    clients = [_client(b, name, addresses[name]) for name in sorted(b.t.clients)]
    return ends, clients


def _gateway(b, gw_name: str) -> list[P2sEnd]:
    gw = b.gw(gw_name)
    cfg = gw.vpn_client_configuration
    p2s, timers = defaults()["p2s"], b.timers
    pushed = pushed_routes(b.t, gw_name)
    roots = [r.name for r in cfg.root_certificates]
    limit = defaults()["skus"][gw.sku]["p2s_connections"]
    address = p2s_public_ip(b, gw_name)
    protocols = [p for p in P2S_DEVICES if p in cfg.vpn_client_protocols]
    if not protocols:       # SSTP alone: nothing the lab runs (p2s_rules.SSTP_CLIENTS)
        return []
    pool = ikev2_openvpn_pool(cfg)      # with SSTP, their half of it [6 POOL]
    auth = dict(certificate="Certificate" in cfg.vpn_auth_types, radius=radius_plan.servers(b.t, gw_name),
                radius_retransmit=_radius_retransmit(defaults()["p2s"]["radius"]["timeout_seconds"]))
    ends = []
    for k in range(instance_count(gw)):
        if gw.active_active and k != 0:
            continue
        inst = b.nodes[names.instance(gw_name, k)]
        if gw.active_active:
            b.own_public_address(inst, address)
        # one server for both protocols, so that they share the pool [6 POOL]
        end, ifname = b.tunnel_end(inst, names.p2s_server(inst.name), standby=inst.standby,
                                   role="p2s-endpoint", devices=tuple(P2S_DEVICES[p] for p in protocols))
        for p in pool:
            inst.frr.static.append((str(p), ifname))
            inst.frr.networks.append(str(p))
        if auth["radius"]:
            radius_plan.reach_servers(b, inst, end, f"{ifname}u", gw_name)
        ul, end.charon = end.charon["local_addr"], None     # the server's config follows
        for protocol in protocols:
            ikev2 = protocol == "IkeV2"
            inst.nft["dnat"].append(dict(peer=None, daddr=address if gw.active_active else None,
                                         to=ul, refuse_peer_init=False,
                                         proto="udp" if ikev2 else "tcp",
                                         ports="500, 4500" if ikev2 else str(p2s["openvpn_port"])))
        shared = len(protocols) > 1
        if shared:     # client to client across protocols: switched here, not through the instance
            end.rules += [Rule(None, TABLE_INTO_TUNNEL, 99, dst=str(p)) for p in pool]
        if "IkeV2" in protocols:
            _ikev2_server(end, gw_name, ul, _ikev2_pools(pool, shared), pushed, roots, limit, timers, auth)
        if "OpenVPN" in protocols:
            _openvpn_server(end, gw_name, ul, pool[0], pushed, limit, b.profile, shared, auth)
        if not inst.standby:
            ends += [P2sEnd(gw_name, inst.name, end.name, protocol, [str(p) for p in pool])
                     for protocol in protocols]
    return ends


def _ikev2_pools(pool: list[IPv4Network], shared: bool) -> list[str]:
    """charon's pools, in the order it uses them: the pool's prefixes. Beside OpenVPN,
    which gives out the first prefix from the top (its server holds the first address),
    that prefix comes last and charon gives it out from the bottom: the two meet only
    when the whole pool is taken."""
    if not shared:
        return [str(p) for p in pool]
    first = pool[0]
    return [*map(str, pool[1:]), f"{first.network_address + 2}-{first.broadcast_address - 1}"]


def _ikev2_server(end: Node, gw_name: str, ul: str, pools: list[str], pushed, roots, limit: int, timers: dict,
                  auth: dict):
    """charon with a connection per authentication type: certificates (pubkey), and
    EAP relayed to RADIUS (eap-radius; IKEv2 takes EAP only with RADIUS [RADIUSGW]).
    charon picks the second for a client that sends no AUTH payload (EAP)."""
    p2s = defaults()["p2s"]
    end.charon = dict(p2s=True, side="azure", connection="p2s", version=2, local_addr=ul,
                      local_id=gateway_fqdn(gw_name), pools=pools, local_ts=pushed,
                      policy=dict(ike=p2s["ike_proposals"], esp=p2s["esp_proposals"]),
                      dpd_timeout=timers_of.dpd_timeout(timers), ikesa_limit=limit,
                      auths=([dict(name=IKEV2_CONNECTIONS["Certificate"], auth="pubkey")] if auth["certificate"]
                             else []) + ([dict(name=IKEV2_CONNECTIONS["Radius"], auth="eap-radius")]
                                         if auth["radius"] else []),
                      radius=auth["radius"], radius_retransmit=auth["radius_retransmit"])
    # libipsec routes a CHILD SA only with a local address inside the local selector
    end.interfaces.append(Iface("lo", selector_anchors([IPv4Network(p) for p in pushed]), kind="lo"))
    end.pki += ([(f"x509ca/{r}.pem", f"ca-{r}.pem") for r in roots]
               + [(f"x509crl/{r}.crl", f"crl-{gw_name}-{r}.crl") for r in roots]
               + [("x509/gateway.pem", f"server-{gw_name}.pem"), ("private/gateway.key", f"server-{gw_name}.key")])


def _radius_retransmit(timeout: int) -> dict:
    """A RADIUS request is sent tries + 1 times, timeout seconds apart: Azure's RADIUS
    timeout in all. Whole seconds: radclient reads a fraction wrongly (-t 7.5 waits 14 s)."""
    tries = 2
    return dict(tries=tries, timeout=max(1, timeout // (tries + 1)))


def _openvpn_server(end: Node, gw_name: str, ul: str, pool: IPv4Network, pushed, limit: int, profile: str,
                    shared: bool, auth: dict):
    """openvpn on the pool's first prefix. Beside charon it gives addresses out itself,
    from the top, each one charon does not hold (openvpn-session.sh). RADIUS: user name
    and password checked by openvpn-radius.sh with FreeRADIUS's radclient, deferred so
    that a slow server holds up no other client."""
    p2s = defaults()["p2s"]
    first, last = pool.network_address + 2, pool.broadcast_address - 1
    pushed = taken_routes(pushed, "OpenVPN", "Linux")
    end.openvpn = dict(role="server", local=ul, port=p2s["openvpn_port"], cipher=p2s["openvpn_cipher"],
                       server_ip=str(pool.network_address + 1), netmask=str(pool.netmask),
                       pool_start=str(first), pool_end=str(last), shared=shared,
                       push=[(str(n.network_address), str(n.netmask)) for n in map(IPv4Network, pushed)],
                       max_clients=limit, keepalive=p2s["openvpn_keepalive"][profile],
                       certificate=auth["certificate"], radius=auth["radius"],
                       radius_retransmit=auth["radius_retransmit"],
                       nas_identifier=p2s["radius"]["nas_identifier"])
    end.pki += [("ca.pem", f"bundle-{gw_name}.pem"), ("crl.pem", f"crl-{gw_name}.pem"),
                ("server.pem", f"server-{gw_name}.pem"), ("server.key", f"server-{gw_name}.key")]


def _client(b, name: str, public_ip: IPv4Address) -> P2sClient:
    c = b.t.clients[name]
    p2s = defaults()["p2s"]
    node = b.add(Node(name, "p2s-client"))
    b.attach_public(node, public_ip)
    gw_ip = p2s_public_ip(b, c.virtual_network_gateway)
    identities = c.identities(name)
    node.interfaces.append(Iface("lo", kind="lo"))
    inet = str(IPv4Network(f"{public_ip}/24", strict=False).network_address + 1)
    node.routes.append(Route("0.0.0.0/0", via=inet))
    fqdn = gateway_fqdn(c.virtual_network_gateway)
    server_ca = f"ca-{SERVER_ROOT}.pem"
    # the gateway offers every route; Windows' IKEv2 client asks only for the VNet's
    pushed = pushed_routes(b.t, c.virtual_network_gateway, c.os if c.protocol == "IkeV2" else "Linux")
    pushed = taken_routes(pushed, c.protocol, c.os)
    # RADIUS: the user's name and password instead of a certificate
    eap = dict(username=c.username, password=c.password.get_secret_value()) if c.uses_radius else None
    if c.protocol == "IkeV2":
        node.charon = dict(p2s=True, side="client", connection=name, version=2, local_addr=str(public_ip),
                           remote_ts=pushed if c.os == "Windows" else ["0.0.0.0/0"],
                           remote_addr=gw_ip, remote_id=fqdn, identities=identities, eap=eap,
                           policy=dict(ike=p2s["client_ike_proposals"], esp=p2s["client_esp_proposals"]),
                           dpd_timeout=timers_of.dpd_timeout(b.timers))
        node.pki = [(f"x509ca/{SERVER_ROOT}.pem", server_ca)]
        if eap is None:
            node.pki += ([("private/client.key", f"client-{name}.key")]
                         + [(f"x509/{i}.pem", f"cert-{i}.pem") for i in identities])
    else:
        node.openvpn = dict(role="client", remote=gw_ip, port=p2s["openvpn_port"], cipher=p2s["openvpn_cipher"],
                            server_name=fqdn, credentials=eap, **p2s["openvpn_client"][b.profile])
        node.pki = [("ca.pem", server_ca)]
        if eap is None:
            node.pki += [("client.key", f"client-{name}.key"), ("client.pem", f"cert-{identities[0]}.pem")]
    return P2sClient(name, c.virtual_network_gateway, c.protocol, identities, gw_ip, pushed)


def _client_addresses(t) -> dict[str, IPv4Address]:
    """Public IPs for the clients (the model checked there are enough): each at a place
    its name gives, or the next free one, so that a client keeps its address when others
    come and go (a running lab's change leaves the other laptops alone)."""
    free = set(free_client_addresses(t))
    # every place of the range, taken or not: a site added moves only the client it lands on
    places = [a for a in IPv4Network(defaults()["p2s"]["client_public"]).hosts() if int(a) & 0xFF > 1]
    out = {}
    for name in sorted(t.clients):
        i = zlib.crc32(name.encode()) % len(places)
        while places[i] not in free:
            i = (i + 1) % len(places)
        free.discard(places[i])
        out[name] = places[i]
    return out
