"""Node names: the one place that says how the lab names what it adds (routers, gateway
instances, tunnel ends, point-to-site servers), how a name is read back, and what
a Linux name of a lab is (namespace, process tag). The plan builds with these, the
model refuses user names that would take one of them, and the runtime names its
namespaces from them."""
from __future__ import annotations

import re
from pathlib import Path

from vpnlab.model.yamlsrc import SourceError, shown

INTERNET = "internet"
INTERNET_HOST = "internet-host"        # a host on the lab's internet (Internet egress checks)
INSTANCES = (0, 1)                   # every gateway has two instances [5]
SIDES = ("az", "op")                 # a tunnel's Azure end and on-prem end
LAB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_INSTANCE = re.compile(r"(?P<gateway>.+)-in(?P<k>[01])")
# Azure resource IDs the lab writes (imports, az-shaped views, metrics): a subscription
# of zeros, and one resource group per lab
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def resource_group(lab: str) -> str:
    return f"vpnlab-{lab}"


def resource_id(lab: str, kind: str, name: str) -> str:
    """The Azure resource ID of one of a lab's resources (kind: virtualNetworkGateways,
    connections, ...)."""
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{resource_group(lab)}"
            f"/providers/Microsoft.Network/{kind}/{name}")


def vnet_router(vnet: str) -> str:
    return f"{vnet}-sdn"


def instance(gateway: str, k: int) -> str:
    return f"{gateway}-in{k}"


def split_instance(node: str) -> tuple[str, int]:
    """(gateway, k) of a gateway instance's node name."""
    found = _INSTANCE.fullmatch(node)
    if not found:
        raise ValueError(f"{node!r} is not a gateway instance's name (<gateway>-in0 or -in1)")
    return found["gateway"], int(found["k"])


def azure_instance_name(node: str) -> str:
    """Azure's name of a gateway instance in metrics and logs (hub-gw-in0 -> IN_0)."""
    return f"GatewayTenantWorker_IN_{split_instance(node)[1]}"


def tunnel(connection: str, k: int) -> str:
    """A site connection's tunnel from instance k."""
    return f"{connection}-in{k}"


def tunnel_end(tunnel_or_connection: str, side: str) -> str:
    return f"{tunnel_or_connection}-{side}"


def v2v_end(instance_name: str, towards: str) -> str:
    """A VNet-to-VNet tunnel end of an instance, towards the peer gateway (or one of its
    instances, when the peer is active-active)."""
    return f"{instance_name}-to-{towards}-v2v"


def p2s_server(instance_name: str) -> str:
    return f"{instance_name}-p2s"


def isp_router(site: str) -> str:
    """The ISP's NAT router in front of a site's device (device.behind_nat)."""
    return f"{site}-isp"


def check_lab_name(name: str, from_file: Path | None = None) -> str:
    """A lab name: --name, or else the topology file's name."""
    if not LAB_NAME.fullmatch(name):
        given = f"lab name '{shown(name)}' (from {shown(from_file)}; choose one with --name)" \
            if from_file else f"--name '{shown(name)}'"
        raise SourceError(f"{given}: use 1-32 letters, digits, '-' or '_', starting with a letter or digit")
    return name


def namespace_prefix(lab: str) -> str:
    return f"vpnlab.{lab}."


def process_tag(lab: str) -> str:
    """Environment entry every lab process carries, so leftovers can be found."""
    return f"VPNLAB_LAB={lab}"


def generated(topology) -> dict[str, str]:
    """Every node name the lab may add for a topology, with what it is: a user's VM,
    host, site or client may take none of them. A superset of what a plan uses (an
    active-standby gateway's tunnels from instance 1 are named too), so that a name
    does not become invalid when a gateway changes mode."""
    out = {INTERNET: "the lab's internet", INTERNET_HOST: "the lab's Internet host"}
    for vnet in topology.virtual_networks:
        out[vnet_router(vnet)] = f"virtual network {vnet}'s router"
    gateways = topology.virtual_network_gateways
    for gw in gateways:
        for k in INSTANCES:
            inst = instance(gw, k)
            out[inst] = f"gateway {gw}'s instance {k}"
            out[p2s_server(inst)] = f"gateway {gw}'s point-to-site server on instance {k}"
            for peer in gateways:
                for towards in (peer, instance(peer, 0), instance(peer, 1)):
                    out[v2v_end(inst, towards)] = f"a VNet-to-VNet tunnel end of {inst}"
    for site in topology.local_network_gateways:
        out[isp_router(site)] = f"site {site}'s ISP NAT router"
    for conn in topology.connections:
        out[tunnel_end(conn, "op")] = f"connection {conn}'s on-prem tunnel end"
        for k in INSTANCES:
            for side in SIDES:
                out[tunnel_end(tunnel(conn, k), side)] = f"connection {conn}'s tunnel end"
    return out
