"""Azure Monitor through an instance failover, planned and then unplanned, on the
active-active design with two alert rules (topologies/monitored.yaml): the agent's 1 s
series, a real Prometheus (Debian's) scraping the agent's OpenMetrics endpoint, the
metric alerts, GatewayDiagnosticLog, and the az-shaped views, each checked against
what happened."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from vpnlab.gateway import alerts, events, live, series
from vpnlab.gateway.openmetrics import URL_FILE
from vpnlab.waits import wait_until

LAB_TOPOLOGY = "topologies/monitored.yaml"
LAB_RUNTIMES = ("netns",)
SHAPES = json.loads((Path(__file__).parents[1] / "tests" / "azure_shapes.json").read_text())
IN0_IP, IN1_IP = "203.0.113.10", "203.0.113.11"      # the instances' public IPs
PEER = {"BgpPeerAddress": "169.254.21.10", "Instance": "GatewayTenantWorker_IN_0"}   # dev0's session with IN_0
SCRAPE_S = 1
AGREE_S = 2.5        # Prometheus and the series see an edge within a scrape, a sample and a step


@pytest.fixture(scope="module")
def prometheus(lab, tmp_path_factory):
    """Debian's Prometheus, scraping the lab's endpoint every second; ended by its PID."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("VPNLAB_REQUIRE_PROMETHEUS"):
            pytest.fail("prometheus is not installed (make test installs Debian's)")
        pytest.skip("prometheus is not installed (apt install prometheus)")
    target = urllib.parse.urlsplit((lab.state.dir / URL_FILE).read_text().strip())
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        f"global: {{scrape_interval: {SCRAPE_S}s, evaluation_interval: {SCRAPE_S}s}}\n"
        f"scrape_configs:\n  - job_name: vpnlab\n    static_configs: [{{targets: ['{target.netloc}']}}]\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/api/v1/targets")["data"]["activeTargets"][0]["health"],
                   lambda health: health == "up", "Prometheus to scrape the lab's endpoint", 30, interval=0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _zero_run(points: list[tuple[float, float]], after: float) -> tuple[float, float]:
    """The first and the last time a 0/1 series reads 0 in its first run of zeros after `after`."""
    zeros = [t for t, v in points if t >= after and v == 0]
    assert zeros, f"no zero after {series.iso(after)}: {points[-5:]}"
    first = zeros[0]
    ones_after = [t for t, v in points if t > first and v == 1]
    last = max(t for t in zeros if not ones_after or t < ones_after[0])
    return first, last


def _series_points(lab, since: float) -> list[tuple[float, float]]:
    return [(t, v) for t, dims, v in series.latest(lab.state.dir, "BgpPeerStatus", since)
            if all(dims.get(k) == x for k, x in PEER.items())]


def _prometheus_points(url: str, start: float, end: float) -> list[tuple[float, float]]:
    query = 'BgpPeerStatus{BgpPeerAddress="%s",Instance="%s"}' % (PEER["BgpPeerAddress"], PEER["Instance"])
    data = _get(f"{url}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": query, "start": start, "end": end, "step": SCRAPE_S}))
    (result,) = data["data"]["result"]
    return [(float(t), float(v)) for t, v in result["values"]]


def _az(lab, *args) -> dict:
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "az", "network", *args, "--lab", lab.name],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _check_az_shapes(lab, during_fault: bool):
    peers = _az(lab, "vnet-gateway", "list-bgp-peer-status", "-n", "hub-gw")
    jsonschema.validate(peers, SHAPES["bgp_peer_status"])
    in0 = [p for p in peers["value"] if p["localAddress"] == "169.254.21.1"]
    assert in0 and all((p["state"] != "Connected") == during_fault for p in in0), peers
    routes = _az(lab, "vnet-gateway", "list-learned-routes", "-n", "hub-gw")
    jsonschema.validate(routes, SHAPES["gateway_routes"])
    learned = {(r["network"], r["origin"]) for r in routes["value"]}
    assert {("10.10.0.0/16", "Network"), ("10.20.1.0/24", "EBgp"), ("10.20.2.0/24", "EBgp")} <= learned, routes
    sent = _az(lab, "vnet-gateway", "list-advertised-routes", "-n", "hub-gw", "--peer", "169.254.22.10")
    jsonschema.validate(sent, SHAPES["gateway_routes"])
    assert "10.10.0.0/16" in {r["network"] for r in sent["value"]}, sent
    conn = _az(lab, "vpn-connection", "show", "-n", "hub-to-dev0")
    jsonschema.validate(conn, SHAPES["connection"])
    states = sorted(t["connectionStatus"] for t in conn["tunnelConnectionStatus"])
    assert conn["connectionStatus"] == "Connected", conn       # the other instance's tunnel carries it
    assert (states != ["Connected", "Connected"]) == during_fault, states
    listed = _az(lab, "vpn-connection", "list")
    assert sorted(c["name"] for c in listed) == ["hub-to-dev0", "hub-to-dev1"]


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "unplanned"])
def test_instance_failover_is_monitored(lab, scenario, prometheus, planned):
    """Instance 0 leaves (planned maintenance, then an unplanned loss) and comes back.
    The 1 s series shows BgpPeerStatus of its session with dev0 drop and recover;
    Prometheus, scraping the agent, sees the same edges; "BgpPeerStatus < 1" fires and
    resolves after the heal; GatewayDiagnosticLog records the instance's events; the
    az-shaped views show the lost instance while it is gone, in Azure's shapes; its
    health probe answers before and after, not while it is gone."""
    lab.wait_converged()
    scenario.lab = lab
    wall = time.time()
    at = scenario.fail("instance", "hub-gw-in0", planned=planned)
    scenario.record("alert fired after", scenario.wait_alert("bgp-peer-down", "Fired", at), "s")
    _check_az_shapes(lab, during_fault=True)
    # the health probe: the lost instance's public IP does not answer, the other's does
    assert live.health_probe(lab.backend, "onprem-dev0", IN0_IP) is None
    assert "Primary Instance: GatewayTenantWorker_IN_1 " in live.health_probe(lab.backend, "onprem-dev0", IN1_IP)
    healed = scenario.heal()
    scenario.record("reconverged after heal", scenario.wait_converged(), "s")
    scenario.record("alert resolved after heal", scenario.wait_alert("bgp-peer-down", "Resolved", healed), "s")
    _check_az_shapes(lab, during_fault=False)
    answer = live.health_probe(lab.backend, "onprem-dev0", IN0_IP)
    assert answer and answer.startswith('<?xml version="1.0"?><string xmlns=') and "GatewayTenantWorker_IN_0 " in answer

    ours = _zero_run(_series_points(lab, wall), wall)
    theirs = _zero_run(_prometheus_points(prometheus, wall, time.time()), wall)
    scenario.record("series: BgpPeerStatus at 0", round(ours[1] - ours[0] + 1, 1), "s")
    scenario.record("Prometheus: BgpPeerStatus at 0", round(theirs[1] - theirs[0] + SCRAPE_S, 1), "s")
    assert abs(ours[0] - theirs[0]) <= AGREE_S and abs(ours[1] - theirs[1]) <= AGREE_S, (ours, theirs)
    after = [v for t, v in _series_points(lab, ours[1]) if t > ours[1]]
    assert after and after[-1] == 1, f"the series never recovered: {after[-5:]}"

    logged = [(e["OperationName"], e["Message"]) for e in events.read(lab.state.dir, "GatewayDiagnosticLog")
              if _epoch(e["TimeGenerated"]) >= wall]
    expected = ["HostMaintenanceEvent"] * 2 if planned else ["InstanceFailure", "InstanceRecovered"]
    assert [op for op, _ in logged] == expected, logged
    assert all("GatewayTenantWorker_IN_0" in message for _, message in logged), logged

    for entry in _alert_entries(lab, wall):
        jsonschema.validate(entry, SHAPES["alert"])


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _alert_entries(lab, since: float) -> list[dict]:
    out = [e for e in alerts.read(lab.state.dir) if _epoch(e["data"]["essentials"]["firedDateTime"]) >= since]
    assert out, "no alert entries"
    return out


def test_an_alert_rule_added_by_apply_is_evaluated(lab, scenario):
    """`vpnlab apply` with one more rule: no step touches the gateway, the agent starts
    again with the rules and the new one fires (its condition holds at once)."""
    scenario.lab = lab
    design = lab.design()
    design["metric_alerts"]["few-routes"] = {
        "scopes": ["hub-gw"], "metric_name": "BgpRoutesLearned", "operator": "LessThan", "threshold": 100,
        "time_aggregation": "Maximum", "window_size": "PT2S", "evaluation_frequency": "PT1S",
        "dimensions": [{"name": "BgpPeerAddress", "values": ["*"]}]}
    at, result = scenario.apply(design, "metric alert rule few-routes added")
    assert [c["resource"] for c in result["changes"]] == ["metric_alerts.few-routes"], result["changes"]
    assert result["steps"] == [] and result["resets"] == []
    scenario.record("new rule fired after", scenario.wait_alert("few-routes", "Fired", at), "s")
