"""What a change does to the running lab: the saved plan and the new one compared node
by node, into steps that touch only what differs (an address, a route, FRR's config by
its differences, one charon's connections), and the tunnels whose IKE SA must start
again. Each step may run twice (an interrupted apply is completed by the next).

What a step cannot do yet is said, not guessed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from vpnlab.errors import RuntimeFailure
from vpnlab.model.defaults import defaults
from vpnlab.plan.parts import Node, Plan, Tunnel
from vpnlab.runtime import daemons

CHARON_FILES = ("swanctl.conf", "strongswan.conf")
RADIUS_FILES = ("radiusd.conf", "users")      # FreeRADIUS reads them at start
# end hosts: one link each, nothing runs through them; made again rather than renumbered
LEAF_ROLES = ("vm", "host", "p2s-client")
# what openvpn reads only at start (its CRL, crl.pem, it reads again for each new session)
OPENVPN_AT_START = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")


@dataclass
class Step:
    node: str
    kind: str                 # addresses | bridge | routes | rules | sysctls | nft | frr | charon | openvpn |
    #                           radius | shaping
    what: str
    run: Callable = field(repr=False, compare=False, default=None)
    before_new_nodes: bool = False     # a bridge that new nodes' links join

    def to_json(self) -> dict:
        return {"node": self.node, "kind": self.kind, "what": self.what}


@dataclass
class Pki:
    """The nodes' certificates, keys and CRLs (vpnlab.plan.pki): what their folders hold
    now, what the new plan gives them, and how one node's are installed."""
    installed: dict[str, dict[str, bytes]] = field(default_factory=dict)
    wanted: dict[str, dict[str, bytes]] = field(default_factory=dict)
    install: Callable = field(default=lambda new, old: None, repr=False)    # (Node, old Node | None)

    def changed(self, node: str) -> set[str]:
        """The node's files that differ (added, changed or gone)."""
        now, then = self.wanted.get(node, {}), self.installed.get(node, {})
        return {rel for rel in now.keys() | then.keys() if now.get(rel) != then.get(rel)}


@dataclass
class Work:
    steps: list[Step]
    resets: list[Tunnel]          # tunnels whose IKE SA starts again after the steps
    cannot: list[str]             # what the lab's apply cannot do to this plan
    agent: bool                   # the agent reads the plan: start it again


def work(rt, old: Plan, new: Plan, old_files: dict, new_files: dict, budget: float = 30,
         keep_ike: frozenset = frozenset(), pki: Pki | None = None) -> Work:
    """Removed nodes go first (their daemons ended, their links with them), then new
    nodes and links are made and wired, then every running node is brought to its new
    plan, then the new nodes' daemons start in the one start order. keep_ike:
    connections whose running IKE SA the change leaves alone (their new configuration
    applies from the next one)."""
    cannot, pki = [], pki or Pki()
    # a node whose kind changed is made again: removed, then added with its links
    replaced = {n for n in set(old.nodes) & set(new.nodes) if _kind(old.nodes[n]) != _kind(new.nodes[n])}
    kept, links_added, links_gone, running_ends = _links(old, new, replaced)
    # so is an end host whose one link is renumbered (a VM moved to another subnet)
    leaves = {n for x in running_ends for n in (x.a, x.b) if new.nodes[n].role in LEAF_ROLES}
    if leaves:
        replaced |= leaves
        kept, links_added, links_gone, running_ends = _links(old, new, replaced)
    added = [new.nodes[n] for n in new.nodes if n not in old.nodes or n in replaced]
    removed = [n for n in old.nodes if n not in new.nodes or n in replaced]
    if (added or removed) and rt.cannot_change_nodes():
        cannot.append(rt.cannot_change_nodes())
    steps = [Step(n, "node", "removed (its daemons ended, its links with it)",
                  lambda n=n: _checked_list(rt.remove_node(n), n)) for n in removed]
    steps += [Step(n.name, "pki", "certificates, keys and CRLs installed", lambda n=n: pki.install(n, None))
              for n in added if n.pki]
    ends: dict[str, list] = {}
    for x in links_added:
        for node, ifname in ((x.a, x.a_if), (x.b, x.b_if)):
            if node in kept:
                ends.setdefault(node, []).append(new.nodes[node].iface(ifname))
    running = [s for name in sorted(kept) for s in node_steps(
        rt, old.nodes[name], new.nodes[name], old_files.get(name, {}), new_files.get(name, {}), cannot,
        {i.name for i in ends.get(name, [])},
        {x.a_if if x.a == name else x.b_if for x in links_gone if name in (x.a, x.b)}, pki)]
    steps += [s for s in running if s.before_new_nodes]
    # a link between running nodes renumbered (a site's new public IP names its port on
    # the internet): deleted here, made again with the new links
    steps += [Step(x.a, "link", f"{x.a_if} (to {x.b}:{x.b_if}) deleted: renumbered",
                   lambda x=x: rt.remove_link(x.a, x.a_if)) for x in running_ends if x in links_gone]
    if added or links_added:
        steps.append(Step(", ".join(n.name for n in added) or "links", "nodes",
                          f"{len(added)} nodes and {len(links_added)} links made and wired",
                          lambda: _add(rt, added, links_added, [(new.nodes[n], i) for n, i in ends.items()])))
    rewired = sorted({n for x in running_ends for n in (x.a, x.b)} - {n for n in kept if new.nodes[n].standby})
    steps += [Step(n, "routes", "kernel routes set again (a deleted link took those through it)",
                   lambda n=n: rt.restore_routes(new.nodes[n])) for n in rewired]
    steps += [s for s in running if not s.before_new_nodes]
    if added:
        steps.append(Step(", ".join(n.name for n in added), "daemons", "the new nodes' daemons started",
                          lambda: start_new(rt, new, added, budget)))
    changed = {s.node for s in steps if s.kind == "charon"}
    # a device that catches up with Azure's side (after --azure-only) starts IKE again,
    # as a device does when its key or proposals are typed in
    resets = [t for t in new.tunnels if (t.azure_end in changed or t.onprem_end in changed)
              and t.expected_up and not new.nodes[t.azure_end].standby
              and (t.connection not in keep_ike or _selectors(old, t) != _selectors(new, t)
                   or t.azure_end not in changed)]
    agent = bool(steps) or [dataclasses.asdict(t) for t in old.tunnels] != [dataclasses.asdict(t) for t in new.tunnels]
    return Work(steps, resets, cannot, agent)


def _links(old: Plan, new: Plan, replaced: set[str]) -> tuple:
    """The nodes kept running, the links to make and to delete, and those of them
    between two running nodes (renumbered)."""
    kept = (set(old.nodes) & set(new.nodes)) - replaced
    old_links = {_link(y) for y in old.links if y.a in kept and y.b in kept}
    new_links = {_link(y) for y in new.links if y.a in kept and y.b in kept}
    links_added = [x for x in new.links if _link(x) not in old_links]
    links_gone = [x for x in old.links if _link(x) not in new_links]
    running_ends = [x for x in links_added + links_gone if x.a in kept and x.b in kept]
    return kept, links_added, links_gone, running_ends


def _add(rt, added: list[Node], links: list, ends: list):
    """New nodes; what an interrupted apply made of them is removed first, so that the
    step can run again."""
    for node in added:
        _checked_list(rt.remove_node(node.name), node.name)
    rt.add_nodes(added, links, ends)


def start_new(rt, plan: Plan, added: list[Node], budget: float):
    """The new nodes' daemons in the one start order: FRR, RADIUS servers, Azure's
    tunnel ends, the devices' tunnel ends, point-to-site servers and clients."""
    names = {n.name for n in added}
    daemons.start_routers(rt, [n.name for n in plan.ordered_nodes()
                               if n.name in names and n.frr is not None and not n.standby], budget)
    radius = [n.name for n in plan.ordered_nodes() if n.name in names and n.radius is not None]
    if radius:
        daemons.start_radius(rt, radius, budget)
    for side in ("az", "op"):
        ends = [e for t in plan.tunnels if (e := t.azure_end if side == "az" else t.onprem_end) in names
                and not plan.nodes[e].standby]
        daemons.start_tunnel_ends(rt, ends, budget)
    daemons.start_p2s(rt, plan, budget, lambda _: None, only=names)


def node_steps(rt, old: Node, new: Node, old_files: dict, new_files: dict, cannot: list,
               linked: set = frozenset(), unlinked: set = frozenset(), pki: Pki | None = None) -> list[Step]:
    """A running node's steps (its kind is the same: work() makes a node whose is not
    again). linked, unlinked: the node's interfaces that new links make, or gone links
    take."""
    n = new.name
    steps = _interface_steps(rt, old, new, cannot, linked, unlinked)
    if not new.standby:          # a standby instance's routes are set when it takes over
        old_routes = {(r.dst, r.table): r for r in old.routes}
        new_routes = {(r.dst, r.table): r for r in new.routes}
        for key, r in old_routes.items():
            if key not in new_routes:
                steps.append(Step(n, "routes", f"route {r.dst} removed", lambda r=r: rt.remove_route(n, r)))
        for key, r in new_routes.items():
            if old_routes.get(key) != r:
                steps.append(Step(n, "routes", f"route {r.dst} set", lambda r=r: rt.set_route(n, r)))
    for r in old.rules:
        if r not in new.rules:
            steps.append(Step(n, "rules", f"rule {r.priority} removed", lambda r=r: rt.set_rule(n, r, False)))
    for r in new.rules:
        if r not in old.rules:
            steps.append(Step(n, "rules", f"rule {r.priority} added", lambda r=r: rt.set_rule(n, r, True)))
    if old.sysctls() != new.sysctls():
        changed = {k: v for k, v in new.sysctls().items() if old.sysctls().get(k) != v}
        steps.append(Step(n, "sysctls", ", ".join(sorted(changed)), lambda: rt.set_sysctls(n, changed)))
    if old_files.get("nftables.conf") != new_files.get("nftables.conf"):
        text = new_files.get("nftables.conf", "flush ruleset\n")
        steps.append(Step(n, "nft", "nftables ruleset loaded again (IKE flows tracked without NAT forgotten)",
                          lambda: (rt.nft(n, text), rt.forget_untranslated_ike(n))))
    running = not new.standby    # a standby instance's daemons start with its files at takeover
    certificates = (pki or Pki()).changed(n)
    if certificates:
        steps.append(Step(n, "pki", f"{', '.join(sorted(certificates))} installed",
                          lambda: pki.install(new, old)))
    if running and old_files.get("frr.conf") != new_files.get("frr.conf"):
        steps.append(Step(n, "frr", "FRR brought to frr.conf by its differences (frr-reload.py)",
                          lambda: _checked(rt.frr_reload(n), n, "frr-reload.py")))
    if running and new.charon and (certificates or any(old_files.get(f) != new_files.get(f) for f in CHARON_FILES)):
        settings = old_files.get("strongswan.conf") != new_files.get("strongswan.conf")
        steps.append(Step(n, "charon", "charon loads its connections and secrets again"
                          + (" (and its settings)" if settings else "")
                          + (" (and its certificates and CRLs)" if certificates else ""),
                          lambda: _checked(rt.swanctl_load(n, settings, clear=bool(certificates)), n,
                                           "swanctl --load-all")))
    if running and new.openvpn and (certificates & set(OPENVPN_AT_START)
                                    or old_files.get("openvpn.conf") != new_files.get("openvpn.conf")):
        server = new.openvpn["role"] == "server"
        steps.append(Step(n, "openvpn", "openvpn started again (it reads its settings and roots at start; "
                          + ("its users reconnect)" if server else "the client reconnects, if it was connected)"),
                          lambda: _restart_openvpn(rt, n, server)))
    if running and any(old_files.get(f) != new_files.get(f) for f in RADIUS_FILES):
        steps.append(Step(n, "radius", "FreeRADIUS started again (it reads its clients and users at start)"
                          if new.radius else "FreeRADIUS stopped (the host is no RADIUS server now)",
                          lambda: _restart_radius(rt, n, new.radius is not None)))
    if old.shaping_mbps != new.shaping_mbps:
        steps.append(Step(n, "shaping", f"throughput cap {old.shaping_mbps} -> {new.shaping_mbps} Mbit/s",
                          lambda: [rt.tc(n, *argv) for argv in new.shaping()]))
    return steps


def _restart_openvpn(rt, node: str, server: bool):
    """A server always runs; a client only while it is connected."""
    if rt.daemon_pids(node, "openvpn") or server:
        rt.stop_daemon(node, "openvpn", graceful=True)
        daemons.start_openvpn(rt, [node], defaults()["waits"]["daemon_start"])


def _restart_radius(rt, node: str, serves: bool):
    rt.stop_daemon(node, daemons.RADIUS, graceful=True)
    if serves:
        daemons.start_radius(rt, [node], defaults()["waits"]["daemon_start"])


def _kind(node: Node) -> tuple:
    """What a node is, beyond its settings: a node whose kind changes is made again
    (active-standby <-> active-active; a point-to-site server whose pool or protocols
    change, a client whose protocol does)."""
    o = node.openvpn or {}
    p2s_server = node.role == "p2s-endpoint"
    # what openvpn serves, but what the lab changes in place (pushed routes: the session
    # hook reads them; its limit and keepalive: a restart)
    serves = {k: v for k, v in o.items() if k not in ("push", "max_clients", "keepalive")}
    return (node.role, node.standby, node.charon is None, o.get("role"),
            (node.charon or {}).get("pools") if p2s_server else None,
            serves if o.get("role") == "server" else None,
            [i.name for i in node.interfaces] if p2s_server else None)


def _interface_steps(rt, old: Node, new: Node, cannot: list, linked: set, unlinked: set) -> list[Step]:
    n, steps = new.name, []
    before = {i.name: i for i in old.interfaces if i.name not in unlinked}
    after = {i.name: i for i in new.interfaces if i.name not in linked}
    for name, i in before.items():
        if name not in after:
            if i.kind != "bridge":
                cannot.append(f"{n}: interface {name} removed")
                continue
            steps.append(Step(n, "bridge", f"{name} removed", lambda name=name: rt.remove_link(n, name)))
    for name, i in after.items():
        if name not in before:
            if i.kind != "bridge" or i.master:
                cannot.append(f"{n}: interface {name} added")
                continue
            steps.append(Step(n, "bridge", f"{name} added ({', '.join(i.addresses)})",
                              lambda i=i: rt.add_bridge(n, i), before_new_nodes=True))
            continue
        was = before[name]
        if dataclasses.replace(was, addresses=[], mac=None) != dataclasses.replace(i, addresses=[], mac=None):
            cannot.append(f"{n}: interface {name} changed")
            continue
        if was.mac != i.mac:          # an active-standby pair's shared MAC, or none
            steps.append(Step(n, "addresses", f"{name} MAC {i.mac or 'of its own'}",
                              lambda name=name, mac=i.mac: rt.set_mac(n, name, mac)))
        for cidr in was.addresses:
            if cidr not in i.addresses:
                steps.append(Step(n, "addresses", f"{name} {cidr} removed",
                                  lambda c=cidr, name=name: rt.set_address(n, name, c, False)))
        for cidr in i.addresses:
            if cidr not in was.addresses:
                steps.append(Step(n, "addresses", f"{name} {cidr} added",
                                  lambda c=cidr, name=name: rt.set_address(n, name, c, True)))
    return steps


def _selectors(plan: Plan, t: Tunnel) -> list:
    """A tunnel's traffic selectors: new ones need new CHILD SAs."""
    return [[(c["local_ts"], c["remote_ts"]) for c in plan.nodes[e].charon["children"]]
            for e in (t.azure_end, t.onprem_end) if e in plan.nodes and plan.nodes[e].charon]


def _checked(res, node: str, what: str):
    if res.returncode != 0:
        raise RuntimeFailure(f"{node}: {what} failed: {(res.stdout + res.stderr).strip()[-600:]}")


def _link(x) -> tuple:
    return (x.a, x.a_if, x.b, x.b_if)


def _checked_list(problems: list[str], node: str):
    if problems:
        raise RuntimeFailure(f"{node}: not removed: {'; '.join(problems)}")

