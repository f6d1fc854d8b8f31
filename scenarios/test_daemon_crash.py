"""Daemons crashing on the active-active design: the charon of one tunnel end, and the
bgpd of a gateway instance. Each is killed with SIGKILL and restarted when healed."""
from vpnlab.checks.probe import worst

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
FLOWS = 8
SESSION_RESET_S = 2         # a dead bgpd's kernel closes its TCP sessions: peers know at once


def test_charon_crash_on_the_azure_side(lab, scenario):
    """The charon of the busiest tunnel's Azure end dies. Its ESP SAs vanish with it, so
    the tunnel is silently dead: the device's BGP hold timer (and DPD) move traffic to the
    other tunnel. After restart the device re-establishes the tunnel by itself."""
    scenario.start(lab, "vm1", "onprem-dev0-host", flows=FLOWS)
    tunnel = lab.busiest_tunnel("onprem-dev0")
    end = next(t.azure_end for t in lab.plan.tunnels if t.name == tunnel)
    at = scenario.fail("crash", end, daemon="charon")
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    scenario.heal()
    scenario.record("tunnel back after restart", scenario.wait_converged(), "s")
    result = scenario.stop(at)
    scenario.record(f"outage (charon of {end} killed)", worst(result, "recovered_s"), "s",
                    f"<= {lab.detection_budget()} s")
    assert worst(result, "lost") > 0, f"{tunnel} carried none of the probe's flows"
    assert worst(result, "recovered_s") <= lab.detection_budget(), result["directions"]
    assert result["tcp"]["survived"], result["tcp"]


def test_bgpd_crash_on_a_gateway_instance(lab, scenario):
    """bgpd of instance 0 dies. zebra drops its routes and the kernel closes its TCP
    sessions, so the VNet and the devices move to instance 1 within moments, not after a
    hold timer."""
    scenario.start(lab, "vm1", "onprem-dev0-host", flows=FLOWS)
    at = scenario.fail("crash", "hub-gw-in0", daemon="bgpd")
    scenario.record("traffic recovered after", scenario.wait_flowing(at), "s")
    scenario.heal()
    scenario.record("reconverged after restart", scenario.wait_converged(), "s")
    result = scenario.stop(at)
    scenario.record("outage (bgpd of hub-gw-in0 killed)", worst(result, "recovered_s"), "s",
                    f"<= {SESSION_RESET_S} s")
    assert worst(result, "recovered_s") <= SESSION_RESET_S, result["directions"]
