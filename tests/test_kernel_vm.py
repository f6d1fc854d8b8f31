"""A real kernel with ESP, booted under QEMU without KVM (make kernel-vm, virtme-ng,
docs/kernel-vm.md): this machine's kernel has no ESP, XFRM interfaces or netem; the
guest's has. The guest shares this checkout and its venv read-only and writes to a
folder of this test's. What is checked here is the ground the kernel data plane will
stand on: the guest kernel's abilities, and the lab itself running in the guest on the
kernel data plane (XFRM interfaces), with pings and iperf3 through the kernel's ESP.

Without the VM's parts (make kernel-vm) the module is skipped, unless
VPNLAB_REQUIRE_KERNEL_VM is set (make test sets it): then it fails."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL = ROOT / ".kernel-vm" / "vmlinuz"
GUEST = ROOT / "tests" / "kernel_vm" / "guest.sh"
TOPOLOGY = "tests/topologies/kernel-vm-sites.yaml"
# boot about 20 s; a small lab under TCG several minutes (process creation ~60x slower)
BUDGET = 900

pytestmark = pytest.mark.integration


def _vng() -> str | None:
    return shutil.which("vng", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not KERNEL.exists():
        return f"no guest kernel at {KERNEL} ('make kernel-vm' unpacks it)"
    if _vng() is None:
        return "virtme-ng's vng is not installed (the test extra has it)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86 is not installed ('make kernel-vm')"
    return None


@pytest.fixture(scope="module")
def guest(tmp_path_factory) -> Path:
    why = unavailable()
    if why:
        if os.environ.get("VPNLAB_REQUIRE_KERNEL_VM"):
            pytest.fail(f"the kernel VM is required here: {why}")
        pytest.skip(why)
    out = tmp_path_factory.mktemp("kernel-vm")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    argv = [_vng(), "--disable-kvm", "--run", str(KERNEL), "--memory", "2G", "--cpus", "2",
            "--rwdir", str(out), "--", f"sh {GUEST} {ROOT} {out} {TOPOLOGY}"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=BUDGET, env=env, cwd=ROOT)
    log = out / "guest.log"
    print(f"vng exit {res.returncode}; guest log:\n{log.read_text() if log.exists() else '(none)'}")
    assert (out / "finished").exists(), \
        f"the guest did not finish (vng exit {res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return out


def test_the_guest_kernel_makes_xfrm_interfaces(guest):
    """XFRM interfaces, which the host's kernel lacks, exist in the guest's."""
    assert json.loads((guest / "kernel.json").read_text()) == {"xfrm_interface": True}


def test_a_lab_converges_in_the_guest_on_the_kernel_data_plane(guest):
    """The lab comes up on the kernel data plane (--dataplane kernel) and converges in
    the guest, and status reports what its kernel offers: ESP and netem, which the
    host's kernel lacks."""
    status = json.loads((guest / "status.json").read_text())
    assert status["converged"], (status["not_converged"], (guest / "guest.log").read_text()[-3000:])
    assert status["kernel_esp"] is True and status["dataplane"] == "kernel"
    assert status["impairments"]["delay"] == "netem", status["impairments"]


def test_each_tunnel_end_sends_into_an_xfrm_interface(guest):
    """ipsec0 of every tunnel end, Azure's and the device's, is an XFRM interface (the
    kernel's ESP), not libipsec's TUN device."""
    ends = measured(guest)["ipsec0"]
    assert ends and set(ends.values()) == {"xfrm"}, ends


def test_one_charon_per_gateway_instance_carries_its_tunnels(guest):
    """As an Azure instance does: the serving instance's one charon carries both sites'
    tunnels (their Azure ends' XFRM interfaces were made in the instance); each device's
    tunnel end runs its own."""
    m = measured(guest)
    hosts = {host for host, _ in m["azure_charons"].values()}
    pids = {tuple(p) for _, p in m["azure_charons"].values()}
    assert len(m["azure_charons"]) == 2 and len(hosts) == 1 and len(pids) == 1, m["azure_charons"]
    assert hosts.pop().startswith("spoke-gw-in") and len(pids.pop()) == 1, m["azure_charons"]
    assert m["charons"] == 3, m["charons"]       # the instance's and the two devices' ends


def test_traffic_crosses_the_kernels_esp(guest):
    """Pings from the VNet's VM reach both sites' hosts, an iperf3 run reaches one, and
    the bytes are counted on the kernel's SAs."""
    m = measured(guest)
    assert set(m["ping"]["answered"]) == {"branch", "home"} and all(m["ping"]["answered"].values()), m["ping"]
    assert m["iperf"]["mbps"] > 0, m["iperf"]
    moved = sum(m["sa_bytes"].values())
    assert moved >= m["iperf"]["mbps"] * 1e6 / 8, (moved, m["iperf"])


def test_esp_is_raw_without_nat_and_in_udp_4500_behind_nat(guest):
    """As Azure sends it [1.3]: between the gateway and a device on the internet, ESP is
    IP protocol 50 and IKE stays on UDP 500; a device behind its ISP's NAT makes IKE
    detect the NAT, and ESP travels in UDP 4500 (RFC 3948) to and from the NAT's address."""
    wire = measured(guest)["wire"]
    direct, behind = wire["branch"], wire["home"]
    assert not direct["behind_nat"] and behind["behind_nat"], wire
    assert direct["kinds"].get("esp", 0) >= 10 and set(direct["kinds"]) <= {"esp", "udp-500", "ike-4500"}, direct
    assert behind["kinds"].get("udp-4500", 0) >= 10 and set(behind["kinds"]) <= {"udp-4500", "ike-4500"}, behind


def test_netem_delays_the_round_trip(guest):
    """The netem delay scenario, which the host's kernel cannot run: 50 ms on the
    device's uplink adds 50 ms to the round trip through the tunnel."""
    d = measured(guest)["delay"]
    assert d.get("base_ms") is not None and d.get("delayed_ms") is not None, d
    assert 45 <= d["delayed_ms"] - d["base_ms"] <= 80, d


def test_a_key_change_restarts_only_its_tunnel_in_the_instances_charon(guest):
    """vpnlab apply of a new shared key for branch's connection on the kernel data plane:
    the instance's one charon loads its connections again; branch's tunnel gets a new
    IKE SA, home's keeps the one it had; both sites answer pings afterwards."""
    k = measured(guest)["key_change"]
    before, after = k["ike_before"], k["ike_after"]
    assert before["branch"] and after["branch"] and set(after["branch"]).isdisjoint(before["branch"]), k
    assert before["home"] and after["home"] == before["home"], k
    assert all(k["pings"].values()), k


def test_a_crashed_charon_takes_its_kernel_sas_with_it(guest):
    """vpnlab fail crash on an Azure tunnel end: its instance's charon is killed, and the
    SAs leave the instance's kernel with it (as libipsec's leave with the process), so
    the tunnel stops carrying traffic; healed, it carries again."""
    c = measured(guest)["crash"]
    assert c["sas_left"] == "SAD count 0" and not c["ping_during"] and c["ping_after"], c


def test_the_standby_instance_takes_over_on_the_kernel_data_plane(guest):
    """An unplanned reset of the serving instance: the standby takes over, the lab
    converges again and pings cross its tunnel."""
    f = measured(guest)["failover"]
    assert f["active_after"] != f["active_before"] and f["ping_after"], f


def measured(guest: Path) -> dict:
    path = guest / "dataplane.json"
    assert path.exists(), (guest / "guest.log").read_text()[-3000:]
    return json.loads(path.read_text())
