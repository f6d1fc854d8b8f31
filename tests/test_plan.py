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
