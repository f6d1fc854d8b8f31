"""Their own suite: the branch office design, checked on every commit against a real lab
(vpnlab's pytest plugin: the `vpnlab` marker and the vpnlab_* fixtures)."""
from pathlib import Path

import pytest

import vpnlab

pytestmark = pytest.mark.vpnlab(topology="../designs/branch-office.yaml")
PLANNED_LOSS_MS = 300     # what they accept for Azure's planned maintenance of an instance


def test_vpnlab_is_the_installed_one():
    assert "site-packages" in vpnlab.__file__, vpnlab.__file__


def test_both_tunnels_and_bgp_are_up_and_the_office_reaches_the_app(vpnlab_lab):
    assert vpnlab_lab.convergence() == []
    assert sorted(t["state"] for t in vpnlab_lab.status()["tunnels"]) == ["ESTABLISHED", "ESTABLISHED"]
    app = vpnlab_lab.node("app1").address
    assert vpnlab_lab.node("office-pc").exec(f"ping -c 2 -W 1 {app}").returncode == 0


def test_the_gateway_agent_runs_from_the_installed_package(vpnlab_lab):
    agents = [p["pid"] for p in vpnlab_lab.state.processes if p["daemon"] == "agent"]
    assert len(agents) == 1
    argv = Path(f"/proc/{agents[0]}/cmdline").read_bytes().split(b"\0")
    assert b"vpnlab.gateway.agent" in argv, argv


def test_planned_maintenance_of_instance_0(vpnlab_lab, vpnlab_scenario):
    """Azure patches instance 0: the office's traffic moves to instance 1 within the
    loss they accept."""
    vpnlab_scenario.start(vpnlab_lab, "office-pc", "app1", flows=4)
    lost_ms = vpnlab_scenario.planned_instance_loss("prod-gw-in0", PLANNED_LOSS_MS)
    assert lost_ms <= PLANNED_LOSS_MS, vpnlab_scenario.probes[-1]["directions"]
