"""Run in the guest (tests/kernel_vm/guest.sh) on its running lab: what the kernel data
plane does, as JSON for tests/test_kernel_vm.py. Usage: measure.py LAB OUT_JSON

- each tunnel end's ipsec0: which kind of link the kernel says it is (xfrm: the kernel
  data plane; tun: libipsec's device);
- what crossed the lab's internet while the VNet's VM pinged each site's host, per
  site (its public address) by IP protocol and UDP port;
- an iperf3 run from the VM to the host (Mbit/s as received), and each tunnel's bytes
  meanwhile, from its SAs' counters through VICI (the kernel's, on the kernel data plane);
- the tunnel ends' charons (the Azure ends': their instance's) and their memory per
  tunnel (RSS and PSS);
- the round trip with 50 ms of netem delay on the device's uplink, and without;
- a new shared key on one site's connection (vpnlab apply): that tunnel's IKE starts
  again in the instance's shared charon, the other's IKE SA stays;
- a tunnel end's charon crashed and healed (vpnlab fail crash);
- an unplanned failover of the serving gateway instance (active-standby).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from scapy.layers.inet import IP, UDP

from vpnlab import engine
from vpnlab.bench.peak_memory import rss_pss_mb
from vpnlab.change.apply import apply
from vpnlab.checks import faults
from vpnlab.checks.throughput import across_a_tunnel, holder, iperf
from vpnlab.checks.wire import Capture
from vpnlab.gateway import live
from vpnlab.session import open_lab
from vpnlab.waits import wait_until


def link_kind(rt, node: str, ifname: str = "ipsec0") -> str | None:
    ipr = rt.ipr(node)
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return None
    info = ipr.get_links(found[0])[0].get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def site_hosts(plan) -> dict[str, str]:
    """Site -> the address of a host on its LAN that the VNet's VM pings."""
    out = {}
    for src, address in plan.pings:
        if plan.nodes[src].role != "vm":
            continue
        site = next(ln.b for ln in plan.links if ln.a == holder(plan, address))
        if plan.nodes[site].role == "device":
            out.setdefault(site, address)
    return out


def on_the_wire(packets, public: str) -> dict[str, int]:
    """Packets to or from a site's public address by kind: esp (IP protocol 50),
    udp-4500 (ESP in UDP), ike-4500 (IKE on port 4500), udp-500 (IKE), other."""
    kinds: Counter = Counter()
    for p in packets:
        if IP not in p or public not in (p[IP].src, p[IP].dst):
            continue
        if p[IP].proto == 50:
            kinds["esp"] += 1
        elif UDP in p and 4500 in (p[UDP].sport, p[UDP].dport):
            # IKE on 4500 begins with four zero bytes (the non-ESP marker); strongSwan
            # moves IKE there with MOBIKE, NAT or not
            kinds["ike-4500" if bytes(p[UDP].payload)[:4] == b"\0\0\0\0" else "udp-4500"] += 1
        elif UDP in p and 500 in (p[UDP].sport, p[UDP].dport):
            kinds["udp-500"] += 1
        else:
            kinds["other"] += 1
    return dict(kinds)


def round_trip_ms(rt, vm: str, target: str) -> float | None:
    res = rt.exec(vm, ["ping", "-n", "-q", "-c", "5", "-i", "0.2", target], timeout=30)
    return float(res.stdout.rsplit("=", 1)[1].split("/")[1]) if res.returncode == 0 else None


def delayed_round_trip(lab, vm: str, device: str, target: str) -> dict:
    """netem's delay (which the host's kernel lacks): 50 ms on the site device's uplink."""
    if not lab.state.kernel_netem:
        return {"link": f"{device}:pub", "unavailable": "this kernel has no netem"}
    base = round_trip_ms(lab.backend, vm, target)
    fault = faults.inject(lab, "delay", f"{device}:pub", delay_ms=50)
    delayed = round_trip_ms(lab.backend, vm, target)
    faults.heal(lab, fault["key"])
    return {"link": f"{device}:pub", "delay_ms": 50, "base_ms": base, "delayed_ms": delayed}


def key_change(lab, vm: str, device: str, hosts: dict[str, str]) -> dict:
    """vpnlab apply of a new shared key on one site's connection: the instance's charon
    loads its connections again, the changed one's IKE starts again (a new IKE SA) and
    the other site's keeps its IKE SA; pings reach both sites afterwards."""
    rt = lab.backend
    ike_ids = lambda: {t.device: sorted(sa["uniqueid"].decode() for sa in live.ike_sas(rt, t.azure_end)
                                        if sa["state"] == b"ESTABLISHED") for t in lab.plan.tunnels}
    before = ike_ids()
    topology = yaml.safe_load(lab.state.topology_file.read_text())
    conn = next(t.connection for t in lab.plan.tunnels if t.device == device)
    topology["connections"][conn]["shared_key"] = f"{device}.Secret.Key2"
    with tempfile.TemporaryDirectory() as tmp:
        changed = Path(tmp) / "topology.yaml"
        changed.write_text(yaml.safe_dump(topology, sort_keys=False))
        result = apply(lab.name, changed)
    lab.refresh()
    pings = {site: bool(wait_until(lambda h=host: live.ping(rt, vm, h, count=1), bool,
                                   f"pings from {vm} to {host} after the key change", 120))
             for site, host in hosts.items()}
    return {"connection": conn, "applied_s": result["seconds"], "converged_s": result["converged_s"],
            "ike_before": before, "ike_after": ike_ids(), "pings": pings}


def charon_crash(lab, vm: str, device: str, target: str) -> dict:
    """vpnlab fail crash on the Azure end of the site's tunnel: its charon killed, and its
    SAs with it on the kernel data plane too (the kernel would keep them); pings stop.
    Healed (charon started again), the tunnel comes back and pings answer."""
    end = next(t.azure_end for t in lab.plan.tunnels if t.device == device)
    rt = lab.backend
    fault = faults.inject(lab, "crash", end, daemon="charon")
    sas_left = rt.exec(rt.charon_of(end), ["ip", "xfrm", "state", "count"]).stdout.strip()
    during = live.ping(rt, vm, target, count=3)
    start = time.monotonic()
    faults.heal(lab, fault["key"])
    back = wait_until(lambda: live.ping(rt, vm, target, count=1), bool,
                      f"pings from {vm} to {target} after the crash was healed", 120)
    return {"end": end, "sas_left": sas_left, "ping_during": during, "ping_after": back,
            "back_s": round(time.monotonic() - start, 1)}


def instance_failover(lab, vm: str, target: str) -> dict:
    """Azure's unplanned reset of the serving instance: the standby takes over, the lab
    converges again and the ping answers (vpnlab maintenance --unplanned)."""
    gateway = next(t.gateway for t in lab.plan.tunnels)
    before = lab.plan.active.get(gateway)
    start = time.monotonic()
    engine.maintenance(lab.name, gateway, unplanned=True, wait=True)
    lab.refresh()
    return {"gateway": gateway, "active_before": before, "active_after": lab.plan.active.get(gateway),
            "converged_s": round(time.monotonic() - start, 1),
            "ping_after": live.ping(lab.backend, vm, target, count=3)}


def main(name: str, out: Path) -> int:
    lab = open_lab(name)
    rt, plan = lab.backend, lab.plan
    vm, server, target = across_a_tunnel(plan)
    ends = sorted({e for t in plan.tunnels for e in (t.azure_end, t.onprem_end) if e})
    kinds = {e: link_kind(rt, e) for e in ends}
    before = {t.name: live.sa_counters(rt, t.azure_end) for t in plan.tunnels}
    public = {t.device: t.remote_ip for t in plan.tunnels}
    pings, wire, hosts = {}, {}, site_hosts(plan)
    for site, host in hosts.items():
        with tempfile.TemporaryDirectory() as tmp:
            # a few pings only: scapy reads a second of iperf3's packets slowly in the guest
            with Capture(rt, "internet", "br0", Path(tmp) / "internet.pcap") as cap:
                pings[site] = live.ping(rt, vm, host, count=5)
            wire[site] = {"public": public[site], "behind_nat": plan.nodes[site].public_ip != public[site],
                          "kinds": on_the_wire(cap.packets(), public[site])}
    run = iperf(rt, vm, server, target, seconds=3)
    after = {t.name: live.sa_counters(rt, t.azure_end) for t in plan.tunnels}
    pids = sorted({pid for e in ends for pid in rt.daemon_pids(e, "charon")})
    charons = rss_pss_mb(pids)
    azure_charons = {t.azure_end: [rt.charon_of(t.azure_end), rt.daemon_pids(t.azure_end, "charon")]
                     for t in plan.tunnels}
    device = next(site for site, host in hosts.items() if host == target)
    delay = delayed_round_trip(lab, vm, device, target)
    change = key_change(lab, vm, device, hosts)
    crash = charon_crash(lab, vm, device, target)
    failover = instance_failover(lab, vm, target)
    result = {
        "dataplane": plan.dataplane,
        "ipsec0": kinds,
        "ping": {"from": vm, "answered": pings},
        "iperf": run,
        "wire": wire,
        "sa_bytes": {t: after[t]["bytes_in"] + after[t]["bytes_out"] - before[t]["bytes_in"] - before[t]["bytes_out"]
                     for t in after},
        # the tunnels' own memory: their ends' charons (the routers, FRR and hosts are
        # the network around them), per tunnel
        "charon_mb_per_tunnel": {k: round(v / len(plan.tunnels), 1) for k, v in charons.items()},
        "charons": len(pids),
        "azure_charons": azure_charons,
        "delay": delay,
        "key_change": change,
        "crash": crash,
        "failover": failover,
    }
    out.write_text(json.dumps(result, indent=1))
    lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
