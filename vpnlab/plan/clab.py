"""containerlab topologies of a lab: `<lab>.clab.yml` beside one folder per node with its
rendered configs (containerlab's lab-example layout), for `--runtime containerlab` and
`vpnlab export`.

Every node is a `linux` node of the node image started as `vpnlab-node start`: it waits
for its links, runs its setup.sh and starts its own daemons, so nothing outside the
container sets it up (which clabernetes requires). Links are veth pairs between nodes:
the internet is a node with its own bridge, so no bridge lands in the host's namespace.
No management network (`network-mode: none`): the lab's traffic has no path out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import networkx as nx
import yaml

from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.names import process_tag
from vpnlab.model.yamlsrc import SourceError, shown
from vpnlab.plan import render
from vpnlab.plan.parts import (
    HASH_SEED,
    INTERNET,
    TABLE_INTO_TUNNEL,
    Node,
    Plan,
)
from vpnlab.plan.render import STARTING_GUARD

CONTAINERLAB_VERSION = "0.79.0"        # the version the emitted files are checked against
FORMATS = ("clab", "clabernetes")
IN_CONTAINER = PurePosixPath("/vpnlab")  # a node's folder inside its container (exports)
LINK_MTU = 1500                        # containerlab's default veth MTU is 9500
VNI_BASE = 10000
VXLAN_PORT = 4789
# --split-hosts: what a link between hosts carries. A 1,400-byte packet in the tunnel (the
# MTU Azure advises) leaves a tunnel end as ESP-in-UDP of at most 1,476 bytes (IP 20 +
# UDP 8 + ESP 8 + IV 16 + padding 6 + trailer 2 + ICV 16, AES-CBC; GCM needs less), which
# fits the lab's 1,500-byte links. VXLAN then adds 50 bytes (Ethernet 14 + IP 20 + UDP 8 +
# VXLAN 8) on the hosts' own network.
MTU_BUDGET = {"tunnel_mtu": 1400, "esp_in_udp_max": 1476, "lab_link_mtu": LINK_MTU,
              "vxlan_overhead": 50, "host_network_mtu_min": LINK_MTU + 50}


@dataclass
class Layout:
    """Where a node's folder is inside its container, and how it gets there."""
    node_dir: Callable[[str], PurePosixPath]   # inside the container (what configs name)
    bind_folder: bool          # clab: the folder itself (logs and sockets show on the host);
                               # clabernetes: file by file (it turns files into ConfigMaps)
    run_on_host: bool          # the node's run/ as its /run: the host reaches charon's VICI


def export_layout(fmt: str) -> Layout:
    return Layout(lambda node: IN_CONTAINER / node, bind_folder=fmt == "clab",
                  run_on_host=fmt == "clab")


def unsupported(plan: Plan) -> str | None:
    """Why a plan cannot be written as containerlab files, or None."""
    if plan.p2s_ends or plan.clients:
        return ("point-to-site (vpn_client_configuration, clients) is not in the containerlab "
                "files yet: use --runtime netns or docker")
    if any(i.made_in for n in plan.nodes.values() for i in n.interfaces):
        return ("the kernel data plane: a gateway instance's tunnel interfaces are made in the "
                "instance and moved into their tunnel ends, which a node's own setup.sh cannot "
                "do: use --runtime netns or docker, or --dataplane userspace")
    return None


# ------------------------------------------------------------------ files of a node
def setup_files(plan: Plan, node_dir: Callable[[str], PurePosixPath]) -> dict[str, dict[str, str]]:
    """setup.sh (links, addresses, routes, firewall), the links to wait for, and a
    standby marker, per node."""
    env = render._env()
    out = {}
    for node in plan.ordered_nodes():
        sysctls = {k: v for k, v in node.sysctls().items() if k != HASH_SEED}
        text = env.get_template("node-setup.sh.j2").render(
            node=node, dir=str(node_dir(node.name)), sysctls=sysctls, shaping=node.shaping())
        # the flow hash seed exists from kernel 6.11 on: set where there is one
        seed = f"[ ! -e /proc/sys/{HASH_SEED.replace('.', '/')} ] || sysctl -qw {HASH_SEED}={node.sysctls()[HASH_SEED]}\n"
        start = env.get_template("start-daemons.sh.j2").render(
            node=node, dir=str(node_dir(node.name)), order=defaults()["daemons"],
            table_into_tunnel=TABLE_INTO_TUNNEL)
        files = {"setup.sh": text + seed, "start-daemons.sh": start,
                 **({"starting-guard.nft": STARTING_GUARD} if node.runs_charon else {}),
                 "interfaces": "".join(f"{i.name}\n" for i in node.interfaces if i.kind == "veth")}
        if node.standby:
            files["standby"] = "an active-standby gateway's idle instance: no daemons until it takes over\n"
        out[node.name] = files
    return out


# ------------------------------------------------------------------ topology
def _node(node: Node, lab: str, image: str, layout: Layout, files: list[str]) -> dict:
    inside = layout.node_dir(node.name)
    if layout.bind_folder:
        binds = [f"{node.name}:{inside}"]
    else:
        binds = [f"{node.name}/{f}:{inside}/{f}" for f in sorted(files)]
    if layout.run_on_host:
        binds.append(f"{node.name}/run:/run")
    key, value = process_tag(lab).split("=", 1)
    return {
        "kind": "linux", "image": image, "cmd": "start", "network-mode": "none",
        "binds": binds,
        "env": {"VPNLAB_NODE": node.name, "VPNLAB_NODE_DIR": str(inside),
                "VPNLAB_TABLE_INTO_TUNNEL": TABLE_INTO_TUNNEL, key: value},
        # what the node needs, as with the docker runtime: the capabilities and the TUN
        # device (libipsec). containerlab runs nodes privileged, which setup.sh relies on
        # for a writable /proc/sys (per-interface proxy ARP).
        "cap-add": list(defaults()["containers"]["capabilities"]), "devices": ["/dev/net/tun"],
        "labels": {"io.vpnlab.lab": lab, "io.vpnlab.node": node.name, "io.vpnlab.role": node.role},
    }


def _veth(link) -> dict:
    return {"type": "veth", "mtu": LINK_MTU,
            "endpoints": [{"node": link.a, "interface": link.a_if},
                          {"node": link.b, "interface": link.b_if}]}


def topology(plan: Plan, lab: str, image: str, layout: Layout,
             files: dict[str, dict[str, str]], nodes: set[str] | None = None) -> dict:
    """The containerlab topology of the lab (or of the nodes given, for one host)."""
    keep = nodes if nodes is not None else set(plan.nodes)
    return {"name": lab, "topology": {
        "nodes": {n.name: _node(n, lab, image, layout, list(files[n.name]))
                  for n in plan.ordered_nodes() if n.name in keep},
        "links": [_veth(link) for link in plan.links if link.a in keep and link.b in keep]}}


# ------------------------------------------------------------------ several hosts
def host_groups(plan: Plan, hosts: int) -> list[set[str]]:
    """Nodes per host. What belongs together stays together: a VNet with its gateway
    instances and their tunnel ends, a site with its device, tunnel ends and hosts. Only
    links to the internet (the emulated public network) cross hosts. Groups go to the
    least loaded host, largest first; the internet and its Internet host to the first."""
    internet = {INTERNET, names.INTERNET_HOST}
    g = nx.Graph()
    g.add_nodes_from(n for n in plan.nodes if n not in internet)
    g.add_edges_from((link.a, link.b) for link in plan.links if not internet & {link.a, link.b})
    groups = sorted(nx.connected_components(g), key=lambda c: (-len(c), min(c)))
    placed: list[set[str]] = [set() for _ in range(hosts)]
    placed[0].update(internet & set(plan.nodes))
    for group in groups:
        min(placed, key=len).update(group)
    return placed


def split(plan: Plan, lab: str, image: str, layout: Layout, files: dict[str, dict[str, str]],
          host_addresses: list[str]) -> tuple[list[dict], dict]:
    """One topology per host; a link between hosts becomes a VXLAN link on each side.
    VNIs are allocated once here, in the plan's link order, so both halves agree."""
    groups = host_groups(plan, len(host_addresses))
    if not all(groups):
        raise SourceError(f"--split-hosts {len(host_addresses)}: this lab splits over at most "
                          f"{sum(1 for g in groups if g)} hosts (a VNet or a site stays whole on one host)")
    where = {node: k for k, group in enumerate(groups) for node in group}
    tops = [topology(plan, f"{lab}-h{k}", image, layout, files, group) for k, group in enumerate(groups)]
    crossing = []
    for link in plan.links:
        ha, hb = where[link.a], where[link.b]
        if ha == hb:
            continue
        vni = VNI_BASE + len(crossing)
        for host, node, ifname, remote in ((ha, link.a, link.a_if, hb), (hb, link.b, link.b_if, ha)):
            tops[host]["topology"]["links"].append({
                "type": "vxlan", "endpoint": {"node": node, "interface": ifname},
                "remote": host_addresses[remote], "vni": vni, "dst-port": VXLAN_PORT, "mtu": LINK_MTU})
        crossing.append({"vni": vni, "a": f"{link.a}:{link.a_if}", "a_host": ha,
                         "b": f"{link.b}:{link.b_if}", "b_host": hb})
    plan_out = {"hosts": [{"host": k, "address": host_addresses[k], "nodes": sorted(group)}
                          for k, group in enumerate(groups)],
                "vxlan_links": crossing, "mtu_budget": MTU_BUDGET}
    return tops, plan_out


# ------------------------------------------------------------------ writing
HEADER = """# {what}: generated by vpnlab from {source}; containerlab {version} schema.
# Each node folder holds its rendered configs; nodes set themselves up (vpnlab-node start).
"""


def dump(top: dict, path: Path, what: str, source: str, extra: str = ""):
    source = shown(source).replace("\n", " ")       # a comment line stays one line
    path.write_text(HEADER.format(what=what, source=source, version=CONTAINERLAB_VERSION) + extra
                    + yaml.safe_dump(top, sort_keys=False, default_flow_style=False))


def node_files(plan: Plan, layout: Layout) -> dict[str, dict[str, str]]:
    """Every node's rendered configs and setup files, by node."""
    configs = render.render_with(plan, layout.node_dir)
    setup = setup_files(plan, layout.node_dir)
    return {n: {**configs[n], **setup[n]} for n in configs}


def write_folders(files: dict[str, dict[str, str]], out: Path, layout: Layout):
    render.write(files, out)
    if layout.run_on_host:
        for node in files:
            (out / node / "run").mkdir(exist_ok=True)


def export(plan: Plan, lab: str, out: Path, fmt: str, image: str, source: str,
           host_addresses: list[str] | None = None) -> list[Path]:
    """Write the lab's containerlab files under out: one topology, or with host
    addresses one per host (out/host<k>/) and split.json."""
    layout = export_layout(fmt)
    files = node_files(plan, layout)
    out.mkdir(parents=True, exist_ok=True)
    if not host_addresses:
        write_folders(files, out, layout)
        path = out / f"{lab}.clab.yml"
        dump(topology(plan, lab, image, layout, files), path, f"lab {lab}", source)
        return [path]
    tops, summary = split(plan, lab, image, layout, files, host_addresses)
    budget = ("# Links between hosts are VXLAN (VNIs in ../split.json): the hosts' network must carry\n"
              f"# {MTU_BUDGET['host_network_mtu_min']}-byte packets ({LINK_MTU} + 50 of VXLAN) for the"
              f" tunnel's {MTU_BUDGET['tunnel_mtu']}-byte MTU to hold.\n")
    paths = []
    for k, top in enumerate(tops):
        d = out / f"host{k}"
        d.mkdir(exist_ok=True)
        write_folders({n: files[n] for n in top["topology"]["nodes"]}, d, layout)
        path = d / f"{top['name']}.clab.yml"
        dump(top, path, f"lab {lab}, host {k} of {len(tops)}", source, budget)
        paths.append(path)
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    return paths
