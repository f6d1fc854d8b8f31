"""Golden rendering: every shipped topology renders to exactly the files under
tests/golden/<topology>/<node>/ (regenerate with VPNLAB_UPDATE_GOLDEN=1 and review)."""
import os
from pathlib import Path

import pytest

from lab.plan import build, gateway_subnet_ips
from lab.render import render
from lab.topology import load

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
NODES_DIR = Path("/var/lib/vpnlab/golden/nodes")
TOPOLOGIES = sorted((ROOT / "topologies").glob("*.yaml"))


def rendered(path: Path) -> dict[str, str]:
    files = render(build(load(path), "azure"), NODES_DIR)
    return {f"{node}/{name}": text for node, texts in files.items() for name, text in texts.items()}


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_rendering_matches_golden(path):
    got = rendered(path)
    folder = GOLDEN / path.stem
    if os.environ.get("VPNLAB_UPDATE_GOLDEN"):
        for rel, text in got.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
    want = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], f"{rel} differs from the golden file"


def test_azure_defaults_in_gateway_configs():
    files = rendered(ROOT / "topologies/active-active-bgp.yaml")
    swan = files["hub-to-dev0-in0-az/swanctl.conf"]
    assert "proposals = aes256-sha1-modp1024, aes256-sha256-modp1024" in swan
    assert "rekey_time = 28800s" in swan and "rekey_time = 27000s" in swan
    assert "dpd_delay = 15s" in swan           # 45 s DPD timeout, azure timers
    assert "Lab.Dev0" not in swan               # the key is stored base64-encoded
    frr = files["hub-gw-in0/frr.conf"]
    assert "router bgp 65515" in frr
    assert "neighbor 169.254.21.10 timers 60 180" in frr
    assert "neighbor 169.254.21.10 passive" in frr   # Azure never opens from APIPA
    assert "neighbor 169.254.21.10 update-source 169.254.21.1" in frr


def test_fast_timers_profile():
    files = render(build(load(ROOT / "topologies/active-active-bgp.yaml"), "fast"), NODES_DIR)
    assert "neighbor 169.254.21.10 timers 3 9" in files["hub-gw-in0"]["frr.conf"]
    assert "dpd_delay = 3s" in files["hub-to-dev0-in0-op"]["swanctl.conf"]


def test_gateway_subnet_bgp_addresses():
    from ipaddress import IPv4Network
    net = IPv4Network("10.12.255.0/27")
    assert [str(a) for a in gateway_subnet_ips(net, True)] == ["10.12.255.4", "10.12.255.5"]
    assert [str(a) for a in gateway_subnet_ips(net, False)] == ["10.12.255.30"]   # [4.2]


def test_static_site_routes_through_the_tunnel():
    plan = build(load(ROOT / "topologies/single-site-static.yaml"), "azure")
    gw = plan.nodes["spoke-gw-in0"]
    assert ("10.40.1.0/24", "t0") in gw.frr.static
    assert "10.40.1.0/24" in gw.frr.networks
    assert ("10.30.0.0/16", "t0") in plan.nodes["branch"].frr.static
    assert plan.nodes["branch"].frr.asn is None
    assert [t.name for t in plan.tunnels] == ["spoke-to-branch-in0"]


def test_every_subnet_gets_a_vm_and_vms_start_at_dot_four(tmp_path):
    text = (ROOT / "topologies/single-site-static.yaml").read_text().replace(
        "app: {address_prefix: 10.30.1.0/24, vms: [app-vm]}",
        "app: {address_prefix: 10.30.1.0/24, vms: [app-vm, app-vm2]}\n"
        "      data: {address_prefix: 10.30.2.0/24}")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    plan = build(load(path), "azure")
    addr = lambda n: plan.nodes[n].iface("eth0").addresses[0]
    assert addr("app-vm") == "10.30.1.4/24" and addr("app-vm2") == "10.30.1.5/24"
    assert addr("spoke-data-vm") == "10.30.2.4/24"          # Azure reserves .1-.3
    assert ("spoke-data-vm", "10.40.1.10") in plan.pings
