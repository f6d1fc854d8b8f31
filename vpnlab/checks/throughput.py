"""Throughput with iperf3 between two nodes of a lab (bounded: a few seconds per run),
and the ESP byte counters that tell which tunnels carried it."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from vpnlab.gateway import live
from vpnlab.waits import wait_until

BASE_PORT = 5201


def iperf(rt, client: str, server: str, server_addr: str, seconds: int = 3, reverse: bool = False,
          streams: int = 1, port: int = BASE_PORT) -> dict:
    """One TCP run client -> server (reverse: server -> client). Mbit/s as received."""
    log = rt.node_dir(server) / f"iperf3-{port}.log"
    pid = rt.spawn(server, ["iperf3", "-s", "-1", "-B", server_addr, "-p", str(port)], log, "iperf3")
    try:
        wait_until(lambda: rt.exec(server, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip(), bool,
                   f"iperf3 server on {server}:{port}", 10)
        argv = ["iperf3", "-c", server_addr, "-p", str(port), "-t", str(seconds), "-P", str(streams),
                "-J", *(["-R"] if reverse else [])]
        res = rt.exec(client, argv, timeout=seconds + 20)
        data = json.loads(res.stdout or "{}")
        if "error" in data or res.returncode != 0:
            raise RuntimeError(f"iperf3 {client} -> {server}: {data.get('error') or res.stderr.strip()}")
        end = data["end"]
        return {"client": client, "server": server, "reverse": reverse, "streams": streams,
                "seconds": seconds, "mbps": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
                "retransmits": end["sum_sent"].get("retransmits")}
    finally:
        rt.end([pid], grace=1)


DATAPLANE_NAMES = {"userspace": "libipsec", "kernel": "the kernel's XFRM"}


def limited_by(mbps: float, sku: str, rated: float, dataplane: str = "userspace") -> str:
    """What limits a measured figure: the SKU's cap on the instance when the figure
    reaches most of it, else the lab's own data plane."""
    if mbps >= 0.8 * rated:
        return f"the SKU ({sku}, {rated:g} Mbit/s)"
    return f"the lab's data plane ({DATAPLANE_NAMES.get(dataplane, dataplane)})"


def across_a_tunnel(plan) -> tuple[str, str, str]:
    """A VM, and a site's host it reaches through a tunnel (the first of the pings the
    lab's convergence checks), with that host's address: (vm, host, address)."""
    vm, address = next((src, dst) for src, dst in plan.pings if plan.nodes[src].role == "vm")
    return vm, holder(plan, address), address


def holder(plan, address: str) -> str:
    """The node that holds an address on one of its interfaces."""
    return next(n.name for n in plan.nodes.values()
                if any(a.split("/")[0] == address for i in n.interfaces for a in i.addresses))


def esp_bytes(rt, plan) -> dict[str, int]:
    """Tunnel -> bytes through its CHILD SAs (both directions), from the Azure end."""
    counters = live.each(lambda t: live.sa_counters(rt, t.azure_end), plan.tunnels)
    return {t.name: c["bytes_in"] + c["bytes_out"] for t, c in zip(plan.tunnels, counters)}


def concurrent(rt, runs: list[dict]) -> list[dict]:
    """Several iperf3 runs at once (each its own port)."""
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = [pool.submit(iperf, rt, port=BASE_PORT + i, **run) for i, run in enumerate(runs)]
        return [f.result() for f in futures]


def measured(rt, plan, fn) -> tuple[object, dict[str, int], float]:
    """Run fn(); return its result, the ESP bytes each tunnel carried meanwhile, and the
    elapsed seconds."""
    before, start = esp_bytes(rt, plan), time.monotonic()
    result = fn()
    after = esp_bytes(rt, plan)
    return result, {k: after[k] - before.get(k, 0) for k in after}, time.monotonic() - start
