"""vpnlab from someone else's repository (examples/ci-suite stands for it): the wheel,
built from the checkout and installed without extras in a fresh venv outside it, in a
folder that also has its own `lab/` package (a name that once shadowed ours), brings up
the design that comes with it (`vpnlab up` without a file), reports it as JSON, takes it
down, and runs that repository's own suite through the plugin against a real lab."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LAB = "wheel-default"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]


def run(argv, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kw)
    if check:
        assert res.returncode == 0, f"{argv[:4]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def their_repo(tmp_path_factory) -> Path:
    """examples/ci-suite with its own `lab/` package, and a venv holding the wheel alone
    (no extras) and pytest."""
    tmp = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT])
    wheel = next((tmp / "dist").glob("vpnlab-*.whl"))
    repo = tmp / "their-repo"
    shutil.copytree(ROOT / "examples/ci-suite", repo)
    (repo / "lab").mkdir()
    (repo / "lab" / "__init__.py").write_text("raise ImportError('their own lab package, not vpnlab')\n")
    (repo / "lab" / "agent.py").write_text("raise SystemExit('their own lab.agent ran')\n")
    run([sys.executable, "-m", "venv", repo / ".venv"])
    run([repo / ".venv/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, "pytest"],
        cwd=repo)
    return repo


def test_the_wheel_brings_up_its_default_design_and_takes_it_down(their_repo):
    vpnlab = their_repo / ".venv/bin/vpnlab"
    version = run([vpnlab, "--version"], cwd=their_repo).stdout
    assert version.startswith("vpnlab ") and "not installed" not in version, version
    run([vpnlab, "down", "--name", LAB], cwd=their_repo)
    try:
        run([vpnlab, "up", "--name", LAB], cwd=their_repo)
        status = json.loads(run([vpnlab, "status", "--name", LAB, "--json"], cwd=their_repo).stdout)
        # the design that comes with the wheel: active-active-bgp
        assert {g["instance"] for g in status["gateways"]} == {"hub-gw-in0", "hub-gw-in1"}, status["gateways"]
        assert [t["state"] for t in status["tunnels"]] == ["ESTABLISHED"] * 4, status["tunnels"]
        assert {b["state"] for b in status["bgp"]} == {"Established"}, status["bgp"]
    finally:
        run([vpnlab, "down", "--name", LAB], cwd=their_repo)
    assert run([vpnlab, "status", "--name", LAB], check=False, cwd=their_repo).returncode != 0, "down left it"
    image = run([vpnlab, "image", "build"], check=False, cwd=their_repo)
    assert image.returncode == 1 and "pip install 'vpnlab[docker]'" in image.stderr, image.stderr


def test_their_suite_passes_with_the_installed_plugin(their_repo):
    res = subprocess.run([their_repo / ".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                         cwd=their_repo, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "4 passed" in res.stdout, res.stdout[-2000:]
    report = (their_repo / "reports/vpnlab-report.html").read_text()
    assert "test_planned_maintenance_of_instance_0" in report
    assert not (their_repo / "reports/junit.xml").exists(), "JUnit only when asked for"
