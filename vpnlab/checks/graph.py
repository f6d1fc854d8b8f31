"""The design as a graph (networkx), from its plan: VNets and sites grouped, each node
with its addresses and ASN, links, tunnels and BGP sessions as distinct kinds of edge,
and (for a running lab) the live state of tunnels and sessions. Rendered as mermaid,
Graphviz dot, SVG or a self-contained HTML page.

The SVG's layout is the lab's own (columns by role, a band per VNet and per site)
rather than Graphviz's: it needs no binary beside the package, and the picture of an
Azure design has one natural shape."""
from __future__ import annotations

from ipaddress import IPv4Interface

import jinja2
import networkx as nx

from vpnlab.model import names
from vpnlab.plan.parts import Plan

SHOWN_ROLES = {"vnet-router", "gateway-instance", "device", "vm", "host", "p2s-client"}
COLUMN = {"vm": 0, "vnet-router": 1, "gateway-instance": 2, "device": 3, "p2s-client": 3, "host": 4}
ROLE_WORDS = {"vnet-router": "VNet router", "gateway-instance": "gateway instance", "device": "on-prem device",
              "vm": "VM", "host": "on-prem host", "p2s-client": "point-to-site client"}
STATE_COLOR = {True: "#1e8449", False: "#c0392b", None: "#555"}
BOX_W, BOX_H, COL_GAP, ROW_GAP, PAD = 190, 66, 70, 20, 26
WIDE_GAP = 230              # between the gateways and the sites: room for the tunnels' labels

_env = jinja2.Environment(loader=jinja2.PackageLoader("vpnlab.checks", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)


# ------------------------------------------------------------------ the graph
def _address(node, ifname: str) -> str | None:
    return next((i.addresses[0].split("/")[0] for i in node.interfaces if i.name == ifname and i.addresses), None)


def _facts(node, topology) -> list[str]:
    """What a network engineer wants beside a node's name."""
    asn = node.frr.asn if node.frr else None
    lines = [ROLE_WORDS[node.role] + (" (standby)" if node.standby else "")]
    if node.role == "vnet-router":
        vnet = node.name.removesuffix("-sdn")
        if vnet in topology.virtual_networks:
            lines.append(", ".join(str(p) for p in topology.virtual_networks[vnet].address_space))
    elif node.role in ("gateway-instance", "device"):
        bgp = _address(node, "gws") or _address(node, "lo")
        lines += [f"public {node.public_ip}" if node.public_ip else "",
                  " ".join(x for x in (f"BGP {bgp}" if bgp and asn else "", f"AS{asn}" if asn else "") if x)]
    elif node.role == "p2s-client":
        lines.append(str(node.public_ip or ""))
    else:
        lines.append(_address(node, "eth0") or "")
    return [x for x in lines if x]


def _groups(plan: Plan, topology) -> dict[str, str]:
    """node -> its group: "VNet <name>" or "site <name>"."""
    out = {}
    for v, vnet in topology.virtual_networks.items():
        out[names.vnet_router(v)] = f"VNet {v}"
        for subnet in vnet.subnets.values():
            out |= dict.fromkeys(subnet.vm_names(), f"VNet {v}")
    for g, gw in topology.virtual_network_gateways.items():
        out |= {n: f"VNet {gw.virtual_network}" for n in plan.nodes if n.startswith(f"{g}-in")}
    for s in topology.local_network_gateways:
        out |= dict.fromkeys([s, *topology.site_hosts(s)], f"site {s}")
    return {n: grp for n, grp in out.items() if n in plan.nodes}


def design_graph(plan: Plan, topology, status: dict | None = None) -> nx.MultiGraph:
    """Nodes with role, group and facts; edges of kind link, peering, tunnel, bgp or p2s,
    with a label and, given a running lab's status, whether they are up."""
    g = nx.MultiGraph()
    groups = _groups(plan, topology)
    for node in plan.ordered_nodes():
        if node.role in SHOWN_ROLES:
            g.add_node(node.name, role=node.role, group=groups.get(node.name, ""), facts=_facts(node, topology))
    peered = set()
    for link in plan.links:
        if link.a in g and link.b in g:
            peering = {g.nodes[link.a]["role"], g.nodes[link.b]["role"]} == {"vnet-router"}
            if peering and frozenset((link.a, link.b)) in peered:
                continue        # a peering's second link (a route table's next hop): one edge
            peered.add(frozenset((link.a, link.b)))
            ends = [plan.nodes[n].iface(i) for n, i in ((link.b, link.b_if), (link.a, link.a_if))]
            subnet = next((str(IPv4Interface(e.addresses[0]).network) for e in ends if e.addresses), "")
            g.add_edge(link.a, link.b, kind="peering" if peering else "link", label="peering" if peering else subnet,
                       up=None)
    tunnel_state = {t["tunnel"]: t["state"] for t in (status or {}).get("tunnels", [])}
    for t in plan.tunnels:
        if t.gateway_instance in g and t.device in g:
            state = tunnel_state.get(t.name)
            g.add_edge(t.gateway_instance, t.device, kind="tunnel", label=f"{t.connection} {state or ''}".strip(),
                       up=(state == "ESTABLISHED") if status else None)
    sessions = {(b["node"], b["peer_node"]): b["state"] for b in (status or {}).get("bgp", [])}
    seen = set()
    for s in plan.bgp:
        pair = tuple(sorted((s.node, s.peer_node)))
        if s.kind != "ebgp" or pair in seen or s.node not in g or s.peer_node not in g:
            continue
        seen.add(pair)
        back = next((b.peer for b in plan.bgp if b.node == s.peer_node and b.peer_node == s.node), "")
        up, label = None, f"eBGP {back} - {s.peer}"
        if status:
            states = {sessions.get((s.node, s.peer_node)), sessions.get((s.peer_node, s.node))}
            up = states == {"Established"}
            label += " Established" if up else " " + "/".join(sorted(str(x) for x in states))
        g.add_edge(s.node, s.peer_node, kind="bgp", label=label, up=up)
    for c in plan.clients:
        for e in plan.p2s_ends:
            if e.gateway == c.gateway and e.protocol == c.protocol and c.name in g and e.gateway_instance in g:
                g.add_edge(c.name, e.gateway_instance, kind="p2s", label=f"P2S {c.protocol}", up=None)
    return g


# ------------------------------------------------------------------ text formats
def _grouped_nodes(g: nx.MultiGraph) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, data in g.nodes(data=True):
        out.setdefault(data["group"], []).append(n)
    return out


def mermaid(g: nx.MultiGraph) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(g.nodes)}
    lines = ["graph LR"]
    for k, (group, members) in enumerate(_grouped_nodes(g).items()):
        indent = "    " if group else "  "
        if group:
            lines.append(f'  subgraph g{k}["{group}"]')
        for n in members:
            text = "<br/>".join([n, *(f"<small>{f}</small>" for f in g.nodes[n]["facts"])])
            lines.append(f'{indent}{ids[n]}["{text}"]')
        if group:
            lines.append("  end")
    for a, b, data in g.edges(data=True):
        arrow = {"tunnel": "===", "bgp": "-.-", "link": "---", "peering": "---", "p2s": "-.-"}[data["kind"]]
        label = f'|"{data["label"]}"|' if data["label"] else ""
        lines.append(f"  {ids[a]} {arrow}{label} {ids[b]}")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(g: nx.MultiGraph) -> str:
    """Graphviz source: a cluster per VNet and site, tunnels bold, BGP sessions dashed."""
    lines = ["graph vpnlab {", "  rankdir=LR; node [shape=box, style=rounded, fontname=Helvetica, fontsize=10];"]
    for k, (group, members) in enumerate(_grouped_nodes(g).items()):
        if group:
            lines.append(f"  subgraph cluster_{k} {{ label={_dot_quote(group)};")
        for n in members:
            lines.append(f"    {_dot_quote(n)} [label={_dot_quote(chr(10).join([n, *g.nodes[n]['facts']]))}];")
        if group:
            lines.append("  }")
    style = {"tunnel": "bold", "bgp": "dashed", "link": "solid", "peering": "solid", "p2s": "dotted"}
    for a, b, data in g.edges(data=True):
        lines.append(f"  {_dot_quote(a)} -- {_dot_quote(b)} [label={_dot_quote(data['label'])}, "
                     f"style={style[data['kind']]}, color={_dot_quote(STATE_COLOR[data['up']])}];")
    return "\n".join(lines) + "\n}\n"


# ------------------------------------------------------------------ SVG and HTML
def _x(column: int) -> int:
    return PAD + column * (BOX_W + COL_GAP) + (WIDE_GAP - COL_GAP if column >= 3 else 0)


def layout(g: nx.MultiGraph) -> dict:
    """Columns by role (VMs, VNet routers, gateway instances, devices and clients, hosts);
    a band of rows per VNet on the left and per site on the right, so that a group's box
    holds its members and no other."""
    bands: dict[str, dict[int, list[str]]] = {}
    for n, data in sorted(g.nodes(data=True), key=lambda x: (x[1]["group"] == "", x[1]["group"], x[0])):
        bands.setdefault(data["group"] or f"- {n}", {}).setdefault(COLUMN[data["role"]], []).append(n)
    left = [b for b, cols in bands.items() if min(cols) <= 2]
    right = [b for b in bands if b not in left]
    pos, boxes = {}, []
    for side in (left, right):
        y = PAD + 20
        for band in side:
            cols = bands[band]
            rows = max(len(v) for v in cols.values())
            for col, members in cols.items():
                for i, n in enumerate(members):
                    pos[n] = (_x(col), y + i * (BOX_H + ROW_GAP))
            if not band.startswith("- "):
                xs = [_x(c) for c in cols]
                boxes.append({"label": band, "x": min(xs) - 12, "y": y - 22, "w": max(xs) - min(xs) + BOX_W + 24,
                              "h": rows * (BOX_H + ROW_GAP) - ROW_GAP + 34})
            y += rows * (BOX_H + ROW_GAP) + 40
    width = max((x for x, _ in pos.values()), default=0) + BOX_W + PAD
    height = max((y for _, y in pos.values()), default=0) + BOX_H + PAD
    return {"pos": pos, "boxes": boxes, "width": width, "height": height}


def svg(g: nx.MultiGraph) -> str:
    geo = layout(g)
    pos = geo["pos"]
    nodes = [{"name": n, "x": pos[n][0], "y": pos[n][1], "facts": data["facts"], "role": data["role"]}
             for n, data in g.nodes(data=True)]
    edges = []
    parallel: dict[tuple, int] = {}
    for a, b, data in g.edges(data=True):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if xa > xb:
            (xa, ya), (xb, yb) = (xb, yb), (xa, ya)
        key = tuple(sorted((a, b)))
        bend = parallel.get(key, 0)
        parallel[key] = bend + 1
        if xa == xb:     # the same column (peered VNet routers): an arc out to the right
            x1, y1, x2, y2 = xa + BOX_W, ya + BOX_H / 2, xb + BOX_W, yb + BOX_H / 2
            mx, my = x1 + min(30 + abs(yb - ya) * 0.12, 60) + bend * 12, (y1 + y2) / 2
        else:
            x1, y1, x2, y2 = xa + BOX_W, ya + BOX_H / 2, xb, yb + BOX_H / 2
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2 + (bend * 16 if bend % 2 else -bend * 16)
        edges.append({**data, "path": f"M{x1:.0f},{y1:.0f} Q{mx:.0f},{my:.0f} {x2:.0f},{y2:.0f}",
                      "lx": mx, "ly": my - 3, "color": STATE_COLOR[data["up"]]})
    return _env.get_template("graph.svg.j2").render(width=geo["width"], height=geo["height"], boxes=geo["boxes"],
                                                    nodes=nodes, edges=edges, box_w=BOX_W, box_h=BOX_H)


def html(g: nx.MultiGraph, title: str) -> str:
    edges = sorted(({"a": a, "b": b, **d} for a, b, d in g.edges(data=True)), key=lambda e: (e["kind"], e["a"]))
    return _env.get_template("graph.html.j2").render(title=title, svg=svg(g), nodes=list(g.nodes(data=True)),
                                                     edges=edges)


FORMATS = {"mermaid": mermaid, "dot": dot, "svg": svg}
