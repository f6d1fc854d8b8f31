"""Azure Monitor's gateway metrics (azure-reference.md 7.4), computed from the lab's
live state under Azure's REST names and dimensions, so that alerting can be rehearsed.

Counters are those of the SAs installed now (strongSwan counts per SA, so a rekey
starts them again); AverageBandwidth is the average since each SA was installed.
Traffic-selector mismatch drops are counted where selectors exist (policy-based
gateways, use_policy_based_traffic_selectors), by nftables in the Azure tunnel end; any-
to-any tunnels drop nothing for that reason (0). Not emulated: the other packet drop
counts (libipsec does not count them).

NAT rules [7.2]: TunnelNatedBytes/Packets (what a rule translated on its way through,
source or destination), TunnelReverseNatedBytes/Packets (the way back) and
TunnelNatPacketDrop (what a dynamic rule refused: a flow begun from its external side),
per NatRule, from nftables counters on the instance. Not emulated: TunnelNatAllocations
and TunnelNatFlowCount.
"""
from __future__ import annotations

from vpnlab.gateway import live
from vpnlab.model import names
from vpnlab.plan.parts import Plan
from vpnlab.session import Lab


def metrics(lab: Lab, sas=None, peers=None) -> list[dict]:
    """Azure's metrics of the lab's gateways, now. The agent passes what its other duties
    listed this second (sas: tunnel -> its Azure end's IKE SAs; peers: instance -> its BGP
    peers; None where it has nothing fresh), so that each daemon is asked once a second."""
    rt, plan = lab.backend, lab.plan
    sas = sas or (lambda t: None)
    peers_of = peers or (lambda node: None)
    rows = []

    instance_names: dict[str, tuple[str, str]] = {}     # node -> (gateway, Azure's instance name)

    def add(name, value, unit, node, **dims):
        """One metric of a gateway instance (node): the gateway is its resource."""
        if node not in instance_names:
            instance_names[node] = names.split_instance(node)[0], names.azure_instance_name(node)
        resource, instance = instance_names[node]
        rows.append({"name": name, "value": value, "unit": unit, "resource": resource,
                     "dimensions": {**dims, "Instance": instance}})

    listed = {t.name: sas(t) for t in plan.tunnels}
    unlisted = [t for t in plan.tunnels if listed[t.name] is None]     # asked now, side by side
    counters = {t.name: live.counters(listed[t.name]) for t in plan.tunnels if listed[t.name] is not None}
    counters |= dict(zip([t.name for t in unlisted], live.each(lambda t: live.sa_counters(rt, t.azure_end), unlisted)))
    selected = [t for t in plan.tunnels if (plan.nodes[t.azure_end].nft or {}).get("selectors")]
    mismatch = {t.name: {"egress": 0, "ingress": 0} for t in plan.tunnels}     # no selectors, no such drop
    mismatch |= dict(zip([t.name for t in selected],
                         live.each(lambda t: live.ts_mismatch_drops(rt, t.azure_end), selected)))
    per_instance: dict[str, float] = {}
    for t in plan.tunnels:
        c = counters[t.name]
        dims = {"ConnectionName": t.connection, "RemoteIP": t.remote_ip, "node": t.gateway_instance}
        # Ingress: from the tunnel into Azure (what the Azure end receives)
        add("TunnelIngressBytes", c["bytes_in"], "Bytes", **dims)
        add("TunnelEgressBytes", c["bytes_out"], "Bytes", **dims)
        add("TunnelIngressPackets", c["packets_in"], "Count", **dims)
        add("TunnelEgressPackets", c["packets_out"], "Count", **dims)
        add("TunnelIngressPacketDropTSMismatch", mismatch[t.name]["ingress"], "Count", **dims)
        add("TunnelEgressPacketDropTSMismatch", mismatch[t.name]["egress"], "Count", **dims)
        add("TunnelAverageBandwidth", round(c["bandwidth"], 1), "BytesPerSecond", **dims)
        add("MmsaCount", c["ike"], "Count", **dims)
        add("QmsaCount", c["child"], "Count", **dims)
        per_instance[t.gateway_instance] = per_instance.get(t.gateway_instance, 0) + c["bandwidth"]
    instances = sorted({t.gateway_instance for t in plan.tunnels})
    for node in instances:
        add("AverageBandwidth", round(per_instance[node], 1), "BytesPerSecond", node)
        add("VnetAddressPrefixCount", len(plan.nodes[node].frr.vnet_prefixes), "Count", node)
    sessions = [s for s in plan.bgp if s.kind == "ebgp" and s.node in instances]
    peers = {n: peers_of(n) if peers_of(n) is not None else _peers(rt, n) for n in instances}
    for s in sessions:
        p = peers[s.node].get(s.peer, {})
        dims = {"BgpPeerAddress": s.peer, "node": s.node}
        add("BgpPeerStatus", int(p.get("state") == "Established"), "Count", **dims)
        add("BgpRoutesLearned", p.get("pfxRcd", 0), "Count", **dims)
        add("BgpRoutesAdvertised", p.get("pfxSnt", 0), "Count", **dims)
    _p2s(rt, plan, add)
    _nat(rt, plan, add)
    return rows


def _nat(rt, plan: Plan, add):
    remote = {(t.gateway_instance, t.connection): t.remote_ip for t in plan.tunnels}
    for node in sorted(n.name for n in plan.nodes.values() if n.nft and n.nft.get("nat") and not n.standby):
        counters = live.nat_counters(rt, node)
        for e in plan.nodes[node].nft["nat"]:
            dims = {"NatRule": e["rule"], "ConnectionName": e["connection"],
                    "RemoteIP": remote.get((node, e["connection"]), ""), "node": node}
            for what, name in (("nated", "TunnelNated"), ("reverse", "TunnelReverseNated")):
                c = counters.get(f"{what}.{e['rule']}.{e['connection']}", {"packets": 0, "bytes": 0})
                add(f"{name}Bytes", c["bytes"], "Bytes", **dims)
                add(f"{name}Packets", c["packets"], "Count", **dims)
            if e["type"] == "Dynamic":
                c = counters.get(f"drop.{e['rule']}.{e['connection']}", {"packets": 0})
                # DropType's values are not documented: the lab's word for it
                add("TunnelNatPacketDrop", c["packets"], "Count", DropType="UnsolicitedFlow", **dims)


def _p2s(rt, plan: Plan, add):
    """P2SConnectionCount per Protocol and Instance, P2SBandwidth per Instance (bytes/s
    since each session began), on gateways with point-to-site. A sample does not wait
    for an SA charon holds: one whose logon waits on an unreachable RADIUS server holds
    it up to 30 s (the sample may miss a session charon is busy with at that moment)."""
    bandwidth: dict[str, float] = {}
    for s in live.p2s_sessions(rt, plan, noblock=True):
        add("P2SConnectionCount", s["connections"], "Count", s["instance"], Protocol=s["protocol"])
        bandwidth[s["instance"]] = bandwidth.get(s["instance"], 0) + sum(c["bandwidth"] for c in s["clients"])
    for node, value in sorted(bandwidth.items()):
        add("P2SBandwidth", round(value, 1), "BytesPerSecond", node)


def _peers(rt, node: str) -> dict:
    try:
        return live.bgp_peers(rt, node)
    except Exception:  # noqa: BLE001 - a lost instance: its peers count as down
        return {}
