"""BGP route translation for NAT [7.2], as the gateway does it: the routes an instance
learns over a connection with IngressSnat rules are announced with the rules' external
prefixes. FRR cannot rewrite a prefix, so the agent does: the internal prefixes stay out
of the routing table (the NAT-IN route map, vpnlab.plan.nat) and their copies in the
neighbor's Adj-RIB-In are read every poll; each one inside a rule's internal mapping
becomes a static route through the connection's tunnel interface and a BGP network,
and goes when the peer withdraws it or the session ends; what FRR lost (a restart) is
applied again. A RouteDiagnosticLog event says which rule translated what.
"""
from __future__ import annotations

from ipaddress import IPv4Network

from vpnlab.gateway import live
from vpnlab.model.nat_rules import map_prefix


def wanted(received: list[str], mappings: list[list[str]]) -> dict[str, tuple[str, str]]:
    """Translated prefix -> (rule, learned prefix), for the learned prefixes inside a
    rule's internal prefix (mappings: the plan's [rule, internal, external, type])."""
    rules = [(name, IPv4Network(inside), IPv4Network(outside), kind) for name, inside, outside, kind in mappings]
    out = {}
    for text in received:
        prefix = IPv4Network(text)
        hit = next((r for r in rules if prefix.subnet_of(r[1])), None)
        if hit is not None:
            out.setdefault(str(map_prefix(prefix, *hit[1:])), (hit[0], text))
    return out


def follow(agent, node: str, entry: dict, stop, poll: float):
    """One instance's learned routes over one connection, translated until the lab stops."""
    rt, asn = agent.rt, agent.plan.nodes[node].frr.asn
    announced: dict[str, tuple[str, str]] = {}
    while not stop.wait(poll):
        try:
            want = wanted(live.received_routes(rt, node, entry["peer"]), entry["mappings"])
            # what FRR holds, not what the agent remembers: a restart (maintenance, a
            # crash) or a daemon not yet listening loses configuration; apply it again
            held = live.static_routes(rt, node) if announced else set()
        except Exception:  # noqa: BLE001 - FRR down (a fault, a standby instance): when it
            announced.clear()  # starts again its configuration has none of them
            continue
        gone = [p for p in announced if p not in want]
        new = [p for p in want if p not in announced]
        missing = [p for p in want if p in announced and p not in held]
        if not (gone or new or missing):
            continue
        lines = ["configure terminal"]
        lines += [f"no ip route {p} {entry['dev']}" for p in gone]
        lines += [f"ip route {p} {entry['dev']}" for p in new + missing]
        lines += [f"router bgp {asn}", "address-family ipv4 unicast"]
        lines += [f"no network {p}" for p in gone] + [f"network {p}" for p in new + missing]
        res = rt.vtysh_config(node, lines)
        if res.returncode != 0:
            agent.say(f"{node}: NAT route translation failed: {(res.stderr or res.stdout).strip()}")
            continue
        for p in gone:
            agent.log.nat_route(node, entry, announced.pop(p), p, added=False)
        for p in new:
            announced[p] = want[p]
            agent.log.nat_route(node, entry, want[p], p, added=True)
