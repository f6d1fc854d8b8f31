"""Real labs: namespaces, strongSwan and FRR, driven through the `vpnlab` CLI.

Each lab is torn down before anything about it is asserted after teardown, and every
test that removes a lab checks that nothing of it is left: namespaces, processes, files.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vpnlab.gateway import control, live
from vpnlab.model.defaults import defaults
from vpnlab.pytest_plugin import leftovers, runtime_param
from vpnlab.runtime import containerlab as clab_runtime
from vpnlab.runtime import docker as docker_runtime
from vpnlab.runtime import procs
from vpnlab.runtime.backend import ESP_PROBE
from vpnlab.runtime.state import lab_dir, load_state
from vpnlab.session import open_lab
from vpnlab.waits import wait_until

ROOT = Path(__file__).parent.parent
AA = ROOT / "topologies/active-active-bgp.yaml"
STATIC = ROOT / "topologies/single-site-static.yaml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces"),
]


def vpnlab(*args, timeout=180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnlab.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


# The engine's tests run on every runtime that can run here (docker: an engine and the
# node image; CI requires it through VPNLAB_REQUIRE_RUNTIMES).
RUNTIMES = [runtime_param("netns"), runtime_param("docker")]


def lab_name(base: str, runtime: str) -> str:
    return base if runtime == "netns" else f"{base}-{runtime}"


def up(path, name, runtime="netns") -> dict:
    vpnlab("down", "--name", name)
    res = vpnlab("up", path, "--name", name, "--timers", "fast", "--json", "--runtime", runtime)
    assert res.returncode == 0, f"up failed:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout)


def assert_pings(rt, plan, count=2):
    assert plan.pings, "the plan names pairs to ping"
    for node, address in plan.pings:
        assert live.ping(rt, node, address, count=count), f"{node} -> {address}"


def status(name) -> dict:
    """status --json: exit 0 when converged, 1 when not (a fault, a tunnel down)."""
    res = vpnlab("status", "--name", name, "--json")
    s = json.loads(res.stdout)
    assert res.returncode == (0 if s["converged"] else 1) and s["api_version"] == 1, res.stderr
    return s


def root_namespace() -> dict:
    show = lambda *a: subprocess.run(["ip", *a], capture_output=True, text=True).stdout
    return {"links": show("-br", "link"), "addresses": show("-br", "addr"),
            "routes": show("route", "show", "table", "all"), "rules": show("rule")}


class RunningLab(tuple):
    """(runtime, plan) of a running lab, with its name and runtime kind."""

    def __new__(cls, rt, plan, name: str, runtime: str):
        self = super().__new__(cls, (rt, plan))
        self.name, self.runtime = name, runtime
        return self


def running(path, base: str, runtime: str):
    """A module's lab (a fixture's body): up, yielded, then down, leaving nothing."""
    name = lab_name(base, runtime)
    up(path, name, runtime)
    lab = open_lab(name)
    yield RunningLab(lab.backend, lab.plan, name, runtime)
    lab.close()
    res = vpnlab("down", "--name", name)
    assert res.returncode == 0, res.stderr
    assert leftovers(name) == {}


@pytest.fixture(scope="module", params=RUNTIMES)
def aa(request):
    global ROOT_BEFORE
    ROOT_BEFORE = root_namespace()
    yield from running(AA, "it-aa", request.param)


# ------------------------------------------------------------ default topology
def test_status_json_contract_and_four_established_tunnels(aa):
    s = status(aa.name)
    assert {"name", "runtime", "dataplane", "nodes", "tunnels", "bgp"} <= set(s)
    assert s["name"] == aa.name and s["runtime"] == aa.runtime
    assert s["dataplane"] == ("kernel" if aa[0].kernel_has_esp() else "userspace") and s["kernel_esp"] is (
        s["dataplane"] == "kernel")
    netem = aa[0].kernel_has_netem()
    assert s["impairments"]["delay"] == ("netem" if netem else "unavailable: the kernel has no netem")
    assert s["impairments"]["blackhole"] == "nftables"
    assert all({"name", "role", "namespace"} <= set(n) for n in s["nodes"])
    tunnels = s["tunnels"]
    assert len(tunnels) == 4
    assert {(t["gateway_instance"], t["device"]) for t in tunnels} == {
        (f"hub-gw-in{k}", f"onprem-dev{d}") for k in (0, 1) for d in (0, 1)}
    for t in tunnels:
        assert {"connection", "gateway_instance", "device", "state", "established_seconds"} <= set(t)
        assert t["state"] == "ESTABLISHED" and t["child_state"] == "INSTALLED"
        assert isinstance(t["established_seconds"], int)


def test_every_bgp_session_established_from_both_ends(aa):
    sessions = status(aa.name)["bgp"]
    ebgp = {(b["node"], b["peer_node"]): b for b in sessions if b["kind"] == "ebgp"}
    assert len(ebgp) == 8          # 4 tunnels, seen from both ends
    for (node, peer_node), b in ebgp.items():
        assert (peer_node, node) in ebgp
        assert b["state"] == "Established", b
        assert b["prefixes_received"] >= 1, b
    assert all(b["state"] == "Established" for b in sessions)


def test_vm_and_onprem_hosts_ping_each_other_through_the_tunnels(aa):
    rt, plan = aa
    before = {t.azure_end: _child_bytes(rt, t.azure_end) for t in plan.tunnels}
    assert_pings(rt, plan, count=3)
    after = {t.azure_end: _child_bytes(rt, t.azure_end) for t in plan.tunnels}
    # the pings crossed the ESP SAs (and not some other path)
    assert sum(after.values()) > sum(before.values())


def _child_bytes(rt, node) -> int:
    c = live.sa_counters(rt, node)
    return c["bytes_in"] + c["bytes_out"]


def test_tunnel_mtu_1400_is_announced_not_silently_lost(aa):
    ok = vpnlab("exec", "--name", aa.name, "vm1", "--", "ping", "-c1", "-W2", "-M", "do",
                "-s", "1372", "10.20.1.10")           # 1400 bytes: fits the tunnel
    assert ok.returncode == 0, ok.stdout
    big = vpnlab("exec", "--name", aa.name, "vm1", "--", "ping", "-c1", "-W2", "-M", "do",
                 "-s", "1472", "10.20.1.10")          # 1500 bytes with DF: the gateway says so
    assert big.returncode != 0 and "mtu = 1400" in big.stdout + big.stderr


def test_vnet_and_devices_spread_over_both_instances(aa):
    rt, _ = aa
    sdn = live.fib_prefixes(rt, "hub-sdn")
    assert sdn["10.20.1.0/24"] == 2 and sdn["10.20.2.0/24"] == 2
    for dev in ("onprem-dev0", "onprem-dev1"):
        assert live.fib_prefixes(rt, dev)["10.10.0.0/16"] == 2


def test_gateway_does_not_advertise_the_vnet_back_to_the_vnet_router(aa):
    rt, _ = aa
    assert "10.10.0.0/16" not in live.fib_prefixes(rt, "hub-sdn")


def test_exec_passes_the_exit_code_through(aa):
    assert vpnlab("exec", "--name", aa.name, "vm1", "--", "sh", "-c", "exit 7").returncode == 7
    res = vpnlab("exec", "--name", aa.name, "vm1", "--", "ip", "-br", "addr", "show", "eth0")
    assert res.returncode == 0 and "10.10.1.4/24" in res.stdout


def test_graph_shows_tunnel_and_bgp_state(aa):
    res = vpnlab("graph", "--name", aa.name)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("graph LR")
    assert res.stdout.count("ESTABLISHED") == 4 and len(re.findall(r"eBGP [\d.]+ - [\d.]+ Established", res.stdout)) == 4
    assert 'subgraph g0["VNet hub"]' in res.stdout and "AS65010" in res.stdout


def test_fail_and_heal_from_the_cli(aa):
    rt, plan = aa
    res = vpnlab("fail", "carrier", "onprem-dev0:t0", "--name", aa.name)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "carrier:onprem-dev0:t0\n" and "vpnlab heal carrier:onprem-dev0:t0" in res.stderr
    s = status(aa.name)
    assert [f["key"] for f in s["faults"]] == ["carrier:onprem-dev0:t0"]
    wait_until(lambda: vpnlab("status", "--name", aa.name).returncode, lambda rc: rc == 1,
               "status to exit 1 once the lab notices the carrier loss (BGP hold)", 20)
    assert not rt.link_is_up("onprem-dev0", "t0")
    again = vpnlab("fail", "carrier", "onprem-dev0:t0", "--name", aa.name)
    assert again.returncode == 1 and "already injected" in again.stderr
    res = vpnlab("heal", "--all", "--name", aa.name)
    assert res.returncode == 0 and "healed carrier:onprem-dev0:t0" in res.stderr, res.stderr
    assert status(aa.name)["faults"] == [] and rt.link_is_up("onprem-dev0", "t0")
    assert live.convergence(rt, plan) == []


def test_blackhole_counts_what_it_dropped(aa):
    rt, plan = aa
    assert vpnlab("fail", "blackhole", "onprem-dev0:pub", "--name", aa.name).returncode == 0
    assert not live.ping(rt, "onprem-dev0", "203.0.113.10", count=2, timeout=1)
    res = vpnlab("heal", "blackhole:onprem-dev0:pub", "--name", aa.name)
    assert res.returncode == 0, res.stderr
    dropped = int(res.stderr.split("(")[1].split()[0])
    assert dropped >= 2
    assert live.ping(rt, "onprem-dev0", "203.0.113.10", count=1)


def test_bad_faults_are_refused_and_nothing_changes(aa):
    res = vpnlab("fail", "carrier", "onprem-dev0:nope", "--name", aa.name)
    assert res.returncode == 2 and "onprem-dev0 has no link 'nope'; its links: pub" in res.stderr
    res = vpnlab("heal", "instance:hub-gw-in0", "--name", aa.name)
    assert res.returncode == 1 and "no active fault 'instance:hub-gw-in0'; active: none" in res.stderr
    if not aa[0].kernel_has_netem():
        res = vpnlab("fail", "delay", "onprem-dev0:pub", "--delay-ms", "20", "--name", aa.name)
        assert res.returncode == 1 and "no netem" in res.stderr
    assert status(aa.name)["faults"] == []


def _metrics(name: str) -> dict:
    res = vpnlab("metrics", "--name", name, "--json")
    assert res.returncode == 0, res.stderr
    return {(r["name"], *r["dimensions"].values()): r["value"] for r in json.loads(res.stdout)["metrics"]}


def test_metrics_under_azures_names_and_dimensions(aa):
    rt, plan = aa
    # the previous tests' faults may still cost a BGP session its hold time (a keepalive
    # held back by TCP's backoff during a blackhole), and a session that just came back
    # has not learned its route yet: read the metrics of a settled lab
    learned = [("BgpRoutesLearned", peer, f"GatewayTenantWorker_IN_{k}")
               for peer in ("169.254.21.10", "169.254.22.10") for k in (0, 1)]
    settled = lambda m: (all(v == 1 for k, v in m.items() if k[0] in ("BgpPeerStatus", "MmsaCount", "QmsaCount"))
                         and all(m.get(k) == 1 for k in learned))
    before = wait_until(lambda: _metrics(aa.name), settled,
                        "every BGP peer up with its route, one SA pair per tunnel, in the metrics", 45)
    assert {k[0] for k in before} == {
        "TunnelIngressBytes", "TunnelEgressBytes", "TunnelIngressPackets", "TunnelEgressPackets",
        "TunnelIngressPacketDropTSMismatch", "TunnelEgressPacketDropTSMismatch",
        "TunnelAverageBandwidth", "MmsaCount", "QmsaCount", "AverageBandwidth",
        "VnetAddressPrefixCount", "BgpPeerStatus", "BgpRoutesLearned", "BgpRoutesAdvertised"}
    for conn, ip in (("hub-to-dev0", "198.51.100.10"), ("hub-to-dev1", "198.51.100.20")):
        for k in (0, 1):
            assert before[("MmsaCount", conn, ip, f"GatewayTenantWorker_IN_{k}")] == 1
            assert before[("QmsaCount", conn, ip, f"GatewayTenantWorker_IN_{k}")] == 1
    for peer in ("169.254.21.10", "169.254.22.10"):
        for k in (0, 1):
            assert before[("BgpPeerStatus", peer, f"GatewayTenantWorker_IN_{k}")] == 1
            assert before[("BgpRoutesLearned", peer, f"GatewayTenantWorker_IN_{k}")] == 1
    assert live.ping(rt, "vm1", "10.20.1.10", count=5)
    after = _metrics(aa.name)
    egress = lambda m: sum(v for k, v in m.items() if k[0] == "TunnelEgressBytes" and k[1] == "hub-to-dev0")
    assert egress(after) - egress(before) >= 5 * 84       # five echo requests went out to dev0


def test_metrics_and_events_show_a_lost_bgp_speaker(aa):
    """BgpPeerStatus 0 while the instance's bgpd is down, and the diagnostic log has
    BgpDisconnectedEvent then BgpConnectedEvent for that instance's peer."""
    assert vpnlab("fail", "crash", "hub-gw-in0", "--name", aa.name).returncode == 0
    try:
        m = _metrics(aa.name)
        assert m[("BgpPeerStatus", "169.254.21.10", "GatewayTenantWorker_IN_0")] == 0
        assert m[("BgpPeerStatus", "169.254.21.10", "GatewayTenantWorker_IN_1")] == 1
    finally:
        assert vpnlab("heal", "--all", "--name", aa.name).returncode == 0

    def bgp_events():
        res = vpnlab("events", "--name", aa.name, "--json", "--category", "RouteDiagnosticLog", "--last", "0")
        return [e["OperationName"] for e in json.loads(res.stdout)["events"]
                if e["instance_s"] == "GatewayTenantWorker_IN_0" and e["peerAddress_s"] == "169.254.21.10"]
    wait_until(bgp_events, lambda ops: ops[-3:] == ["BgpConnectedEvent", "BgpDisconnectedEvent",
                                                    "BgpConnectedEvent"],
               "BgpDisconnectedEvent then BgpConnectedEvent in the diagnostic log", 10)


def test_status_of_an_unknown_lab_fails_clearly():
    res = vpnlab("status", "--name", "no-such-lab")
    assert res.returncode == 1 and "no lab named 'no-such-lab'" in res.stderr


def test_nothing_of_the_lab_in_the_root_namespace(aa):
    assert root_namespace() == ROOT_BEFORE


def test_shared_keys_never_in_status_or_logs(aa):
    text = vpnlab("status", "--name", aa.name, "--json").stdout + vpnlab("status", "--name", aa.name).stdout
    logs = "".join(p.read_text(errors="replace") for p in lab_dir(aa.name).rglob("*.log"))
    logs += (lab_dir(aa.name) / "events.jsonl").read_text()
    for key in ("Lab.Dev0.Psk.ChangeMe", "Lab.Dev1.Psk.ChangeMe"):
        assert key not in text and key not in logs


def test_list_wait_logs_connect_and_save(aa, tmp_path):
    """The verbs around a running lab: list shows it, wait returns at once on a converged
    lab, logs show charon's log without the shared key, connect reaches a router's own
    vtysh and a tunnel end's own charon, save writes what the daemons run."""
    labs = json.loads(vpnlab("list", "--json").stdout)["labs"]
    mine = [x for x in labs if x["name"] == aa.name]
    assert len(mine) == 1 and (mine[0]["phase"], mine[0]["alive"], mine[0]["runtime"]) == ("up", True, aa.runtime), labs
    waited = vpnlab("wait", "--name", aa.name, "--json", "--timeout", "30")
    assert waited.returncode == 0 and json.loads(waited.stdout)["converged"], waited.stderr
    logs = vpnlab("logs", "hub-to-dev0-in0-az", "--name", aa.name, "--daemon", "charon", "-n", "400")
    assert logs.returncode == 0 and "IKE_SA" in logs.stdout, logs.stderr
    with open_lab(aa.name) as lab:
        key = next(c.shared_key.get_secret_value() for c in lab.topology.connections.values())
    assert key not in logs.stdout
    bgp = vpnlab("connect", "hub-gw-in0", "--name", aa.name, "--tool", "vtysh", "--", "-c",
                 "show bgp ipv4 unicast summary json")
    assert bgp.returncode == 0, bgp.stderr
    summary = json.loads(bgp.stdout)
    assert len(summary.get("peers") or summary["ipv4Unicast"]["peers"]) == 3, summary
    sas = vpnlab("connect", "hub-to-dev0-in0-az", "--name", aa.name, "--tool", "swanctl")
    assert sas.returncode == 0 and "ESTABLISHED" in sas.stdout, sas.stderr
    saved = vpnlab("save", str(tmp_path / "saved"), "--name", aa.name, "--json")
    assert saved.returncode == 0, saved.stderr
    files = {Path(f).relative_to(tmp_path / "saved").as_posix() for f in json.loads(saved.stdout)["files"]}
    assert {"hub-gw-in0/frr.conf", "onprem-dev0/frr.conf", "hub-to-dev0-in0-az/swanctl-conns.json",
            "topology.yaml", "plan.json"} <= files
    assert "router bgp 65515" in (tmp_path / "saved/hub-gw-in0/frr.conf").read_text()
    assert oct((tmp_path / "saved/topology.yaml").stat().st_mode & 0o777) == "0o600"


def test_wait_names_a_stuck_tunnel_and_its_dead_charon(aa):
    """A tunnel end's charon killed: wait gives up naming the tunnel, that its charon is
    not running, and what that charon last logged; healed, the lab converges again."""
    assert vpnlab("fail", "crash", "hub-to-dev0-in0-az", "--name", aa.name).returncode == 0
    try:
        res = vpnlab("wait", "--name", aa.name, "--timeout", "2")
        assert res.returncode == 1, res.stderr
        assert "did not converge within 2 s" in res.stderr and "tunnel hub-to-dev0-in0:" in res.stderr, res.stderr
        assert "hub-to-dev0-in0-az: charon NOT running, last said: " in res.stderr, res.stderr
    finally:
        assert vpnlab("heal", "--all", "--name", aa.name).returncode == 0


def test_a_lab_that_does_not_come_up_keeps_its_logs(aa):
    """up --timeout 0.001 cannot converge, unless its one look finds everything up already
    (it comes about a second after the daemons start: the lab is that fast now, mostly
    on docker, where the look itself takes a second); such a run is taken down and tried
    again. Exit 1 naming what did not converge and the folder with the configs and logs;
    nothing runs any more. --clean-on-failure leaves nothing."""
    name = lab_name("it-fail", aa.runtime)
    try:
        res = up_that_fails(name, aa.runtime)
        assert "did not converge within 0.001 s" in res.stderr, res.stderr
        assert f"its configs and logs: {lab_dir(name)}" in res.stderr
        assert list(lab_dir(name).glob("nodes/*/charon.log")), "the daemons' logs are kept"
        assert {k: v for k, v in leftovers(name).items() if k != "files"} == {}, "nothing runs"
        assert [x["phase"] for x in json.loads(vpnlab("list", "--json").stdout)["labs"] if x["name"] == name] \
            == ["failed"]
    finally:
        vpnlab("down", "--name", name)
    assert leftovers(name) == {}
    up_that_fails(name, aa.runtime, "--clean-on-failure")
    assert leftovers(name) == {}


def up_that_fails(name: str, runtime: str, *extra: str, tries: int = 3) -> subprocess.CompletedProcess:
    for _ in range(tries):
        vpnlab("down", "--name", name)
        res = vpnlab("up", AA, "--name", name, "--timers", "fast", "--timeout", "0.001", "--runtime", runtime, *extra)
        if res.returncode != 0:
            assert res.returncode == 1, res.stderr
            return res
    pytest.fail(f"up --timeout 0.001 converged at its one look {tries} times in a row")


def test_up_with_a_name_in_use_is_refused_and_the_lab_survives(aa):
    res = vpnlab("up", AA, "--name", aa.name, "--timers", "fast")
    assert res.returncode == 1 and "already up" in res.stderr
    assert all(t["state"] == "ESTABLISHED" for t in status(aa.name)["tunnels"])


def test_bad_file_starts_nothing(aa):
    res = vpnlab("up", ROOT / "tests/bad/unknown-gateway.yaml", "--name", "it-bad", "--runtime", aa.runtime)
    assert res.returncode == 2
    assert "unknown gateway 'hub-gwx'; known: hub-gw" in res.stderr
    assert leftovers("it-bad") == {}


def test_two_labs_side_by_side_and_down_is_scoped(aa):
    rt, plan = aa
    other = lab_name("it-static", aa.runtime)
    s = up(STATIC, other, aa.runtime)
    assert [t["state"] for t in s["tunnels"]] == ["ESTABLISHED"]
    lab = open_lab(other)
    srt, splan = lab.backend, lab.plan
    assert_pings(srt, splan)
    res = vpnlab("down", "--name", other)
    assert res.returncode == 0, res.stderr
    assert leftovers(other) == {}
    assert live.convergence(rt, plan) == []      # the other lab is untouched


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ikev1_connection_on_a_route_based_gateway(tmp_path, runtime):
    name = lab_name("it-ikev1", runtime)
    path = tmp_path / "ikev1.yaml"
    path.write_text(STATIC.read_text().replace("connection_protocol: IKEv2",
                                               "connection_protocol: IKEv1"))
    try:
        s = up(path, name, runtime)
        assert [t["state"] for t in s["tunnels"]] == ["ESTABLISHED"]
        lab = open_lab(name)
        rt, plan = lab.backend, lab.plan
        sas = live.ike_sas(rt, plan.tunnels[0].azure_end)
        assert [ike["version"] for ike in sas] == [b"1"]
        assert_pings(rt, plan)
    finally:
        vpnlab("down", "--name", name)
    assert leftovers(name) == {}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_custom_ipsec_policy_is_what_both_ends_negotiate(tmp_path, runtime):
    """A custom policy replaces Azure's defaults: the IKE SA and the CHILD SA use exactly
    its algorithms, and its PFS group appears at the first CHILD_SA rekey (PFS is only
    negotiated then)."""
    name = lab_name("it-custom", runtime)
    path = tmp_path / "custom.yaml"
    path.write_text(STATIC.read_text().replace("    connection_protocol: IKEv2", """    connection_protocol: IKEv2
    ipsec_policies:
      - {ike_encryption: AES256, ike_integrity: SHA256, dh_group: ECP384,
         ipsec_encryption: GCMAES256, ipsec_integrity: GCMAES256, pfs_group: PFS24,
         sa_lifetime_seconds: 3600}"""))
    try:
        up(path, name, runtime)
        lab = open_lab(name)
        rt, plan = lab.backend, lab.plan
        end, conn = plan.tunnels[0].azure_end, plan.tunnels[0].connection

        def sa():
            ike = live.ike_sas(rt, end)[0]
            child = next(iter(ike["child-sas"].values()), {})
            return {k: ike.get(k, b"").decode() for k in ("encr-alg", "encr-keysize", "integ-alg", "dh-group")} | {
                "child_" + k: child.get(k, b"").decode() for k in ("encr-alg", "encr-keysize", "dh-group")}
        assert sa() == {"encr-alg": "AES_CBC", "encr-keysize": "256", "integ-alg": "HMAC_SHA2_256_128",
                        "dh-group": "ECP_384", "child_encr-alg": "AES_GCM_16", "child_encr-keysize": "256",
                        "child_dh-group": ""}
        control.child_rekey(rt, end, conn)
        wait_until(sa, lambda s: s["child_dh-group"] == "MODP_2048_256", "the rekeyed CHILD SA with PFS24", 20)
        assert_pings(rt, plan)
    finally:
        vpnlab("down", "--name", name)
    assert leftovers(name) == {}


# ------------------------------------------------------------ policy-based gateway
POLICY_BASED = ROOT / "topologies/basic-policy-based.yaml"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_policy_based_gateway_selectors_drops_and_idle_teardown(runtime):
    """Basic PolicyBased: IKEv1, one quick-mode SA per (VNet prefix, site prefix) pair,
    3,600 s quick-mode lifetime, no DPD. Traffic outside the selectors is dropped and
    counted as TunnelEgressPacketDropTSMismatch. Idle past the timer profile's
    policy_based_idle (300 s as Azure; 20 s with fast timers), the gateway tears the
    tunnel down; traffic from either side brings it back."""
    name = lab_name("it-pb", runtime)
    up(POLICY_BASED, name, runtime)
    try:
        lab = open_lab(name)
        rt, plan = lab.backend, lab.plan
        t = plan.tunnels[0]
        ike = live.ike_sas(rt, t.azure_end)[0]
        assert ike["version"] == b"1"
        children = sorted(ike["child-sas"].values(), key=lambda c: c["remote-ts"])
        assert [(c["local-ts"], c["remote-ts"]) for c in children] == [
            ([b"10.80.0.0/16"], [b"10.81.1.0/24"]), ([b"10.80.0.0/16"], [b"10.81.2.0/24"])]
        assert all(3000 < int(c["rekey-time"]) <= 3600 for c in children)
        assert_pings(rt, plan)

        # a route into the tunnel for a prefix outside the selectors: dropped, counted
        assert rt.exec("legacy-gw-in0", ["ip", "route", "add", "10.99.0.0/24", "dev", "t0"]).returncode == 0
        assert not live.ping(rt, "legacy-gw-in0", "10.99.0.5", count=3, timeout=1)
        m = _metrics(name)
        dims = (t.connection, t.remote_ip, "GatewayTenantWorker_IN_0")
        assert m[("TunnelEgressPacketDropTSMismatch", *dims)] == 3
        assert m[("TunnelIngressPacketDropTSMismatch", *dims)] == 0

        idle = defaults()["timers"]["fast"]["policy_based_idle"]
        for sender, address in (("office-host", "10.80.1.4"), ("legacy-vm", "10.81.1.10")):
            wait_until(lambda: live.tunnel_state(rt, t.azure_end)["state"], lambda s: s == "DOWN",
                       "the idle tunnel torn down by the gateway", idle + 10)
            wait_until(lambda: live.ping(rt, sender, address, count=1, timeout=1), bool,
                       f"traffic from {sender} to bring the tunnel back", 10)
        events = json.loads(vpnlab("events", "--name", name, "--json", "--category", "TunnelDiagnosticLog",
                                   "--last", "0").stdout)["events"]
        assert [e["OperationName"] for e in events] == ["TunnelConnected", "TunnelDisconnected"] * 2 + ["TunnelConnected"]
        assert "idle" in events[1]["stateChangeReason_s"]
        ike_log = json.loads(vpnlab("events", "--name", name, "--json", "--category", "IKEDiagnosticLog",
                                    "--last", "0").stdout)["events"]
        assert not [e["Message"] for e in ike_log if re.search(r"DPD request|N\(DPD\)", e["Message"])]
    finally:
        vpnlab("down", "--name", name)
    assert leftovers(name) == {}


# ------------------------------------------------------------ bring your own device
def walkthrough(marker: str) -> str:
    """The shell block after `<!-- walkthrough: marker -->` in the one page of the README
    and docs/ that has it: the tests run the walkthroughs as the docs show them."""
    start = f"<!-- walkthrough: {marker} -->\n```sh\n"
    pages = [p for p in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))) if start in p.read_text()]
    assert len(pages) == 1, f"walkthrough {marker!r} on {len(pages)} pages: {pages}"
    return pages[0].read_text().split(start, 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bring_your_own_device_as_the_docs_say(tmp_path, runtime):
    """The walkthrough in docs/own-device.md, run as it stands (only the lab's name, its runtime, the
    namespace and the folder are the test's own): a hand-written strongSwan in the
    user's namespace, attached to a managed: false site, brings the tunnel up and
    reaches the VNet's VM; the clean-up leaves nothing behind."""
    name = lab_name("it-byod", runtime)

    def adapt(block: str) -> str:
        return (block.replace(".venv/bin/vpnlab", f"{sys.executable} -m vpnlab.cli")
                .replace("--name byod", f"--name {name}").replace("/tmp/mydevice", str(tmp_path))
                .replace("--timers fast", f"--timers fast --runtime {runtime}")
                .replace("mydevice", "it-mydev"))

    def bash(block: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-ec", adapt(block)], cwd=ROOT, capture_output=True, text=True,
                              timeout=180)
    vpnlab("down", "--name", name)
    subprocess.run(["ip", "netns", "del", "it-mydev"], capture_output=True)
    try:
        res = bash(walkthrough("set up"))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "203.0.113.10" in res.stderr, "attach names the gateway IP to dial"
        wait_until(lambda: status(name)["tunnels"][0], lambda t: t["child_state"] == "INSTALLED",
                   "the tunnel to the user's device", 30)
        res = bash(walkthrough("check"))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "3 received" in res.stdout and "TunnelConnected" in res.stdout
        refused = vpnlab("attach", "mybranch", "--netns", "it-mydev", "--name", name)
        assert refused.returncode == 1 and "already attached" in refused.stderr
        refused = vpnlab("attach", "nosuchsite", "--netns", "it-mydev", "--name", name)
        assert refused.returncode == 1 and "sites: mybranch" in refused.stderr
        res = bash(walkthrough("clean up"))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "it-mydev" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert leftovers(name) == {}
    finally:
        pid = tmp_path / "charon.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        subprocess.run(["ip", "netns", "del", "it-mydev"], capture_output=True)
        vpnlab("down", "--name", name)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_attach_refuses_a_managed_site_and_a_missing_namespace(tmp_path, runtime):
    name = lab_name("it-attach", runtime)
    up(STATIC, name, runtime)
    try:
        res = vpnlab("attach", "branch", "--netns", "it-nosuchns", "--name", name)
        assert res.returncode == 1 and "site 'branch' is managed" in res.stderr
        path = tmp_path / "unmanaged.yaml"
        path.write_text(STATIC.read_text().replace("    address_space: [10.40.1.0/24]",
                                                   "    address_space: [10.40.1.0/24]\n    managed: false"))
        assert vpnlab("down", "--name", name).returncode == 0
        up(path, name, runtime)
        res = vpnlab("attach", "branch", "--netns", "it-nosuchns", "--name", name)
        assert res.returncode == 1 and "'it-nosuchns' does not exist" in res.stderr
    finally:
        vpnlab("down", "--name", name)
    assert leftovers(name) == {}


# ------------------------------------------------------------ teardown
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_down_leaves_nothing_and_is_idempotent(runtime):
    name = lab_name("it-down", runtime)
    up(STATIC, name, runtime)
    assert leftovers(name)
    assert vpnlab("down", "--name", name).returncode == 0
    assert leftovers(name) == {}
    assert vpnlab("down", "--name", name).returncode == 0


def _start_up_and_wait_for_daemons(name, runtime, ignoring=()) -> subprocess.Popen:
    """`vpnlab up` in the background; ignoring: signals it inherits as ignored (a background
    job of a non-interactive shell starts with SIGINT ignored)."""
    vpnlab("down", "--name", name)
    proc = subprocess.Popen([sys.executable, "-m", "vpnlab.cli", "up", str(STATIC), "--name", name,
                             "--timers", "fast", "--runtime", runtime], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in ignoring])
    wait_until(lambda: (load_state(name).processes if load_state(name) else []),
               lambda p: any(x["daemon"] == "charon" for x in p),
               f"lab {name} to start its first charon", 60)
    return proc


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_down_after_up_was_killed_with_sigkill(runtime):
    name = lab_name("it-kill", runtime)
    proc = _start_up_and_wait_for_daemons(name, runtime)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert procs.tagged(name), "the killed up left daemons for down to find"
    res = vpnlab("down", "--name", name)
    assert res.returncode == 0, res.stderr
    assert leftovers(name) == {}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sig, ignoring", [(signal.SIGINT, ()), (signal.SIGTERM, ()),
                                           (signal.SIGINT, (signal.SIGINT, signal.SIGHUP))],
                         ids=["SIGINT", "SIGTERM", "SIGINT-inherited-ignored"])
def test_interrupted_up_cleans_up_after_itself(sig, ignoring, runtime):
    name = lab_name("it-int", runtime)
    proc = _start_up_and_wait_for_daemons(name, runtime, ignoring)
    proc.send_signal(sig)
    assert proc.wait(30) != 0
    assert leftovers(name) == {}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_active_standby_maintenance_as_the_docs_say(runtime):
    """The maintenance walkthrough (docs/faults-and-scenarios.md), run as it stands (the lab's name and its
    runtime are the test's own): the standby takes over, status says so, the VM
    reaches the branch."""
    name = lab_name("it-as", runtime)
    block = (walkthrough("maintenance").replace(".venv/bin/vpnlab", f"{sys.executable} -m vpnlab.cli")
             .replace("--name as", f"--name {name}").replace("--timers fast", f"--timers fast --runtime {runtime}"))
    up_line, maint, show, ping, down_line = block.strip().splitlines()
    assert f"--runtime {runtime}" in up_line
    vpnlab("down", "--name", name)
    try:
        for line in (up_line, maint):
            res = subprocess.run(["bash", "-ec", line], cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "instance 1 is active now" in res.stderr
        roles = {g["instance"]: (g["role"], g["public_ip"]) for g in status(name)["gateways"]}
        assert roles == {"hub-gw-in0": ("standby", "203.0.113.10"), "hub-gw-in1": ("active", "203.0.113.10")}
        for line in (show, ping):
            res = subprocess.run(["bash", "-ec", line], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "3 received" in res.stdout
    finally:
        subprocess.run(["bash", "-ec", down_line], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert leftovers(name) == {}


def test_a_key_reset_as_the_docs_say(tmp_path):
    """The change walkthrough (docs/rehearsing-a-change.md), run as it stands (the lab's name and the file's
    folder are the test's own): the plan touches nothing, Azure's side alone takes
    hub-to-site-c down, the device's apply brings it back; nothing is left."""
    name = "it-change"
    block = (walkthrough("apply").replace(".venv/bin/vpnlab", f"{sys.executable} -m vpnlab.cli")
             .replace("--name change", f"--name {name}").replace("/tmp/change.yaml", str(tmp_path / "c.yaml")))
    up_line, edit, plan, azure, show, device, down_line = block.strip().splitlines()
    run = lambda line: subprocess.run(["bash", "-ec", line], cwd=ROOT, capture_output=True, text=True, timeout=300)
    site_c = lambda: {t["tunnel"]: t["state"] for t in status(name)["tunnels"] if t["device"] == "site-c"}
    vpnlab("down", "--name", name)
    try:
        for line in (up_line, edit, plan):
            res = run(line)
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "connections.hub-to-site-c: tunnel reset" in res.stdout and "(secret) -> (secret)" in res.stdout
        assert "Rotated" not in res.stdout + res.stderr
        assert set(site_c().values()) == {"ESTABLISHED"}
        res = run(azure)
        assert res.returncode == 0, res.stderr[-2000:]
        wait_until(site_c, lambda s: "ESTABLISHED" not in s.values(), "hub-to-site-c to go down", 20)
        assert run(show).returncode == 1, "status exits 1 while a tunnel is down"
        res = run(device)
        assert res.returncode == 0, res.stderr[-2000:]
        assert set(site_c().values()) == {"ESTABLISHED"} and status(name)["phase"] == "up"
    finally:
        run(down_line)
    assert leftovers(name) == {}


# ------------------------------------------------------------ containerlab
STANDIN = ROOT / "tests/clab_standin.py"


def _containerlab_lab(name: str, env: dict):
    """up --runtime containerlab on the default topology, the engine's checks, a fault
    healed through the nodes' clab-<lab>-<node> namespaces, and a down that leaves
    nothing (containers, namespace links)."""
    vpnlab("down", "--name", name, env=env)
    try:
        res = vpnlab("up", AA, "--runtime", "containerlab", "--name", name, "--timers", "fast",
                     "--json", env=env, timeout=600)
        assert res.returncode == 0, f"up failed:\n{res.stderr[-3000:]}"
        s = json.loads(res.stdout)
        assert s["runtime"] == "containerlab"
        assert [t["state"] for t in s["tunnels"]] == ["ESTABLISHED"] * 4
        assert {n["namespace"] for n in s["nodes"]} == {f"clab-{name}-{n['name']}" for n in s["nodes"]}
        lab = open_lab(name)
        rt, plan = lab.backend, lab.plan
        assert_pings(rt, plan)
        bgpd = rt.daemon_pids("hub-gw-in0", "bgpd")
        assert bgpd and "docker" in Path(f"/proc/{bgpd[0]}/cgroup").read_text()
        assert vpnlab("fail", "crash", "hub-gw-in0", "--name", name, env=env).returncode == 0
        res = vpnlab("heal", "--all", "--name", name, env=env)
        assert res.returncode == 0, res.stderr
        assert rt.daemon_pids("hub-gw-in0", "bgpd") != bgpd
        assert live.convergence(rt, plan) == []
        rt.close()
    finally:
        res = vpnlab("down", "--name", name, env=env)
    assert res.returncode == 0, res.stderr
    assert leftovers(name) == {}
    assert not list(Path("/var/run/netns").glob(f"clab-{name}-*"))
    assert not docker_runtime.image.client().containers.list(all=True, filters={"label": f"containerlab={name}"})


@pytest.mark.skipif(bool(docker_runtime.unavailable()), reason=f"docker: {docker_runtime.unavailable()}")
def test_containerlab_runtime_with_a_stand_in_for_the_binary(tmp_path):
    """containerlab cannot be installed on the project's CI: tests/clab_standin.py deploys
    the emitted file as containerlab documents it (not containerlab itself). What this
    checks: the file's nodes set themselves up (vpnlab-node start, setup.sh) and the
    containerlab runtime drives deploy/inspect/destroy and reaches the nodes."""
    (tmp_path / "containerlab").write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    (tmp_path / "containerlab").chmod(0o755)
    _containerlab_lab("it-clab-standin", {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})


@pytest.mark.skipif(bool(clab_runtime.unavailable()), reason=f"containerlab: {clab_runtime.unavailable()}")
def test_containerlab_runtime_with_the_real_binary():
    _containerlab_lab("it-clab", dict(os.environ))


def test_up_without_containerlab_says_how_to_install_it(tmp_path):
    if not clab_runtime.unavailable():
        pytest.skip("containerlab is installed here")
    res = vpnlab("up", STATIC, "--runtime", "containerlab", "--name", "it-noclab")
    assert res.returncode == 1
    assert "containerlab binary is not installed; install 0.79.0" in res.stderr, res.stderr
    assert leftovers("it-noclab") == {}


def test_the_kernel_data_plane_is_refused_without_esp_and_leaves_nothing():
    """--dataplane kernel on a kernel without ESP (this project's machines): exit 1 with
    the reason and the way out, and nothing of the lab is left, not even its folder. On
    a kernel with ESP the kernel data plane runs: tests/test_kernel_vm.py."""
    if kernel_takes_esp():
        pytest.skip("this kernel has ESP: the kernel data plane runs here")
    res = vpnlab("up", STATIC, "--name", "no-esp", "--dataplane", "kernel", "--timers", "fast")
    assert res.returncode == 1, res.stderr
    assert "this kernel has no ESP" in res.stderr and "--dataplane userspace" in res.stderr
    assert leftovers("no-esp") == {} and not lab_dir("no-esp").exists()


def kernel_takes_esp() -> bool:
    """`up`'s probe, in a throwaway network namespace (unshare)."""
    return subprocess.run(["unshare", "--net", *ESP_PROBE], capture_output=True).returncode == 0
