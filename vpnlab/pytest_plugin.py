"""pytest plugin (entry point `pytest11`): real labs as fixtures, scenario records, and
the report. Any repository can write scenarios against its own topology files:

    import pytest
    pytestmark = pytest.mark.vpnlab(topology="designs/my-design.yaml", runtimes=["netns"])

    def test_failover(vpnlab_lab, vpnlab_scenario):
        vpnlab_scenario.start(vpnlab_lab, "vm1", "branch-host")
        at = vpnlab_scenario.fail("instance", "hub-gw-in0", planned=True)
        vpnlab_scenario.wait_flowing(at)
        ...

Fixtures: `vpnlab_lab` (one lab per module), `vpnlab_factory` (several labs),
`vpnlab_scenario` (the record of one test). Nothing else is imposed on a session: no
JUnit file unless asked for, results and report only where scenarios ran. A module's
topology: its `vpnlab` marker, else module-level LAB_TOPOLOGY (and LAB_RUNTIMES), else
--vpnlab-topology, else the shipped default. A lab that cannot run here (not root, the
daemons or the runtime missing) skips its tests with the reason; VPNLAB_REQUIRE_RUNTIMES
(comma-separated) makes those runtimes fail instead, for CI.

Teardown always happens before anything about daemon errors is asserted; after every
test the lab must be as it was (no fault left, converged, one SA per tunnel end, no
helper process), and after every module nothing of the lab may be left.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import pytest

from vpnlab import engine
from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.model import shipped
from vpnlab.model.defaults import defaults
from vpnlab.runtime import procs, registry
from vpnlab.runtime.daemons import PROBE, RADIUS
from vpnlab.runtime.state import lab_dir, load_state
from vpnlab.scenario import LabHandle, Scenario

DAEMON_ERRORS = re.compile(r"segmentation violation|killing ourself|Received signal 11|"
                           r"Backtrace for|assertion .* failed|core dumped|Traceback \(most recent", re.I)
LAB_DAEMONS = {"charon", "zebra", "staticd", "bgpd", "agent", "openvpn", PROBE, RADIUS}


MARKER = ("vpnlab(topology=None, runtimes=None, timers=None): the module's lab (set it as the "
          "module's pytestmark): a topology file (relative to the test file, rootdir or the working "
          "folder) or a shipped topology's name, the runtimes to run the module on, the timer profile")


def pytest_addoption(parser):
    g = parser.getgroup("vpnlab", "vpnlab labs and scenarios")
    g.addoption("--vpnlab-topology", help="topology of modules that name none (default: the shipped "
                                          f"{shipped.DEFAULT})")
    g.addoption("--vpnlab-keep", action="store_true", help="leave labs up after the tests")
    g.addoption("--vpnlab-on-error", choices=["teardown", "pause"], default="teardown",
                help="pause: on a failure, keep the lab and wait for Enter before teardown")
    g.addoption("--vpnlab-timers", choices=sorted(defaults()["timers"]), default="fast")
    g.addoption("--vpnlab-runtime", choices=registry.names(), default=registry.DEFAULT,
                help="runtime of the labs (a module's marker or LAB_RUNTIMES overrides it)")
    g.addoption("--vpnlab-results", default="reports/vpnlab-results.json",
                help="scenario results as JSON, written when scenarios ran ('vpnlab report' renders them)")
    g.addoption("--vpnlab-report", default="reports/vpnlab-report.html",
                help="HTML report, written when scenarios ran")


def pytest_configure(config):
    config._vpnlab = {"scenarios": [], "labs": {}}
    config.addinivalue_line("markers", MARKER)


# ------------------------------------------------------------------ labs
def _module_settings(node) -> dict:
    """The module's lab: its vpnlab marker, else its LAB_TOPOLOGY / LAB_RUNTIMES."""
    mark = node.get_closest_marker("vpnlab")
    settings = dict(mark.kwargs) if mark else {}
    module = getattr(node, "module", None)
    settings.setdefault("topology", getattr(module, "LAB_TOPOLOGY", None))
    settings.setdefault("runtimes", getattr(module, "LAB_RUNTIMES", None))
    return settings


def _lab_name(module, runtime: str | None = None) -> str:
    """sc-<module>[-<runtime>][-<xdist worker>], at most 32 characters: two workers never
    share (or tear down) a lab."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", Path(module.__file__).stem.removeprefix("test_"))
    suffix = "".join(f"-{s}" for s in (runtime, os.environ.get("PYTEST_XDIST_WORKER")) if s)
    return ("sc-" + stem)[:32 - len(suffix)] + suffix


def _topology(request, wanted) -> Path:
    wanted = wanted or request.config.getoption("--vpnlab-topology")
    if wanted is None:
        return shipped.default()
    for base in (Path(request.module.__file__).parent, Path(request.config.rootpath), Path.cwd()):
        if (base / wanted).exists():
            return base / wanted
    found = shipped.resolve(wanted)
    if found.exists():
        return found
    raise pytest.UsageError(f"{request.module.__file__}: vpnlab topology {wanted!r} not found")


def pytest_generate_tests(metafunc):
    """A module whose marker (or LAB_RUNTIMES) names runtimes runs its tests once per
    runtime."""
    runtimes = _module_settings(metafunc.definition).get("runtimes")
    if runtimes and "vpnlab_lab" in metafunc.fixturenames:
        metafunc.parametrize("vpnlab_lab", [runtime_param(r) for r in runtimes], indirect=True,
                             scope="module")


def runtime_param(runtime: str):
    """A pytest param for a runtime, skipped with the reason where its labs cannot run."""
    why = cannot_run(runtime)
    return pytest.param(runtime, id=runtime, marks=[pytest.mark.skip(reason=f"vpnlab: {why}")] if why else [])


def cannot_run(runtime: str) -> str | None:
    """Why a lab of this runtime cannot run here (not root, the daemons or the runtime
    missing), or None; None too when VPNLAB_REQUIRE_RUNTIMES names it (CI, where the
    Makefile installed it: the test fails with the runtime's own error)."""
    if runtime in os.environ.get("VPNLAB_REQUIRE_RUNTIMES", "").split(","):
        return None
    if os.geteuid() != 0:
        return "needs root: a lab creates network namespaces and starts daemons"
    why = registry.unavailable(runtime)
    return f"runtime {runtime}: {why}" if why else None


def _bring_up(config, topology: Path, name: str, timers: str | None,
              runtime: str | None = None) -> LabHandle:
    runtime = runtime or config.getoption("--vpnlab-runtime")
    why = cannot_run(runtime)
    if why:
        pytest.skip(f"vpnlab: {why}")
    engine.down(name)                                   # leftovers of an earlier run
    engine.up(topology, name=name, timers=timers or config.getoption("--vpnlab-timers"),
              runtime=runtime)
    handle = LabHandle(name)
    config._vpnlab["labs"][name] = handle
    return handle


def _tear_down(config, handle: LabHandle):
    """down first, then assert: nothing left, and no daemon crashed on its own."""
    config._vpnlab["labs"].pop(handle.name, None)
    if config.getoption("--vpnlab-keep"):
        print(f"\nvpnlab: --vpnlab-keep: lab {handle.name} left up ('vpnlab down --name {handle.name}')")
        return
    logs = {p.relative_to(lab_dir(handle.name)).as_posix(): p.read_text(errors="replace")
            for p in lab_dir(handle.name).rglob("*.log")}
    handle.close()
    problems = engine.down(handle.name)
    left = leftovers(handle.name)
    crashes = [f"{path}: {excerpt}" for path, text in logs.items() for excerpt in _crash_excerpts(text)]
    recovered = [line for line in logs.get("agent.log", "").splitlines() if " ERROR " in line]
    if recovered:      # the agent went on, and the tests judged what it did: said, not failed
        warnings.warn(f"lab {handle.name}: the gateway's agent recovered from unexpected errors:\n"
                      + "\n".join(recovered[:10]), stacklevel=1)
    assert not problems and not left, f"lab {handle.name} left things behind: {problems} {left}"
    assert not crashes, "daemons reported errors:\n" + "\n".join(crashes[:20])


def _crash_excerpts(text: str, most: int = 40) -> list[str]:
    """Each crash a log reports, with what follows it: a Python traceback up to its
    last line, which names the exception (so that a CI log alone says what went wrong)."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if DAEMON_ERRORS.search(line):
            end = i + 1
            while end < min(len(lines), i + most) and lines[end][:1].isspace():
                end += 1
            found.append("\n    ".join(x.rstrip() for x in lines[i:end + 1]))
    return found


def leftovers(name: str) -> dict:
    """What of a lab is still on the machine (empty after a clean down)."""
    return {k: v for k, v in {**registry.leftovers(name), "processes": procs.tagged(name),
                              "files": lab_dir(name).exists()}.items() if v}


@pytest.fixture(scope="session")
def vpnlab_factory(request):
    """make(topology, name=None, timers=None, runtime=None) -> LabHandle, for tests that
    need several labs or one of their own; torn down at session end."""
    made = []
    worker = os.environ.get("PYTEST_XDIST_WORKER")

    def make(topology, name: str | None = None, timers: str | None = None,
             runtime: str | None = None) -> LabHandle:
        topology = shipped.resolve(topology)
        name = name or topology.stem
        if worker:
            name = f"{name[:31 - len(worker)]}-{worker}"
        handle = _bring_up(request.config, topology, name, timers, runtime)
        made.append(handle)
        return handle
    yield make
    for handle in made:
        if handle.name in request.config._vpnlab["labs"]:
            _tear_down(request.config, handle)


@pytest.fixture(scope="module")
def vpnlab_lab(request):
    """The module's lab, up before its first test and down after its last."""
    settings = _module_settings(request.node)
    runtime = getattr(request, "param", None) or request.config.getoption("--vpnlab-runtime")
    # the default runtime's labs keep the plain name
    name = _lab_name(request.module, runtime if runtime != registry.DEFAULT else None)
    handle = _bring_up(request.config, _topology(request, settings.get("topology")), name,
                       settings.get("timers"), runtime)
    yield handle
    _tear_down(request.config, handle)


# ------------------------------------------------------------------ scenarios
@pytest.fixture
def vpnlab_scenario(request):
    """The record of one test: timeline, numbers, probes; in the results and the report."""
    doc = (request.function.__doc__ or "").strip()
    sc = Scenario(request.node.name, re.sub(r"\s+", " ", doc.split("\n\n")[0]))
    request.node._vpnlab_scenario = sc
    if "vpnlab_lab" in request.fixturenames:
        sc.lab = request.getfixturevalue("vpnlab_lab")
    yield sc
    sc.stop()
    if sc.lab is not None:
        sc.logs = _logs(sc.lab, sc.nodes)


def _logs(handle: LabHandle, nodes: set[str], lines: int = 60) -> dict[str, str]:
    secrets = [c.shared_key.get_secret_value() for c in handle.topology.connections.values()]
    out = {}
    for node in sorted(nodes):
        for name in ("charon.log", "frr.log"):
            path = handle.backend.node_dir(node) / name
            if path.exists():
                text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                for s in secrets:
                    text = text.replace(s, "<redacted>")
                out[f"{node}/{name}"] = text
    return out


@pytest.fixture(autouse=True)
def _lab_hygiene(request):
    """After a test that used a lab: no fault left, converged again, exactly one IKE SA
    and one CHILD SA per tunnel end, no helper process (probe, iperf3, capture) left."""
    yield
    if "vpnlab_lab" not in request.fixturenames:
        return
    handle = request.getfixturevalue("vpnlab_lab")
    problems = []
    left = handle.active_faults()
    if left:
        problems.append(f"faults left injected: {left} (healed now)")
        handle.heal()
    try:
        handle.wait_converged()
    except LabError as err:
        problems.append(str(err))
    try:
        ends = {e: t for t in handle.plan.tunnels if t.managed for e in (t.azure_end, t.onprem_end)}
        handle.eventually(lambda: _sa_counts(handle, ends), {e: "as planned" for e in ends},
                          "reconverge", "one IKE SA and one CHILD SA per tunnel end")
    except AssertionError as err:
        problems.append(str(err))
    state = load_state(handle.name) or handle.state
    daemons = {p["pid"] for p in state.processes if p["daemon"] in LAB_DAEMONS}
    helpers = [p for p in procs.tagged(handle.name) if p not in daemons]
    if helpers:
        problems.append(f"helper processes left running: {helpers}")
        handle.backend.end(helpers)
    assert not problems, "; ".join(problems)


def _sa_counts(handle: LabHandle, ends: dict) -> dict:
    """Tunnel end -> "as planned", else [IKE SAs, CHILD SAs]. As planned: one IKE SA and
    one CHILD SA; policy-based, one CHILD SA per selector pair, or none at all while the
    tunnel is idle (torn down after policy_based_idle)."""
    out = {}
    for end, tunnel in ends.items():
        sas = live.ike_sas(handle.backend, end)
        got = [len(sas), sum(len(ike.get("child-sas", {})) for ike in sas)]
        pairs = len(handle.plan.nodes[end].charon["children"])
        planned = [[1, pairs], [0, 0]] if tunnel.policy_based else [[1, 1]]
        out[end] = "as planned" if got in planned else got
    return out


# ------------------------------------------------------------------ reporting
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    sc = getattr(item, "_vpnlab_scenario", None)
    if report.failed and call.when == "call" and item.config.getoption("--vpnlab-on-error") == "pause":
        _pause(item)
    if sc is None:
        return
    if report.when == "call" or report.failed:
        sc.outcome = "failed" if report.failed else report.outcome
        if report.failed:
            sc.failure = str(report.longrepr)[-3000:]
    if report.when == "teardown":
        record = sc.to_json()
        record.update(nodeid=item.nodeid, outcome=getattr(sc, "outcome", report.outcome),
                      failure=getattr(sc, "failure", None), logs=getattr(sc, "logs", {}))
        item.config._vpnlab["scenarios"].append(record)


def _pause(item):
    labs = ", ".join(item.config._vpnlab["labs"]) or "none"
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman:
        capman.suspend_global_capture(in_=True)
    print(f"\nvpnlab: {item.nodeid} failed; labs kept up for inspection: {labs}\n"
          f"  vpnlab status --name NAME / vpnlab exec --name NAME NODE -- CMD")
    if sys.stdin.isatty():
        input("press Enter to tear down and go on ")
    else:
        print("vpnlab: stdin is not a terminal: not pausing")
    if capman:
        capman.resume_global_capture()


def pytest_sessionfinish(session):
    data = session.config._vpnlab
    if not data["scenarios"]:
        return
    from vpnlab.checks.report import write_html
    results = {"generated_at": time.time(), "machine": _machine(), "scenarios": data["scenarios"]}
    path = Path(session.config.getoption("--vpnlab-results"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    html = Path(session.config.getoption("--vpnlab-report"))
    write_html(results, html)
    tr = session.config.pluginmanager.getplugin("terminalreporter")
    if tr:
        tr.write_line(f"vpnlab: results {path}, report {html}")


def _machine() -> dict:
    import os
    import platform
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
