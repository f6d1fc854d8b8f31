"""What Azure's update of a running design writes to the gateway's diagnostic log [7.5]:
SetGatewayConfiguration and SetConnectionConfiguration (GatewayDiagnosticLog) per
gateway and connection a change touched, and StaticRouteUpdate (RouteDiagnosticLog) per
site prefix a connection's gateway instances now route, or no longer route."""
from __future__ import annotations

from pathlib import Path

from vpnlab.change.diff import Change
from vpnlab.gateway import events
from vpnlab.model import names
from vpnlab.model.topology import Topology
from vpnlab.plan.parts import Plan

_VERB = {"add": "created", "remove": "deleted", "change": "updated"}


def record(lab_dir: Path, changes: list[Change], old: Topology, new: Topology, plan: Plan):
    writer = events.Writer(lab_dir)
    try:
        for c in changes:
            fields = ", ".join(f.path for f in c.fields if f.path)
            what = f"{_VERB[c.action]}" + (f" ({fields})" if fields else "")
            if c.kind == "virtual_network_gateways":
                writer.gateway("SetGatewayConfiguration", c.name, f"Gateway {c.name} configuration {what}")
            for conn in _connections_touched(c, old, new):
                gateway = (new.connections.get(conn) or old.connections[conn]).virtual_network_gateway
                writer.gateway("SetConnectionConfiguration", gateway, f"Connection {conn}: {c.kind} {c.name} {what}",
                               connectionName_s=conn)
        _static_routes(writer, old, new, plan)
    finally:
        writer.close()


def _connections_touched(c: Change, old: Topology, new: Topology) -> list[str]:
    if c.kind == "connections":
        return [c.name]
    if c.kind == "local_network_gateways":
        return sorted({n for t in (old, new) for n, x in t.connections.items() if x.local_network_gateway == c.name})
    return []


def _static_routes(writer, old: Topology, new: Topology, plan: Plan):
    """A site's address space is what the gateway routes into its connection."""
    for conn in sorted(set(old.connections) | set(new.connections)):
        before, after = _site_prefixes(old, conn), _site_prefixes(new, conn)
        if before == after:
            continue
        gateway = (new.connections.get(conn) or old.connections[conn]).virtual_network_gateway
        serving = [n for n in plan.nodes if n.startswith(f"{gateway}-in") and plan.nodes[n].role == "gateway-instance"
                   and not plan.nodes[n].standby]
        for instance in serving or [names.instance(gateway, 0)]:
            for prefix in sorted(after - before):
                writer.static_route(gateway, instance, prefix, True, conn)
            for prefix in sorted(before - after):
                writer.static_route(gateway, instance, prefix, False, conn)


def _site_prefixes(t: Topology, conn: str) -> set[str]:
    c = t.connections.get(conn)
    if c is None or c.local_network_gateway is None:
        return set()
    return {str(p) for p in t.local_network_gateways[c.local_network_gateway].address_space}
