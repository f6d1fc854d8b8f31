"""The pytest plugin itself, run in inner pytest sessions: against a real lab, a test
that leaves a fault behind fails (and the fault is healed for the next test), results
and report are written, --vpnlab-on-error pause stops at a failure (not without a
terminal), and --vpnlab-keep keeps the lab. In anybody's suite it imposes nothing: a
fixture of theirs named `lab` is theirs, no JUnit file unless asked for, its marker is
registered, and where a lab cannot run its tests skip with the reason."""
import json
import os
from pathlib import Path

import pytest

from vpnlab import engine, pytest_plugin
from vpnlab.runtime import procs
from vpnlab.runtime.backend import lab_namespaces

pytest_plugins = ["pytester"]
STATIC = Path(__file__).parent.parent / "topologies/single-site-static.yaml"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces")

INNER = f'''
import pytest

pytestmark = pytest.mark.vpnlab(topology="{STATIC}")

def test_leaves_a_fault_behind(vpnlab_lab, vpnlab_scenario):
    """Injects a fault and forgets it."""
    vpnlab_scenario.fail("carrier", "branch:t0")

def test_finds_the_lab_healed(vpnlab_lab):
    assert vpnlab_lab.active_faults() == []
    assert vpnlab_lab.convergence() == []

def test_fails(vpnlab_lab):
    assert vpnlab_lab.node("branch").exec("false").returncode == 0
'''


@pytest.mark.integration
@as_root
def test_a_test_that_leaves_a_fault_fails_and_the_next_finds_the_lab_clean(pytester):
    pytester.makepyfile(test_plugin_inner=INNER)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", "--vpnlab-results", "r.json",
                                        "--vpnlab-report", "r.html", "--vpnlab-on-error", "pause", timeout=300)
    res.assert_outcomes(passed=2, errors=1, failed=1)
    res.stdout.fnmatch_lines(["*faults left injected:*carrier:branch:t0*(healed now)*"])
    res.stdout.fnmatch_lines(["*test_fails failed; labs kept up for inspection: sc-plugin_inner*",
                              "*stdin is not a terminal: not pausing*"])
    results = json.loads((pytester.path / "r.json").read_text())
    assert [s["name"] for s in results["scenarios"]] == ["test_leaves_a_fault_behind"]
    assert results["scenarios"][0]["outcome"] == "failed"
    assert "fault injected: carrier:branch:t0" in (pytester.path / "r.html").read_text()
    assert not (pytester.path / "reports/junit.xml").exists(), "no JUnit file unless asked for"
    assert not lab_namespaces("sc-plugin_inner") and not procs.tagged("sc-plugin_inner")


@pytest.mark.integration
@as_root
def test_keep_leaves_the_lab_up(pytester):
    pytester.makepyfile(test_kept=f'LAB_TOPOLOGY = "{STATIC}"\n\n'
                                  'def test_up(vpnlab_lab):\n    assert vpnlab_lab.convergence() == []\n')
    try:
        res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "--vpnlab-keep", timeout=300)
        res.assert_outcomes(passed=1)
        res.stdout.fnmatch_lines(["*--vpnlab-keep: lab sc-kept left up*"])
        assert engine.status("sc-kept")["tunnels"][0]["state"] == "ESTABLISHED"
    finally:
        assert engine.down("sc-kept") == []


THEIRS = '''
import pytest

@pytest.fixture
def lab():
    return "their own lab"

@pytest.fixture
def scenario():
    return "their own scenario"

def test_their_fixtures_are_theirs(lab, scenario):
    assert (lab, scenario) == ("their own lab", "their own scenario")
'''


def test_a_suite_with_fixtures_named_lab_and_scenario_is_left_alone(pytester):
    """Their `lab` and `scenario` fixtures: no lab is brought up, the plugin's checks
    after each test leave them alone, no file is written."""
    pytester.makepyfile(test_theirs=THEIRS)
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", timeout=120)
    res.assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


def test_the_marker_and_options_are_registered(pytester):
    res = pytester.runpytest_subprocess("--markers")
    res.stdout.fnmatch_lines(["@pytest.mark.vpnlab(topology=None, runtimes=None, timers=None)*"])
    res = pytester.runpytest_subprocess("--help")
    res.stdout.fnmatch_lines(["*--vpnlab-topology*", "*--vpnlab-keep*", "*--vpnlab-runtime*"])


NOT_ROOT = '''
import os
os.geteuid = lambda: 1000      # the inner session runs as if not root
'''


def test_without_root_a_labs_tests_skip_with_the_reason(pytester, monkeypatch):
    """As a user without root: the module's tests skip (for every runtime it names),
    saying why; nothing is brought up and nothing fails."""
    monkeypatch.delenv("VPNLAB_REQUIRE_RUNTIMES", raising=False)     # a user's session, not CI's
    pytester.makeconftest(NOT_ROOT)
    pytester.makepyfile(test_needs_a_lab=f'''
import pytest
pytestmark = pytest.mark.vpnlab(topology="{STATIC}", runtimes=["netns", "docker"])

def test_one(vpnlab_lab):
    raise AssertionError("ran without a lab")

def test_other(vpnlab_factory):
    vpnlab_factory("single-site-static")
    raise AssertionError("ran without a lab")
''')
    res = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=120)
    res.assert_outcomes(skipped=3)
    res.stdout.fnmatch_lines(["*vpnlab: needs root: a lab creates network namespaces and starts daemons*"])


def test_lab_names_differ_per_xdist_worker_and_runtime(monkeypatch):
    class Module:
        __file__ = "/their/repo/tests/test_branch_failover_with_a_long_name.py"
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert pytest_plugin._lab_name(Module) == "sc-branch_failover_with_a_long_n"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    names = {pytest_plugin._lab_name(Module, r) for r in (None, "docker")}
    assert names == {"sc-branch_failover_with_a_lo-gw1", "sc-branch_failover_wi-docker-gw1"}
    assert all(len(n) <= 32 for n in names)
