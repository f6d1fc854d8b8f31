"""Azure's point-to-site rules [6]: validation of vpn_client_configuration and clients,
and how many clients the address pool holds. Yields (field path, message) like
the rest of lab.topology's validation."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from vpnlab.model.defaults import defaults

# Refused with the reason: what Azure offers that open tools cannot stand in for.
UNEMULATED_PROTOCOLS = {
    "SSTP": "SSTP is Microsoft's Windows-only protocol; no open SSTP server exists for the lab "
            "to run. Use IkeV2 or OpenVPN"}
UNEMULATED_AUTH = {
    "AAD": "Microsoft Entra ID authentication needs Microsoft's identity platform and the Azure "
           "VPN Client; open tools cannot emulate it. Use Certificate",
    "Radius": "RADIUS authentication is not emulated by the lab; use Certificate"}


def pool_addresses(cfg) -> int:
    """Clients' addresses in the pool, IKEv2 and OpenVPN together: Azure splits the pool
    only when SSTP is among the protocols [6 POOL], which the lab does not emulate. A
    prefix gives all but its network and broadcast addresses; with OpenVPN, its server
    holds the first prefix's first address."""
    hosts = sum(max(p.num_addresses - 2, 0) for p in cfg.address_pool)
    return hosts - (1 if "OpenVPN" in cfg.vpn_client_protocols else 0)


def p2s_errors(t):
    for name, gw in t.virtual_network_gateways.items():
        if gw.vpn_client_configuration is not None:
            yield from _gateway_errors(t, name, gw)
            yield from _crowd_errors(t, name, gw)
    yield from _client_errors(t)
    yield from _client_address_errors(t)


def _crowd_errors(t, name: str, gw):
    """The gateway's IKEv2 identities must fit the pool (OpenVPN clients, which come
    and go, are refused when it is full)."""
    capacity = pool_addresses(gw.vpn_client_configuration)
    clients = [(c_name, c) for c_name, c in t.clients.items()
               if c.virtual_network_gateway == name and c.protocol == "IkeV2"]
    wanted = sum(c.count for _, c in clients)
    if clients and wanted > capacity:
        c_name = max(clients, key=lambda item: item[1].count)[0]
        pool = ", ".join(map(str, gw.vpn_client_configuration.address_pool))
        yield ("clients", c_name, "count"), (
            f"gateway {name}'s IKEv2 clients need {wanted} addresses, but its address_pool ({pool}) "
            f"gives {capacity}: lower count or widen the pool")


def free_client_addresses(t) -> list[IPv4Address]:
    """The public IPs clients may take, in the order the plan gives them out: the lab's
    client range from the top down, less the sites' addresses and the internet's .1."""
    net = IPv4Network(defaults()["p2s"]["client_public"])
    taken = {lng.gateway_ip for lng in t.local_network_gateways.values()}
    return [a for a in reversed(list(net.hosts())) if a not in taken and int(a) & 0xFF > 1]


def _client_address_errors(t):
    """Each client node takes a public address of the lab's client range (a crowd one)."""
    free = len(free_client_addresses(t))
    net = defaults()["p2s"]["client_public"]
    if len(t.clients) > free:
        yield ("clients",), (f"{len(t.clients)} clients, but the lab's client range {net} has {free} "
                             "free addresses: use fewer clients, or one client with count (a crowd)")


def _gateway_errors(t, name: str, gw):
    cfg = gw.vpn_client_configuration
    p2s = defaults()["p2s"]
    loc = ("virtual_network_gateways", name, "vpn_client_configuration")
    if gw.vpn_type != "RouteBased":
        yield loc, "point-to-site needs a route-based gateway (vpn_type: RouteBased)"
    if defaults()["skus"][gw.sku]["p2s_connections"] == 0:
        yield loc, (f"SKU {gw.sku} has no IKEv2 or OpenVPN point-to-site (SSTP only, which the lab "
                    "cannot emulate); use VpnGw1 or larger")
    for i, proto in enumerate(cfg.vpn_client_protocols):
        if proto in UNEMULATED_PROTOCOLS:
            yield loc + ("vpn_client_protocols", i), UNEMULATED_PROTOCOLS[proto]
        elif cfg.vpn_client_protocols.index(proto) != i:
            yield loc + ("vpn_client_protocols", i), f"{proto} is listed twice"
    for i, auth in enumerate(cfg.vpn_auth_types):
        if auth in UNEMULATED_AUTH:
            yield loc + ("vpn_auth_types", i), UNEMULATED_AUTH[auth]
    if not cfg.root_certificates:
        yield loc + ("root_certificates",), "certificate authentication needs at least one root certificate"
    if len(cfg.root_certificates) > p2s["max_root_certificates"]:
        yield loc + ("root_certificates",), (f"{len(cfg.root_certificates)} root certificates; Azure "
                                             f"allows at most {p2s['max_root_certificates']}")
    roots = [r.name for r in cfg.root_certificates]
    for i, root in enumerate(roots):
        if roots.index(root) != i:
            yield loc + ("root_certificates", i, "name"), f"root certificate '{root}' is listed twice"
    yield from _pool_errors(t, name, gw, loc)
    identities = {i for c_name, c in t.clients.items() if c.virtual_network_gateway == name
                  for i in c.identities(c_name)}
    for i, r in enumerate(cfg.revoked_certificates):
        rloc = loc + ("revoked_certificates", i)
        if (r.thumbprint is None) == (r.certificate is None):
            yield rloc, "give exactly one of thumbprint (40 hex digits) or certificate (a client certificate's name)"
        elif r.certificate is not None and r.certificate not in identities:
            yield rloc + ("certificate",), (f"no client of this gateway has certificate '{r.certificate}'; "
                                            f"known: {', '.join(sorted(identities)) or '(none)'}")


def _pool_errors(t, name: str, gw, loc: tuple):
    cfg = gw.vpn_client_configuration
    p2s = defaults()["p2s"]
    mode = "active_active" if gw.active_active else "active_standby"
    min_len = p2s["pool_min_prefixlen"][mode]
    private = [IPv4Network(r) for r in p2s["private_ranges"]]
    internal = defaults()["internal"]
    reserved = [IPv4Network(internal["underlay"])]
    taken = [(f"virtual network {v}", p) for v, vnet in t.virtual_networks.items() for p in vnet.address_space]
    taken += [(f"local network gateway {s}", p) for s, lng in t.local_network_gateways.items()
              for p in lng.address_space]
    taken += [(f"gateway {g}'s address_pool", p) for g, other in sorted(t.virtual_network_gateways.items())
              if g < name and other.vpn_client_configuration
              for p in other.vpn_client_configuration.address_pool]
    for i, prefix in enumerate(cfg.address_pool):
        ploc = loc + ("address_pool", i)
        if not any(prefix.subnet_of(r) for r in private):
            yield ploc, f"{prefix} is not a private range; allowed: {', '.join(p2s['private_ranges'])}"
        if prefix.prefixlen > min_len:
            yield ploc, (f"{prefix} is too small: an {mode.replace('_', '-')} gateway needs /{min_len} "
                         "or larger")
        for what, other in taken + [(f"address_pool entry {j}", q) for j, q in enumerate(cfg.address_pool[:i])]:
            if prefix.overlaps(other):
                yield ploc, f"{prefix} overlaps {what} ({other}); the pool must not overlap"
        for r in reserved:
            if prefix.overlaps(r):
                yield ploc, f"{prefix} overlaps {r}, which the lab reserves for its own addressing"


def _client_errors(t):
    seen: dict[str, str] = {}
    for name, c in t.clients.items():
        loc = ("clients", name)
        gw = t.virtual_network_gateways.get(c.virtual_network_gateway)
        if gw is None:
            yield loc + ("virtual_network_gateway",), (
                f"unknown gateway '{c.virtual_network_gateway}'; known: "
                f"{', '.join(sorted(t.virtual_network_gateways)) or '(none defined)'}")
            continue
        cfg = gw.vpn_client_configuration
        if cfg is None:
            yield loc + ("virtual_network_gateway",), (
                f"gateway '{c.virtual_network_gateway}' has no vpn_client_configuration")
            continue
        if c.protocol not in cfg.vpn_client_protocols:
            yield loc + ("protocol",), (f"gateway '{c.virtual_network_gateway}' offers "
                                        f"{', '.join(cfg.vpn_client_protocols)}, not {c.protocol}")
        if c.count > 1 and c.protocol != "IkeV2":
            yield loc + ("count",), "crowds (count > 1) are IkeV2 clients: one charon, many identities"
        for ident in c.identities(name):
            if ident in seen:
                yield loc + ("certificate",), f"certificate '{ident}' is already issued to client '{seen[ident]}'"
            seen[ident] = name
