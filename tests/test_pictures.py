"""What a person sees: headless Chromium (Debian's) renders the scenario report and a
design's HTML graph; the rendered page holds the summary with a link per scenario, the
SVG timelines with their loss bands and fault markers, the graph's VNet and site boxes,
tunnels and BGP sessions, and the screenshots show them (their colours are on screen)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vpnlab.checks import report
from vpnlab.checks.report import COLORS

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM and not os.environ.get("VPNLAB_REQUIRE_CHROMIUM"),
                                reason="needs Debian's chromium (make test installs it)")


def chromium(url: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args, url.as_uri()], capture_output=True, text=True, timeout=120)


def screenshot(page: Path, size: str = "1300,1100") -> Image.Image:
    png = page.with_suffix(".png")
    res = chromium(page, f"--window-size={size}", f"--screenshot={png}")
    assert png.exists(), res.stderr[-2000:]
    return Image.open(png).convert("RGB")


def pixels(image: Image.Image, color: str) -> int:
    rgb = tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(n for n, c in image.getcolors(image.width * image.height) if c == rgb)


def dom(page: Path) -> str:
    res = chromium(page, "--dump-dom")
    assert res.returncode == 0 and "<html" in res.stdout, res.stderr[-2000:]
    return res.stdout


def a_run() -> dict:
    """Two scenarios as the plugin records them: a fault with the loss it caused, and a
    failed change whose description would break an unescaped page."""
    probe = {"rate_pps": 1000, "flows": 4, "origin_s": 0.5, "events": [], "tcp": None, "directions": [
        {"direction": d, "sent": 4000, "lost": 320, "reordered": 0, "longest_gap_ms": 81.0, "recovered_s": 0.42,
         "loss_windows": [{"start_s": 1.0, "end_s": 1.32, "lost": 320}]} for d in ("vm1 -> host", "host -> vm1")]}
    fault = {"name": "test_failover", "nodeid": "scenarios/test_x.py::test_failover", "outcome": "passed",
             "description": "Instance 0 is lost planned.", "failure": None, "logs": {"hub-gw-in0/frr.log": "ok"},
             "numbers": {"probe loss (worse direction)": {"value": 80.0, "unit": "ms", "bound": "<= 300 ms"}},
             "events": [{"t_s": 0.5, "kind": "probe", "what": "probe vm1 <-> host started"},
                        {"t_s": 1.4, "kind": "fault", "what": "fault injected: instance:hub-gw-in0"},
                        {"t_s": 1.6, "kind": "tunnel", "what": "tunnel hub-to-dev0-in0 down"},
                        {"t_s": 3.0, "kind": "fault", "what": "healed: instance:hub-gw-in0"}],
             "probes": [probe]}
    change = {**fault, "name": "test_change", "nodeid": "scenarios/test_x.py::test_change", "outcome": "failed",
              "description": "<script>alert('x')</script> a key rotated", "failure": "AssertionError: outage 9 s",
              "numbers": {}, "probes": [],
              "events": [{"t_s": 0.2, "kind": "change", "what": "change applied: key rotation"}]}
    return {"generated_at": 1796000000, "machine": {"host": "ci", "kernel": "6.18", "cpus": 2, "python": "3.11"},
            "scenarios": [fault, change]}


def test_the_report_has_its_summary_and_plots_on_screen(tmp_path):
    page = tmp_path / "report.html"
    report.write_html(a_run(), page)
    html = dom(page)
    assert html.count('<tr><td><a href="#sc-scenarios-test-x-py--test-') == 2, "a summary row with a link each"
    assert 'id="sc-scenarios-test-x-py--test-failover"' in html and 'id="summary"' in html
    assert html.count('<svg class="timeline"') == 2
    assert html.count('class="loss"') == 2 and html.count('class="marker"') == 3   # 2 faults + 1 change
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    shot = screenshot(page)
    assert pixels(shot, COLORS["loss"]) > 500, "the loss bands are on screen"
    assert pixels(shot, COLORS["fault"]) > 50 and pixels(shot, COLORS["change"]) > 20, "fault and change events on screen"


def test_the_report_plots_the_metric_series_under_the_timeline(tmp_path):
    """The gateway's series over a failover (the scenario's `series`): a chart per metric
    on the timeline's axis, a line per series, the fault marked across it."""
    run = a_run()
    down = [[t / 2, 0 if 3 <= t < 6 else 1] for t in range(10)]
    run["scenarios"][0]["series"] = {
        "BgpPeerStatus": {"hub-gw 169.254.21.10 IN_0": down, "hub-gw 169.254.22.10 IN_1": [[t / 2, 1] for t in range(10)]},
        "TunnelAverageBandwidth": {"hub-gw hub-to-dev0 IN_0": [[t / 2, 5000.0 * (1 - v)] for t, v in down]}}
    page = tmp_path / "report.html"
    report.write_html(run, page)
    html = dom(page)
    assert html.count('<svg class="timeline chart"') == 2 and html.count('class="series"') == 3
    assert "hub-gw 169.254.21.10 IN_0" in html and "TunnelAverageBandwidth" in html
    shot = screenshot(page, "1200,1400")
    assert pixels(shot, report.LINES[0]) > 100 and pixels(shot, report.LINES[1]) > 50, "the lines are on screen"


def test_a_designs_graph_without_a_lab(tmp_path):
    """`vpnlab graph hub-spoke --format html`: no lab, no root; four VNets and the
    on-prem site boxed, two tunnels and two BGP sessions drawn, the laptop's point-to-
    site link, and every node's addresses."""
    page = tmp_path / "graph.html"
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "graph", "hub-spoke", "--format", "html",
                          "-o", str(page)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    html = dom(page)
    assert html.count('class="group"') == 5
    assert html.count('class="edge tunnel"') == 2 and html.count('class="edge bgp"') == 2
    assert html.count('class="edge p2s"') == 1 and html.count('class="edge peering"') == 3
    for fact in ("public 203.0.113.10", "BGP 10.10.255.4 AS65515", "10.11.1.4", "AS65010"):
        assert fact in html, fact
    shot = screenshot(page, "1400,1000")
    assert pixels(shot, "#f4f8fc") > 20000, "the group boxes are on screen"
