"""The throughput part of `make bench`: iperf3 through the one tunnel of a VpnGw5 gateway
(rated 10 Gbit/s, so that the SKU does not cap what the data plane can carry), one
stream and four, on each data plane this machine's kernel can run (the kernel's only
where it has ESP), and what limited the figure: the SKU or the lab's data plane."""
from __future__ import annotations

from pathlib import Path

import yaml

from vpnlab import engine
from vpnlab.checks.throughput import across_a_tunnel, iperf, limited_by
from vpnlab.errors import LabError
from vpnlab.model import generate
from vpnlab.model.topology import load, throughput_mbps
from vpnlab.session import open_lab

SKU = "VpnGw5"
SECONDS = 5


def measure(dataplane: str, runtime: str, folder: Path) -> dict:
    path = folder / "throughput.yaml"
    path.write_text(yaml.safe_dump(generate.design(1, active_active=False, bgp=False, sku=SKU, key="Bench.Key")))
    rated = throughput_mbps(load(path).virtual_network_gateways["hub-gw"])
    name = f"bench-tp-{runtime}"
    row = {"runtime": runtime, "dataplane": dataplane, "sku": SKU, "rated_mbps": rated}
    try:
        engine.up(path, name=name, timers="fast", runtime=runtime, dataplane=dataplane)
        with open_lab(name) as lab:
            vm, host, address = across_a_tunnel(lab.plan)
            one = iperf(lab.backend, vm, host, address, SECONDS)
            four = iperf(lab.backend, vm, host, address, SECONDS, streams=4)
        row.update(one_stream_mbps=one["mbps"], four_streams_mbps=four["mbps"],
                   limited_by=limited_by(max(one["mbps"], four["mbps"]), SKU, rated, dataplane))
    except engine.NoKernelEsp:
        row["skipped"] = "skipped: this kernel has no ESP"
    except (LabError, RuntimeError) as err:
        row["error"] = str(err)[:300]
    finally:
        engine.down(name)
    return row
