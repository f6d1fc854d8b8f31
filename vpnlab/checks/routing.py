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

from vpnlab.checks import effective_routes
from vpnlab.gateway import live
from vpnlab.model import names
from vpnlab.plan.parts import Plan


# ------------------------------------------------------------------ intended
def endpoints(plan: Plan, topology) -> dict[str, str]:
    """Subnets where workloads live -> the router that delivers them: every VNet
    subnet with VMs, every site's LAN."""
    out = {}
    for vnet_name, vnet in topology.virtual_networks.items():
        for name, sub in vnet.subnets.items():
            if topology.subnet_vms(vnet_name, name):
                out[str(sub.address_prefix)] = names.vnet_router(vnet_name)
    for site in topology.local_network_gateways:
        for prefix in topology.site_lan(site):
            out[str(prefix)] = site
    return out


def places(topology) -> dict[str, tuple[str, str] | str]:
    """Endpoint prefix -> (VNet, subnet), or the site."""
    out: dict = {str(sub.address_prefix): (v, name) for v, vnet in topology.virtual_networks.items()
                 for name, sub in vnet.subnets.items()}
    return out | {str(p): site for site in topology.local_network_gateways for p in topology.site_lan(site)}


def behind_route_tables(topology) -> set[str]:
    """Subnets with a route table: their traffic follows it (policy routing in the lab),
    so both intended and observed paths are walked hop by hop."""
    return {str(sub.address_prefix) for vnet in topology.virtual_networks.values()
            for sub in vnet.subnets.values() if sub.route_table}


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
    """pair "src -> dst" -> {reaches, paths}. A subnet with a route table, either way:
    where Azure's effective routes deliver it both ways (vpnlab.checks.effective_routes),
    over one path. VNet <-> connected site (a spoke through its hub's gateway): must
    reach, over as many disjoint paths as the design has. VNet <-> VNet: directly
    peered (both directions allow access), or joined by their gateways; peering is not
    transitive. Site <-> site: where each device learns the other's LAN over BGP
    (_learns); else must not."""
    ends = endpoints(plan, topology)
    g = intended_graph(plan, topology)
    gateways_only = intended_graph(plan)      # tunnels, without the peerings
    conns = {c.local_network_gateway: c for c in topology.connections.values() if c.local_network_gateway}
    lngs = topology.local_network_gateways
    vnet_of = {names.vnet_router(v): v for v in topology.virtual_networks}
    walked, where = behind_route_tables(topology), places(topology)
    out = {}
    for src, a in ends.items():
        for dst, b in ends.items():
            if a == b:
                continue
            sites = [x for x in (a, b) if x in lngs]
            if walked & {src, dst}:
                reaches = _azure_reaches(topology, where, src, dst) and _azure_reaches(topology, where, dst, src)
                paths = int(reaches)
            elif len(sites) == 2:
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


def _azure_reaches(topology, where: dict, src: str, dst: str) -> bool:
    target = where[dst]
    address = IPv4Network(dst).network_address + 1
    return effective_routes.reaches(topology, where[src], address, target if isinstance(target, str) else None)


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
    walked = behind_route_tables(topology)
    wiring = Wiring(plan)
    out = {}
    for dst, owner in ends.items():
        g = forwarding_graph(plan, fibs, up, IPv4Network(dst).network_address + 1, wiring)
        for src, router in ends.items():
            if router == owner:
                continue
            if walked & {src, dst}:
                ways = [_walk(rt, wiring, up, ends, a, b) for a, b in ((src, dst), (dst, src))]
                reaches = all(end.startswith("deliver:") for end, _ in ways)
                out[f"{src} -> {dst}"] = {"reaches": reaches, "paths": int(reaches),
                                          "ends": [end for end, _ in ways], "via": [via for _, via in ways]}
                continue
            reached = nx.descendants(g, router) if router in g else set()
            terminals = sorted(n for n in reached if g.out_degree(n) == 0)
            target = f"deliver:{owner}"
            reaches = terminals == [target]
            paths = nx.node_connectivity(g, router, owner) if reaches else 0
            out[f"{src} -> {dst}"] = {"reaches": reaches, "paths": paths, "ends": terminals}
    return out


def _walk(rt, wiring: Wiring, tunnels_up: set[str], ends: dict, src: str, dst: str) -> tuple[str, list[str]]:
    """Hop by hop, the kernel's decision at each node for a packet from a workload of
    src to dst's router (`ip route get ... iif`: its rules and tables, policy routing
    included), through appliances and tunnels that are up, the lab's peering drops
    applied. Returns deliver:<router> or drop:<why>, and the nodes on the way."""
    node, iif = ends[src], wiring.gateway_if(src)
    source, address, owner = wiring.workload_address(src), str(IPv4Network(dst).network_address + 1), ends[dst]
    via: list[str] = []
    seen = set()
    while (node, iif) not in seen:
        seen.add((node, iif))
        via.append(node)
        if wiring.peering_drop(node, iif, source):
            return f"drop:peering drop at {node}:{iif}", via
        r = live.route_get(rt, node, address, source, iif)
        if r is None or r.get("type") in ("unreachable", "blackhole", "prohibit"):
            return f"drop:no route at {node}", via
        if r.get("type") == "local":
            return (f"deliver:{node}" if node == owner else f"drop:{address} is {node}'s"), via
        nxt = wiring.next_hop(node, r["dev"], r.get("gateway"), tunnels_up)
        if isinstance(nxt, str):
            return nxt, via
        node, iif = nxt
    return f"drop:loop at {node}", via


class Wiring:
    """Which node is behind a router's interface: built once from the plan, used for
    every destination."""

    def __init__(self, plan: Plan):
        self.peer_of = {(link.a, link.a_if): link.b for link in plan.links}
        self.peer_of |= {(link.b, link.b_if): link.a for link in plan.links}
        self.tunnel_of_end = {t.onprem_end: t for t in plan.tunnels} | {t.azure_end: t for t in plan.tunnels}
        self.iface_of_ip = {a.split("/")[0]: (n.name, i.master or i.name) for n in plan.nodes.values()
                            for i in n.interfaces for a in i.addresses}
        self.owner_of_ip = {ip: node for ip, (node, _) in self.iface_of_ip.items()}
        self.link_of = {(link.a, link.a_if): (link.b, link.b_if) for link in plan.links}
        self.link_of |= {(link.b, link.b_if): (link.a, link.a_if) for link in plan.links}
        # a tunnel end's inner veth ("in") -> the router's interface on the other side
        self.inner_of_end = {end: self.link_of[(end, "in")] for end in self.tunnel_of_end
                             if (end, "in") in self.link_of}
        self.nodes = plan.nodes

    def gateway_if(self, prefix: str) -> str:
        """The router's interface holding a subnet's (or LAN's) first address."""
        return self.iface_of_ip[str(IPv4Network(prefix).network_address + 1)][1]

    def workload_address(self, prefix: str) -> str:
        """A VM's or host's address in the prefix (not the router's)."""
        net = IPv4Network(prefix)
        return next(ip for ip in sorted(self.iface_of_ip, key=IPv4Address)
                    if IPv4Address(ip) in net and IPv4Address(ip) != net.network_address + 1)

    def peering_drop(self, node: str, iif: str, source: str) -> bool:
        """The lab's nftables drops on a peering link (allow_virtual_network_access,
        allow_forwarded_traffic), as the plan configured them."""
        nft = self.nodes[node].nft or {}
        return any(d["iif"] == iif and any(IPv4Address(source) in IPv4Network(p) for p in d["sources"])
                   for d in nft.get("peering_drops", []))

    def next_hop(self, node: str, dev: str, gateway: str | None, tunnels_up: set[str]):
        """(next node, its incoming interface) for a packet leaving node by dev, or drop:<why>."""
        peer = self.link_of.get((node, dev))
        if peer is not None and peer[0] in self.tunnel_of_end:     # the next hop is beyond it
            t = self.tunnel_of_end[peer[0]]
            if t.name not in tunnels_up:
                return f"drop:{t.name} down"
            other_end = t.azure_end if peer[0] == t.onprem_end else t.onprem_end
            return self.inner_of_end.get(other_end, f"drop:{t.name} has no far end")
        if gateway:
            return self.iface_of_ip.get(gateway, f"drop:{gateway} is no lab node's")
        return peer or f"drop:on-link on {node}:{dev}"

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
