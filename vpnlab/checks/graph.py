"""The lab as a graph (networkx): intended topology annotated with live state."""
from __future__ import annotations

import networkx as nx

from vpnlab.plan.parts import Plan

SHOWN_ROLES = {"vnet-router", "gateway-instance", "device", "vm", "host"}


def lab_graph(plan: Plan, status: dict | None = None) -> nx.MultiGraph:
    g = nx.MultiGraph()
    for node in plan.ordered_nodes():
        if node.role in SHOWN_ROLES:
            g.add_node(node.name, role=node.role)
    for link in plan.links:
        if link.a in g and link.b in g:
            g.add_edge(link.a, link.b, kind="link", label="")
    tunnel_state = {t["tunnel"]: t["state"] for t in (status or {}).get("tunnels", [])}
    for t in plan.tunnels:
        g.add_edge(t.gateway_instance, t.device, kind="tunnel",
                   label=f"{t.name} {tunnel_state.get(t.name, '')}".strip(),
                   up=tunnel_state.get(t.name) == "ESTABLISHED")
    sessions = {(b["node"], b["peer_node"]): b["state"] for b in (status or {}).get("bgp", [])}
    seen = set()
    for s in plan.bgp:
        pair = tuple(sorted((s.node, s.peer_node)))
        if s.kind != "ebgp" or pair in seen:
            continue
        seen.add(pair)
        states = {sessions.get((s.node, s.peer_node)), sessions.get((s.peer_node, s.node))}
        state = "Established" if states == {"Established"} else "/".join(sorted(str(x) for x in states))
        g.add_edge(s.node, s.peer_node, kind="bgp", label=f"BGP {state}" if status else "BGP",
                   up=state == "Established")
    return g


def mermaid(g: nx.MultiGraph) -> str:
    ids = {n: f"n{i}" for i, n in enumerate(g.nodes)}
    lines = ["graph LR"]
    for n, data in g.nodes(data=True):
        lines.append(f'  {ids[n]}["{n}<br/><small>{data["role"]}</small>"]')
    for a, b, data in g.edges(data=True):
        arrow = {"tunnel": "===", "bgp": "-.-", "link": "---"}[data["kind"]]
        label = f'|"{data["label"]}"|' if data["label"] else ""
        lines.append(f"  {ids[a]} {arrow}{label} {ids[b]}")
    return "\n".join(lines) + "\n"


def png(g: nx.MultiGraph, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = {"vm": 0, "host": 4, "vnet-router": 1, "gateway-instance": 2, "device": 3}
    for _, data in g.nodes(data=True):
        data["layer"] = layers[data["role"]]
    pos = nx.multipartite_layout(g, subset_key="layer")
    fig, ax = plt.subplots(figsize=(12, 7))
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dbe9f6", node_size=2200)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=8)
    for kind, style in (("link", "solid"), ("tunnel", "solid"), ("bgp", "dashed")):
        edges = [(a, b) for a, b, d in g.edges(data=True) if d["kind"] == kind]
        colors = ["#2a7" if d.get("up", True) else "#c33"
                  for a, b, d in g.edges(data=True) if d["kind"] == kind]
        nx.draw_networkx_edges(g, pos, edgelist=edges, ax=ax, style=style, edge_color=colors,
                               width=2 if kind == "tunnel" else 1)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
