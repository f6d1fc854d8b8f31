"""`make bench`: time from `up` to converged and peak memory, for the default topology,
shipped designs (--designs: hub-and-spoke, forced tunnelling) and generated
active-active VpnGw4 topologies of 1, 10, 30 and 100 sites (2 tunnels per site; 100
sites and 200 tunnels is Azure's limit for VpnGw4), and `vpnlab apply` on the default
lab (vpnlab.bench.apply), and throughput through one tunnel on each data plane
(vpnlab.bench.throughput), and the gateway's agent with metric sampling off and on
(vpnlab.bench.agent), on each runtime asked for that can run here. Memory is the
lab's peak, three ways (vpnlab.bench.peak_memory), per tunnel. Prints tables and writes
JSON. Run as root; uses fast timers."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from vpnlab import engine
from vpnlab.bench import agent as bench_agent
from vpnlab.bench import apply as bench_apply
from vpnlab.bench import p2s as bench_p2s
from vpnlab.bench import throughput as bench_throughput
from vpnlab.bench.peak_memory import fields, measured
from vpnlab.errors import LabError
from vpnlab.model import generate, shipped
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.runtime import procs, registry


def generated_topology(sites: int) -> dict:
    """One active-active VpnGw4 gateway (ASN 65515, APIPA) and N single-device BGP sites."""
    return generate.design(sites, active_active=True, bgp=True, sku="VpnGw4", key="Bench.Key")


def validation_topology(sites: int) -> dict:
    """N static sites over as many VpnGw4 gateways as they need (100 connections each),
    one VNet per gateway. The lab's two public /24s hold 506 site addresses: past that,
    sites share one and validation refuses them, which is part of what is timed."""
    public = [f"192.0.2.{h}" for h in range(2, 255)] + [f"198.51.100.{h}" for h in range(2, 255)]
    gateways = (sites + 99) // 100
    vnets = {f"vnet{g}": {"address_space": [f"172.{16 + g // 16}.{(g % 16) * 16}.0/20"], "subnets": {
        "GatewaySubnet": {"address_prefix": f"172.{16 + g // 16}.{(g % 16) * 16 + 15}.224/27"},
        "workload": {"address_prefix": f"172.{16 + g // 16}.{(g % 16) * 16}.0/24"}}} for g in range(gateways)}
    return {
        "virtual_networks": vnets,
        "virtual_network_gateways": {f"gw{g}": {"virtual_network": f"vnet{g}", "sku": "VpnGw4"}
                                     for g in range(gateways)},
        "local_network_gateways": {f"site{i}": {"gateway_ip": public[i % len(public)],
                                                "address_space": [f"10.{i // 256}.{i % 256}.0/24"]}
                                   for i in range(sites)},
        "connections": {f"gw{i // 100}-to-site{i}": {"virtual_network_gateway": f"gw{i // 100}",
                                                      "local_network_gateway": f"site{i}",
                                                      "shared_key": f"Bench.Key.{i}"} for i in range(sites)},
    }


def measure_validation(sites: int, folder: Path) -> dict:
    """Seconds from a generated file to the model stage's answer (valid, or the refusal)."""
    path = folder / f"validate-{sites}.yaml"
    path.write_text(yaml.safe_dump(validation_topology(sites)))
    start = time.monotonic()
    try:
        load(path)
        problems = 0
    except SourceError as err:
        problems = str(err).count("\n") + 1
    return {"sites": sites, "bytes": path.stat().st_size, "seconds": round(time.monotonic() - start, 2),
            "problems": problems}


def measure(label: str, path: Path, sites: int, runtime: str) -> dict:
    name = f"bench-{label}-{runtime}"
    row = {"topology": label, "sites": sites, "runtime": runtime}
    with measured(name, row):
        start = time.monotonic()
        try:
            result = engine.up(path, name=name, timers="fast", runtime=runtime)
            row.update(tunnels=len(result["tunnels"]), namespaces=len(result["nodes"]),
                       processes=len(procs.tagged(name)),
                       converged_seconds=round(time.monotonic() - start, 2))
        except LabError as err:
            row.update(error=str(err))
    return row


def machine() -> dict:
    mem_kb = fields("/proc/meminfo", ("MemTotal",))["MemTotal"]
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vpnlab.bench")
    ap.add_argument("--sites", default="1,10,30,100")
    ap.add_argument("--designs", default="hub-spoke,forced-tunnelling",
                    help="shipped topologies (topologies/NAME.yaml) to time beside the default ('' to skip)")
    ap.add_argument("--runtimes", default="netns,docker",
                    help="runtimes to measure; one that cannot run here is skipped, with the reason")
    ap.add_argument("--p2s-skus", default="VpnGw1",
                    help="point-to-site: connect each SKU's number of IKEv2 clients ('' to skip)")
    ap.add_argument("--validate-sites", default="1000,10000",
                    help="time the model stage on generated files of these many sites ('' to skip)")
    ap.add_argument("--apply", action=argparse.BooleanOptionalAction, default=True,
                    help="time a no-op vpnlab apply on the default lab, and one that adds a site")
    ap.add_argument("--dataplanes", default="userspace,kernel",
                    help="throughput through one tunnel on each data plane ('' to skip); the kernel's "
                         "is skipped, with the reason, where the kernel has no ESP")
    ap.add_argument("--agent-sites", type=int, default=30,
                    help="the agent's cost on a generated lab of this many sites, sampling off and on (0 to skip)")
    ap.add_argument("--out", default="bench-results/bench.json")
    args = ap.parse_args(argv)
    console = Console(width=130)
    rows, p2s_rows, validation, apply_rows, throughput_rows, agent_rows = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.validate_sites.split(",") if x):
            console.print(f"[dim]validating {n} sites...[/]")
            validation.append(measure_validation(n, Path(tmp)))
        cases = [("default", shipped.default(), 2)]
        for design in filter(None, args.designs.split(",")):
            path = shipped.folder() / f"{design}.yaml"
            cases.append((design, path, len(load(path).local_network_gateways)))
        for n in (int(x) for x in args.sites.split(",") if x):
            path = Path(tmp) / f"sites-{n}.yaml"
            path.write_text(yaml.safe_dump(generated_topology(n)))
            cases.append((f"sites-{n}", path, n))
        for runtime in args.runtimes.split(","):
            why = registry.unavailable(runtime)
            if why:
                console.print(f"[yellow]runtime {runtime} skipped: {why}[/]")
                continue
            for label, path, sites in cases:
                console.print(f"[dim]measuring {label} on {runtime}...[/]")
                rows.append(measure(label, path, sites, runtime))
            if args.apply:
                console.print(f"[dim]measuring vpnlab apply on {runtime}...[/]")
                apply_rows.append(bench_apply.measure(runtime, Path(tmp)))
            for sku in filter(None, args.p2s_skus.split(",")):
                console.print(f"[dim]measuring point-to-site on {sku} on {runtime}...[/]")
                p2s_rows.append(bench_p2s.measure(sku, runtime, Path(tmp)))
            if args.agent_sites:
                console.print(f"[dim]measuring the gateway's agent on {args.agent_sites} sites on {runtime}...[/]")
                agent_rows.append(bench_agent.measure(runtime, Path(tmp), args.agent_sites))
            for dataplane in filter(None, args.dataplanes.split(",")):
                console.print(f"[dim]measuring throughput on the {dataplane} data plane on {runtime}...[/]")
                throughput_rows.append(bench_throughput.measure(dataplane, runtime, Path(tmp)))
    console.print(f"machine: {machine()}")
    console.print(_up_table(rows))
    for r in rows:
        if "error" in r:
            console.print(f"[red]{r['runtime']} {r['topology']}: {r['error']}[/]")
    if validation:
        console.print(_validation_table(validation))
    if p2s_rows:
        console.print(_p2s_table(p2s_rows))
    if apply_rows:
        console.print(_apply_table(apply_rows))
    if throughput_rows:
        console.print(_throughput_table(throughput_rows))
    if agent_rows:
        console.print(_agent_table(agent_rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "results": rows, "point_to_site": p2s_rows,
                                "validation": validation, "apply": apply_rows,
                                "throughput": throughput_rows, "agent": agent_rows}, indent=2))
    console.print(f"wrote {out}")
    return 1 if any("error" in r for r in rows + p2s_rows + apply_rows + throughput_rows + agent_rows) else 0


def _up_table(rows: list[dict]) -> Table:
    table = Table("runtime", "topology", "sites", "tunnels", "nodes", "processes", "converged (s)", "RSS (MB)",
                  "RSS / tunnel", "PSS / tunnel", "machine / tunnel",
                  title="vpnlab up -> converged, fast timers. Memory at its peak, MB: RSS counts a shared "
                        "library once per process, PSS shares it out; machine: used memory above the "
                        "baseline, the kernel's part included")
    for r in rows:
        if "error" in r:
            table.add_row(r["runtime"], r["topology"], str(r["sites"]), "-", "-", "-", "[red]failed[/]",
                          f"{r['peak_rss_mb']:.0f}", "-", "-", "-")
            continue
        table.add_row(r["runtime"], r["topology"], str(r["sites"]), str(r["tunnels"]), str(r["namespaces"]),
                      str(r["processes"]), f"{r['converged_seconds']:.2f}", f"{r['peak_rss_mb']:.0f}",
                      *(f"{r[k] / r['tunnels']:.1f}" for k in ("peak_rss_mb", "peak_pss_mb", "machine_mb")))
    return table


def _validation_table(rows: list[dict]) -> Table:
    table = Table("sites", "file (MB)", "validation (s)", "problems found",
                  title="model stage: a generated file -> valid or refused (vpnlab validate)")
    for r in rows:
        table.add_row(str(r["sites"]), f"{r['bytes'] / 2**20:.1f}", f"{r['seconds']:.2f}", str(r["problems"]))
    return table


def _apply_table(rows: list[dict]) -> Table:
    table = Table("runtime", "no-op apply (s)", "no-op, command line (s)", "target (s)", "site added (s)",
                  "site converged (s)", title=f"vpnlab apply on the default lab (median / max of {rows[0]['rounds']})")
    for r in rows:
        if "error" in r:
            table.add_row(r["runtime"], f"[red]{r['error'][:60]}[/]", "", "", "", "")
            continue
        span = lambda x: f"{x['median']:.2f} / {x['max']:.2f}"
        table.add_row(r["runtime"], span(r["no_op_s"]), span(r["no_op_cli_s"]), f"{r['target_s']:.1f}",
                      f"{r['site_added_s']:.2f}", f"{r['site_converged_s']:.2f}")
    return table


def _p2s_table(rows: list[dict]) -> Table:
    table = Table("runtime", "SKU", "clients", "connected", "up (s)", "connect all (s)", "gateway charon (MB)",
                  "crowd charon (MB)", "peak RSS (MB)",
                  title="point-to-site: the SKU's IKEv2 clients (one crowd namespace, one charon)")
    for r in rows:
        table.add_row(r["runtime"], r["sku"], str(r["clients"]), str(r.get("connected", "-")),
                      str(r.get("up_seconds", "-")), str(r.get("connect_seconds", "-")),
                      str(r.get("gateway_charon_rss_mb", "-")), str(r.get("crowd_charon_rss_mb", "-")),
                      f"{r['peak_rss_mb']:.0f}")
    return table


def _agent_table(rows: list[dict]) -> Table:
    target = bench_agent.TARGET
    table = Table("runtime", "sites", "sampling", "CPU (% of a core)", "RSS (MB)", "peak RSS (MB)", "series (MB/h)",
                  title=f"the gateway's agent over {rows[0]['window_s']} s (target: at most {target['cpu_percent']:g} % "
                        f"of a core and {target['rss_mb']:g} MB)")
    for r in rows:
        if "error" in r:
            table.add_row(r["runtime"], str(r["sites"]), f"[red]{r['error'][:60]}[/]", "", "", "", "")
            continue
        for key, label in (("off", "off"), ("on", "every 1 s")):
            m = r[key]
            table.add_row(r["runtime"], str(r["sites"]), label, f"{m['cpu_percent']:.2f}", f"{m['rss_mb']:.1f}",
                          f"{m['peak_rss_mb']:.1f}", str(m.get("series_mb_per_hour", "-")))
    return table


def _throughput_table(rows: list[dict]) -> Table:
    table = Table("runtime", "data plane", "SKU", "rated (Mbit/s)", "1 stream (Mbit/s)", "4 streams (Mbit/s)",
                  "limited by", title="throughput through one tunnel (iperf3, VNet VM -> site host)")
    for r in rows:
        table.add_row(r["runtime"], r["dataplane"], r["sku"], f"{r['rated_mbps']:g}",
                      str(r.get("one_stream_mbps", "-")), str(r.get("four_streams_mbps", "-")),
                      r.get("limited_by") or r.get("skipped") or r.get("error", "-"))
    return table


if __name__ == "__main__":
    raise SystemExit(main())
