"""A VNet-to-VNet pair without BGP (scenarios/topologies/vnet-to-vnet-static.yaml): the
VNets reach each other through static routes, the branch on east does not reach west:
no transit across a VNet-to-VNet connection without BGP [4.6]."""
from vpnlab.gateway import live

LAB_TOPOLOGY = "topologies/vnet-to-vnet-static.yaml"
WEST = "10.120.0.0/16"


def test_vnets_reach_each_other_without_bgp(lab):
    assert live.ping(lab.backend, "east-vm1", "10.120.1.4", count=3)
    assert live.ping(lab.backend, "west-vm1", "10.110.1.4", count=3)


def test_no_transit_without_bgp_on_the_pair(lab):
    """East routes west statically and never advertises it to the branch; west has no
    route to the branch."""
    assert WEST in live.fib_prefixes(lab.backend, "east-gw-in0")
    assert WEST not in live.vtysh_json(lab.backend, "branch", "show bgp ipv4 unicast json").get("routes", {})
    assert "10.130.1.0/24" not in live.fib_prefixes(lab.backend, f"west-gw-in{lab.plan.active['west-gw']}")
    assert not live.ping(lab.backend, "branch-host", "10.120.1.4", count=2, timeout=1)
