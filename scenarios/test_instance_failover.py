"""Gateway instance failover on the active-active design (Azure's "dual redundancy":
two instances, two devices, four tunnels, BGP over APIPA)."""
from vpnlab.checks.probe import worst
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
LAB_RUNTIMES = ("netns", "docker")     # the same failover on plain namespaces and on containers
PROBE = ("vm1", "onprem-dev0-host")
FLOWS = 8                 # 8 flows: some cross instance 0 in each direction (ECMP per flow)
PLANNED_LOSS_MS = 300     # "a few hundred milliseconds" at most


def test_planned_instance_failover(lab, scenario):
    """Azure patches instance 0 (planned maintenance): it sends a BGP Cease to every peer
    and an IKE DELETE on each tunnel before it goes. Devices and the VNet move their
    routes to instance 1 at once: flows see at most a few hundred milliseconds of loss
    and a TCP session survives."""
    scenario.start(lab, *PROBE, flows=FLOWS)
    at = scenario.fail("instance", "hub-gw-in0", planned=True)
    lab.eventually(lambda: live.fib_prefixes(lab.backend, "onprem-dev0"), {"10.10.0.0/16": 1},
                   "routes_withdrawn", "onprem-dev0 to reach the VNet through instance 1 only")
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    scenario.heal()
    scenario.record("reconverged after heal", scenario.wait_converged(), "s")
    result = scenario.stop(at)
    lost_ms = worst(result, "lost") * 1000 / result["rate_pps"]
    scenario.record("probe loss (worse direction)", lost_ms, "ms", f"<= {PLANNED_LOSS_MS} ms")
    scenario.record("longest gap (worse direction)", worst(result, "longest_gap_ms"), "ms")
    scenario.record("TCP longest stall", result["tcp"]["longest_stall_ms"], "ms")
    assert lost_ms <= PLANNED_LOSS_MS, result["directions"]
    assert result["tcp"]["survived"], result["tcp"]
    # the timeline watcher saw instance 0's tunnels go and come back
    seen = [e["what"] for e in scenario.events if e["kind"] == "tunnel"]
    assert "tunnel hub-to-dev0-in0 down" in seen and "tunnel hub-to-dev0-in0 up" in seen, seen


def test_unplanned_instance_failover(lab, scenario):
    """Instance 0 dies (no BGP Cease, no IKE DELETE). Only timers notice: the devices'
    BGP hold timer (and DPD) and the VNet's session to the instance. Flows through
    instance 0 stop until then; recovery must come within the hold/DPD budget, and a TCP
    session rides it out on retransmissions. The outage is the loss that began before
    the heal; what instance 0's return costs is recorded apart."""
    scenario.start(lab, *PROBE, flows=FLOWS)
    at = scenario.fail("instance", "hub-gw-in0", planned=False)
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    healed = scenario.heal()
    scenario.record("reconverged after heal", scenario.wait_converged(), "s")
    result = scenario.stop(at, healed)
    recovered = worst(result, "recovered_s")
    scenario.record("outage (worse direction)", recovered, "s", f"<= {lab.detection_budget()} s")
    for d in result["directions"]:
        scenario.record(f"outage {d['direction']}", d["recovered_s"], "s")
        scenario.record(f"lost after heal {d['direction']}", d["lost_after_until"], "packets")
    scenario.record("TCP longest stall", result["tcp"]["longest_stall_ms"], "ms")
    assert worst(result, "lost") > 0, "the lost instance carried none of the probe's flows"
    assert recovered <= lab.detection_budget(), result["directions"]
    assert result["tcp"]["survived"], result["tcp"]
