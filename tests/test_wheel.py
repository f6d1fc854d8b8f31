"""vpnlab from someone else's repository: the wheel, installed in a fresh venv inside a
folder that has its own `lab/` package (a name that once shadowed ours and stopped
pytest from starting), runs a small pytest suite of theirs through the plugin against
a real lab, whose gateway agent starts and runs from the wheel."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]

THEIR_TESTS = '''
from pathlib import Path

import vpnlab

LAB_TOPOLOGY = "designs/branch.yaml"


def test_vpnlab_comes_from_the_wheel():
    assert "/.venv/" in vpnlab.__file__, vpnlab.__file__


def test_the_gateway_agent_runs_from_the_wheel(lab):
    agents = [p["pid"] for p in lab.state.processes if p["daemon"] == "agent"]
    assert len(agents) == 1
    argv = Path(f"/proc/{agents[0]}/cmdline").read_bytes().split(b"\\0")
    assert b"vpnlab.gateway.agent" in argv, argv
    assert "/.venv/" in Path(f"/proc/{agents[0]}/environ").read_text(errors="replace")
    assert lab.convergence() == []


def test_their_tunnel_is_up(lab):
    assert [t["state"] for t in lab.status()["tunnels"]] == ["ESTABLISHED"]
'''


def run(argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{argv[:4]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


def test_the_wheel_in_a_fresh_venv_of_another_repository(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", tmp_path / "dist", ROOT])
    wheel = next((tmp_path / "dist").glob("vpnlab-*.whl"))
    repo = tmp_path / "their-repo"
    (repo / "lab").mkdir(parents=True)
    (repo / "lab" / "__init__.py").write_text("raise ImportError('their own lab package, not vpnlab')\n")
    (repo / "lab" / "agent.py").write_text("raise SystemExit('their own lab.agent ran')\n")
    (repo / "designs").mkdir()
    shutil.copyfile(ROOT / "topologies/single-site-static.yaml", repo / "designs/branch.yaml")
    (repo / "tests").mkdir()
    (repo / "tests/test_branch.py").write_text(THEIR_TESTS)
    run([sys.executable, "-m", "venv", repo / ".venv"])
    py = repo / ".venv/bin/python"
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, "pytest"], cwd=repo)
    checked = run([repo / ".venv/bin/vpnlab", "validate", "designs/branch.yaml"], cwd=repo)
    assert "designs/branch.yaml: valid" in checked.stderr     # the wheel has its defaults and templates
    res = subprocess.run([py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests"], cwd=repo,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "3 passed" in res.stdout, res.stdout[-2000:]
