"""Metric alert rules (the topology's `metric_alerts`), evaluated by the gateway's agent
as Azure Monitor evaluates static-threshold metric alerts [ALERTS]:
- every `evaluation_frequency`, the samples of the last `window_size` are aggregated
  with `time_aggregation` and compared with `threshold`;
- each value of the dimensions a rule names is a time series of its own, with an alert of
  its own; dimensions it does not name are aggregated together;
- an alert fires when its condition holds, and (auto_mitigate) resolves after
  `monitoring.resolve_after` evaluations in a row where it does not; a window without
  samples changes nothing.

Fired and resolved alerts are appended to alerts.jsonl in the lab folder, in Azure
Monitor's common alert schema [ALERTSCHEMA]; `vpnlab alerts` reads them.
"""
from __future__ import annotations

import json
import operator
import threading
import uuid
from pathlib import Path

from vpnlab.gateway import series
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.monitoring import MetricAlert, seconds

FILE = "alerts.jsonl"
_COMPARE = {"GreaterThan": operator.gt, "GreaterThanOrEqual": operator.ge, "LessThan": operator.lt,
            "LessThanOrEqual": operator.le, "Equals": operator.eq}


class Evaluator:
    def __init__(self, lab: str, lab_dir: Path, rules: dict[str, MetricAlert]):
        self.lab, self.dir = lab, Path(lab_dir)
        self.rules = {name: r for name, r in rules.items() if r.enabled}
        self.resolve_after = defaults()["monitoring"]["resolve_after"]
        self.next_at: dict[str, float] = {}
        self.state: dict[tuple, dict] = {}      # (rule, series) -> fired alert, misses
        self.lock = threading.Lock()
        self._still_fired()

    def _still_fired(self):
        """Alerts a previous agent fired and did not resolve (it was started again: a
        takeover, an apply) stay fired, to be resolved by this one."""
        for entry in read(self.dir):
            e, crit = entry["data"]["essentials"], entry["data"]["alertContext"]["condition"]["allOf"][0]
            if e["alertRule"] in self.rules:
                key = (e["alertRule"], tuple(d["value"] for d in crit["dimensions"]))
                fired = e["monitorCondition"] == "Fired"
                self.state[key] = {"alert": entry if fired else None, "misses": 0}

    def due(self, now: float, since: float = 0):
        """Evaluate the rules whose time has come, on samples taken from `since` on. The
        agent calls this on its sampling beat: a rule due within half a second (or half
        its frequency) is due now, or a beat that came a few milliseconds early would
        push it to the next one."""
        for name, rule in self.rules.items():
            every = seconds(rule.evaluation_frequency)
            if now >= self.next_at.get(name, 0) - min(0.5, every / 2):
                self.next_at[name] = now + every
                self.evaluate(name, rule, now, since)

    def evaluate(self, name: str, rule: MetricAlert, now: float, since: float = 0):
        db = series.connect(self.dir)
        if db is None:
            return
        try:
            values = _window_values(db, rule, now, since)
        finally:
            db.close()
        for group, value in values.items():
            self._judge(name, rule, group, value, now)

    def _judge(self, name: str, rule: MetricAlert, group: tuple, value: float, now: float):
        key = (name, group)
        st = self.state.setdefault(key, {"alert": None, "misses": 0})
        holds = _COMPARE[rule.operator](value, rule.threshold)
        if holds:
            st["misses"] = 0
            if st["alert"] is None:
                st["alert"] = self._record(name, rule, group, value, now, fired=None)
        elif st["alert"] is not None and rule.auto_mitigate:
            st["misses"] += 1
            if st["misses"] >= self.resolve_after:
                self._record(name, rule, group, value, now, fired=st["alert"])
                st["alert"], st["misses"] = None, 0

    def _record(self, name, rule, group, value, now, fired: dict | None) -> dict:
        """One alert fired (fired None) or the fired one resolved; returns the entry."""
        window = seconds(rule.window_size)
        essentials = {
            "alertId": fired["data"]["essentials"]["alertId"] if fired else
            f"/subscriptions/{names.SUBSCRIPTION}/providers/Microsoft.AlertsManagement/alerts/{uuid.uuid4()}",
            "alertRule": name, "severity": f"Sev{rule.severity}", "signalType": "Metric",
            "monitorCondition": "Resolved" if fired else "Fired", "monitoringService": "Platform",
            "alertTargetIDs": [names.resource_id(self.lab, "virtualNetworkGateways", g) for g in rule.scopes],
            "configurationItems": list(rule.scopes), "description": rule.description,
            "firedDateTime": fired["data"]["essentials"]["firedDateTime"] if fired else series.iso_ms(now),
            "essentialsVersion": "1.0", "alertContextVersion": "1.0"}
        if fired:
            essentials["resolvedDateTime"] = series.iso_ms(now)
        dims = [{"name": d.name, "value": v} for d, v in zip(rule.dimensions, group)]
        entry = {"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": essentials, "alertContext": {
            "properties": None, "conditionType": "SingleResourceMultipleMetricCriteria",
            "condition": {"windowSize": rule.window_size, "allOf": [{
                "metricName": rule.metric_name, "metricNamespace": "Microsoft.Network/virtualNetworkGateways",
                "operator": rule.operator, "threshold": str(rule.threshold), "timeAggregation": rule.time_aggregation,
                "dimensions": dims, "metricValue": value}],
                "windowStartTime": series.iso_ms(now - window), "windowEndTime": series.iso_ms(now)}}}}
        with self.lock, open(self.dir / FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")
        return entry


def _window_values(db, rule: MetricAlert, now: float, since: float = 0) -> dict[tuple, float]:
    """The rule's aggregate over its window, per value of the dimensions it names."""
    include = {d.name: d.values for d in rule.dimensions if d.operator == "Include"}
    exclude = {d.name: d.values for d in rule.dimensions if d.operator == "Exclude"}
    groups: dict[tuple, list[int]] = {}
    for scope in rule.scopes:
        for sid, dims in series.chosen_series(db, rule.metric_name, scope, include):
            if any(dims.get(n) in vals for n, vals in exclude.items()):
                continue
            groups.setdefault(tuple(dims.get(d.name, "") for d in rule.dimensions), []).append(sid)
    how = series.aggregation(rule.time_aggregation)
    start = max(now - seconds(rule.window_size), since - 0.001)
    out = {}
    for group, ids in groups.items():
        found = [v for _, vals in series.values(db, ids, start, now + 0.001, closed_start=False)
                 for v in vals if v is not None]
        if found:
            out[group] = series.aggregate(found, how)
    return out


def read(lab_dir: Path) -> list[dict]:
    path = Path(lab_dir) / FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(entry: dict) -> dict:
    """One line's worth of an alert entry: rule, condition, when, the series, the value."""
    e, c = entry["data"]["essentials"], entry["data"]["alertContext"]["condition"]
    crit = c["allOf"][0]
    return {"rule": e["alertRule"], "condition": e["monitorCondition"], "severity": e["severity"],
            "at": e.get("resolvedDateTime") or e["firedDateTime"],
            "series": ", ".join(f"{d['name']}={d['value']}" for d in crit["dimensions"]) or "(all)",
            "value": crit["metricValue"],
            "criterion": f"{crit['timeAggregation']} {crit['metricName']} {crit['operator']} {crit['threshold']} "
                         f"over {c['windowSize']}"}
