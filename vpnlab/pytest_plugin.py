"""pytest plugin (entry point `pytest11`): real labs as fixtures, scenario records, and
the report. Any repository can write scenarios against its own topology files:

    LAB_TOPOLOGY = "topologies/my-design.yaml"     # module level, beside the tests or in rootdir

    def test_failover(lab, scenario):
        scenario.start(lab, "vm1", "branch-host")
        at = scenario.fail("instance", "hub-gw-in0", planned=True)
        scenario.wait_flowing(at)
        ...

Fixtures: `lab` (one lab per module), `lab_factory` (several labs), `scenario` (the record
of one test). Teardown always happens before anything about daemon errors is asserted;
after every test the lab must be as it was (no fault left, converged, one SA per tunnel
end, no helper process), and after every module nothing of the lab may be left.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from vpnlab import engine
from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.model.defaults import defaults
from vpnlab.runtime import procs, registry
from vpnlab.runtime.state import lab_dir, load_state
from vpnlab.scenario import LabHandle, Scenario

DAEMON_ERRORS = re.compile(r"segmentation violation|killing ourself|Received signal 11|"
                           r"Backtrace for|assertion .* failed|core dumped|Traceback \(most recent", re.I)
LAB_DAEMONS = {"charon", "zebra", "staticd", "bgpd", "agent", "openvpn"}


def pytest_addoption(parser):
    g = parser.getgroup("vpnlab", "vpnlab labs and scenarios")
    g.addoption("--keep-lab", action="store_true", help="leave labs up after the tests")
    g.addoption("--lab-on-error", choices=["teardown", "pause"], default="teardown",
                help="pause: on a failure, keep the lab and wait for Enter before teardown")
    g.addoption("--lab-timers", choices=sorted(defaults()["timers"]), default="fast")
    g.addoption("--lab-runtime", choices=registry.names(), default=registry.DEFAULT,
                help="runtime of the scenarios' labs (a module's LAB_RUNTIMES overrides it)")
    g.addoption("--lab-results", default="reports/vpnlab-results.json",
                help="scenario results as JSON ('vpnlab report' renders them)")
    g.addoption("--lab-report", default="reports/vpnlab-report.html", help="HTML report")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config._vpnlab = {"scenarios": [], "labs": {}}
    if hasattr(config.option, "xmlpath") and not config.option.xmlpath:
        config.option.xmlpath = "reports/junit.xml"     # JUnit by default


# ------------------------------------------------------------------ labs
def _lab_name(module) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", Path(module.__file__).stem.removeprefix("test_"))
    return ("sc-" + stem)[:32]


def _topology(request) -> Path:
    wanted = getattr(request.module, "LAB_TOPOLOGY", None)
    if wanted is None:
        return engine.default_topology()
    for base in (Path(request.module.__file__).parent, Path(request.config.rootpath), Path.cwd()):
        if (base / wanted).exists():
            return base / wanted
    raise pytest.UsageError(f"{request.module.__file__}: LAB_TOPOLOGY {wanted!r} not found")


def pytest_generate_tests(metafunc):
    """A module that sets LAB_RUNTIMES runs its tests once per runtime; a runtime that
    cannot run here is skipped with the reason (vpnlab.runtime.registry.unavailable)."""
    runtimes = getattr(metafunc.module, "LAB_RUNTIMES", None)
    if runtimes and "lab" in metafunc.fixturenames:
        metafunc.parametrize("lab", [runtime_param(r) for r in runtimes], indirect=True,
                             scope="module")


def runtime_param(runtime: str):
    """A pytest param for a runtime: skipped with the reason where it cannot run, or
    failed when VPNLAB_REQUIRE_RUNTIMES names it (CI, where the Makefile installed it)."""
    why = registry.unavailable(runtime)
    if why and runtime in os.environ.get("VPNLAB_REQUIRE_RUNTIMES", "").split(","):
        why = None          # required: let the test fail with the runtime's own error
    marks = [pytest.mark.skip(reason=f"runtime {runtime}: {why}")] if why else []
    return pytest.param(runtime, id=runtime, marks=marks)


def _bring_up(config, topology: Path, name: str, timers: str | None,
              runtime: str | None = None) -> LabHandle:
    runtime = runtime or config.getoption("--lab-runtime")
    engine.down(name)                                   # leftovers of an earlier run
    engine.up(topology, name=name, timers=timers or config.getoption("--lab-timers"),
              runtime=runtime)
    handle = LabHandle(name)
    config._vpnlab["labs"][name] = handle
    return handle


def _tear_down(config, handle: LabHandle):
    """down first, then assert: nothing left, and no daemon crashed on its own."""
    config._vpnlab["labs"].pop(handle.name, None)
    if config.getoption("--keep-lab"):
        print(f"\nvpnlab: --keep-lab: lab {handle.name} left up ('vpnlab down --name {handle.name}')")
        return
    logs = {p.relative_to(lab_dir(handle.name)).as_posix(): p.read_text(errors="replace")
            for p in lab_dir(handle.name).rglob("*.log")}
    handle.close()
    problems = engine.down(handle.name)
    left = leftovers(handle.name)
    crashes = [f"{path}: {line.strip()}" for path, text in logs.items()
               for line in text.splitlines() if DAEMON_ERRORS.search(line)]
    assert not problems and not left, f"lab {handle.name} left things behind: {problems} {left}"
    assert not crashes, "daemons reported errors:\n" + "\n".join(crashes[:20])


def leftovers(name: str) -> dict:
    """What of a lab is still on the machine (empty after a clean down)."""
    return {k: v for k, v in {**registry.leftovers(name), "processes": procs.tagged(name),
                              "files": lab_dir(name).exists()}.items() if v}


@pytest.fixture(scope="session")
def lab_factory(request):
    """make(topology, name=None, timers=None) -> LabHandle; torn down at session end."""
    made = []

    def make(topology, name: str | None = None, timers: str | None = None) -> LabHandle:
        handle = _bring_up(request.config, Path(topology), name or Path(topology).stem, timers)
        made.append(handle)
        return handle
    yield make
    for handle in made:
        if handle.name in request.config._vpnlab["labs"]:
            _tear_down(request.config, handle)


@pytest.fixture(scope="module")
def lab(request):
    runtime = getattr(request, "param", None) or request.config.getoption("--lab-runtime")
    name = _lab_name(request.module)
    if runtime != registry.DEFAULT:          # the default runtime's labs keep the plain name
        name = f"{name[:32 - len(runtime) - 1]}-{runtime}"
    handle = _bring_up(request.config, _topology(request), name, None, runtime)
    yield handle
    _tear_down(request.config, handle)


# ------------------------------------------------------------------ scenarios
@pytest.fixture
def scenario(request):
    doc = (request.function.__doc__ or "").strip()
    sc = Scenario(request.node.name, re.sub(r"\s+", " ", doc.split("\n\n")[0]))
    request.node._vpnlab_scenario = sc
    if "lab" in request.fixturenames:
        sc.lab = request.getfixturevalue("lab")
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
    if "lab" not in request.fixturenames:
        return
    handle = request.getfixturevalue("lab")
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
    if report.failed and call.when == "call" and item.config.getoption("--lab-on-error") == "pause":
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
    path = Path(session.config.getoption("--lab-results"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    html = Path(session.config.getoption("--lab-report"))
    write_html(results, html)
    tr = session.config.pluginmanager.getplugin("terminalreporter")
    if tr:
        tr.write_line(f"vpnlab: results {path}, report {html}")


def _machine() -> dict:
    import os
    import platform
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
