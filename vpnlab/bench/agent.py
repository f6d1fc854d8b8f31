"""`make bench`: what the gateway's agent costs on a generated 30-site active-active lab
(60 tunnels, 60 eBGP sessions), with metric sampling off and then on (every second:
the metrics, the time series, the OpenMetrics endpoint, the alert rules). CPU is the
agent's own and its waited children's (the vtysh and nft it runs), over a measured
window, in percent of one core; memory is its RSS at the end and its peak (VmHWM).
The target [issue 22]: at most 5 % of one core and 100 MB."""
from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import yaml

from vpnlab import engine
from vpnlab.bench.peak_memory import measured
from vpnlab.errors import LabError
from vpnlab.gateway import series
from vpnlab.model import generate
from vpnlab.runtime import daemons
from vpnlab.session import open_lab
from vpnlab.waits import wait_until

WINDOW_S = 30           # the measured stretch of time, per setting
TARGET = {"cpu_percent": 5.0, "rss_mb": 100.0}


def measure(runtime: str, folder: Path, sites: int = 30) -> dict:
    name = f"bench-agent-{runtime}"
    row = {"runtime": runtime, "sites": sites, "window_s": WINDOW_S, "target": TARGET}
    path = folder / f"agent-{sites}.yaml"
    path.write_text(yaml.safe_dump(generate.design(sites, active_active=True, bgp=True, sku="VpnGw4",
                                                   key="Bench.Key")))
    with measured(name, row):
        try:
            engine.up(path, name=name, timers="fast", runtime=runtime, sample_seconds=0)
            lab = open_lab(name)
            row["off"] = _window(_agent_pid(lab))
            lab.state.sample_seconds = 1
            lab.state.save()
            daemons.restart_agent(lab.backend)
            wait_until(lambda: _stored(lab.state.dir, 0), bool, "the agent's first samples", 30, interval=0.2)
            since = time.time()
            row["on"] = _window(_agent_pid(lab))
            row["on"]["series_mb_per_hour"] = round(_stored(lab.state.dir, since) * 3600 / WINDOW_S / 2**20, 1)
            row["within_target"] = all(row[k]["cpu_percent"] <= TARGET["cpu_percent"]
                                       and row[k]["peak_rss_mb"] <= TARGET["rss_mb"] for k in ("off", "on"))
        except LabError as err:
            row["error"] = str(err)
    return row


def _agent_pid(lab) -> int:
    return [p["pid"] for p in lab.state.processes if p["daemon"] == "agent"][-1]     # the newest


def _stored(lab_dir: Path, since: float) -> int:
    """Bytes of samples the series holds from a time on (the rounds' values; SQLite's
    pages add a few percent)."""
    db = series.connect(lab_dir)
    if db is None:
        return 0
    with contextlib.closing(db):
        return db.execute("SELECT coalesce(sum(length(vals)), 0) FROM rounds WHERE t >= ?", (since,)).fetchone()[0]


def _cpu_seconds(pid: int) -> float:
    """utime + stime + the waited children's (fields 14-17 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _memory_mb(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(status[v].split()[0]) / 1024, 1) for k, v in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}


def _window(pid: int) -> dict:
    """The agent's CPU over WINDOW_S seconds of wall time (a measurement window: a
    length of time to count over, not a wait for a condition), and its memory after."""
    cpu, wall = _cpu_seconds(pid), time.monotonic()
    threading.Event().wait(WINDOW_S)
    used, elapsed = _cpu_seconds(pid) - cpu, time.monotonic() - wall
    return {"cpu_percent": round(100 * used / elapsed, 2), **_memory_mb(pid)}
