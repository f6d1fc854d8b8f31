"""The pytest plugin itself, run in an inner pytest session against a real lab: a test
that leaves a fault behind fails (and the fault is healed for the next test), results
and report are written, --lab-on-error pause stops at a failure (not without a
terminal), and --keep-lab keeps the lab."""
import json
import os
from pathlib import Path

import pytest

from vpnlab import engine
from vpnlab.runtime import procs
from vpnlab.runtime.backend import lab_namespaces

pytest_plugins = ["pytester"]
STATIC = Path(__file__).parent.parent / "topologies/single-site-static.yaml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]

INNER = f'''
LAB_TOPOLOGY = "{STATIC}"

def test_leaves_a_fault_behind(lab, scenario):
    """Injects a fault and forgets it."""
    scenario.fail("carrier", "branch:t0")

def test_finds_the_lab_healed(lab):
    assert lab.active_faults() == []
    assert lab.convergence() == []

def test_fails(lab):
    assert lab.node("branch").exec("false").returncode == 0
'''


def test_a_test_that_leaves_a_fault_fails_and_the_next_finds_the_lab_clean(pytester):
    pytester.makepyfile(test_plugin_inner=INNER)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--lab-results", "r.json",
                                        "--lab-report", "r.html", "--lab-on-error", "pause", timeout=300)
    res.assert_outcomes(passed=2, errors=1, failed=1)
    res.stdout.fnmatch_lines(["*faults left injected:*carrier:branch:t0*(healed now)*"])
    res.stdout.fnmatch_lines(["*test_fails failed; labs kept up for inspection: sc-plugin_inner*",
                              "*stdin is not a terminal: not pausing*"])
    results = json.loads((pytester.path / "r.json").read_text())
    assert [s["name"] for s in results["scenarios"]] == ["test_leaves_a_fault_behind"]
    assert results["scenarios"][0]["outcome"] == "failed"
    assert "fault injected: carrier:branch:t0" in (pytester.path / "r.html").read_text()
    assert (pytester.path / "reports/junit.xml").exists(), "JUnit XML by default"
    assert not lab_namespaces("sc-plugin_inner") and not procs.tagged("sc-plugin_inner")


def test_keep_lab_leaves_the_lab_up(pytester):
    pytester.makepyfile(test_kept=f'LAB_TOPOLOGY = "{STATIC}"\n\ndef test_up(lab):\n    assert lab.convergence() == []\n')
    try:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--keep-lab", timeout=300)
        res.assert_outcomes(passed=1)
        res.stdout.fnmatch_lines(["*--keep-lab: lab sc-kept left up*"])
        assert engine.status("sc-kept")["tunnels"][0]["state"] == "ESTABLISHED"
    finally:
        assert engine.down("sc-kept") == []
