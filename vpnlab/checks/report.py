"""The HTML report of a scenario run: one self-contained file (plots inlined as PNG),
rendered from the run's JSON results (pytest plugin, or `vpnlab report`)."""
from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

COLORS = {"fault": "#c0392b", "tunnel": "#2471a3", "bgp": "#7d3c98", "loss": "#d35400",
          "state": "#1e8449", "probe": "#566573", "note": "#566573", "change": "#b7950b"}


def timeline_png(sc: dict) -> str | None:
    """Events as labelled ticks over time, probe loss windows as bands per direction."""
    if not sc["events"] and not sc["probes"]:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({e["kind"] for e in sc["events"]})
    directions = [d["direction"] for p in sc["probes"] for d in p["directions"]]
    labels = rows + [f"loss {d}" for d in directions]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(labels) + 1.6))
    for i, kind in enumerate(rows):
        for n, (t, label) in enumerate(_grouped([e for e in sc["events"] if e["kind"] == kind])):
            ax.plot([t], [i], "|", color=COLORS.get(kind, "#333"), markersize=14, mew=2)
            # alternate above and below, so that events close in time stay readable
            ax.annotate(label, (t, i), xytext=(3, 6 if n % 2 == 0 else -12),
                        textcoords="offset points", fontsize=6.5, rotation=8)
    row = len(rows)
    for p in sc["probes"]:
        for d in p["directions"]:
            for w in d["loss_windows"]:
                start, end = p["origin_s"] + w["start_s"], p["origin_s"] + w["end_s"]
                ax.barh(row, max(end - start, 0.01), left=start, height=0.5, color=COLORS["loss"])
            row += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("seconds since the scenario started")
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _grouped(events: list[dict], within: float = 0.3) -> list[tuple[float, str]]:
    """Events of one row less than `within` s apart share a tick: "first (+N more)"."""
    out: list[list] = []
    for e in events:
        if out and e["t_s"] - out[-1][0] < within:
            out[-1][2] += 1
        else:
            out.append([e["t_s"], e["what"][:48], 0])
    return [(t, label + (f" (+{n} more)" if n else "")) for t, label, n in out]


def _numbers(sc: dict) -> str:
    if not sc["numbers"]:
        return ""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=n>{html.escape(str(v['value']))}</td>"
                   f"<td>{html.escape(v['unit'] or '')}</td><td>{html.escape(v['bound'] or '')}</td></tr>"
                   for k, v in sc["numbers"].items())
    return f"<table><tr><th>measured</th><th>value</th><th>unit</th><th>bound</th></tr>{rows}</table>"


def _probes(sc: dict) -> str:
    out = []
    for p in sc["probes"]:
        rows = "".join(
            f"<tr><td>{html.escape(d['direction'])}</td><td class=n>{d['sent']}</td><td class=n>{d['lost']}</td>"
            f"<td class=n>{d['reordered']}</td><td class=n>{d['longest_gap_ms']}</td>"
            f"<td class=n>{d.get('recovered_s', '')}</td></tr>" for d in p["directions"])
        tcp = p.get("tcp")
        tcp_row = (f"<p>TCP {html.escape(tcp['direction'])}: {'survived' if tcp['survived'] else 'did not survive'}"
                   f", longest stall {tcp['longest_stall_ms']} ms</p>" if tcp else "")
        out.append(f"<table><tr><th>probe ({p['rate_pps']} pkt/s, {p['flows']} flows)</th><th>sent</th>"
                   f"<th>lost</th><th>reordered</th><th>longest gap ms</th><th>recovered s</th></tr>{rows}</table>{tcp_row}")
    return "".join(out)


def _scenario(sc: dict) -> str:
    png = timeline_png(sc)
    img = f'<img alt="timeline" src="data:image/png;base64,{png}">' if png else ""
    events = "".join(f"<tr><td class=n>{e['t_s']:.3f}</td><td>{html.escape(e['kind'])}</td>"
                     f"<td>{html.escape(e['what'])}</td></tr>" for e in sc["events"])
    logs = "".join(f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(text)}</pre></details>"
                   for name, text in sc.get("logs", {}).items())
    failure = f"<pre class=fail>{html.escape(sc['failure'])}</pre>" if sc.get("failure") else ""
    return (f'<section class="{html.escape(sc["outcome"])}"><h2>{html.escape(sc["nodeid"])} '
            f'<span class=o>{html.escape(sc["outcome"])}</span></h2><p>{html.escape(sc["description"])}</p>'
            f"{_numbers(sc)}{_probes(sc)}{img}{failure}"
            f"<details><summary>timeline ({len(sc['events'])} events)</summary><table>{events}</table></details>"
            f"{logs}</section>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%}
td.n{text-align:right;font-variant-numeric:tabular-nums}section{border-top:2px solid #ddd;margin-top:1.5em}
section.failed h2 .o{color:#c0392b}section.passed h2 .o{color:#1e8449}pre{font-size:75%;overflow-x:auto;
background:#f6f6f6;padding:.5em}pre.fail{background:#fdecea}img{max-width:100%}"""


def render(results: dict) -> str:
    m = results.get("machine", {})
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(results.get("generated_at", time.time())))
    outcomes = [s["outcome"] for s in results["scenarios"]]
    counts = ", ".join(f"{outcomes.count(o)} {o}" for o in ("passed", "failed", "skipped") if o in outcomes)
    head = (f"<h1>vpnlab scenario report</h1><p>{when} on {html.escape(str(m.get('host', '?')))} "
            f"(kernel {html.escape(str(m.get('kernel', '?')))}, {m.get('cpus', '?')} CPUs): "
            f"{len(outcomes)} scenarios: {counts}</p>")
    body = "".join(_scenario(s) for s in results["scenarios"])
    return f"<!doctype html><meta charset=utf-8><title>vpnlab report</title><style>{STYLE}</style>{head}{body}"


def write_html(results: dict, path: Path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
