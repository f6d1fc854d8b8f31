"""Views of a running lab in the JSON shapes the Azure CLI prints [AZCLI], from the
daemons' APIs (vtysh ... json, VICI):
- `az network vnet-gateway list-bgp-peer-status` (BgpPeerStatusListResult),
- `list-learned-routes` and `list-advertised-routes --peer` (GatewayRouteListResult),
- `az network vpn-connection show` and `list` (the connection resource, with
  connectionStatus, ingress/egress bytes and tunnelConnectionStatus).

What the lab fills in its own way is said where it is done (UNCONFIRMED rows in
docs/azure-behaviours.md)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.model import names
from vpnlab.plan.parts import instance_count
from vpnlab.session import Lab

# FRR's session states in Azure's words (BgpPeerState: Unknown, Stopped, Idle, Connecting,
# Connected)
_STATES = {"Established": "Connected", "Idle": "Idle", "Connect": "Connecting", "Active": "Connecting",
           "OpenSent": "Connecting", "OpenConfirm": "Connecting", "Clearing": "Stopped", "Deleted": "Stopped"}


def _gateway(lab: Lab, gateway: str):
    gw = lab.topology.virtual_network_gateways.get(gateway)
    if gw is None:
        raise LabError(f"no gateway {gateway!r} in lab {lab.name!r}; gateways: "
                       f"{', '.join(sorted(lab.topology.virtual_network_gateways)) or 'none'}")
    return gw


def _serving(lab: Lab, gateway: str) -> list[str]:
    """The gateway's instances that run (an active-standby standby runs nothing)."""
    gw = _gateway(lab, gateway)
    nodes = [names.instance(gateway, k) for k in range(instance_count(gw))]
    return [n for n in nodes if n in lab.plan.nodes and not lab.plan.nodes[n].standby]


def _neighbors(lab: Lab, node: str) -> dict:
    try:
        return live.vtysh_json(lab.backend, node, "show bgp neighbors json")
    except Exception:  # noqa: BLE001 - a lost instance answers nothing: its peers are Unknown
        return {}


def _duration(ms: int) -> str:
    """.NET TimeSpan text, as Azure shows connectedDuration (d.hh:mm:ss.fffffff)."""
    seconds, rest = divmod(int(ms), 1000)
    days, seconds = divmod(seconds, 86400)
    text = f"{seconds // 3600:02}:{seconds % 3600 // 60:02}:{seconds % 60:02}.{rest * 10000:07}"
    return f"{days}.{text}" if days else text


def bgp_peer_status(lab: Lab, gateway: str, peer: str | None = None) -> dict:
    """One entry per eBGP peer of each serving instance: Azure lists the sites' peers
    (and, the lab's choice, not its own SDN sessions)."""
    out = []
    sessions = [s for s in lab.plan.bgp if s.kind == "ebgp"]
    for node in _serving(lab, gateway):
        data = _neighbors(lab, node)
        for s in sessions:
            if s.node != node or (peer and s.peer != peer):
                continue
            n = data.get(s.peer, {})
            stats = n.get("messageStats", {})
            up = n.get("bgpState") == "Established"
            out.append({"localAddress": n.get("hostLocal") or _local_address(lab, node, s.peer),
                        "neighbor": s.peer, "asn": n.get("remoteAs", _planned(lab, node, s.peer).asn),
                        "state": _STATES.get(n.get("bgpState"), "Unknown"),
                        "connectedDuration": _duration(n.get("bgpTimerUpMsec", 0)) if up else "",
                        "routesReceived": n.get("addressFamilyInfo", {}).get("ipv4Unicast", {})
                                           .get("acceptedPrefixCounter", 0),
                        "messagesSent": stats.get("totalSent", 0), "messagesReceived": stats.get("totalRecv", 0)})
    return {"value": out}


def _planned(lab: Lab, node: str, peer: str):
    return next(n for n in lab.plan.nodes[node].frr.neighbors if n.address == peer)


def _local_address(lab: Lab, node: str, peer: str) -> str:
    """The address the instance peers from, as planned (its APIPA address towards an
    APIPA peer), when FRR cannot say (the session is down, the instance lost)."""
    return _planned(lab, node, peer).update_source or lab.plan.nodes[node].frr.router_id


def learned_routes(lab: Lab, gateway: str) -> dict:
    """Every path in each serving instance's BGP table. Origin: Network for the VNet's
    own prefixes (what the SDN session and the instance itself bring), EBgp from a site,
    IBgp otherwise."""
    out = []
    for node in _serving(lab, gateway):
        try:
            table = live.vtysh_json(lab.backend, node, "show bgp ipv4 unicast json")
        except Exception:  # noqa: BLE001 - a lost instance has learned nothing
            continue
        local = table.get("routerId") or lab.plan.nodes[node].frr.router_id
        kinds = {s.peer: s.kind for s in lab.plan.bgp if s.node == node}     # peer -> ebgp | sdn
        out += [_route(kinds, local, prefix, path) for prefix, paths in sorted(table.get("routes", {}).items())
                for path in paths if path.get("valid")]
    return {"value": out}


def advertised_routes(lab: Lab, gateway: str, peer: str) -> dict:
    """What each serving instance sends the peer (FRR's advertised-routes)."""
    if not any(s.peer == peer and s.kind == "ebgp" for s in lab.plan.bgp):
        raise LabError(f"{peer} is not a BGP peer of {gateway}; peers: "
                       f"{', '.join(sorted({s.peer for s in lab.plan.bgp if s.kind == 'ebgp'})) or 'none'}")
    out = []
    for node in _serving(lab, gateway):
        if not any(s.node == node and s.peer == peer for s in lab.plan.bgp):
            continue
        try:
            data = live.vtysh_json(lab.backend, node, f"show bgp ipv4 unicast neighbors {peer} advertised-routes json")
        except Exception:  # noqa: BLE001 - a lost instance advertises nothing
            continue
        # the address the instance peers from (its APIPA address towards an APIPA peer)
        local = _neighbors(lab, node).get(peer, {}).get("hostLocal") or _local_address(lab, node, peer)
        asn = str(lab.plan.nodes[node].frr.asn)
        for prefix, path in sorted(data.get("advertisedRoutes", {}).items()):
            out.append({"localAddress": local, "network": prefix, "nextHop": local, "sourcePeer": local,
                        "origin": "EBgp" if path.get("path") else "Network",
                        "asPath": " ".join(x for x in (asn, path.get("path", "")) if x),
                        "weight": path.get("weight", 0)})
    return {"value": out}


def _route(kinds: dict[str, str], local: str, prefix: str, path: dict) -> dict:
    peer = path.get("peerId", "")
    kind = kinds.get(peer)
    own = peer in ("", "(unspec)") or kind == "sdn"
    origin = "Network" if own else "EBgp" if kind == "ebgp" else "IBgp"
    hop = next((h.get("ip", "") for h in path.get("nexthops", [])), "")
    return {"localAddress": local, "network": prefix, "nextHop": "" if own or hop == "0.0.0.0" else hop,
            "sourcePeer": local if own else peer, "origin": origin, "asPath": path.get("path", ""),
            "weight": path.get("weight", 0)}


# ------------------------------------------------------------------ connections
def connection(lab: Lab, name: str) -> dict:
    """The connection resource as `az network vpn-connection show` prints it. The shared
    key is never shown (Azure's GET does not return it either: get-shared-key does)."""
    c = lab.topology.connections.get(name)
    if c is None:
        raise LabError(f"no connection {name!r} in lab {lab.name!r}; connections: "
                       f"{', '.join(sorted(lab.topology.connections)) or 'none'}")
    tunnels = [t for t in lab.plan.tunnels if t.connection == name]
    states = live.each(lambda t: _tunnel_health(lab, t), tunnels)
    status = ("Connected" if any(s["connectionStatus"] == "Connected" for s in states)
              else "Connecting" if tunnels else "NotConnected")
    peer = ({"localNetworkGateway2": {"id": names.resource_id(lab.name, "localNetworkGateways",
                                                              c.local_network_gateway)}}
            if c.type == "IPsec" else
            {"virtualNetworkGateway2": {"id": names.resource_id(lab.name, "virtualNetworkGateways",
                                                                c.peer_virtual_network_gateway)}})
    return {
        "connectionMode": c.connection_mode, "connectionProtocol": c.connection_protocol,
        "connectionStatus": status, "connectionType": c.type,
        "dpdTimeoutSeconds": c.dpd_timeout_seconds,
        "egressBytesTransferred": sum(s["egressBytesTransferred"] for s in states),
        "enableBgp": c.enable_bgp, "etag": "W/\"00000000-0000-0000-0000-000000000000\"",
        "id": names.resource_id(lab.name, "connections", name),
        "ingressBytesTransferred": sum(s["ingressBytesTransferred"] for s in states),
        "ipsecPolicies": [_policy(p) for p in c.ipsec_policies], "location": "westeurope",
        **peer, "name": name, "provisioningState": "Succeeded",
        "resourceGroup": names.resource_group(lab.name), "routingWeight": 0,
        "tunnelConnectionStatus": states, "type": "Microsoft.Network/connections",
        "usePolicyBasedTrafficSelectors": c.use_policy_based_traffic_selectors,
        "virtualNetworkGateway1": {"id": names.resource_id(lab.name, "virtualNetworkGateways",
                                                           c.virtual_network_gateway)},
    }


def connections(lab: Lab) -> list[dict]:
    return [connection(lab, name) for name in lab.topology.connections]


def _policy(p) -> dict:
    return {"dhGroup": p.dh_group, "ikeEncryption": p.ike_encryption, "ikeIntegrity": p.ike_integrity,
            "ipsecEncryption": p.ipsec_encryption, "ipsecIntegrity": p.ipsec_integrity,
            "pfsGroup": p.pfs_group, "saDataSizeKilobytes": p.sa_datasize_kilobytes,
            "saLifeTimeSeconds": p.sa_lifetime_seconds}


def _tunnel_health(lab: Lab, t) -> dict:
    """TunnelConnectionHealth of one tunnel. The tunnel's name is the lab's choice
    (Azure's format is not documented): <instance public IP>_<remote IP>."""
    counters = live.sa_counters(lab.backend, t.azure_end)
    state = live.tunnel_state(lab.backend, t.azure_end)
    up = state["state"] == "ESTABLISHED" and state["child_state"] == "INSTALLED"
    connecting = state["state"] in ("CONNECTING", "ESTABLISHED")
    since = state.get("established_seconds")
    return {"tunnel": f"{lab.plan.nodes[t.gateway_instance].public_ip}_{t.remote_ip}",
            "connectionStatus": "Connected" if up else "Connecting" if connecting else "NotConnected",
            "ingressBytesTransferred": counters["bytes_in"], "egressBytesTransferred": counters["bytes_out"],
            "lastConnectionEstablishedUtcTime": _utc(time.time() - since) if up and since is not None else ""}


def _utc(t: float) -> str:
    """Azure's format for it: M/d/yyyy h:mm:ss AM/PM (as the portal and the API show it)."""
    d = datetime.fromtimestamp(t, timezone.utc)
    return f"{d.month}/{d.day}/{d.year} {d.strftime('%I').lstrip('0')}:{d:%M:%S %p}"
