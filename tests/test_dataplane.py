"""The two data planes as planned and rendered: userspace (libipsec) and kernel (XFRM
interfaces). The kernel data plane running is tests/test_kernel_vm.py's, in a guest
kernel with ESP."""
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from vpnlab import engine
from vpnlab.checks.throughput import across_a_tunnel, limited_by
from vpnlab.model.topology import load
from vpnlab.plan import clab
from vpnlab.plan.build import build
from vpnlab.plan.parts import TABLE_INTO_TUNNEL
from vpnlab.plan.render import render

ROOT = Path(__file__).parent.parent
NODES_DIR = Path("/var/lib/vpnlab/dataplane/nodes")


def plan_of(topology: str, dataplane: str):
    return build(load(ROOT / "topologies" / topology), "fast", dataplane=dataplane)


def xfrm_nodes(plan) -> set[str]:
    return {n.name for n in plan.nodes.values() if any(i.kind == "xfrm" for i in n.interfaces)}


def test_site_to_site_ends_get_an_xfrm_interface_and_p2s_keeps_libipsec():
    """Every site-to-site tunnel end, Azure's and the device's, routes into an XFRM
    interface ipsec0 of its own; the point-to-site server stays on libipsec."""
    plan = plan_of("point-to-site.yaml", "kernel")
    ends = {n.name for n in plan.nodes.values() if n.role == "tunnel-endpoint"}     # the standby's too
    assert {e for t in plan.tunnels for e in (t.azure_end, t.onprem_end) if e} < ends
    assert plan.dataplane == "kernel" and xfrm_nodes(plan) == ends
    for end in ends:
        node = plan.nodes[end]
        assert node.iface("ipsec0").mtu == 1400
        assert any(r.dev == "ipsec0" and r.table == TABLE_INTO_TUNNEL for r in node.routes)
    assert {e.node for e in plan.p2s_ends}.isdisjoint(xfrm_nodes(plan))


def test_the_userspace_plan_has_no_xfrm_interface():
    plan = plan_of("active-active-bgp.yaml", "userspace")
    assert plan.dataplane == "userspace" and not xfrm_nodes(plan)


def test_kernel_charons_load_no_libipsec_and_carry_the_interface_id():
    plan = plan_of("active-active-bgp.yaml", "kernel")
    files = render(plan, NODES_DIR)
    for end in xfrm_nodes(plan):
        conf, swanctl = files[end]["strongswan.conf"], files[end]["swanctl.conf"]
        load_line = next(line for line in conf.splitlines() if line.strip().startswith("load = "))
        assert "kernel-libipsec" not in load_line and "kernel-netlink" in load_line
        assert "install_routes = no" in conf and "fwmark" not in conf
        children = swanctl.count("esp_proposals")
        assert children and swanctl.count("if_id_in = 1") == children == swanctl.count("if_id_out = 1")
    userspace = render(plan_of("active-active-bgp.yaml", "userspace"), NODES_DIR)
    assert all("kernel-libipsec" in f["strongswan.conf"] and "if_id" not in f["swanctl.conf"]
               for f in userspace.values() if "swanctl.conf" in f)


def test_containerlab_nodes_make_their_xfrm_interface():
    plan = plan_of("single-site-static.yaml", "kernel")
    files = clab.setup_files(plan, lambda n: PurePosixPath("/lab") / n)
    for end in xfrm_nodes(plan):
        assert "ip link add ipsec0 type xfrm if_id 1" in files[end]["setup.sh"]


@pytest.mark.parametrize("asked, esp, chosen", [("auto", True, "kernel"), ("auto", False, "userspace"),
                                                ("userspace", True, "userspace"), ("kernel", True, "kernel")])
def test_the_data_plane_chosen(asked, esp, chosen):
    assert engine._dataplane(asked, esp) == chosen


def test_the_kernel_data_plane_on_a_kernel_without_esp_is_refused():
    with pytest.raises(engine.NoKernelEsp, match="this kernel has no ESP"):
        engine._dataplane("kernel", False)


def test_an_unknown_data_plane_is_bad_input():
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "up", "--dataplane", "fast"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--dataplane" in res.stderr and "kernel" in res.stderr


def test_a_figure_names_the_data_plane_that_limited_it():
    assert limited_by(200, "VpnGw5", 10000, "kernel") == "the lab's data plane (the kernel's XFRM)"
    assert limited_by(200, "VpnGw5", 10000) == "the lab's data plane (libipsec)"
    assert limited_by(9000, "VpnGw5", 10000, "kernel") == "the SKU (VpnGw5, 10000 Mbit/s)"


def test_the_throughput_pair_crosses_a_tunnel():
    assert across_a_tunnel(plan_of("single-site-static.yaml", "kernel")) == ("app-vm", "branch-host", "10.40.1.10")
