"""Active-active semantics [5] on scenarios/topologies/single-peered.yaml: one tunnel and
one BGP session per instance per device, per-connection APIPA selection [4.3], and what
instance 0's maintenance does to a fully peered site and to a half-configured one."""
import json

from vpnlab.checks.probe import worst
from vpnlab.gateway import control, live
from vpnlab.model.defaults import defaults
from vpnlab.waits import WaitTimeout, wait_until

LAB_TOPOLOGY = "topologies/single-peered.yaml"
PLANNED_LOSS_MS = 300


def local_address(lab, node: str, peer: str) -> str:
    return live.vtysh_json(lab.backend, node, f"show bgp neighbors {peer} json")[peer].get("hostLocal")


def ike_sas_of(lab, node: str) -> list[str]:
    """Unique ids of a tunnel end's established IKE SAs: unchanged ids mean untouched SAs.
    (An end whose device never answers only has attempts, renewed at each redial.)"""
    return [ike["uniqueid"].decode() for ike in live.ike_sas(lab.backend, node)
            if ike["state"] == b"ESTABLISHED"]


def test_each_connection_peers_from_its_selected_apipa_address(lab):
    """The connection to "full" selects the second APIPA address of each instance; the
    connection to "half" selects none, so each instance uses its first."""
    assert local_address(lab, "hub-gw-in0", "169.254.22.9") == "169.254.21.5"
    assert local_address(lab, "hub-gw-in1", "169.254.22.9") == "169.254.22.5"
    assert local_address(lab, "hub-gw-in0", "169.254.21.9") == "169.254.21.1"
    # the half-configured device has no tunnel and no session to instance 1
    states = {t["tunnel"]: t["state"] for t in live.tunnels(lab.backend, lab.plan)}
    assert states["hub-to-half-in0"] == "ESTABLISHED" and states["hub-to-half-in1"] != "ESTABLISHED", states
    assert list(live.bgp_peers(lab.backend, "half")) == ["169.254.21.1"]


def test_instance_maintenance_leaves_the_other_instance_untouched(lab, scenario):
    """Instance 0 is serviced (planned): the fully peered site's flows move to instance
    1 with at most a few hundred milliseconds of loss, and instance 1's IKE SAs and BGP
    sessions stay as they were."""
    ends = ["hub-to-full-in1-az", "hub-to-half-in1-az"]
    before = {e: ike_sas_of(lab, e) for e in ends}
    assert len(before["hub-to-full-in1-az"]) == 1, before
    sessions = live.bgp_peers(lab.backend, "hub-gw-in1")["169.254.22.9"]
    scenario.start(lab, "sp-vm1", "full-host", flows=8)
    at = scenario.maintenance("hub-gw", instance=0)    # returns when instance 0 is back
    scenario.wait_flowing(at)
    result = scenario.stop(at)
    lost_ms = worst(result, "lost") * 1000 / result["rate_pps"]
    scenario.record("probe loss, fully peered site (worse direction)", lost_ms, "ms", f"<= {PLANNED_LOSS_MS} ms")
    assert lost_ms <= PLANNED_LOSS_MS, result["directions"]
    assert {e: ike_sas_of(lab, e) for e in ends} == before
    after = live.bgp_peers(lab.backend, "hub-gw-in1")["169.254.22.9"]
    assert after["state"] == "Established" and after["connectionsEstablished"] == sessions["connectionsEstablished"]


def test_single_peered_design_loses_traffic_during_maintenance(lab, scenario):
    """The half-configured site reaches the VNet through instance 0 only: while instance
    0 reboots its traffic is lost, as Azure warns; the lab shows the outage."""
    reboot = defaults()["maintenance"][lab.timers]["instance_reboot"]
    scenario.start(lab, "sp-vm1", "half-host", flows=4)
    at = scenario.maintenance("hub-gw", instance=0)
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    result = scenario.stop(at)
    outage = worst(result, "recovered_s")
    scenario.record("outage, half-configured site", outage, "s", f">= {reboot} s (the reboot)")
    assert outage >= reboot, result["directions"]


def test_azure_never_opens_bgp_from_apipa(lab):
    """Azure is passive towards APIPA peers: when the device is passive too, no session
    comes up, whatever the wait; once the device opens them again, they come back."""
    peers = ("169.254.21.5", "169.254.22.5")     # Azure's addresses for "full"
    passive = ["router bgp 65052", *[f"neighbor {p} passive" for p in peers]]
    control.vtysh_config(lab.backend, "full", passive)
    try:
        before = {p: s["connectionsEstablished"] for p, s in live.bgp_peers(lab.backend, "full").items()}
        lab.backend.vtysh("full", "clear bgp ipv4 unicast *")
        window = 5 * lab.timer("bgp_connect_retry") + lab.timer("bgp_hold")
        try:       # "never" is checked over a window: several connect retries and a hold time
            seen = wait_until(lambda: live.bgp_peers(lab.backend, "full"),
                              lambda got: any(got[p]["state"] == "Established" for p in peers),
                              "a BGP session opened by Azure", window, interval=0.5)
        except WaitTimeout:
            seen = None
        assert seen is None, f"a session came up with both sides passive: {seen}"
    finally:
        control.vtysh_config(lab.backend, "full", [passive[0], *[f"no {line}" for line in passive[1:]]])
    lab.eventually(lambda: live.bgp_peers(lab.backend, "full"),
                   {p: {"state": "Established", "connectionsEstablished": before[p] + 1} for p in peers},
                   "session_down", "the device to open its sessions again")


def _route_get(lab, node: str, *args: str) -> dict:
    res = lab.backend.exec(node, ["ip", "-j", "route", "get", *args])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]


def test_flows_may_return_on_the_other_instance(lab):
    """The VNet picks the instance a flow leaves through, the device picks the tunnel
    it comes back on, each hashing the flow on its own: asked for 32 UDP flows with the
    flows' own ports (`ip route get`, the kernels' forwarding decision), some come back
    through the other instance, as Azure warns (symmetric routing is not guaranteed)."""
    vm, host = "10.90.1.4", "10.92.1.10"
    sdn = lab.plan.nodes["hub-sdn"]
    vm_bridge = next(i.name for i in sdn.interfaces if "10.90.1.1/24" in i.addresses)
    instance_of_gateway = {lab.plan.nodes[f"hub-gw-in{k}"].iface("gws").addresses[0].split("/")[0]: k
                           for k in (0, 1)}
    instance_of_tunnel = {lab.tunnel_links(f"hub-to-full-in{k}")["onprem"][1]: k for k in (0, 1)}
    paths = []
    for sport in range(40000, 40032):
        out = _route_get(lab, "hub-sdn", host, "from", vm, "iif", vm_bridge, "ipproto", "udp",
                         "sport", str(sport), "dport", "5000")
        back = _route_get(lab, "full", vm, "from", host, "iif", "lan0", "ipproto", "udp",
                          "sport", "5000", "dport", str(sport))
        paths.append((instance_of_gateway[out["gateway"]], instance_of_tunnel[back["dev"]]))
    asymmetric = sum(a != b for a, b in paths)
    assert 0 < asymmetric < len(paths), paths
    assert {a for a, _ in paths} == {0, 1} and {b for _, b in paths} == {0, 1}, paths
