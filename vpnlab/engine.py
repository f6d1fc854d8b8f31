"""The lab's life cycle: validate -> plan -> render -> runtime -> converge; down; status.

No printing here: progress goes through a callback, results are returned or raised.
"""
from __future__ import annotations

import os
import shutil
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable

from vpnlab.plan import clab
from vpnlab.checks import faults
from vpnlab.gateway import live
from vpnlab.checks import maintenance as maint
from vpnlab.plan import pki
from vpnlab.plan import render
from vpnlab.model.defaults import defaults
from vpnlab.errors import LabError
from vpnlab.plan.build import Plan, build
from vpnlab.runtime import containerlab as clab_runtime
from vpnlab.runtime import docker as docker_runtime
from vpnlab.runtime import image as node_image
from vpnlab.runtime import procs
from vpnlab.runtime.containerlab import ContainerlabRuntime
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.runtime.netns import NetnsRuntime, all_lab_names, lab_namespaces
from vpnlab.model.names import LAB_NAME
from vpnlab.runtime.state import LabState, claim_lock, known_labs, lab_dir, load_state, remove_lab_dir
from vpnlab.model.topology import load
from vpnlab.waits import WaitTimeout, wait_until
from vpnlab.model.yamlsrc import SourceError, shown

Progress = Callable[[str], None]
DEFAULT_TOPOLOGY = "topologies/active-active-bgp.yaml"


def default_topology() -> Path:
    """The default file, from the working folder or else from the project checkout."""
    here = Path(DEFAULT_TOPOLOGY)
    return here if here.exists() else Path(__file__).resolve().parent.parent / DEFAULT_TOPOLOGY


def _quiet(_: str):
    pass


def check_name(name: str, from_file: Path | None = None) -> str:
    """A lab name: --name, or else the topology file's name."""
    if not LAB_NAME.fullmatch(name):
        given = f"lab name '{shown(name)}' (from {shown(from_file)}; choose one with --name)" \
            if from_file else f"--name '{shown(name)}'"
        raise SourceError(f"{given}: use 1-32 letters, digits, '-' or '_', starting with a letter or digit")
    return name


def is_alive(name: str) -> bool:
    """A lab is alive while any of its namespaces or tagged processes exist, or while
    an `up` is still building it."""
    state = load_state(name)
    building = state is not None and state.phase == "building" and procs.alive(state.owner_pid)
    return bool(building or lab_namespaces(name) or procs.tagged(name)
                or docker_runtime.lab_containers(name))


def running_labs() -> list[str]:
    return sorted(set(known_labs()) | all_lab_names() | docker_runtime.all_lab_names())


def resolve_name(name: str | None) -> str:
    """--name, or the only lab there is."""
    if name:
        return check_name(name)
    labs = running_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up (vpnlab up starts one)")
    raise LabError(f"several labs are up ({', '.join(labs)}): choose one with --name")


def require_state(name: str) -> LabState:
    state = load_state(name)
    if state is None:
        if is_alive(name):
            raise LabError(f"lab {name!r} has leftovers but no state; 'vpnlab down --name {name}'")
        raise LabError(f"no lab named {name!r} (state folder {lab_dir(name)} is missing)")
    return state


def plan_of(state: LabState) -> Plan:
    return build(load(state.topology_file), state.timers, state.active)


RUNTIMES = {"netns": NetnsRuntime, "docker": DockerRuntime, "containerlab": ContainerlabRuntime}


def runtime_unavailable(runtime: str) -> str | None:
    """Why a runtime cannot run on this machine, or None."""
    if runtime == "containerlab":
        return clab_runtime.unavailable() or docker_runtime.unavailable()
    if runtime == "docker":
        return docker_runtime.unavailable()
    return None


def runtime_of(state: LabState) -> NetnsRuntime:
    if state.runtime not in RUNTIMES:
        raise LabError(f"runtime {state.runtime!r}: allowed: {', '.join(RUNTIMES)}")
    return RUNTIMES[state.runtime](state)


# ------------------------------------------------------------------ up
def up(topology_file: str | Path, name: str | None = None, timers: str = "azure",
       progress: Progress = _quiet, keep_on_failure: bool = False, runtime: str = "netns") -> dict:
    topology_file = Path(topology_file)
    if timers not in defaults()["timers"]:
        raise SourceError(f"--timers {timers!r}: allowed: {', '.join(defaults()['timers'])}")
    if runtime not in RUNTIMES:
        raise SourceError(f"--runtime {runtime!r}: allowed: {', '.join(RUNTIMES)}")
    name = check_name(name) if name else check_name(topology_file.stem, topology_file)
    progress(f"validating {topology_file}")
    topology = load(topology_file)
    plan = build(topology, timers)                      # bad input stops here
    _containerlab_without_p2s(plan, runtime)
    why = runtime_unavailable(runtime)
    if why:
        raise LabError(f"--runtime {runtime} cannot run here: {why}")
    with claim_lock():
        if is_alive(name):
            raise LabError(f"lab {name!r} is already up; 'vpnlab down --name {name}' first, "
                           "or choose another --name")
        down(name)                                      # leftovers of a crashed run
        state = LabState(name=name, timers=timers, owner_pid=os.getpid(), runtime=runtime)
        state.save()
    rendered = render.render(plan, state.nodes_dir)
    rt = runtime_of(state)
    try:
        state.kernel_esp = rt.kernel_has_esp()
        state.kernel_netem = rt.kernel_has_netem()
        # One data plane design on every kernel: userspace ESP (libipsec); see README.
        state.dataplane = "libipsec"
        state.save()
        shutil.copyfile(topology_file, state.topology_file)
        state.topology_file.chmod(0o600)
        render.write(rendered, state.nodes_dir)
        if plan.p2s_ends or plan.clients:
            progress("issuing the point-to-site certificates")
            pki.issue(topology, state.pki_dir)
            pki.install(plan, state.nodes_dir, state.pki_dir)
        if runtime == "containerlab":
            _write_clab(plan, state, rendered)
        _build(rt, plan, progress)
        state.phase = "up"
        state.save()
        _wait_for_convergence(rt, plan, timers, progress)
        return status(name, rt=rt, plan=plan)
    except BaseException:
        state.phase = "failed"
        state.save()
        if not keep_on_failure:
            progress("cleaning up after the failed start")
            rt.teardown()
            remove_lab_dir(name)
        raise
    finally:
        rt.close()


def _containerlab_without_p2s(plan: Plan, runtime: str):
    if runtime in ("containerlab", "clab", "clabernetes") and (plan.p2s_ends or plan.clients):
        raise LabError("point-to-site (vpn_client_configuration, clients) is not in the containerlab "
                       "files yet: use --runtime netns or docker")


def _write_clab(plan: Plan, state: LabState, rendered: dict[str, dict[str, str]]):
    """The containerlab topology beside the node folders (their configs are written);
    a node's folder is at the same path inside its container as on the host."""
    layout = clab.Layout(lambda node: state.nodes_dir / node, bind_folder=True, run_on_host=True)
    setup = clab.setup_files(plan, layout.node_dir)
    clab.write_folders(setup, state.nodes_dir, layout)
    files = {n: {**rendered[n], **setup[n]} for n in rendered}
    clab.dump(clab.topology(plan, state.name, node_image.node_image(), layout, files),
              state.nodes_dir / f"{state.name}.clab.yml", f"lab {state.name}", str(state.topology_file))


def _build(rt: NetnsRuntime, plan: Plan, progress: Progress):
    nodes = plan.ordered_nodes()
    progress(f"creating {len(nodes)} nodes and {len(plan.links)} links ({rt.name})")
    rt.create(plan)
    budget = defaults()["waits"]["daemon_start"]
    if rt.nodes_start_themselves:
        for warning in rt.warnings:
            progress(f"warning: {warning}")
        progress("waiting for the nodes to start their daemons")
        rt.adopt_daemons(plan, budget)
        progress("starting the gateway's agent (connection modes, Azure's rekeys, events)")
        rt.start_agent()
        return
    routers = [n.name for n in nodes if n.frr is not None and not n.standby]
    progress(f"starting FRR on {len(routers)} routers")
    rt.start_routers(routers, budget)
    # The agent first, so that its diagnostic log sees the first exchanges.
    progress("starting the gateway's agent (connection modes, Azure's rekeys, events)")
    rt.start_agent()
    # Azure ends first, so the devices' first IKE_SA_INIT finds a responder.
    for side in ("az", "op"):
        ends = [e for t in plan.tunnels if (e := t.azure_end if side == "az" else t.onprem_end)]
        progress(f"starting {len(ends)} charon instances ({'Azure' if side == 'az' else 'on-prem'} side)")
        rt.start_tunnel_ends(ends, budget)
    _start_p2s(rt, plan, budget, progress)


def _start_p2s(rt: NetnsRuntime, plan: Plan, budget: float, progress: Progress):
    """Point-to-site servers on the serving instances, then the clients' charons."""
    if not (plan.p2s_ends or plan.clients):
        return
    progress(f"starting {len(plan.p2s_ends)} point-to-site servers")
    rt.start_tunnel_ends([e.node for e in plan.p2s_ends if e.protocol == "IkeV2"], budget)
    rt.start_openvpn([e.node for e in plan.p2s_ends if e.protocol == "OpenVPN"], budget)
    ikev2 = [c.name for c in plan.clients if c.protocol == "IkeV2"]
    progress(f"starting {len(ikev2)} IKEv2 clients (they connect with 'vpnlab p2s connect')")
    rt.start_p2s_clients(ikev2, budget)


# ------------------------------------------------------------------ export
def export(topology_file: str | Path, out: str | Path, fmt: str, name: str | None = None,
           timers: str = "azure", split_hosts: int | None = None,
           host_addresses: list[str] | None = None, image: str | None = None) -> list[Path]:
    """The lab as containerlab files (vpnlab.plan.clab): nothing is started."""
    topology_file = Path(topology_file)
    if fmt not in clab.FORMATS:
        raise SourceError(f"--format {fmt!r}: allowed: {', '.join(clab.FORMATS)}")
    if timers not in defaults()["timers"]:
        raise SourceError(f"--timers {timers!r}: allowed: {', '.join(defaults()['timers'])}")
    name = check_name(name) if name else check_name(topology_file.stem, topology_file)
    hosts = _split_hosts(fmt, split_hosts, host_addresses or [])
    plan = build(load(topology_file), timers)           # bad input stops here
    _containerlab_without_p2s(plan, fmt)
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
    """Remove exactly this lab: its processes, namespaces and files. Idempotent."""
    check_name(name)
    state = load_state(name) or LabState(name=name)
    if state.runtime == "netns" and docker_runtime.lab_containers(name):
        state.runtime = "docker"           # leftovers of a docker lab whose state is gone
    problems = runtime_of(state).teardown()
    if not problems:
        remove_lab_dir(name)
    return problems


# ------------------------------------------------------------------ status
def status(name: str, rt: NetnsRuntime | None = None, plan: Plan | None = None) -> dict:
    state = require_state(name)
    rt = rt or runtime_of(state)
    plan = plan or plan_of(state)
    try:
        return {
            "name": name, "runtime": state.runtime, "dataplane": state.dataplane,
            "kernel_esp": state.kernel_esp, "timers": state.timers, "phase": state.phase,
            "impairments": impairments(state),
            "nodes": [{"name": n.name, "role": n.role, "namespace": rt.namespace(n.name)}
                      for n in plan.ordered_nodes()],
            "gateways": gateway_instances(plan),
            "tunnels": live.tunnels(rt, plan),
            "bgp": live.bgp(rt, plan),
            "point_to_site": [{k: s[k] for k in ("gateway", "instance", "protocol", "pool", "connections")}
                              for s in live.p2s_sessions(rt, plan)],
            "faults": [{k: f[k] for k in ("key", "kind", "target", "params", "injected_at")}
                       for f in state.faults],
            "own_devices": [{"site": site, "public_ip": ip,
                             "netns": state.attached.get(site, {}).get("netns")}
                            for site, ip in sorted(plan.unmanaged.items())],
        }
    finally:
        rt.close()


def gateway_instances(plan: Plan) -> list[dict]:
    """Each gateway's instances: which serve, with which public IP and BGP address."""
    out = []
    for node in plan.ordered_nodes():
        if node.role != "gateway-instance":
            continue
        gateway, k = node.name.rsplit("-in", 1)
        out.append({"gateway": gateway, "instance": node.name, "name": f"GatewayTenantWorker_IN_{k}",
                    "role": "standby" if node.standby else "active",
                    "public_ip": node.public_ip, "bgp_address": node.frr.router_id})
    return out


# ------------------------------------------------------------------ your own device
def attach(name: str, site: str, netns_name: str) -> dict:
    """Connect the user's namespace to the lab's internet as site's device."""
    state = require_state(name)
    topology = load(state.topology_file)
    lng = topology.local_network_gateways.get(site)
    if lng is None:
        raise LabError(f"no local network gateway {site!r} in lab {name!r}; sites: "
                       + ", ".join(sorted(topology.local_network_gateways)))
    if lng.managed:
        raise LabError(f"site {site!r} is managed: the lab runs its device. Set 'managed: false' "
                       f"on local_network_gateways.{site} to bring your own")
    if site in state.attached:
        raise LabError(f"site {site!r} is already attached to namespace "
                       f"{state.attached[site]['netns']!r} ('vpnlab detach {site}' first)")
    internet = IPv4Network(f"{lng.gateway_ip}/24", strict=False).network_address + 1
    routes = [(defaults()["internal"]["azure_public"], str(internet))]
    plan = plan_of(state)
    rt = runtime_of(state)
    try:
        port = f"u{sorted(plan.unmanaged).index(site)}"
        attached = rt.attach(site, netns_name, port, f"{lng.gateway_ip}/24", routes)
    finally:
        rt.close()
    return {"site": site, **attached, "public_ip": str(lng.gateway_ip),
            "routes": [f"{dst} via {via}" for dst, via in routes],
            "gateways": sorted({plan.nodes[t.gateway_instance].public_ip
                                for t in plan.tunnels if t.device == site})}


def detach(name: str, site: str) -> bool:
    state = require_state(name)
    rt = runtime_of(state)
    try:
        return rt.detach(site)
    finally:
        rt.close()


# ------------------------------------------------------------------ faults
def impairments(state: LabState) -> dict:
    """How each kind of link fault is made on this kernel."""
    return {"carrier": "link down", "blackhole": "nftables", "loss": "nftables",
            "delay": "netem" if state.kernel_netem else "unavailable: the kernel has no netem"}


def fail(name: str, kind: str, target: str, **params) -> dict:
    state = require_state(name)
    rt = runtime_of(state)
    try:
        return faults.inject(rt, plan_of(state), kind, target, **params)
    finally:
        rt.close()


def heal(name: str, keys: list[str] | None = None, wait: bool = False,
         progress: Progress = _quiet) -> list[dict]:
    """Undo faults (all when keys is None); with wait, until the lab converged again."""
    state = require_state(name)
    rt, plan = runtime_of(state), plan_of(state)
    try:
        healed = (faults.heal_all(rt, plan) if keys is None
                  else [faults.heal(rt, plan, k) for k in keys])
        if wait:
            _wait_for_convergence(rt, plan, state.timers, progress)
        return healed
    finally:
        rt.close()


def maintenance(name: str, gateway: str, instance: int | None = None, unplanned: bool = False,
                wait: bool = False, progress: Progress = _quiet) -> dict:
    """Azure's reset of a gateway instance (lab.maintenance); with wait, until the lab
    converged again."""
    state = require_state(name)
    rt = runtime_of(state)
    try:
        result, after = maint.run(rt, plan_of(state), load(state.topology_file), gateway,
                                  instance, unplanned, progress)
        if wait:
            _wait_for_convergence(rt, after, state.timers, progress)
        return result
    finally:
        rt.close()


def _wait_for_convergence(rt, plan: Plan, timers: str, progress: Progress):
    progress("waiting for tunnels, BGP sessions and routes")
    wait_converged(rt, plan, timers)


def wait_converged(rt, plan: Plan, timers: str, budget: float | None = None):
    budget = budget or defaults()["waits"]["converge"][timers]
    try:
        wait_until(lambda: live.convergence(rt, plan), lambda p: not p,
                   "convergence", budget, interval=0.25)
    except WaitTimeout as err:
        raise LabError(f"lab {rt.state.name!r} did not converge within {budget} s; not converged: "
                       + "; ".join(err.last if isinstance(err.last, list) else [str(err.last)])) from None
