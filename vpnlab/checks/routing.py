"""Routing and topology checks with networkx.

Intended: from the topology and the plan, which subnet must reach which (and which must
not), and over how many node-disjoint paths. Observed: from live state, a forwarding
graph per destination (every router's installed FIB next hops, tunnels only where their
SAs are up), walked from each source subnet. A pair reaches when every branch of the
walk delivers at the destination's router (ECMP: no branch may end in a drop).
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import networkx as nx

from vpnlab.gateway import live
from vpnlab.model import names
from vpnlab.plan.parts import Plan


# ------------------------------------------------------------------ intended
def endpoints(plan: Plan, topology) -> dict[str, str]:
    """Subnets where workloads live -> the router that delivers them: every VNet's
    subnets without a route table (a route table's paths are the table's to decide,
    checked by the scenarios that use one), every site's LAN."""
    out = {}
    for vnet_name, vnet in topology.virtual_networks.items():
        for name, sub in vnet.subnets.items():
            if sub.route_table is None and topology.subnet_vms(vnet_name, name):
                out[str(sub.address_prefix)] = names.vnet_router(vnet_name)
    for site in topology.local_network_gateways:
        for prefix in topology.site_lan(site):
            out[str(prefix)] = site
    return out


def intended_graph(plan: Plan, topology=None) -> nx.Graph:
    """Tunnels, each instance to its VNet's router, and (with a topology) each spoke's
    router to its hub's: the ways the design gives traffic between VNets and sites."""
    g = nx.Graph()
    for t in plan.tunnels:
        g.add_edge(t.device, f"tunnel:{t.name}")
        g.add_edge(f"tunnel:{t.name}", t.gateway_instance)
    for node in plan.nodes.values():
        if node.role == "gateway-instance":
            sdn = next(link.b for link in plan.links if link.a == node.name and link.a_if == "gws")
            g.add_edge(node.name, sdn)
    for vnet in (topology.virtual_networks if topology else ()):
        hub = topology.transit_hub(vnet)
        if hub:
            g.add_edge(names.vnet_router(vnet), names.vnet_router(hub))
    return g


def intended(plan: Plan, topology) -> dict[str, dict]:
    """pair "src -> dst" -> {reaches, paths}. VNet <-> connected site (a spoke through its
    hub's gateway): must reach, over as many disjoint paths as the design has. VNet <->
    VNet: directly peered (both directions allow access), or joined by their gateways;
    peering is not transitive. Site <-> site: where each device learns the other's LAN
    over BGP (_learns); else must not."""
    ends = endpoints(plan, topology)
    g = intended_graph(plan, topology)
    gateways_only = intended_graph(plan)      # tunnels, without the peerings
    conns = {c.local_network_gateway: c for c in topology.connections.values() if c.local_network_gateway}
    lngs = topology.local_network_gateways
    vnet_of = {names.vnet_router(v): v for v in topology.virtual_networks}
    out = {}
    for src, a in ends.items():
        for dst, b in ends.items():
            if a == b:
                continue
            sites = [x for x in (a, b) if x in lngs]
            if len(sites) == 2:
                reaches = _learns(topology, conns, a, b) and _learns(topology, conns, b, a)
                paths = 1 if reaches else 0
            elif not sites:
                reaches, paths = _vnets_reach(topology, gateways_only, vnet_of[a], vnet_of[b])
            else:
                vnet = vnet_of[a if b in sites else b]
                gateway = topology.gateway_of(vnet)
                reaches = all(s in conns and conns[s].virtual_network_gateway == gateway for s in sites) \
                    and a in g and b in g and nx.has_path(g, a, b)
                paths = nx.node_connectivity(g, a, b) if reaches else 0
            out[f"{src} -> {dst}"] = {"reaches": reaches, "paths": paths}
    return out


def _learns(topology, conns: dict, site: str, other: str) -> bool:
    """Whether site's device learns other's LAN through their gateway: over BGP, from
    other's address space (the gateway announces it as its own [4.5]) or from other's
    own announcement, which BGP loop prevention drops when the two ASNs are the same."""
    ca, cb = conns.get(site), conns.get(other)
    if not (ca and cb and ca.enable_bgp and ca.virtual_network_gateway == cb.virtual_network_gateway):
        return False
    lngs = topology.local_network_gateways
    static = all(any(p.subnet_of(s) for s in lngs[other].address_space) for p in topology.site_lan(other))
    return static or bool(cb.enable_bgp and lngs[site].bgp.asn != lngs[other].bgp.asn)


def _vnets_reach(topology, tunnels: nx.Graph, a: str, b: str) -> tuple[bool, int]:
    """Directly peered (both directions allow access), or joined by their gateways."""
    peered = topology.peered(a).get(b)
    if peered is not None:
        back = topology.peered(b)[a]
        ok = peered.allow_virtual_network_access and back.allow_virtual_network_access
        return ok, int(ok)
    ra, rb = names.vnet_router(a), names.vnet_router(b)
    if ra in tunnels and rb in tunnels and nx.has_path(tunnels, ra, rb):
        return True, nx.node_connectivity(tunnels, ra, rb)
    return False, 0


# ------------------------------------------------------------------ observed
class _Fib:
    """One router's installed routes: longest-prefix match to its next hops."""

    def __init__(self, routes: dict | None):
        self.down = routes is None          # its FRR does not answer: the router is lost
        self.routes = []
        routes = routes or {}
        for prefix, entries in routes.items():
            for e in entries:
                if not e.get("installed"):
                    continue
                hops = [(nh.get("interfaceName"), nh.get("ip"), bool(nh.get("directlyConnected")))
                        for nh in e.get("nexthops", []) if nh.get("fib")]
                self.routes.append((IPv4Network(prefix), e.get("protocol"), hops))
        self.routes.sort(key=lambda r: r[0].prefixlen, reverse=True)

    def lookup(self, address: IPv4Address):
        return next(((proto, hops) for net, proto, hops in self.routes if address in net), (None, []))


def observe(rt, plan: Plan, topology) -> dict:
    """pair "src -> dst" -> {reaches, paths, ends} from live FIBs and tunnel state."""
    routers = [n.name for n in plan.ordered_nodes() if n.frr is not None]

    def fib(router):
        try:
            return _Fib(live.vtysh_json(rt, router, "show ip route json"))
        except RuntimeError:
            return _Fib(None)
    fibs = dict(zip(routers, live.each(fib, routers)))
    up = {t["tunnel"] for t in live.tunnels(rt, plan)
          if t["state"] == "ESTABLISHED" and t["child_state"] == "INSTALLED"}
    ends = endpoints(plan, topology)
    wiring = Wiring(plan)
    out = {}
    for dst, owner in ends.items():
        g = forwarding_graph(plan, fibs, up, IPv4Network(dst).network_address + 1, wiring)
        for src, router in ends.items():
            if router == owner:
                continue
            reached = nx.descendants(g, router) if router in g else set()
            terminals = sorted(n for n in reached if g.out_degree(n) == 0)
            target = f"deliver:{owner}"
            reaches = terminals == [target]
            paths = nx.node_connectivity(g, router, owner) if reaches else 0
            out[f"{src} -> {dst}"] = {"reaches": reaches, "paths": paths, "ends": terminals}
    return out


class Wiring:
    """Which node is behind a router's interface: built once from the plan, used for
    every destination."""

    def __init__(self, plan: Plan):
        self.peer_of = {(link.a, link.a_if): link.b for link in plan.links}
        self.peer_of |= {(link.b, link.b_if): link.a for link in plan.links}
        self.tunnel_of_end = {t.onprem_end: t for t in plan.tunnels} | {t.azure_end: t for t in plan.tunnels}
        self.owner_of_ip = {a.split("/")[0]: n.name for n in plan.nodes.values()
                            for i in n.interfaces for a in i.addresses}

    def edges(self, router: str, ifname: str, via: str | None, routers: dict, tunnels_up: set[str]):
        """The edges a packet takes leaving router by ifname (towards via)."""
        peer = self.peer_of.get((router, ifname))
        if peer in self.tunnel_of_end:
            t = self.tunnel_of_end[peer]
            if t.name not in tunnels_up:
                return [(router, f"drop:{t.name} down")]
            other = t.gateway_instance if t.device == router else t.device
            return [(router, f"tunnel:{t.name}"), (f"tunnel:{t.name}", other)]
        if via and self.owner_of_ip.get(via) in routers:
            return [(router, self.owner_of_ip[via])]
        return [(router, peer if peer in routers else f"drop:{peer or ifname}")]


def forwarding_graph(plan: Plan, fibs: dict, tunnels_up: set[str], address: IPv4Address,
                     wiring: Wiring | None = None) -> nx.DiGraph:
    """Where packets to `address` go from every router: router -> tunnel -> router, or a
    terminal (deliver:<router>, drop:<why>)."""
    wiring = wiring or Wiring(plan)
    g = nx.DiGraph()
    for router, fib in fibs.items():
        if fib.down:
            g.add_edge(router, f"drop:{router} down")
            continue
        proto, hops = fib.lookup(address)
        if not hops:
            g.add_edge(router, "drop:no-route")
        for ifname, via, connected in hops:
            if proto in ("connected", "local") or (connected and not via and proto != "static"):
                g.add_edge(router, f"deliver:{router}")
            else:
                g.add_edges_from(wiring.edges(router, ifname, via, fibs, tunnels_up))
    return g


# ------------------------------------------------------------------ checks
def problems(want: dict, seen: dict) -> list[str]:
    """Where the observed matrix falls short of the intended one."""
    out = []
    for pair, w in want.items():
        s = seen.get(pair, {"reaches": False, "paths": 0, "ends": ["not observed"]})
        if w["reaches"] and not s["reaches"]:
            out.append(f"{pair}: must reach, ends at {', '.join(s['ends']) or 'nothing'}")
        elif not w["reaches"] and s["reaches"]:
            out.append(f"{pair}: must not reach, but does")
        elif w["reaches"] and s["paths"] < w["paths"]:
            out.append(f"{pair}: {s['paths']} disjoint path(s), the design has {w['paths']}")
    return out


def changes(before: dict, after: dict) -> list[str]:
    out = []
    for pair in sorted(set(before) | set(after)):
        b, a = before.get(pair, {}), after.get(pair, {})
        if b.get("reaches") != a.get("reaches"):
            out.append(f"{pair}: {'reaches' if b.get('reaches') else 'unreachable'} -> "
                       f"{'reaches' if a.get('reaches') else 'unreachable (' + ', '.join(a.get('ends', [])) + ')'}")
        elif b.get("paths") != a.get("paths"):
            out.append(f"{pair}: {b.get('paths')} -> {a.get('paths')} disjoint paths")
    return out
