"""The point-to-site part of `make bench`: as many IKEv2 clients as the SKU promises [2.1]
connect to one gateway. The clients are a crowd: one namespace and one charon holding an
IKE SA per client certificate (lighter than a namespace and a charon per client; all
share the crowd's public IP, so the gateway's per-address half-open limit is lifted).
Reports the time to connect them all, how many the gateway holds, and memory."""
from __future__ import annotations

import math
import time
from pathlib import Path

import yaml

from vpnlab import engine
from vpnlab.bench.peak_memory import measured, rss_mb
from vpnlab.checks import p2s_clients as p2s
from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.model.defaults import defaults
from vpnlab.session import open_lab


def generated_topology(sku: str) -> tuple[dict, int]:
    """An active-standby gateway of the SKU with IKEv2 point-to-site, a pool that holds
    the SKU's connections, and a crowd of that many clients."""
    count = defaults()["skus"][sku]["p2s_connections"]
    prefixlen = 32 - math.ceil(math.log2(count + 2))
    return {
        "virtual_networks": {"hub": {"address_space": ["10.10.0.0/16"], "subnets": {
            "GatewaySubnet": {"address_prefix": "10.10.255.0/27"},
            "workload": {"address_prefix": "10.10.1.0/24", "vms": ["vm1"]}}}},
        "virtual_network_gateways": {"hub-gw": {
            "virtual_network": "hub", "sku": sku, "vpn_client_configuration": {
                "address_pool": [f"172.16.0.0/{min(prefixlen, 29)}"], "vpn_client_protocols": ["IkeV2"],
                "root_certificates": [{"name": "P2SRootCert"}]}}},
        "clients": {"crowd": {"virtual_network_gateway": "hub-gw", "protocol": "IkeV2", "count": count}},
    }, count


def measure(sku: str, runtime: str, folder: Path) -> dict:
    topology, count = generated_topology(sku)
    path = folder / f"p2s-{sku}.yaml"
    path.write_text(yaml.safe_dump(topology))
    name = f"bench-p2s-{runtime}"
    row = {"sku": sku, "runtime": runtime, "clients": count}
    with measured(name, row):
        try:
            start = time.monotonic()
            engine.up(path, name=name, timers="fast", runtime=runtime)
            row["up_seconds"] = round(time.monotonic() - start, 2)
            row.update(_connect_all(name, count))
        except LabError as err:
            row["error"] = str(err)[:300]
    return row


def _connect_all(name: str, count: int) -> dict:
    """Connect the crowd; how long it took, how many the gateway holds, the charons' RSS."""
    lab = open_lab(name)
    rt, plan = lab.backend, lab.plan
    out = {}
    try:
        start = time.monotonic()
        try:
            p2s.connect(lab, "crowd", budget=max(60, count / 5))
        except LabError as err:
            out["error"] = str(err)[:300]
        out["connect_seconds"] = round(time.monotonic() - start, 2)
        out["connected"] = sum(s["connections"] for s in live.p2s_sessions(rt, plan))
        server = plan.p2s_ends[0].node
        out["gateway_charon_rss_mb"] = round(rss_mb(rt.daemon_pids(server, "charon")), 1)
        out["crowd_charon_rss_mb"] = round(rss_mb(rt.daemon_pids("crowd", "charon")), 1)
    finally:
        lab.close()
    return out
