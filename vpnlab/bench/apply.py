"""`make bench`: a no-op `vpnlab apply` on the default lab (the running topology applied
again), the target under 2 s, in-process and through the command line (which adds the
interpreter's start), and an apply that adds a site."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vpnlab import engine
from vpnlab.bench.peak_memory import measured
from vpnlab.change import apply as change
from vpnlab.errors import LabError
from vpnlab.model import shipped

ROUNDS = 5
NEW_SITE = {"gateway_ip": "198.51.100.90", "address_space": ["10.90.1.0/24"]}


def measure(runtime: str, folder: Path) -> dict:
    name = f"bench-apply-{runtime}"
    row = {"runtime": runtime, "rounds": ROUNDS, "target_s": 2.0}
    topology = shipped.default()
    with measured(name, row):
        try:
            engine.up(topology, name=name, timers="fast", runtime=runtime)
            row["no_op_s"] = _timed(lambda: change.apply(name, topology))
            cli = [sys.executable, "-m", "vpnlab.cli", "apply", str(topology), "--name", name, "--yes"]
            row["no_op_cli_s"] = _timed(lambda: subprocess.run(cli, capture_output=True, check=True, timeout=60))
            design = yaml.safe_load(topology.read_text())
            design["local_network_gateways"]["bench-site"] = NEW_SITE
            gw = next(iter(design["virtual_network_gateways"]))
            design["connections"]["to-bench-site"] = {"virtual_network_gateway": gw, "local_network_gateway":
                                                     "bench-site", "shared_key": "Bench.Apply.Key"}
            grown = folder / "apply-site.yaml"
            grown.write_text(yaml.safe_dump(design, sort_keys=False))
            added = change.apply(name, grown)
            row.update(site_added_s=added["seconds"], site_converged_s=added["converged_s"])
        except (LabError, subprocess.CalledProcessError) as err:
            row["error"] = str(err)
    return row


def _timed(fn) -> dict:
    seconds = []
    for _ in range(ROUNDS):
        start = time.monotonic()
        fn()
        seconds.append(time.monotonic() - start)
    return {"median": round(statistics.median(seconds), 3), "max": round(max(seconds), 3)}
