"""Azure Monitor's pieces without a lab: alert rules in the topology, the time series
(counters into counts, bandwidths, Azure's REST shape, aggregations, splits), alert
evaluation (fire, resolve after three evaluations, a dimension per alert), the
OpenMetrics exposition, the command line's --since/--filter and events --follow.
The whole chain against a real lab and a real Prometheus: scenarios/test_monitored_failover.py."""
import json
import threading
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from vpnlab.cli_monitoring import filters, moment
from vpnlab.gateway import alerts, events, series
from vpnlab.model.monitoring import MetricAlert, duration, seconds
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError

HERE = Path(__file__).parent
SHAPES = json.loads((HERE / "azure_shapes.json").read_text())
MONITORED = HERE.parent / "scenarios" / "topologies" / "monitored.yaml"
T0 = 1_800_000_000.0


def peer_row(value, peer="169.254.21.10", instance="GatewayTenantWorker_IN_0"):
    return {"name": "BgpPeerStatus", "value": value, "unit": "Count", "resource": "hub-gw",
            "dimensions": {"BgpPeerAddress": peer, "Instance": instance}}


def tunnel_rows(bytes_in, bytes_out, instance="GatewayTenantWorker_IN_0"):
    dims = {"ConnectionName": "c1", "RemoteIP": "198.51.100.10", "Instance": instance}
    return [{"name": "TunnelIngressBytes", "value": bytes_in, "unit": "Bytes", "resource": "hub-gw", "dimensions": dims},
            {"name": "TunnelEgressBytes", "value": bytes_out, "unit": "Bytes", "resource": "hub-gw", "dimensions": dims},
            {"name": "TunnelAverageBandwidth", "value": 0, "unit": "BytesPerSecond", "resource": "hub-gw",
             "dimensions": dims},
            {"name": "AverageBandwidth", "value": 0, "unit": "BytesPerSecond", "resource": "hub-gw",
             "dimensions": {"Instance": instance}}]


def store_with(tmp_path, samples: list[tuple[float, list[dict]]]):
    store = series.Store(tmp_path, retention=3600)
    for t, rows in samples:
        store.append(t, rows)
    store.close()


# ------------------------------------------------------------------ the topology
def write(tmp_path, rules: str) -> Path:
    path = tmp_path / "t.yaml"
    text = MONITORED.read_text()
    path.write_text(text[:text.index("metric_alerts:")] + "metric_alerts:\n" + rules)
    return path


def test_the_monitored_design_loads_with_its_rules():
    rules = load(MONITORED).metric_alerts
    assert rules["bgp-peer-down"].metric_name == "BgpPeerStatus"
    assert seconds(rules["bgp-peer-down"].window_size) == 5


@pytest.mark.parametrize("rule, field, words", [
    ("{scopes: [nope], metric_name: BgpPeerStatus, operator: LessThan, threshold: 1, time_aggregation: Average}",
     "scopes.0", "unknown gateway 'nope'"),
    ("{scopes: [hub-gw], metric_name: BgpPeerState, operator: LessThan, threshold: 1, time_aggregation: Average}",
     "metric_name", "not a metric the lab emulates"),
    ("{scopes: [hub-gw], metric_name: BgpPeerStatus, dimensions: [{name: RemoteIP, values: ['*']}], "
     "operator: LessThan, threshold: 1, time_aggregation: Average}", "dimensions.0.name", "has no dimension 'RemoteIP'"),
    ("{scopes: [hub-gw], metric_name: BgpPeerStatus, operator: LessThan, threshold: 1, time_aggregation: Average, "
     "window_size: PT1M, evaluation_frequency: PT5M}", "window_size", "shorter than evaluation_frequency"),
    ("{scopes: [hub-gw], metric_name: BgpPeerStatus, operator: LessThan, threshold: 1, time_aggregation: Average, "
     "window_size: 5 minutes}", "window_size", "not an ISO 8601 duration"),
    ("{scopes: [hub-gw], metric_name: BgpPeerStatus, operator: Below, threshold: 1, time_aggregation: Average}",
     "operator", "GreaterThan"),
    ("{scopes: [hub-gw], metric_name: BgpPeerStatus, operator: LessThan, threshold: true, time_aggregation: Average}",
     "threshold", "number"),
])
def test_a_bad_alert_rule_is_refused_with_its_field(tmp_path, rule, field, words):
    path = write(tmp_path, f"  r1: {rule}\n")
    with pytest.raises(SourceError) as err:
        load(path)
    text = str(err.value)
    assert f"metric_alerts.r1.{field}" in text and words in text and str(path) in text, text


@pytest.mark.parametrize("text, value", [("PT1M", 60), ("PT5S", 5), ("PT1H30M", 5400), ("P1D", 86400)])
def test_iso_durations(text, value):
    assert seconds(text) == value
    assert seconds(duration(value)) == value


# ------------------------------------------------------------------ the series
def test_counters_become_counts_and_bandwidths_follow_them():
    s = series.Sampler()
    first = s.samples(T0, tunnel_rows(1000, 500))
    assert [r["value"] for r in first[:2]] == [0, 0]           # counting starts here
    second = s.samples(T0 + 2, tunnel_rows(3000, 1500))
    by = {r["name"]: r["value"] for r in second}
    assert by["TunnelIngressBytes"] == 2000 and by["TunnelEgressBytes"] == 1000
    assert by["TunnelAverageBandwidth"] == 1500.0 and by["AverageBandwidth"] == 1500.0   # 3000 B in 2 s
    third = s.samples(T0 + 3, tunnel_rows(100, 0))              # a rekey: new SAs count from zero
    assert {r["name"]: r["value"] for r in third}["TunnelIngressBytes"] == 100


def test_history_has_azures_shape_and_aggregates_per_interval(tmp_path):
    store_with(tmp_path, [(T0 + i, [peer_row(0 if 10 <= i < 15 else 1),
                                    peer_row(1, instance="GatewayTenantWorker_IN_1")]) for i in range(30)])
    answer = series.query(tmp_path, "lab1", ["BgpPeerStatus"], T0, T0 + 30, 10, ["average", "minimum", "count"],
                          filters={"Instance": ["*"]}, split=["Instance"])
    jsonschema.validate(answer, SHAPES["metrics"])
    assert answer["interval"] == "PT10S"
    ts = {t["metadatavalues"][0]["value"]: t["data"] for t in answer["value"][0]["timeseries"]}
    assert [p["average"] for p in ts["GatewayTenantWorker_IN_0"]] == [1.0, 0.5, 1.0]
    assert [p["minimum"] for p in ts["GatewayTenantWorker_IN_0"]] == [1.0, 0.0, 1.0]
    assert [p["count"] for p in ts["GatewayTenantWorker_IN_1"]] == [10, 10, 10]
    whole = series.query(tmp_path, "lab1", ["BgpPeerStatus"], T0, T0 + 30, 30, ["average"])
    (only,) = whole["value"][0]["timeseries"]
    assert only["metadatavalues"] == [] and only["data"][0]["average"] == pytest.approx(55 / 60)


def test_an_interval_without_samples_has_only_its_time(tmp_path):
    store_with(tmp_path, [(T0 + 25, [peer_row(1)])])
    data = series.query(tmp_path, "lab1", ["BgpPeerStatus"], T0, T0 + 30, 10, ["average"])["value"][0]
    assert data["timeseries"][0]["data"][0] == {"timeStamp": series.iso(T0)}
    assert data["timeseries"][0]["data"][2]["average"] == 1.0


def test_old_samples_go_after_the_retention(tmp_path):
    store = series.Store(tmp_path, retention=100)
    store.append(T0, [peer_row(1)])
    store.append(T0 + 200, [peer_row(0)])
    store.close()
    assert [v for _, _, v in series.latest(tmp_path, "BgpPeerStatus", 0)] == [0]


# ------------------------------------------------------------------ alerts
def rule(**kw) -> MetricAlert:
    base = dict(scopes=["hub-gw"], metric_name="BgpPeerStatus", operator="LessThan", threshold=1,
                time_aggregation="Average", window_size="PT5S", evaluation_frequency="PT1S",
                dimensions=[{"name": "BgpPeerAddress", "values": ["*"]}])
    return MetricAlert(**{**base, **kw})


def run_alerts(tmp_path, values: dict[str, list[int]], r: MetricAlert) -> list[dict]:
    """Samples each second, the rule evaluated after each."""
    store = series.Store(tmp_path, retention=3600)
    ev = alerts.Evaluator("lab1", tmp_path, {"r": r})
    for i in range(len(next(iter(values.values())))):
        store.append(T0 + i, [peer_row(v[i], peer=p) for p, v in values.items()])
        ev.due(T0 + i + 0.5)
    store.close()
    return [alerts.summary(e) | {"entry": e} for e in alerts.read(tmp_path)]


def test_an_alert_fires_per_series_and_resolves_after_three_evaluations(tmp_path):
    down = [1] * 5 + [0] * 3 + [1] * 12
    got = run_alerts(tmp_path, {"169.254.21.10": down, "169.254.22.10": [1] * 20}, rule())
    assert [(e["condition"], e["series"]) for e in got] == [("Fired", "BgpPeerAddress=169.254.21.10"),
                                                           ("Resolved", "BgpPeerAddress=169.254.21.10")]
    fired, resolved = (series_time(e["at"]) for e in got)
    assert fired == T0 + 5.5                       # the first evaluation that saw the 0
    # the last 0 (T0+7) leaves the 5 s window at the evaluation of T0+12.5: the third
    # clean evaluation in a row is T0+14.5
    assert resolved == T0 + 14.5
    for e in got:
        jsonschema.validate(e["entry"], SHAPES["alert"])
    assert got[1]["entry"]["data"]["essentials"]["alertId"] == got[0]["entry"]["data"]["essentials"]["alertId"]


def test_an_alert_fired_by_an_earlier_agent_is_resolved_by_the_next(tmp_path):
    run_alerts(tmp_path, {"p": [1, 0, 0]}, rule())                  # fired, then the agent stops
    store = series.Store(tmp_path, retention=3600)
    ev = alerts.Evaluator("lab1", tmp_path, {"r": rule()})        # a new agent (a takeover)
    for i in range(10, 20):
        store.append(T0 + i, [peer_row(1, peer="p")])
        ev.due(T0 + i + 0.5)
    store.close()
    assert [alerts.summary(e)["condition"] for e in alerts.read(tmp_path)] == ["Fired", "Resolved"]


def test_a_beat_a_little_early_does_not_skip_an_evaluation(tmp_path, monkeypatch):
    ev = alerts.Evaluator("lab1", tmp_path, {"r": rule()})
    evaluated = []
    monkeypatch.setattr(ev, "evaluate", lambda name, r, now, since: evaluated.append(now))
    for now in (T0 + 0.004, T0 + 1.001, T0 + 2.0, T0 + 2.999, T0 + 3.4):
        ev.due(now)
    assert evaluated == [T0 + 0.004, T0 + 1.001, T0 + 2.0, T0 + 2.999]


def test_without_auto_mitigate_an_alert_stays_fired(tmp_path):
    got = run_alerts(tmp_path, {"p": [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}, rule(auto_mitigate=False))
    assert [e["condition"] for e in got] == ["Fired"]


def test_dimensions_not_named_are_aggregated_together(tmp_path):
    # no dimension: one series for both peers, average 0.5 while one is down
    got = run_alerts(tmp_path, {"a": [1, 1, 0, 0, 0, 0, 0, 0], "b": [1] * 8},
                     rule(dimensions=[], threshold=0.6, window_size="PT1S"))
    assert [(e["condition"], e["series"], e["value"]) for e in got] == [("Fired", "(all)", 0.5)]


def test_excluded_values_are_not_watched(tmp_path):
    got = run_alerts(tmp_path, {"a": [0] * 6, "b": [1] * 6},
                     rule(dimensions=[{"name": "BgpPeerAddress", "operator": "Exclude", "values": ["a"]}]))
    assert got == []


def series_time(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------ OpenMetrics
def test_the_endpoint_exposes_azure_names_and_dimensions(tmp_path):
    import urllib.request

    from vpnlab.gateway.openmetrics import Exporter
    exporter = Exporter(tmp_path, "127.0.0.1:0")
    try:
        s = series.Sampler()
        for t, rows in ((T0, tunnel_rows(0, 0) + [peer_row(1)]), (T0 + 1, tunnel_rows(700, 300) + [peer_row(0)])):
            exporter.update(s.samples(t, rows))
        req = urllib.request.Request(exporter.url, headers={"Accept": "application/openmetrics-text"})
        text = urllib.request.urlopen(req, timeout=5).read().decode()
    finally:
        exporter.close()
    assert (tmp_path / "openmetrics.url").read_text().strip() == exporter.url
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (peer,) = families["BgpPeerStatus"].samples
    assert peer.value == 0 and peer.labels == {"Resource": "hub-gw", "BgpPeerAddress": "169.254.21.10",
                                               "Instance": "GatewayTenantWorker_IN_0"}
    assert families["TunnelIngressBytes"].type == "counter"
    assert [x.value for x in families["TunnelIngressBytes"].samples if x.name.endswith("_total")] == [700]
    assert families["TunnelAverageBandwidth"].samples[0].value == 1000.0


# ------------------------------------------------------------------ command line
def test_since_and_filter_words():
    assert moment("10m", 1000.0, "--since") == 400.0
    assert moment("now", 1000.0, "--until") == 1000.0
    assert moment("2026-12-04T03:00:00Z", 0, "--since") == 1796353200.0
    with pytest.raises(SourceError, match="--since 'yesterday'"):
        moment("yesterday", 0, "--since")
    assert filters("BgpPeerAddress eq '*' and Instance eq 'GatewayTenantWorker_IN_0'") == {
        "BgpPeerAddress": ["*"], "Instance": ["GatewayTenantWorker_IN_0"]}
    assert filters("A eq 'x' or A eq 'y'") == {"A": ["x", "y"]}
    with pytest.raises(SourceError, match="is not <Dimension> eq"):
        filters("A = 1")


def test_events_follow_sees_new_lines_and_a_rotation(tmp_path):
    stop, seen = threading.Event(), []
    (tmp_path / events.FILE).write_text(json.dumps({"Category": "RouteDiagnosticLog", "Message": "old"}) + "\n")
    entries = events.follow(tmp_path, stop=stop, poll=0.02)      # from the end of the file as it is now

    def reader():
        for e in entries:
            seen.append(e["Message"])
            if len(seen) == 2:
                stop.set()
    th = threading.Thread(target=reader)
    th.start()
    writer = events.Writer(tmp_path)
    writer.gateway("HostMaintenanceEvent", "hub-gw", "new one", "hub-gw-in0")
    writer.close()
    (tmp_path / events.FILE).replace(tmp_path / (events.FILE + ".1"))
    events.record(tmp_path, "gateway", "GatewayTenantPrimaryChanged", "hub-gw", "after rotation")
    th.join(10)
    stop.set()
    assert seen == ["new one", "after rotation"], seen
