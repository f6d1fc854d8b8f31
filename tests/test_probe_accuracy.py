"""The outage probe measures what really happened: a blackhole held for a known window
shows up as one loss window of that length, to within 10 ms plus the time nftables takes
to apply and remove the rule (measured here, around the fault)."""
import os
import time

import pytest

RESOLUTION_MS = 10

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
    pytest.mark.vpnlab(topology="single-site-static"),
]


def test_a_known_outage_is_measured_to_10_ms(vpnlab_lab, vpnlab_scenario):
    """A 500-packet blackhole on the branch uplink, probe at 1000 packets/s on one flow."""
    lab, scenario = vpnlab_lab, vpnlab_scenario
    scenario.start(lab, "app-vm", "branch-host", flows=1, tcp=False)
    t0 = time.monotonic_ns()
    lab.fail("blackhole", "branch:pub")
    t1 = time.monotonic_ns()
    scenario.wait_probe_packets(500, t1)
    t2 = time.monotonic_ns()
    lab.heal("blackhole:branch:pub")
    t3 = time.monotonic_ns()
    result = scenario.stop(t0)
    shortest, longest = (t2 - t1) / 1e6, (t3 - t0) / 1e6
    for d in result["directions"]:
        assert len(d["loss_windows"]) == 1, d["loss_windows"]
        w = d["loss_windows"][0]
        measured = (w["end_s"] - w["start_s"]) * 1000
        scenario.record(f"outage {d['direction']}", round(measured, 1), "ms",
                        f"{shortest:.0f}-{longest:.0f} ms +- {RESOLUTION_MS}")
        assert shortest - RESOLUTION_MS <= measured <= longest + RESOLUTION_MS, (measured, shortest, longest)
        # the gap is timed where packets arrive, so it also holds the receiver's scheduling
        # delays on a busy 2-CPU machine (seen: up to 17 ms); the loss window above is timed
        # at the sender and is the precise figure
        assert abs(d["longest_gap_ms"] - measured) <= 3 * RESOLUTION_MS, d
