"""Faults on the on-prem side of the active-active design: a device lost, one of a
device's tunnels failing loudly (carrier) or silently (blackhole), a lossy uplink, and
link delay where the kernel has netem."""
import pytest

from vpnlab.checks.probe import worst
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
FLOWS = 8
AT_ONCE_S = 1.0             # "routes withdraw at once": well under any timer


def test_device_loss_leaves_the_other_site_untouched(lab, scenario):
    """onprem-dev1 loses power. Its site becomes unreachable, the gateway withdraws its
    prefix from the VNet when the BGP hold timer expires, and the other site's traffic
    (vm1 <-> onprem-dev0-host) does not lose a packet."""
    scenario.start(lab, "vm1", "onprem-dev0-host", flows=FLOWS)
    at = scenario.fail("device", "onprem-dev1")
    lab.eventually(lambda: live.fib_prefixes(lab.backend, "hub-sdn"), {"10.20.2.0/24": None},
                   "session_down", "the VNet to withdraw the lost site's prefix")
    withdrawn = scenario.event("VNet withdrew 10.20.2.0/24", "state")
    scenario.record("lost site withdrawn from the VNet after", round((withdrawn - at) / 1e9, 3), "s",
                    f"<= {lab.detection_budget()} s")
    assert not live.ping(lab.backend, "vm1", lab.node("onprem-dev1-host").address, count=1, timeout=1)
    scenario.heal()
    scenario.record("reconverged after heal", scenario.wait_converged(), "s")
    assert live.ping(lab.backend, "vm1", lab.node("onprem-dev1-host").address, count=2)
    result = scenario.stop(at)
    scenario.record("other site's probe loss", worst(result, "lost"), "packets", "0")
    assert (withdrawn - at) / 1e9 <= lab.detection_budget()
    assert worst(result, "lost") == 0, result["directions"]


@pytest.mark.parametrize("kind", ["carrier", "blackhole"])
def test_carrier_loss_vs_silent_blackhole(lab, scenario, kind):
    """One of onprem-dev0's two tunnels fails. Carrier loss on the device's tunnel
    interface withdraws the device's routes at once, so device -> VNet recovers in
    milliseconds while the gateway keeps sending until its hold timer expires. A silent
    blackhole of the same tunnel's underlay keeps carrier up: only BGP hold and DPD
    notice, so both directions stop for seconds."""
    scenario.start(lab, "vm1", "onprem-dev0-host", flows=FLOWS)
    tunnel = lab.busiest_tunnel("onprem-dev0")
    router, inner, underlay = lab.tunnel_links(tunnel)["onprem"]
    target = f"{router}:{inner if kind == 'carrier' else underlay}"
    at = scenario.fail(kind, target)
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    scenario.heal()
    scenario.wait_converged()
    result = scenario.stop(at)
    out, back = (d for d in result["directions"])          # vm1 -> device, device -> vm1
    scenario.record(f"{kind} on {target}: outage VNet -> device", out["recovered_s"], "s", f"<= {lab.detection_budget()} s")
    scenario.record(f"{kind} on {target}: outage device -> VNet", back["recovered_s"], "s",
                    f"<= {AT_ONCE_S} s" if kind == "carrier" else f"<= {lab.detection_budget()} s")
    assert worst(result, "lost") > 0, f"{tunnel} carried none of the probe's flows"
    assert worst(result, "recovered_s") <= lab.detection_budget(), result["directions"]
    if kind == "carrier":
        assert back["recovered_s"] <= AT_ONCE_S, back
    else:
        # nothing tells the routers: the outage lasts until a timer (>= one keepalive)
        assert worst(result, "recovered_s") >= lab.timer("bgp_keepalive"), result["directions"]


def test_lossy_uplink(lab, scenario):
    """onprem-dev0's internet uplink drops 20 % of packets (nftables, both directions).
    Every probe packet crosses it once per direction, so each direction loses about 20 %
    and the tunnels and sessions stay up."""
    scenario.start(lab, "vm1", "onprem-dev0-host", tcp=False)
    at = scenario.fail("loss", "onprem-dev0:pub", percent=20)
    scenario.wait_probe_packets(3000, at)
    healed = scenario.heal()
    result = scenario.stop(at, healed)
    assert lab.convergence() == [], "a 20 % loss must not take tunnels or sessions down"
    for d in result["directions"]:
        share = d["window"]["lost"] / d["window"]["sent"] * 100
        scenario.record(f"loss {d['direction']}", round(share, 1), "%", "12-28 %")
        assert 12 <= share <= 28, d


def test_delay_needs_netem(lab, scenario):
    """Delay and jitter need the kernel's netem. Where it exists, 50 ms on onprem-dev0's
    uplink adds 50 ms to the round trip; where it does not, the fault is refused with
    the reason and this scenario is skipped."""
    if not lab.backend.kernel_has_netem():
        with pytest.raises(Exception, match="no netem"):
            lab.fail("delay", "onprem-dev0:pub", delay_ms=50)
        assert lab.active_faults() == []
        pytest.skip("this kernel has no netem (sch_netem): delay/jitter cannot be emulated")
    rtt = lambda: _rtt(lab)
    base = rtt()
    scenario.fail("delay", "onprem-dev0:pub", delay_ms=50)
    delayed = rtt()
    scenario.heal()
    scenario.record("round trip added", round(delayed - base, 1), "ms", "45-80 ms")
    assert 45 <= delayed - base <= 80


def _rtt(lab) -> float:
    res = lab.node("vm1").exec(["ping", "-n", "-q", "-c", "5", "-i", "0.2", lab.node("onprem-dev0-host").address])
    return float(res.stdout.rsplit("=", 1)[1].split("/")[1])
