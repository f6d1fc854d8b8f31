"""The saved plan (plan.json): golden documents for the shipped topologies (netlab's
transformation tests are the model; regenerate with VPNLAB_UPDATE_GOLDEN=1 and review),
a plan that reads back renders the same configs, and the effective timers that the
renderer and the scenarios share."""
import json
import os
import stat
from pathlib import Path

import pytest

from vpnlab.errors import LabError
from vpnlab.model.topology import load
from vpnlab.plan import document
from vpnlab.plan.build import build
from vpnlab.plan.render import render

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden-plans"
TOPOLOGIES = sorted((ROOT / "topologies").glob("*.yaml"))
NODES_DIR = Path("/var/lib/vpnlab/golden/nodes")


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_plan_matches_golden(path):
    got = json.dumps(document.redacted(build(load(path), "azure")), indent=1) + "\n"
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("VPNLAB_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(got)
    assert got == golden.read_text(), f"the plan of {path.name} differs from {golden}"
    assert "(secret)" in got or "connections" not in path.read_text()


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_a_saved_plan_reads_back_and_renders_the_same(path, tmp_path):
    plan = build(load(path), "fast")
    document.save(plan, tmp_path / "plan.json")
    again = document.load(tmp_path / "plan.json")
    assert json.dumps(document.to_dict(again)) == json.dumps(document.to_dict(plan))
    assert render(again, NODES_DIR) == render(plan, NODES_DIR)
    assert stat.S_IMODE((tmp_path / "plan.json").stat().st_mode) == 0o600   # shared keys inside


def test_a_file_that_is_not_a_plan_is_refused(tmp_path):
    (tmp_path / "plan.json").write_text('{"nodes": {}}')
    with pytest.raises(LabError, match="not a vpnlab plan"):
        document.load(tmp_path / "plan.json")


def test_the_dpd_bound_is_the_connections_own(tmp_path):
    """With Azure's timers a connection's dpd_timeout_seconds is what charon runs, and
    what a scenario waits for (it used to take Azure's default of 45 s)."""
    text = (ROOT / "topologies/single-site-static.yaml").read_text()
    assert "dpd_timeout_seconds: 45" in text
    path = tmp_path / "slow-dpd.yaml"
    path.write_text(text.replace("dpd_timeout_seconds: 45", "dpd_timeout_seconds: 3600"))
    plan = build(load(path), "azure")
    assert plan.timers["dpd_timeout"] == 3600
    assert {t.dpd_timeout for t in plan.tunnels} == {3600}
    swan = render(plan, NODES_DIR)[plan.tunnels[0].azure_end]["swanctl.conf"]
    assert "dpd_delay = 1200s" in swan
    assert build(load(path), "fast").timers["dpd_timeout"] == 9     # the fast profile's own


@pytest.mark.parametrize("generation, rated", [(None, 1250), ("Generation2", 1250), ("Generation1", 1000)])
def test_the_throughput_cap_follows_the_gateway_generation(tmp_path, generation, rated):
    """VpnGw2 is rated 1 Gbit/s in Generation1 and 1.25 in Generation2 [2.1]; without a
    generation the lab takes the SKU's newest."""
    text = (ROOT / "topologies/active-active-bgp.yaml").read_text()
    if generation:
        text = text.replace("    sku: VpnGw2\n", f"    sku: VpnGw2\n    generation: {generation}\n")
    (tmp_path / "t.yaml").write_text(text)
    plan = build(load(tmp_path / "t.yaml"))
    assert {n.shaping_mbps for n in plan.nodes.values() if n.role == "gateway-instance"} == {rated}


def test_hub_gateway_routes_and_advertises_its_spokes():
    """Gateway transit [PEER]: the instances route the spokes to the hub's router and
    advertise them, the spokes' routers peer with both instances, clients get the
    spokes pushed, and on-prem hosts are pinged from spoke VMs (not from subnets behind
    a route table, which the routing checks cover)."""
    plan = build(load(ROOT / "topologies/hub-spoke.yaml"))
    inst = plan.nodes["hub-gw-in0"]
    assert {"10.11.0.0/16", "10.12.0.0/16"} <= set(inst.frr.networks)
    assert "10.13.0.0/16" not in inst.frr.networks           # spoke3: no gateway transit
    sessions = {(s.node, s.peer_node) for s in plan.bgp}
    assert {("spoke1-sdn", "hub-gw-in0"), ("spoke1-sdn", "hub-gw-in1"), ("hub-gw-in0", "spoke2-sdn")} <= sessions
    assert not any("spoke3-sdn" in pair for pair in sessions)
    pings = set(plan.pings)
    assert ("app1", "10.20.1.10") in pings and ("web1", "10.20.1.10") not in pings
    assert {"10.11.0.0/16", "10.12.0.0/16"} <= set(plan.clients[0].pushed)
