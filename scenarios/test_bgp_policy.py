"""What the gateway advertises and accepts over BGP, and transit [4.5, 4.6], on
topologies/dual-site-transit.yaml: site-a and site-b peer with both instances (BGP from
the GatewaySubnet), site-c routes statically. Every check reads the routers' own BGP
tables and FIBs (`vtysh ... json`)."""
from __future__ import annotations

import contextlib

from vpnlab.gateway import control, live
from vpnlab.model.defaults import defaults

LAB_TOPOLOGY = "../topologies/dual-site-transit.yaml"
VNET, AZURE = "10.70.0.0/16", ("10.70.255.4", "10.70.255.5")     # IN_0, IN_1 BGP addresses
SITE = {"site-a": (65041, "10.80.255.254", "10.80.1.0/24"), "site-b": (65042, "10.81.255.254", "10.81.1.0/24")}
STATIC_SITE = "10.82.1.0/24"
INSTANCES = ("hub-gw-in0", "hub-gw-in1")


def routes(lab, node: str) -> dict[str, list[dict]]:
    """prefix -> BGP paths of a router."""
    return live.vtysh_json(lab.backend, node, "show bgp ipv4 unicast json").get("routes", {})


def as_paths(lab, node: str) -> dict[str, list[str]]:
    """prefix -> the AS paths of its valid paths, best first."""
    out = {}
    for prefix, paths in routes(lab, node).items():
        valid = [p for p in paths if p.get("valid")]
        valid.sort(key=lambda p: not p.get("bestpath"))
        out[prefix] = [p.get("path", "") for p in valid]
    return out


@contextlib.contextmanager
def originated(lab, site: str, prefixes: list[str], extra: list[str] = (), undo: list[str] = ()):
    """The site's device originates prefixes (without needing them in its RIB) for the
    duration; extra config lines inside `router bgp`, undone by `undo` afterwards."""
    asn = SITE[site][0]
    lines = [f"router bgp {asn}", "no bgp network import-check", *extra, "address-family ipv4 unicast",
             *[f"network {p}" for p in prefixes]]
    control.vtysh_config(lab.backend, site, lines)
    try:
        yield
    finally:
        control.vtysh_config(lab.backend, site, [f"router bgp {asn}", *undo, "address-family ipv4 unicast",
                                            *[f"no network {p}" for p in prefixes], "exit-address-family",
                                            "bgp network import-check"])


def test_transit_between_bgp_sites_and_static_prefixes(lab):
    """Each BGP site learns the other's prefix through Azure, the static site's address
    space (65515 alone) and the VNet, over both instances, and its hosts reach the
    other site's hosts. site-b's LAN is in BGP only: site-a learns it as 65515 65042.
    site-a's LAN is also in its local network gateway's address space, which Azure
    announces as its own: site-b learns it as 65515 alone."""
    for site, other, path in (("site-a", "site-b", "65515 65042"), ("site-b", "site-a", "65515")):
        other_lan = SITE[other][2]
        lab.eventually(lambda: as_paths(lab, site),
                       {VNET: ["65515", "65515"], other_lan: [path] * 2,
                        STATIC_SITE: ["65515", "65515"]},
                       "routes_withdrawn", f"{site} to learn the VNet, {other} and site-c through both instances")
        # ECMP: both instances' tunnels carry the other site's prefix
        assert live.fib_prefixes(lab.backend, site)[other_lan] == 2
    assert live.ping(lab.backend, "site-a-host", "10.81.1.10", count=3)
    assert live.ping(lab.backend, "site-b-host", "10.80.1.10", count=3)


def test_address_space_is_static_beside_bgp(lab):
    """With BGP on, a local network gateway's address space still becomes static routes
    on the gateway, "in addition to the routes learned via BGP" [4.2]. Each instance
    routes site-a's LAN statically and has site-a's BGP path beside its own (Azure's
    learned routes: origin Network and EBgp).
    With both sites' BGP sessions shut, the VNet keeps site-a's LAN (static) and loses
    site-b's (announced over BGP only)."""
    lan_a, lan_b = SITE["site-a"][2], SITE["site-b"][2]
    for node in INSTANCES:
        entries = live.vtysh_json(lab.backend, node, f"show ip route {lan_a} json")[lan_a]
        assert [e["protocol"] for e in entries if e.get("selected")] == ["static"], entries
        assert as_paths(lab, node)[lan_a] == ["", "65041"]
    received = lambda node: {a: p.get("pfxRcd") for a, p in live.bgp_peers(lab.backend, node).items()}
    before = {node: received(node) for node in INSTANCES}
    shut = {site: [f"router bgp {asn}", *[f"neighbor {a} shutdown" for a in AZURE]]
            for site, (asn, _, _) in SITE.items()}
    try:
        for site, lines in shut.items():
            control.vtysh_config(lab.backend, site, lines)
        lab.eventually(lambda: live.fib_prefixes(lab.backend, "hub-sdn"), {lan_a: 2, lan_b: None},
                       "session_down", "the VNet to keep site-a's static LAN and lose site-b's")
        assert live.bgp_peers(lab.backend, "hub-gw-in0")[SITE["site-a"][1]]["state"] != "Established"
    finally:
        for site, lines in shut.items():
            control.vtysh_config(lab.backend, site, [lines[0], *[f"no {line}" for line in lines[1:]]])
    for node in INSTANCES:
        lab.eventually(lambda: received(node), before[node], "session_down",
                       f"{node} to have the sites' sessions and prefixes back")
    lab.eventually(lambda: live.fib_prefixes(lab.backend, "hub-sdn"), {lan_b: 2},
                   "routes_withdrawn", "the VNet to learn site-b's LAN again")


def test_no_transit_without_bgp(lab):
    """The static site's device has static routes to the VNet only: it reaches the VM
    but not the BGP sites, although Azure advertises its prefix to them."""
    fib = live.fib_prefixes(lab.backend, "site-c")
    assert VNET in fib and SITE["site-a"][2] not in fib and SITE["site-b"][2] not in fib, fib
    assert live.ping(lab.backend, "site-c-host", "10.70.1.4", count=3)
    assert not live.ping(lab.backend, "site-c-host", "10.80.1.10", count=2, timeout=1)
    assert not live.ping(lab.backend, "site-a-host", "10.82.1.10", count=2, timeout=1)


def test_default_and_vnet_overlapping_routes_are_not_readvertised(lab):
    """site-a sends a default route, a supernet and a subnet of the VNet, the VNet
    prefix itself and one ordinary prefix. Azure refuses the VNet prefix and the route
    inside it ("if your virtual network uses the address space 10.0.0.0/16, you can
    advertise 10.0.0.0/8, but not 10.0.0.0/16 or 10.0.0.0/24" [4.5]) and accepts the
    rest; it re-advertises to site-b only the ordinary one."""
    sent = ["0.0.0.0/0", "10.0.0.0/8", "10.70.1.0/24", VNET, "10.83.0.0/24"]
    with originated(lab, "site-a", sent):
        accepted = {p: ["65041"] for p in ("0.0.0.0/0", "10.0.0.0/8", "10.83.0.0/24")}
        for node in INSTANCES:
            lab.eventually(lambda: as_paths(lab, node), accepted | {VNET: [""], "10.70.1.0/24": None},
                           "routes_withdrawn", f"{node} to accept site-a's routes but the VNet's own")
        lab.eventually(lambda: as_paths(lab, "site-b"), {"10.83.0.0/24": ["65515 65041"] * 2},
                       "routes_withdrawn", "site-b to learn site-a's ordinary prefix")
        seen = as_paths(lab, "site-b")
        assert {p: seen.get(p) for p in ("0.0.0.0/0", "10.0.0.0/8", "10.70.1.0/24")} == \
            {"0.0.0.0/0": None, "10.0.0.0/8": None, "10.70.1.0/24": None}, seen
        assert seen[VNET] == ["65515", "65515"], "the VNet prefix came back from site-a"


def test_as_path_prepending_is_honoured(lab):
    """site-a and site-b both advertise 10.84.0.0/24; site-b prepends its AS twice.
    Both instances prefer site-a's shorter path, and so does the VNet."""
    asn_b = SITE["site-b"][0]
    prepend = ["route-map PREPEND permit 10", f"set as-path prepend {asn_b} {asn_b}", "exit"]
    control.vtysh_config(lab.backend, "site-b", prepend)
    neighbors = [f"neighbor {a} route-map PREPEND out" for a in AZURE]
    try:
        with originated(lab, "site-a", ["10.84.0.0/24"]), \
                originated(lab, "site-b", ["10.84.0.0/24"],
                           extra=["address-family ipv4 unicast", *neighbors, "exit-address-family"],
                           undo=["address-family ipv4 unicast", *[f"no {n}" for n in neighbors],
                                 "exit-address-family"]):
            for node in INSTANCES:
                lab.eventually(lambda: as_paths(lab, node).get("10.84.0.0/24"),
                               ["65041", f"{asn_b} {asn_b} {asn_b}"], "routes_withdrawn",
                               f"{node} to prefer site-a's path to 10.84.0.0/24")
            nexthops = routes(lab, "hub-gw-in0")["10.84.0.0/24"]
            best = next(p for p in nexthops if p.get("bestpath"))
            assert best["peerId"] == SITE["site-a"][1], best
    finally:
        control.vtysh_config(lab.backend, "site-b", ["no route-map PREPEND"])


def test_azure_opens_bgp_from_the_gateway_subnet(lab):
    """With BGP addresses from the GatewaySubnet, Azure opens the session itself: a
    passive device still gets its sessions back after a reset."""
    lines = [f"router bgp {SITE['site-a'][0]}", *[f"neighbor {a} passive" for a in AZURE]]
    control.vtysh_config(lab.backend, "site-a", lines)
    try:
        before = {a: s["connectionsEstablished"] for a, s in live.bgp_peers(lab.backend, "site-a").items()}
        lab.backend.vtysh("site-a", "clear bgp ipv4 unicast *")
        lab.eventually(lambda: live.bgp_peers(lab.backend, "site-a"),
                       {a: {"state": "Established", "connectionsEstablished": before[a] + 1} for a in AZURE},
                       "session_down", "Azure to open both sessions to the passive site-a")
    finally:
        control.vtysh_config(lab.backend, "site-a", [lines[0], *[f"no neighbor {a} passive" for a in AZURE]])


def test_session_over_4000_prefixes_is_dropped_and_comes_back(lab):
    """site-a sends 4,001 prefixes: each instance drops its session (Cease, maximum
    prefixes). Once site-a is back under the limit the session comes back."""
    limit = defaults()["azure"]["bgp_max_prefixes"]
    _, peer, _ = SITE["site-a"]
    have = live.bgp_peers(lab.backend, "hub-gw-in0")[peer]["pfxRcd"]
    extra = [f"10.90.{i // 256}.{i % 256}/32" for i in range(limit + 1 - have)]
    with originated(lab, "site-a", extra):
        for node in INSTANCES:
            lab.eventually(lambda: live.bgp_peers(lab.backend, node)[peer]["state"] != "Established", True,
                           "session_down", f"{node} to drop site-a past {limit} prefixes")
        dropped = live.bgp_peers(lab.backend, "hub-gw-in0")[peer]
        assert dropped["connectionsDropped"] >= 1 and "PfxCt" in dropped.get("peerState", "") + \
            dropped["state"], dropped
        control.vtysh_config(lab.backend, "site-a", [f"router bgp {SITE['site-a'][0]}", "address-family ipv4 unicast",
                                                *[f"no network {p}" for p in extra[-2:]]])
        del extra[-2:]     # originated() withdraws what is left
        restart = 60 * defaults()["azure"]["bgp_max_prefixes_restart_minutes"]
        for node in INSTANCES:
            lab.eventually(lambda: live.bgp_peers(lab.backend, node)[peer],
                           {"state": "Established", "pfxRcd": limit - 1}, restart + 30,
                           f"{node} to take site-a back under the limit")
    for node in INSTANCES:
        lab.eventually(lambda: live.bgp_peers(lab.backend, node)[peer], {"pfxRcd": have}, "routes_withdrawn",
                       f"{node} to see site-a's injected prefixes withdrawn")
