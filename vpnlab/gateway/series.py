"""The gateway's metric time series [7.4]: what the agent sampled, kept in SQLite in the
lab folder (metrics.sqlite) for `monitoring.retention_seconds`, and answered in the
shape of Azure Monitor's REST API (Metrics - List) [MONREST].

A sample is one value of one series (resource, metric, dimensions) at one time; a
round is the samples of one time, stored as one row (the values in an array indexed by
the series' id, NaN where a series has none), so that a second's hundreds of samples
are one append. A counter's sample is what it counted since the sample before (Azure's Total over a grain
is then the sum of the samples in it); TunnelAverageBandwidth and AverageBandwidth are
derived from those counts over the sample's interval, so a tunnel that stops carrying
shows it at the next sample, as a chart in Azure does at its grain.

The standard library's sqlite3 is the store: one file, readers beside the one writer
(WAL), no server.
"""
from __future__ import annotations

import json
import math
import sqlite3
from array import array
from datetime import datetime, timezone
from pathlib import Path

from vpnlab.model import names
from vpnlab.model.monitoring import catalogue, duration

FILE = "metrics.sqlite"
AGGREGATIONS = ("average", "minimum", "maximum", "total", "count")
_SHORT = {"avg": "average", "min": "minimum", "max": "maximum", "sum": "total"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, resource TEXT, metric TEXT, dims TEXT,
                                   UNIQUE (resource, metric, dims));
CREATE TABLE IF NOT EXISTS rounds (t REAL PRIMARY KEY, vals BLOB);
"""


def aggregation(word: str) -> str:
    """Azure's aggregation name (Average ...) from what a user typed (avg, Average)."""
    word = _SHORT.get(word.lower(), word.lower())
    if word not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {word!r}; allowed: average (avg), minimum (min), "
                         f"maximum (max), total (sum), count")
    return word


class Store:
    """The agent's writer: a round is a row (8 bytes a sample). Rounds older than the
    retention go once a minute."""

    def __init__(self, lab_dir: Path, retention: float):
        self.db = sqlite3.connect(Path(lab_dir) / FILE, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.retention = retention
        self.ids: dict[tuple, int] = {}
        self.pruned = 0.0

    def _id(self, key: tuple) -> int:
        if key not in self.ids:
            self.db.execute("INSERT OR IGNORE INTO series (resource, metric, dims) VALUES (?, ?, ?)", key)
            self.ids[key] = self.db.execute(
                "SELECT id FROM series WHERE resource = ? AND metric = ? AND dims = ?", key).fetchone()[0]
        return self.ids[key]

    def append(self, t: float, rows: list[dict]):
        ids = [self._id(series_key(r)) for r in rows]
        vals = array("d", [math.nan]) * (max(ids, default=0) + 1)
        for sid, r in zip(ids, rows):
            vals[sid] = r["value"]
        self.db.execute("INSERT OR REPLACE INTO rounds VALUES (?, ?)", (t, vals.tobytes()))
        if t - self.pruned >= 60:
            self.pruned = t
            self.db.execute("DELETE FROM rounds WHERE t < ?", (t - self.retention,))

    def close(self):
        self.db.close()


_KEYS: dict[tuple, tuple[str, str, str]] = {}


def series_key(row: dict) -> tuple[str, str, str]:
    """(resource, metric, dimensions as JSON): the series a row belongs to (memoised: the
    agent asks it for every row of every round)."""
    fast = (row["resource"], row["name"], *row["dimensions"].items())
    key = _KEYS.get(fast)
    if key is None:
        key = _KEYS[fast] = (row["resource"], row["name"], json.dumps(row["dimensions"], sort_keys=True))
    return key


class Sampler:
    """Rows of `metrics.metrics` (counters as strongSwan and nftables keep them: since
    the SA was installed, the rule loaded) turned into samples: counts since the sample
    before, and the bandwidths they make."""

    def __init__(self):
        self.before: dict[tuple, float] = {}
        self.at: float | None = None

    def samples(self, t: float, rows: list[dict]) -> list[dict]:
        kinds = catalogue()
        interval = (t - self.at) if self.at else None
        self.at = t
        out, tunnel_bytes = [], {}
        for row in rows:
            if not kinds[row["name"]].get("counter"):
                out.append(row)
                continue
            key = series_key(row)
            last = self.before.get(key)
            self.before[key] = row["value"]
            # a counter that went back started again (a rekey, a reloaded rule)
            count = row["value"] if last is None or row["value"] < last else row["value"] - last
            if last is None:
                count = 0          # the first sample only sets where counting starts
            out.append({**row, "value": count})
            if row["name"] in ("TunnelIngressBytes", "TunnelEgressBytes"):
                tunnel = (row["resource"], key[2])
                tunnel_bytes[tunnel] = tunnel_bytes.get(tunnel, 0) + count
        if interval:
            _bandwidths(out, tunnel_bytes, interval)
        return out


def _bandwidths(rows: list[dict], tunnel_bytes: dict, interval: float):
    """TunnelAverageBandwidth per tunnel and AverageBandwidth per instance: bytes both
    ways over the last interval."""
    per_instance: dict[tuple, float] = {}
    for row in rows:
        if row["name"] == "TunnelAverageBandwidth":
            rate = tunnel_bytes.get((row["resource"], series_key(row)[2]), 0) / interval
            row["value"] = round(rate, 1)
            inst = (row["resource"], row["dimensions"]["Instance"])
            per_instance[inst] = per_instance.get(inst, 0) + rate
    for row in rows:
        if row["name"] == "AverageBandwidth":
            row["value"] = round(per_instance.get((row["resource"], row["dimensions"]["Instance"]), 0), 1)


# ------------------------------------------------------------------ reading
def connect(lab_dir: Path) -> sqlite3.Connection | None:
    path = Path(lab_dir) / FILE
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def chosen_series(db, metric: str, resource: str | None, filters: dict[str, list[str]]) -> list[tuple[int, dict]]:
    """(id, dimensions) of a metric's series that pass `filters` (dimension -> values
    to include; "*" any)."""
    rows = db.execute("SELECT id, resource, dims FROM series WHERE metric = ?", (metric,)).fetchall()
    out = []
    for sid, res, dims in rows:
        d = json.loads(dims)
        if resource and res != resource:
            continue
        if all("*" in values or d.get(dim) in values for dim, values in filters.items()):
            out.append((sid, d))
    return out


def query(lab_dir: Path, lab: str, metrics: list[str], start: float, end: float, interval: int,
          aggregations: list[str], resource: str | None = None, filters: dict | None = None,
          split: list[str] = ()) -> dict:
    """Azure Monitor's Metrics - List answer: per metric, one time series per value of
    the split dimensions (all series together when none), one data point per interval
    from start, with the aggregations asked for."""
    filters = filters or {}
    db = connect(lab_dir)
    value = []
    for metric in metrics:
        info = catalogue()[metric]
        series = chosen_series(db, metric, resource, filters) if db else []
        groups: dict[tuple, list[int]] = {}
        for sid, dims in series:
            groups.setdefault(tuple(dims.get(d, "") for d in split), []).append(sid)
        points = _points(db, groups, start, end, interval, aggregations) if groups else {}
        timeseries = [{"metadatavalues": [{"name": {"value": d.lower(), "localizedValue": d.lower()}, "value": v}
                                          for d, v in zip(split, group)], "data": points[group]}
                      for group in sorted(groups)]
        gateway = resource or "*"
        value.append({"id": f"{names.resource_id(lab, 'virtualNetworkGateways', gateway)}"
                            f"/providers/Microsoft.Insights/metrics/{metric}",
                      "type": "Microsoft.Insights/metrics",
                      "name": {"value": metric, "localizedValue": info["display"]},
                      "displayDescription": info.get("description", ""),
                      "unit": info["unit"], "timeseries": timeseries, "errorCode": "Success"})
    if db:
        db.close()
    return {"cost": 0, "timespan": f"{iso(start)}/{iso(end)}", "interval": duration(interval),
            "value": value, "namespace": "Microsoft.Network/virtualNetworkGateways",
            "resourceregion": "westeurope"}


def values(db, ids: list[int], start: float, end: float, closed_start: bool = True):
    """(t, [value or None per id]) of each round from start to end (end excluded; start
    too unless closed_start)."""
    op = ">=" if closed_start else ">"
    for t, blob in db.execute(f"SELECT t, vals FROM rounds WHERE t {op} ? AND t < ? ORDER BY t", (start, end)):
        vals = array("d")
        vals.frombytes(blob)
        yield t, [vals[i] if i < len(vals) and not math.isnan(vals[i]) else None for i in ids]


def aggregate(found: list[float], how: str) -> float | None:
    """Azure's aggregation of the samples of an interval (None: no sample, but count)."""
    if how == "count":
        return len(found)
    if not found:
        return None
    return {"average": lambda: sum(found) / len(found), "minimum": lambda: min(found),
            "maximum": lambda: max(found), "total": lambda: sum(found)}[how]()


def _points(db, groups: dict[tuple, list[int]], start: float, end: float, interval: int,
            aggregations: list[str]) -> dict[tuple, list[dict]]:
    """Per group of series, a point for every interval from start to end (the rounds
    read once for all groups); a point without samples has only its timeStamp (and
    count 0), as Azure leaves gaps."""
    ids = [sid for group in groups.values() for sid in group]
    where = {sid: group for group, group_ids in groups.items() for sid in group_ids}
    buckets: dict[tuple, dict[int, list[float]]] = {group: {} for group in groups}
    for t, vals in values(db, ids, start, end):
        b = int((t - start) // interval)
        for sid, v in zip(ids, vals):
            if v is not None:
                buckets[where[sid]].setdefault(b, []).append(v)
    out = {}
    for group in groups:
        points = []
        for b in range(int((end - start + interval - 1) // interval)):
            point = {"timeStamp": iso(start + b * interval)}
            for how in aggregations:
                value = aggregate(buckets[group].get(b, []), how)
                if value is not None:
                    point[how] = value
            points.append(point)
        out[group] = points
    return out


def latest(lab_dir: Path, metric: str, since: float) -> list[tuple[float, dict, float]]:
    """(time, dimensions, value) of a metric's samples since a time: for checks."""
    db = connect(lab_dir)
    if db is None:
        return []
    series = [(sid, json.loads(dims)) for sid, dims in
              db.execute("SELECT id, dims FROM series WHERE metric = ?", (metric,))]
    out = [(t, dims, v) for t, vals in values(db, [sid for sid, _ in series], since, math.inf)
           for (_, dims), v in zip(series, vals) if v is not None]
    db.close()
    return out


REPORTED = ("TunnelAverageBandwidth", "BgpPeerStatus", "P2SConnectionCount")   # the report's charts


def around(lab_dir: Path, since: float, until: float, metrics=REPORTED, most: int = 12) -> dict[str, dict]:
    """For the report's charts: per metric, per series (its dimension values as a label),
    [seconds since `since`, value] of its samples up to `until`; at most `most` series,
    those that moved most."""
    db = connect(lab_dir)
    if db is None:
        return {}
    out = {}
    for metric in metrics:
        found: dict[str, list] = {}
        series = db.execute("SELECT id, resource, dims FROM series WHERE metric = ?", (metric,)).fetchall()
        labels = [" ".join([resource] + [v.replace("GatewayTenantWorker_", "") for k, v in json.loads(dims).items()
                                         if k != "RemoteIP"]) for _, resource, dims in series]
        for t, vals in values(db, [sid for sid, _, _ in series], since, until + 0.001):
            for label, value in zip(labels, vals):
                if value is not None:
                    found.setdefault(label, []).append([round(t - since, 2), value])
        moved = lambda item: max(v for _, v in item[1]) - min(v for _, v in item[1])
        out[metric] = dict(sorted(sorted(found.items(), key=moved, reverse=True)[:most]))
    db.close()
    return {m: s for m, s in out.items() if s}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_ms(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
