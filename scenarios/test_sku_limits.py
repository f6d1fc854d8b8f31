"""SKU limits on the data plane [2.1]: the gateway's instance is capped at its SKU's
rated throughput in both directions (tc on the instance), on
topologies/basic-policy-based.yaml: a Basic gateway, 100 Mbit/s, which the lab's own
userspace ESP can exceed, so that the cap itself is what a throughput test meets."""
from vpnlab.checks.throughput import iperf, limited_by, measured
from vpnlab.model.topology import throughput_mbps

LAB_TOPOLOGY = "../topologies/basic-policy-based.yaml"
SECONDS = 4


def test_basic_sku_saturates_at_its_rating_through_the_tunnel(lab, scenario):
    """iperf3 VM <-> office host through the policy-based tunnel, both directions: each
    saturates near 100 Mbit/s and no higher, and the report names the SKU as the limit."""
    rt, vm, host = lab.backend, "legacy-vm", "office-host"
    scenario.nodes |= {vm, host}
    gateway = lab.topology.virtual_network_gateways["legacy-gw"]
    sku, rated = gateway.sku, throughput_mbps(gateway)
    for reverse in (False, True):
        label = "VNet -> site" if reverse else "site -> VNet"
        run, per_tunnel, _ = measured(rt, lab.plan, lambda: iperf(
            rt, host, vm, lab.node(vm).address, SECONDS, reverse=reverse, streams=2))
        scenario.record(f"{label}, through the tunnel", run["mbps"], "Mbit/s",
                        f"{0.8 * rated:g}-{1.05 * rated:g}")
        scenario.record(f"{label}: limited by", limited_by(run["mbps"], sku, rated))
        assert sum(per_tunnel.values()) >= 0.9 * run["mbps"] * 1e6 / 8 * SECONDS, per_tunnel
        assert 0.8 * rated <= run["mbps"] <= 1.05 * rated, run
    # into the instance nothing is shaped: the host itself carries far more
    unshaped = iperf(rt, "office", "legacy-gw-in0", lab.node("legacy-gw-in0").address, SECONDS)
    scenario.record("into the instance without IPsec (not capped)", unshaped["mbps"], "Mbit/s")
    assert unshaped["mbps"] > 3 * rated, unshaped
