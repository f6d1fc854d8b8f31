"""Throughput of the active-active design with iperf3: through one tunnel in each
direction, across all four tunnels at once, next to the plain-forwarding baseline of the
same links (device -> gateway instance over the lab's internet, no IPsec) and next to
the SKU's rated aggregate (azure-reference.md section 2.1)."""
from vpnlab.checks.throughput import concurrent, iperf, limited_by, measured
from vpnlab.model.topology import throughput_mbps

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
SECONDS = 3
MIN_TUNNEL_MBPS = 50        # far below what libipsec does here (~400): a broken data plane fails


def test_throughput_per_tunnel_all_tunnels_and_baseline(lab, scenario):
    """iperf3 TCP runs of 3 s each. The ESP counters of the tunnels must account for
    the bytes iperf3 moved (the traffic crossed the tunnels, nothing else), one tunnel
    must carry at least 50 Mbit/s, and the report states whether the SKU or the lab's
    own data plane is the limit."""
    rt, vm, host0, host1 = lab.backend, "vm1", "onprem-dev0-host", "onprem-dev1-host"
    scenario.nodes |= {vm, host0, host1}
    gateway = lab.topology.virtual_network_gateways["hub-gw"]
    sku, rated = gateway.sku, throughput_mbps(gateway)
    single = {}
    for reverse in (False, True):
        run, per_tunnel, _ = measured(rt, lab.plan, lambda: iperf(
            rt, host0, vm, lab.node(vm).address, SECONDS, reverse=reverse))
        label = "VNet -> site" if reverse else "site -> VNet"
        busiest = max(per_tunnel, key=per_tunnel.get)
        single[label] = run["mbps"]
        scenario.record(f"one tunnel, {label} ({busiest})", run["mbps"], "Mbit/s", f">= {MIN_TUNNEL_MBPS}")
        payload = run["mbps"] * 1e6 / 8 * SECONDS
        assert sum(per_tunnel.values()) >= 0.9 * payload, (per_tunnel, run)
        assert run["mbps"] >= MIN_TUNNEL_MBPS, run
    for reverse in (False, True):
        runs, per_tunnel, _ = measured(rt, lab.plan, lambda: concurrent(rt, [
            dict(client=h, server=vm, server_addr=lab.node(vm).address, seconds=SECONDS,
                 reverse=reverse, streams=4) for h in (host0, host1)]))
        label = "VNet -> sites" if reverse else "sites -> VNet"
        total = round(sum(r["mbps"] for r in runs), 1)
        scenario.record(f"all tunnels, {label}", total, "Mbit/s")
        scenario.record(f"all tunnels, {label}: tunnels carrying > 1 MB",
                        sum(b > 1e6 for b in per_tunnel.values()), f"of {len(per_tunnel)}")
    baseline = iperf(rt, "onprem-dev0", "hub-gw-in0", lab.node("hub-gw-in0").address, SECONDS)
    scenario.record("baseline: same links without IPsec, into the instance", baseline["mbps"], "Mbit/s")
    capped = iperf(rt, "onprem-dev0", "hub-gw-in0", lab.node("hub-gw-in0").address, SECONDS, reverse=True)
    scenario.record("out of the instance (its SKU cap), without IPsec", capped["mbps"], "Mbit/s",
                    f"{0.8 * rated:g}-{1.05 * rated:g}")
    scenario.record(f"SKU {sku} rated aggregate", rated, "Mbit/s")
    scenario.record("limited by", limited_by(max(single.values()), sku, rated))
    assert baseline["mbps"] > max(single.values()), "IPsec cannot be faster than plain forwarding"
    # the instance saturates near its SKU's figure where the host carries more
    assert 0.8 * rated <= capped["mbps"] <= 1.05 * rated < baseline["mbps"], (capped, baseline)
