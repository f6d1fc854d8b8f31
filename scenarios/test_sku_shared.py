"""Multi-site on one gateway [7.1]: all tunnels share the gateway's bandwidth. Two sites
of a Basic route-based gateway (scenarios/topologies/basic-two-sites.yaml) push at once:
together they get the SKU's 100 Mbit/s, not 100 each."""
from vpnlab.checks.throughput import concurrent
from vpnlab.model.topology import throughput_mbps

LAB_TOPOLOGY = "topologies/basic-two-sites.yaml"
SECONDS = 4


def test_two_sites_share_the_skus_bandwidth(lab, scenario):
    rated = throughput_mbps(next(iter(lab.topology.virtual_network_gateways.values())))
    vm = "shop-vm"
    hosts = ("store1-host", "store2-host")
    scenario.nodes |= {vm, *hosts}
    runs = concurrent(lab.backend, [dict(client=h, server=vm, server_addr=lab.node(vm).address,
                                    seconds=SECONDS, streams=2) for h in hosts])
    for run in runs:
        scenario.record(f"{run['client']} -> VNet, at the same time", run["mbps"], "Mbit/s")
    total = round(sum(r["mbps"] for r in runs), 1)
    scenario.record("both sites together", total, "Mbit/s", f"{0.8 * rated:g}-{1.05 * rated:g}")
    assert 0.8 * rated <= total <= 1.05 * rated, runs
    assert all(r["mbps"] >= 0.2 * rated for r in runs), runs     # neither site starves
