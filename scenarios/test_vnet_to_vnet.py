"""VNet-to-VNet [7.1] on topologies/vnet-to-vnet.yaml: east (active-active) and west
(active-standby) joined by a connection pair with BGP, and a branch on east that
reaches west through it (transit with BGP on every hop [4.6])."""
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/vnet-to-vnet.yaml"
EAST, WEST = "10.110.0.0/16", "10.120.0.0/16"


def pair_tunnels(lab) -> dict[str, str]:
    return {t["tunnel"]: t["state"] for t in live.tunnels(lab.backend, lab.plan) if t["connection"] == "east-to-west"}


def test_each_east_instance_has_a_tunnel_and_a_session_to_west(lab):
    """Two tunnels (one per east instance, both to west's one public IP), an eBGP
    session over each, and west spreads its traffic to east over both (ECMP)."""
    assert pair_tunnels(lab) == {"east-to-west-in0": "ESTABLISHED", "east-to-west-in1": "ESTABLISHED"}
    west = lab.plan.nodes[f"west-gw-in{lab.plan.active['west-gw']}"].name
    lab.eventually(lambda: live.bgp_peers(lab.backend, west),
                   {"10.110.255.4": {"state": "Established"}, "10.110.255.5": {"state": "Established"}},
                   "session_down", "west's sessions to both east instances")
    assert live.fib_prefixes(lab.backend, west)[EAST] == 2
    assert live.ping(lab.backend, "east-vm1", "10.120.1.4", count=3)
    assert live.ping(lab.backend, "west-vm1", "10.110.1.4", count=3)


def test_branch_reaches_west_through_east(lab):
    """BGP on every hop: east re-advertises west's VNet to the branch (AS path 65515
    65521) and the branch's prefix to west."""
    routes = live.vtysh_json(lab.backend, "branch", "show bgp ipv4 unicast json")["routes"]
    assert sorted(p["path"] for p in routes[WEST]) == ["65515 65521", "65515 65521"]
    assert live.ping(lab.backend, "branch-host", "10.120.1.4", count=3)


def test_west_failover_moves_the_pair_to_its_standby(lab, scenario):
    """Azure's reset of west (active-standby): the pair's tunnels come back to west's
    other instance, east redials, and the VNets reach each other again."""
    before = lab.plan.active["west-gw"]
    scenario.start(lab, "east-vm1", "west-vm1", flows=4)
    at = scenario.maintenance("west-gw")
    assert lab.plan.active["west-gw"] == 1 - before
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    scenario.stop(at)
    assert {t.device for t in lab.plan.tunnels if t.connection == "east-to-west"} == {f"west-gw-in{1 - before}"}
