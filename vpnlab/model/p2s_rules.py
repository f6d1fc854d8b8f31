"""Azure's point-to-site rules [6]: validation of vpn_client_configuration and clients,
and how many clients the address pool holds. Yields (field path, message) like
the rest of lab.topology's validation."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from vpnlab.model.defaults import defaults

# Refused with the reason: what Azure offers that the lab cannot stand in for.
UNEMULATED_AUTH = {
    "AAD": "Microsoft Entra ID authentication needs Microsoft's identity platform and the Azure "
           "VPN Client; open tools cannot emulate it. Use Certificate or Radius"}
# SSTP gateways are designs the lab takes (their pool split, their limits); SSTP clients
# it cannot run: sstpc and the SSTP servers that exist hand the tunnel to pppd, which
# needs the kernel's PPP driver, and the kernels the lab runs on here are built without it.
SSTP_CLIENTS = ("SSTP clients are not emulated: an SSTP client and server hand the tunnel to "
                "pppd, which needs the kernel's PPP driver (CONFIG_PPP), missing on the lab's "
                "machines; use IkeV2 or OpenVPN (the gateway may still offer SSTP)")
IKEV2_OPENVPN = ("IkeV2", "OpenVPN")


def splits_pool(cfg) -> bool:
    """SSTP beside IKEv2 or OpenVPN: Azure splits the pool between them [6 POOL]."""
    return "SSTP" in cfg.vpn_client_protocols and any(p in cfg.vpn_client_protocols for p in IKEV2_OPENVPN)


def ikev2_openvpn_pool(cfg) -> list[IPv4Network]:
    """The part of the pool IKEv2 and OpenVPN clients get: all of it, or with SSTP the
    upper half of each prefix (Azure splits it equally [6 POOL]; which half goes to
    which protocol is UNCONFIRMED)."""
    if not splits_pool(cfg):
        return list(cfg.address_pool)
    return [list(p.subnets(1))[1] for p in cfg.address_pool if p.prefixlen < 32]


def sstp_pool(cfg) -> list[IPv4Network]:
    if "SSTP" not in cfg.vpn_client_protocols:
        return []
    if not splits_pool(cfg):
        return list(cfg.address_pool)
    return [list(p.subnets(1))[0] for p in cfg.address_pool if p.prefixlen < 32]


def pool_addresses(cfg) -> int:
    """Clients' addresses in the pool, IKEv2 and OpenVPN together (their half, with
    SSTP). A prefix gives all but its network and broadcast addresses; with OpenVPN, its
    server holds the first prefix's first address."""
    hosts = sum(max(p.num_addresses - 2, 0) for p in ikev2_openvpn_pool(cfg))
    return hosts - (1 if "OpenVPN" in cfg.vpn_client_protocols else 0)


# RADIUS secrets and passwords as the lab's tools take them (radclient refuses a secret
# of one character; RFC 2865 bounds a password at 128 octets; the configs hold them
# unquoted): Azure's own rules for them are UNCONFIRMED
RADIUS_TEXT = {"secret": (2, 128), "password": (1, 128)}
RADIUS_TEXT_FORBIDDEN = ' "\\#{}'


def radius_text_error(value: str, kind: str) -> str | None:
    shortest, longest = RADIUS_TEXT[kind]
    if not shortest <= len(value) <= longest or any(ch in RADIUS_TEXT_FORBIDDEN or not 32 < ord(ch) < 127
                                                   for ch in value):
        return (f"a RADIUS {kind} here is {shortest}-{longest} printable ASCII characters except space, "
                "'\"', '\\', '#', '{' and '}' (value not shown)")
    return None


def _radius_text_errors(t):
    for name, gw in t.virtual_network_gateways.items():
        cfg = gw.vpn_client_configuration
        if cfg is None:
            continue
        loc = ("virtual_network_gateways", name, "vpn_client_configuration")
        found = [(loc + ("radius_server_secret",), cfg.radius_server_secret)] + \
            [(loc + ("radius_servers", i, "secret"), r.secret) for i, r in enumerate(cfg.radius_servers)]
        for where, secret in found:
            if secret is not None and (why := radius_text_error(secret.get_secret_value(), "secret")):
                yield where, why
    for host, h in t.radius_hosts.items():
        for user, password in h.users.items():
            if why := radius_text_error(password.get_secret_value(), "password"):
                yield ("radius_hosts", host, "users", user), why
    for name, c in t.clients.items():
        if c.password is not None and (why := radius_text_error(c.password.get_secret_value(), "password")):
            yield ("clients", name, "password"), why


def p2s_errors(t):
    yield from radius_host_errors(t)
    yield from _radius_text_errors(t)
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
        cfg = gw.vpn_client_configuration
        pool = ", ".join(map(str, cfg.address_pool))
        split = (f" (split with SSTP: IKEv2 and OpenVPN get {', '.join(map(str, ikev2_openvpn_pool(cfg)))})"
                 if splits_pool(cfg) else "")
        yield ("clients", c_name, "count"), (
            f"gateway {name}'s IKEv2 clients need {wanted} addresses, but its address_pool ({pool}){split} "
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
    basic = defaults()["skus"][gw.sku]["p2s_connections"] == 0
    for i, proto in enumerate(cfg.vpn_client_protocols):
        if cfg.vpn_client_protocols.index(proto) != i:
            yield loc + ("vpn_client_protocols", i), f"{proto} is listed twice"
        elif basic and proto in IKEV2_OPENVPN:
            yield loc + ("vpn_client_protocols", i), (f"SKU {gw.sku} offers SSTP only for point-to-site, "
                                                      f"not {proto}; use VpnGw1 or larger")
    for i, auth in enumerate(cfg.vpn_auth_types):
        if auth in UNEMULATED_AUTH:
            yield loc + ("vpn_auth_types", i), UNEMULATED_AUTH[auth]
        elif cfg.vpn_auth_types.index(auth) != i:
            yield loc + ("vpn_auth_types", i), f"{auth} is listed twice"
    yield from _radius_errors(t, name, gw, loc)
    if "Certificate" in cfg.vpn_auth_types and not cfg.root_certificates:
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


def _radius_errors(t, name: str, gw, loc: tuple):
    """RADIUS [RADIUSGW]: not on Basic; one server (address and secret) or a list; each
    at the address of a VM or on-prem host the lab runs FreeRADIUS on (radius_hosts),
    which the gateway reaches: in its VNet (or a spoke using it) or at a site it has a
    site-to-site connection to (Azure reaches on-prem RADIUS through S2S only)."""
    cfg = gw.vpn_client_configuration
    single = (cfg.radius_server_address, cfg.radius_server_secret)
    if "Radius" not in cfg.vpn_auth_types:
        for field in ("radius_server_address", "radius_server_secret", "radius_servers"):
            if getattr(cfg, field):
                yield loc + (field,), "RADIUS servers are given, but vpn_auth_types does not list Radius"
        return
    if defaults()["skus"][gw.sku]["p2s_connections"] == 0:
        yield loc + ("vpn_auth_types",), f"RADIUS authentication is not available on SKU {gw.sku}; use VpnGw1 or larger"
    if cfg.radius_servers and any(x is not None for x in single):
        yield loc + ("radius_servers",), "give radius_server_address and radius_server_secret, or radius_servers, not both"
        return
    if (single[0] is None) != (single[1] is None):
        missing = "radius_server_secret" if single[1] is None else "radius_server_address"
        yield loc + (missing,), "radius_server_address and radius_server_secret go together"
        return
    if not cfg.radius():
        yield loc + ("radius_server_address",), ("Radius authentication needs a RADIUS server: "
                                                 "radius_server_address and radius_server_secret, or radius_servers")
        return
    hosts = radius_host_addresses(t)
    known = ", ".join(f"{h} {a}" for h, (_, _, a) in sorted(hosts.items())) or "(none: add radius_hosts)"
    for i, server in enumerate(cfg.radius()):
        sloc = loc + (("radius_servers", i, "address") if cfg.radius_servers else ("radius_server_address",))
        host = next((h for h, (_, _, a) in hosts.items() if a == server.address), None)
        if host is None:
            yield sloc, f"no RADIUS server of the lab at {server.address}; radius_hosts run at: {known}"
            continue
        kind, where, _ = hosts[host]
        if kind == "vnet" and not any(server.address in p for p in t.gateway_prefixes(name)):
            yield sloc, (f"{host} ({server.address}) is in virtual network {where}, which gateway {name} "
                         "does not reach (its own VNet or a spoke using it)")
        if kind == "site" and not any(c.virtual_network_gateway == name and c.local_network_gateway == where
                                      for c in t.connections.values()):
            yield sloc, (f"{host} ({server.address}) is on-prem at {where}, which gateway {name} has no "
                         "site-to-site connection to: Azure reaches on-prem RADIUS servers through S2S only")


def radius_host_addresses(t) -> dict:
    """radius_hosts that name a VM or a site host: host -> (kind, VNet or site, address)."""
    out = {}
    for host in t.radius_hosts:
        place = t.host_place(host)
        if place is not None:
            out[host] = place
    return out


def radius_host_errors(t):
    for host in t.radius_hosts:
        if t.host_place(host) is None:
            sites = [h for s in t.local_network_gateways for h in t.site_hosts(s)]
            vms = [v for vn, vnet in t.virtual_networks.items() for sub in vnet.subnets
                   for v in t.subnet_vms(vn, sub)]
            yield ("radius_hosts", host), (f"'{host}' is neither a VM nor an on-prem host; known: "
                                           f"{', '.join(sorted(vms + sites)) or '(none)'}")


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


def _client_auth_errors(c, cfg, loc: tuple):
    """A client gives a user name and password (RADIUS) or a certificate: what its
    gateway takes."""
    if (c.username is None) != (c.password is None):
        yield loc + ("password" if c.password is None else "username",), "username and password go together"
    elif c.uses_radius and "Radius" not in cfg.vpn_auth_types:
        yield loc + ("username",), (f"gateway '{c.virtual_network_gateway}' does not take RADIUS "
                                    f"authentication (vpn_auth_types: {', '.join(cfg.vpn_auth_types)})")
    elif c.uses_radius and c.count > 1:
        yield loc + ("count",), "a crowd (count > 1) authenticates with certificates, not a user name"
    elif not c.uses_radius and "Certificate" not in cfg.vpn_auth_types:
        yield loc + ("username",), (f"gateway '{c.virtual_network_gateway}' takes no certificates "
                                    f"(vpn_auth_types: {', '.join(cfg.vpn_auth_types)}): give username and password")


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
        if c.protocol == "SSTP":
            yield loc + ("protocol",), SSTP_CLIENTS
        elif c.protocol not in cfg.vpn_client_protocols:
            yield loc + ("protocol",), (f"gateway '{c.virtual_network_gateway}' offers "
                                        f"{', '.join(cfg.vpn_client_protocols)}, not {c.protocol}")
        if c.count > 1 and c.protocol != "IkeV2":
            yield loc + ("count",), "crowds (count > 1) are IkeV2 clients: one charon, many identities"
        yield from _client_auth_errors(c, cfg, loc)
        for ident in c.identities(name):
            if ident in seen:
                yield loc + ("certificate",), f"certificate '{ident}' is already issued to client '{seen[ident]}'"
            seen[ident] = name
