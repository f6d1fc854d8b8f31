"""The reachability matrix of the active-active design, intended (from the topology)
against observed (live FIBs and tunnel state, walked with networkx), before and after
each fault: every subnet reaches every subnet it should, none that it should not, over
as many node-disjoint paths as the design has."""
import pytest

from vpnlab.checks import routing
from vpnlab.gateway import live

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"
VNET, SITE0, SITE1 = "10.10.1.0/24", "10.20.1.0/24", "10.20.2.0/24"

# fault -> how the observed matrix must differ from the intended one while it lasts
FAULTS = {
    "instance hub-gw-in0 planned": (("instance", "hub-gw-in0", {"planned": True}), {
        f"{VNET} -> {SITE0}": {"reaches": True, "paths": 1}, f"{SITE0} -> {VNET}": {"reaches": True, "paths": 1},
        f"{VNET} -> {SITE1}": {"reaches": True, "paths": 1}, f"{SITE1} -> {VNET}": {"reaches": True, "paths": 1}}),
    "device onprem-dev1 lost": (("device", "onprem-dev1", {}), {
        f"{VNET} -> {SITE1}": {"reaches": False}, f"{SITE1} -> {VNET}": {"reaches": False},
        f"{VNET} -> {SITE0}": {"reaches": True, "paths": 2}}),
    "carrier onprem-dev0:t0": (("carrier", "onprem-dev0:t0", {}), {
        f"{SITE0} -> {VNET}": {"reaches": True, "paths": 1}, f"{VNET} -> {SITE1}": {"reaches": True, "paths": 2}}),
}


def test_intended_matrix_holds_and_pings_agree(lab, scenario):
    """Converged: the observed matrix is the intended one (VNet <-> both sites over two
    disjoint paths each, site <-> site not at all: both sites use ASN 65010, so BGP loop
    prevention stops transit), and the data plane agrees: pings answer exactly where the
    matrix says it reaches."""
    want = routing.intended(lab.plan, lab.topology)
    seen = routing.observe(lab.backend, lab.plan, lab.topology)
    scenario.record("pairs checked", len(want))
    assert routing.problems(want, seen) == []
    assert want[f"{SITE0} -> {SITE1}"]["reaches"] is False
    hosts = {VNET: "vm1", SITE0: "onprem-dev0-host", SITE1: "onprem-dev1-host"}
    for pair, w in want.items():
        src, dst = pair.split(" -> ")
        answered = live.ping(lab.backend, hosts[src], lab.node(hosts[dst]).address, count=1, timeout=1)
        assert answered == w["reaches"], f"{pair}: ping {'answered' if answered else 'failed'}"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_matrix_after_fault(lab, scenario, fault):
    """During the fault the matrix changes exactly as the design predicts (paths lost,
    pairs unreachable); after healing it is the intended one again."""
    (kind, target, params), during = FAULTS[fault]
    want = routing.intended(lab.plan, lab.topology)
    before = routing.observe(lab.backend, lab.plan, lab.topology)
    scenario.fail(kind, target, **params)
    after = lab.eventually(lambda: routing.observe(lab.backend, lab.plan, lab.topology), during,
                           "session_down", f"the matrix to reflect {fault}")
    for change in routing.changes(before, after):
        scenario.event(change, "state")
    scenario.record("changes", len(routing.changes(before, after)))
    scenario.heal()
    scenario.wait_converged()
    healed = lab.eventually(lambda: routing.observe(lab.backend, lab.plan, lab.topology),
                            {k: {"reaches": v["reaches"], "paths": v["paths"]} for k, v in want.items()},
                            "reconverge", "the intended matrix after healing")
    assert routing.problems(want, healed) == []
