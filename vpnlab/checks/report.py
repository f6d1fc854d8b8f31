"""The HTML report of a scenario run: one self-contained file, rendered from the run's
JSON results (pytest plugin, or `vpnlab report`) through a jinja2 template with
autoescaping. At the top a summary with a link to each scenario; per scenario its
numbers against their bounds, the probe's figures, an inline SVG timeline: events
as ticks per kind, loss windows as bands per direction, and faults and changes marked
across every row; under it, on the same time axis, charts of the gateway's metric series
over the scenario (tunnel bandwidth per tunnel, BGP peer status, point-to-site count)."""
from __future__ import annotations

import time
from pathlib import Path

import jinja2

COLORS = {"fault": "#c0392b", "tunnel": "#2471a3", "bgp": "#7d3c98", "loss": "#d35400",
          "state": "#1e8449", "probe": "#566573", "note": "#566573", "change": "#b7950b", "alert": "#e67e22"}
LINES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
         "#bcbd22", "#17becf", "#393b79", "#637939")
CHART = 110                        # a chart's plot height
UNITS = {"TunnelAverageBandwidth": "bytes/s", "BgpPeerStatus": "1 connected, 0 not", "P2SConnectionCount": "connections"}
MARKED = ("fault", "change")       # drawn across the whole timeline
NICE_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
WIDTH, LEFT, RIGHT, ROW, TOP, BOTTOM = 1100, 210, 30, 30, 26, 34

_env = jinja2.Environment(loader=jinja2.PackageLoader("vpnlab.checks", "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _grouped(events: list[dict], within: float = 0.3) -> list[tuple[float, str]]:
    """Events of one row less than `within` s apart share a tick: "first (+N more)"."""
    out: list[list] = []
    for e in events:
        if out and e["t_s"] - out[-1][0] < within:
            out[-1][2] += 1
        else:
            out.append([e["t_s"], e["what"][:48], 0])
    return [(t, label + (f" (+{n} more)" if n else "")) for t, label, n in out]


def timeline(sc: dict) -> dict | None:
    """The timeline's geometry, in SVG user units, for the template."""
    if not sc["events"] and not sc["probes"]:
        return None
    kinds = sorted({e["kind"] for e in sc["events"]})
    directions = [(p, d) for p in sc["probes"] for d in p["directions"]]
    labels = kinds + [f"loss {d['direction']}" for _, d in directions]
    end = max([e["t_s"] for e in sc["events"]] +
              [p["origin_s"] + w["end_s"] for p, d in directions for w in d["loss_windows"]] + [0.001])
    span = WIDTH - LEFT - RIGHT
    x = lambda t: round(LEFT + span * t / end, 1)
    y = lambda row: TOP + ROW * row + ROW / 2
    height = TOP + ROW * len(labels) + BOTTOM
    step = next((s for s in NICE_STEPS if end / s <= 10), NICE_STEPS[-1])
    ticks = [{"x": x(i * step), "label": f"{i * step:g}"} for i in range(int(end / step) + 1)]
    marks = []
    for row, kind in enumerate(kinds):
        for n, (t, label) in enumerate(_grouped([e for e in sc["events"] if e["kind"] == kind])):
            # alternate above and below the row, so that events close in time stay readable
            at = x(t)
            near_end = at > WIDTH - RIGHT - 180          # the label goes left of its tick
            marks.append({"x": at, "y": y(row), "label": label, "color": COLORS.get(kind, "#333"),
                          "dy": -8 if n % 2 == 0 else 16, "anchor": "end" if near_end else "start",
                          "tx": at - 3 if near_end else at + 3})
    bands = []
    for i, (p, d) in enumerate(directions):
        for w in d["loss_windows"]:
            start, stop = x(p["origin_s"] + w["start_s"]), x(p["origin_s"] + w["end_s"])
            bands.append({"x": start, "w": max(stop - start, 1.5), "y": y(len(kinds) + i) - 7, "h": 14,
                          "title": f"{d['direction']}: {w['lost']} lost, {w['start_s']:.3f}-{w['end_s']:.3f} s"})
    markers = [{"x": x(e["t_s"]), "label": e["what"], "color": COLORS[e["kind"]]}
               for e in sc["events"] if e["kind"] in MARKED]
    return {"charts": [_chart(metric, lines, x, end) for metric, lines in (sc.get("series") or {}).items()],"width": WIDTH, "height": height, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP,
            "bottom": height - BOTTOM, "rows": [{"label": label, "y": y(i)} for i, label in enumerate(labels)],
            "ticks": ticks, "marks": marks, "bands": bands, "markers": markers}


def _chart(metric: str, lines: dict[str, list], x, end: float) -> dict:
    """One metric's series as polylines on the timeline's time axis (samples after its
    end are left out), its y axis from 0 to the largest value."""
    top = max((v for points in lines.values() for _, v in points), default=0) or 1
    y = lambda v: round(12 + CHART * (1 - v / top), 1)
    paths = [{"label": label, "color": LINES[i % len(LINES)],
              "points": " ".join(f"{x(t)},{y(v)}" for t, v in points if t <= end)}
             for i, (label, points) in enumerate(lines.items())]
    return {"metric": metric, "unit": UNITS.get(metric, ""), "top": f"{top:g}", "height": CHART + 30,
            "y0": y(0), "ytop": y(top), "paths": [p for p in paths if p["points"]]}


def _worst(sc: dict, key: str):
    values = [d.get(key) for p in sc["probes"] for d in p["directions"] if d.get(key) is not None]
    return max(values) if values else None


def _anchor(nodeid: str) -> str:
    return "sc-" + "".join(c if c.isalnum() else "-" for c in nodeid)


def render(results: dict) -> str:
    scenarios = [{**sc, "anchor": _anchor(sc["nodeid"]), "timeline": timeline(sc),
                  "worst_lost": _worst(sc, "lost"), "worst_recovered_s": _worst(sc, "recovered_s")}
                 for sc in results["scenarios"]]
    outcomes = [s["outcome"] for s in scenarios]
    return _env.get_template("report.html.j2").render(
        machine=results.get("machine", {}), scenarios=scenarios, colors=COLORS,
        when=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(results.get("generated_at", time.time()))),
        counts={o: outcomes.count(o) for o in ("passed", "failed", "skipped") if o in outcomes})


def write_html(results: dict, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
