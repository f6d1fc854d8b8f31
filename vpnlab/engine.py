"""The lab's life cycle: validate -> plan (saved) -> render -> runtime -> converge; down;
status; attach; faults and maintenance with their waits.

No printing here: progress goes through a callback, results are returned or raised.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable

from vpnlab.change import apply as change
from vpnlab.checks import faults
from vpnlab.checks import maintenance as maint
from vpnlab.errors import LabError
from vpnlab.gateway import live
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.names import check_lab_name
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan import clab, pki, render
from vpnlab.plan.build import build
from vpnlab.plan.parts import DATAPLANES, Plan
from vpnlab.runtime import image as node_image
from vpnlab.runtime import registry
from vpnlab.runtime.state import (
    LabState,
    claim_lock,
    lab_dir,
    load_state,
    remove_lab_dir,
)
from vpnlab.session import Lab, is_alive, open_lab, running_labs

Progress = Callable[[str], None]

def _quiet(_: str):
    pass


def _lab_name(name: str | None, topology_file: Path) -> str:
    return check_lab_name(name) if name else check_lab_name(topology_file.stem, topology_file)


def _check_choices(timers: str, runtime: str | None = None, dataplane: str = "auto"):
    if timers not in defaults()["timers"]:
        raise SourceError(f"--timers {timers!r}: allowed: {', '.join(defaults()['timers'])}")
    if runtime is not None and runtime not in registry.names():
        raise SourceError(f"--runtime {runtime!r}: allowed: {', '.join(registry.names())}")
    if dataplane not in ("auto", *DATAPLANES):
        raise SourceError(f"--dataplane {dataplane!r}: allowed: auto, {', '.join(DATAPLANES)}")


class NoKernelEsp(LabError):
    """The kernel data plane was asked for on a kernel without ESP."""


def _dataplane(asked: str, kernel_esp: bool) -> str:
    """auto: the kernel's ESP where the kernel has it, else libipsec's."""
    if asked == "kernel" and not kernel_esp:
        raise NoKernelEsp("--dataplane kernel: this kernel has no ESP (an XFRM state was refused); "
                          "--dataplane userspace (libipsec) runs on any kernel")
    return asked if asked != "auto" else ("kernel" if kernel_esp else "userspace")


# ------------------------------------------------------------------ up
def up(topology_file: str | Path, name: str | None = None, timers: str = "azure",
       progress: Progress = _quiet, keep_on_failure: bool = False, runtime: str = registry.DEFAULT,
       timeout: float | None = None, clean_on_failure: bool = False, dataplane: str = "auto",
       sample_seconds: float | None = None) -> dict:
    """Validate, build, start, wait until converged (within timeout s, else until
    nothing progresses for the timer profile's budget: live.wait_converged), on the data
    plane asked for (auto: the kernel's where it has ESP). A lab that did not come up is
    taken down, its folder (configs and logs) kept for a look or a CI artifact unless
    clean_on_failure, or the whole lab kept running with keep_on_failure; an interrupted
    up removes everything."""
    topology_file = Path(topology_file)
    _check_choices(timers, runtime, dataplane)
    if sample_seconds is None:
        sample_seconds = defaults()["monitoring"]["sample_seconds"]
    if sample_seconds != 0 and not 0.2 <= sample_seconds <= 3600:
        raise SourceError(f"--sample-seconds {sample_seconds}: allowed: 0 (off), or 0.2 to 3600")
    name = _lab_name(name, topology_file)
    progress(f"validating {topology_file}")
    topology = load(topology_file)
    plan = build(topology, timers)                      # bad input stops here
    backend_class = registry.backend_class(runtime)
    why = backend_class.supports(plan) or backend_class.unavailable()
    if why:
        raise LabError(f"--runtime {runtime} cannot run this lab here: {why}")
    with claim_lock():
        if is_alive(name):
            raise LabError(f"lab {name!r} is already up; 'vpnlab down --name {name}' first, "
                           "or choose another --name")
        down(name)                                      # leftovers of a crashed run
        state = LabState(name=name, timers=timers, owner_pid=os.getpid(), runtime=runtime,
                         sample_seconds=sample_seconds)
        state.save()
    lab = Lab(state)
    try:
        state.kernel_esp = lab.backend.kernel_has_esp()
        state.kernel_netem = lab.backend.kernel_has_netem()
        state.dataplane = _dataplane(dataplane, state.kernel_esp)
        if state.dataplane != plan.dataplane:
            plan = build(topology, timers, dataplane=state.dataplane)
        lab.save_plan(plan)
        rendered = render.render(plan, state.nodes_dir)
        state.save()
        shutil.copyfile(topology_file, state.topology_file)
        state.topology_file.chmod(0o600)
        render.write(rendered, state.nodes_dir)
        if plan.p2s_ends or plan.clients:
            progress("issuing the point-to-site certificates")
            pki.issue(topology, state.pki_dir)
            pki.install(plan, state.nodes_dir, state.pki_dir)
        lab.backend.prepare(plan, rendered)
        progress(f"creating {len(plan.nodes)} nodes and {len(plan.links)} links ({runtime})")
        lab.backend.create(plan)
        lab.backend.start_daemons(plan, defaults()["waits"]["daemon_start"], progress)
        state.phase = "up"
        state.save()
        progress("waiting for tunnels, BGP sessions and routes")
        wait_converged(lab, timeout, progress)
        state.converged_at = time.time()      # the agent's alert rules start from here
        state.save()
        return status(name, lab=lab)
    except BaseException as failure:
        state.phase = "failed"
        state.save()
        if keep_on_failure:
            raise
        progress("cleaning up after the failed start")
        problems = lab.backend.teardown()
        started = lab.plan_file.exists()     # not before the data plane was settled
        if isinstance(failure, LabError) and started and not clean_on_failure and not problems:
            raise LabError(f"{failure}\nits configs and logs: {state.dir} ('vpnlab down --name {name}' "
                           "removes them)") from None
        remove_lab_dir(name)
        raise
    finally:
        lab.close()


# ------------------------------------------------------------------ export
def export(topology_file: str | Path, out: str | Path, fmt: str, name: str | None = None,
           timers: str = "azure", split_hosts: int | None = None,
           host_addresses: list[str] | None = None, image: str | None = None) -> list[Path]:
    """The lab as containerlab files (vpnlab.plan.clab): nothing is started."""
    topology_file = Path(topology_file)
    if fmt not in clab.FORMATS:
        raise SourceError(f"--format {fmt!r}: allowed: {', '.join(clab.FORMATS)}")
    _check_choices(timers)
    name = _lab_name(name, topology_file)
    hosts = _split_hosts(fmt, split_hosts, host_addresses or [])
    plan = build(load(topology_file), timers)           # bad input stops here
    why = clab.unsupported(plan)
    if why:
        raise LabError(why)
    return clab.export(plan, name, Path(out), fmt, image or node_image.node_image(), topology_file.name, hosts)


def _split_hosts(fmt: str, split_hosts: int | None, addresses: list[str]) -> list[str]:
    if split_hosts is None:
        if addresses:
            raise SourceError("--host-addresses goes with --split-hosts N")
        return []
    if fmt != "clab":
        raise SourceError("--split-hosts: only with --format clab (clabernetes spreads nodes itself)")
    if split_hosts < 2:
        raise SourceError(f"--split-hosts {split_hosts}: at least 2")
    if len(addresses) != split_hosts:
        raise SourceError(f"--split-hosts {split_hosts} needs --host-addresses with {split_hosts} "
                          f"addresses (each host's own, the VXLAN remotes); got {len(addresses)}")
    for a in addresses:
        try:
            IPv4Address(a)
        except ValueError:
            raise SourceError(f"--host-addresses: {a!r} is not an IPv4 address") from None
    return addresses


# ------------------------------------------------------------------ down
def down(name: str) -> list[str]:
    """Remove exactly this lab: its processes, nodes and files. Idempotent."""
    check_lab_name(name)
    state = load_state(name) or LabState(name=name, runtime=registry.leftover_runtime(name))
    problems = registry.backend_for(state).teardown()
    if not problems:
        remove_lab_dir(name)
    return problems


# ------------------------------------------------------------------ status
def status(name: str, lab: Lab | None = None) -> dict:
    """The lab's status, live: of the open lab given, or of the named lab, opened here."""
    if lab is None:
        with open_lab(name) as lab:
            return status(name, lab)
    state, plan, backend = lab.state, lab.plan, lab.backend
    tunnels, sessions = live.tunnels(backend, plan), live.bgp(backend, plan)
    not_converged = live.convergence(backend, plan, tunnels, sessions)
    return {
        "name": name, "runtime": state.runtime, "dataplane": state.dataplane,
        "kernel_esp": state.kernel_esp, "timers": state.timers, "phase": state.phase,
        "converged": not not_converged, "not_converged": not_converged,
        "apply": change.journal(lab),
        "impairments": impairments(state),
        "nodes": [{"name": n.name, "role": n.role, "namespace": backend.namespace(n.name)}
                  for n in plan.ordered_nodes()],
        "gateways": gateway_instances(plan),
        "tunnels": tunnels,
        "bgp": sessions,
        "point_to_site": [{k: s[k] for k in ("gateway", "instance", "protocol", "pool", "connections")}
                          for s in live.p2s_sessions(backend, plan)],
        "faults": [{k: f[k] for k in ("key", "kind", "target", "params", "injected_at")}
                   for f in state.faults],
        "own_devices": [{"site": site, "public_ip": ip,
                         "netns": state.attached.get(site, {}).get("netns")}
                        for site, ip in sorted(plan.unmanaged.items())],
    }


def gateway_instances(plan: Plan) -> list[dict]:
    """Each gateway's instances: which serve, with which public IP and BGP address."""
    out = []
    for node in plan.ordered_nodes():
        if node.role != "gateway-instance":
            continue
        gateway, _ = names.split_instance(node.name)
        out.append({"gateway": gateway, "instance": node.name, "name": names.azure_instance_name(node.name),
                    "role": "standby" if node.standby else "active",
                    "public_ip": node.public_ip, "bgp_address": node.frr.router_id})
    return out


# ------------------------------------------------------------------ your own device
def attach(name: str, site: str, netns_name: str) -> dict:
    """Connect the user's namespace to the lab's internet as site's device."""
    with open_lab(name) as lab:
        lng = lab.topology.local_network_gateways.get(site)
        if lng is None:
            raise LabError(f"no local network gateway {site!r} in lab {name!r}; sites: "
                           + ", ".join(sorted(lab.topology.local_network_gateways)))
        if lng.managed:
            raise LabError(f"site {site!r} is managed: the lab runs its device. Set 'managed: false' "
                           f"on local_network_gateways.{site} to bring your own")
        if site in lab.state.attached:
            raise LabError(f"site {site!r} is already attached to namespace "
                           f"{lab.state.attached[site]['netns']!r} ('vpnlab detach {site}' first)")
        internet = IPv4Network(f"{lng.gateway_ip}/24", strict=False).network_address + 1
        routes = [(defaults()["internal"]["azure_public"], str(internet))]
        plan = lab.plan
        port = f"u{sorted(plan.unmanaged).index(site)}"
        attached = lab.backend.attach(site, netns_name, port, f"{lng.gateway_ip}/24", routes)
    return {"site": site, **attached, "public_ip": str(lng.gateway_ip),
            "routes": [f"{dst} via {via}" for dst, via in routes],
            "gateways": sorted({plan.nodes[t.gateway_instance].public_ip
                                for t in plan.tunnels if t.device == site})}


def detach(name: str, site: str) -> bool:
    with open_lab(name) as lab:
        return lab.backend.detach(site)


# ------------------------------------------------------------------ faults
def impairments(state: LabState) -> dict:
    """How each kind of link fault is made on this kernel."""
    return {"carrier": "link down", "blackhole": "nftables", "loss": "nftables",
            "delay": "netem" if state.kernel_netem else "unavailable: the kernel has no netem"}


def fail(name: str, kind: str, target: str, **params) -> dict:
    with open_lab(name) as lab:
        return faults.inject(lab, kind, target, **params)


def heal(name: str, keys: list[str] | None = None, wait: bool = False,
         progress: Progress = _quiet) -> list[dict]:
    """Undo faults (all when keys is None); with wait, until the lab converged again."""
    with open_lab(name) as lab:
        healed = faults.heal_all(lab) if keys is None else [faults.heal(lab, k) for k in keys]
        if wait:
            progress("waiting for tunnels, BGP sessions and routes")
            wait_converged(lab, progress=progress)
        return healed


def maintenance(name: str, gateway: str, instance: int | None = None, unplanned: bool = False,
                wait: bool = False, progress: Progress = _quiet) -> dict:
    """Azure's reset of a gateway instance (vpnlab.checks.maintenance); with wait, until
    the lab converged again."""
    with open_lab(name) as lab:
        result = maint.run(lab, gateway, instance, unplanned, progress)
        if wait:
            progress("waiting for tunnels, BGP sessions and routes")
            wait_converged(lab, progress=progress)
        return result


def wait_converged(lab: Lab, budget: float | None = None, progress: Progress | None = None):
    live.wait_converged(lab, budget, progress=progress)


def wait(name: str, timeout: float | None = None, progress: Progress = _quiet) -> dict:
    """Until the lab converged (vpnlab wait): its status then; LabError names what did not."""
    with open_lab(name) as lab:
        wait_converged(lab, timeout, progress)
        return status(name, lab)


# ------------------------------------------------------------------ labs, logs, saved configs
def labs() -> list[dict]:
    """Every lab on this machine: what its state says, and whether anything of it runs."""
    out = []
    for name in running_labs():
        state, alive = load_state(name), is_alive(name)
        out.append({"name": name, "runtime": state.runtime if state else registry.leftover_runtime(name),
                    "timers": state.timers if state else None, "phase": state.phase if state else "leftovers",
                    "nodes": len(state.namespaces) if state and alive else 0, "alive": alive,
                    "folder": str(lab_dir(name)) if state else None})
    return out


def log_files(name: str, node: str, daemon: str | None = None) -> tuple[list[Path], list[str]]:
    """A node's daemon logs that exist (charon.log, frr.log, openvpn.log, radius.log ...),
    or the gateway agent's (node "agent"), daemon picking one; and the lab's shared keys,
    RADIUS secrets and passwords, which whatever prints the logs takes out."""
    with open_lab(name) as lab:
        if node != "agent" and node not in lab.plan.nodes:
            raise SourceError(f"unknown node {node!r}; nodes: agent, {', '.join(sorted(lab.plan.nodes))}")
        files = [lab.state.dir / "agent.log"] if node == "agent" else \
            sorted(f for f in lab.backend.node_dir(node).glob("*.log") if not daemon or f.stem.startswith(daemon))
        keys = [c.shared_key.get_secret_value() for c in lab.topology.connections.values()] + \
            radius_secrets(lab.topology)
    return [f for f in files if f.exists()], [k for k in keys if k]


def radius_secrets(t) -> list[str]:
    """RADIUS secrets and passwords of a topology (taken out of what logs print)."""
    out = [s.secret.get_secret_value() for gw in t.virtual_network_gateways.values()
           if gw.vpn_client_configuration for s in gw.vpn_client_configuration.radius()]
    out += [p.get_secret_value() for h in t.radius_hosts.values() for p in h.users.values()]
    return out + [c.password.get_secret_value() for c in t.clients.values() if c.password]


def save(name: str, folder: str | Path) -> list[Path]:
    """What the daemons run now, per node (containerlab's `save`): FRR's running
    configuration, the connections charon has loaded (VICI), the nftables ruleset; and
    the lab's topology and plan (mode 0600: they hold the shared keys)."""
    folder = Path(folder)
    written = []

    def write(path: Path, text: str, mode: int = 0o644):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        written.append(path)
    with open_lab(name) as lab:
        rt = lab.backend
        for node in lab.plan.ordered_nodes():
            if node.standby:
                continue                     # an idle standby runs nothing
            if node.frr:
                res = rt.vtysh(node.name, "show running-config")
                if res.returncode == 0:
                    write(folder / node.name / "frr.conf", res.stdout)
            if node.runs_charon:
                conns = live.vici_conns(rt, node.name)
                write(folder / node.name / "swanctl-conns.json", json.dumps(_plain(conns), indent=1))
            if node.nft:
                write(folder / node.name / "nftables.json", json.dumps(rt.nft_json(node.name, "list", "ruleset"),
                                                                    indent=1))
        write(folder / "topology.yaml", lab.state.topology_file.read_text(), 0o600)
        write(folder / "plan.json", lab.plan_file.read_text(), 0o600)
    return written


def _plain(value):
    """VICI's answers (bytes in dicts and lists) as JSON values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value.decode(errors="replace") if isinstance(value, bytes) else value
