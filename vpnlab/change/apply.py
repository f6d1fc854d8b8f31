"""vpnlab apply: a running lab brought to a new topology as Azure applies the same
change. The new topology is validated and planned; its differences from the lab's
saved topology are judged by Azure's rules (vpnlab.change.diff), and refused before
anything is touched; the differences between the saved plan and the new one become
steps (vpnlab.change.steps) that touch only the affected daemons; the new plan is saved
last.

An apply in progress is written down (apply.json in the lab's folder): `status` says so,
and an apply that was interrupted is completed by the next one, whose steps (all
idempotent) bring the lab to its topology."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from vpnlab.change import diff, logged, p2s, steps
from vpnlab.errors import LabError
from vpnlab.gateway import control, live
from vpnlab.model.defaults import defaults
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.model.yamlsrc import load as load_source
from vpnlab.plan import pki, render
from vpnlab.plan.build import build
from vpnlab.plan.parts import Plan
from vpnlab.runtime import daemons, procs
from vpnlab.session import Lab, open_lab

JOURNAL = "apply.json"
Progress = Callable[[str], None]


def _quiet(_: str):
    pass


def journal(lab: Lab) -> dict | None:
    """The apply in progress or interrupted, if any: {pid, started, azure_only, alive}."""
    path = lab.state.dir / JOURNAL
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):       # written by a version that did not replace it whole
        data = {"pid": 0, "started": None, "azure_only": False}
    # this very process: an apply of it that failed half-way (a scenario's)
    return data | {"alive": procs.alive(data["pid"]) and data["pid"] != os.getpid()}


def apply(name: str, topology_file: str | Path, azure_only: bool = False, plan_only: bool = False,
          wait: bool = True, progress: Progress = _quiet) -> dict:
    """The change plan; unless plan_only, applied, with each step's and the whole
    apply's duration, and (wait) the time until the lab converged on it (tunnels whose
    device --azure-only left behind may stay down). Refused changes raise SourceError
    before anything is touched."""
    topology_file = Path(topology_file)
    new_topology = load(topology_file)                       # bad input stops here
    with open_lab(name) as lab:
        return _apply(lab, topology_file, new_topology, azure_only, plan_only, wait, progress)


def _apply(lab: Lab, topology_file: Path, new_topology, azure_only: bool, plan_only: bool,
           wait: bool, progress: Progress) -> dict:
    start = time.monotonic()
    pending = journal(lab)
    if pending and pending["alive"]:
        raise LabError(f"lab {lab.name!r}: another apply is running (pid {pending['pid']})")
    if lab.state.phase not in ("up", "applying"):
        raise LabError(f"lab {lab.name!r} is {lab.state.phase}, not up")
    new_topology = new_topology.holding(lab.plan.vm_addresses())     # as Azure keeps them
    new_plan = build(new_topology, lab.state.timers, lab.state.active, lab.plan.dataplane)
    changes = diff.changes(lab.topology, new_topology)
    _refuse(changes, topology_file)
    old_plan = lab.plan
    stale = []
    if azure_only:
        full, new_plan = new_plan, device_kept(old_plan, new_plan)
        stale = [t.name for t in full.tunnels if t.onprem_end and full.nodes[t.onprem_end] != new_plan.nodes[t.onprem_end]]
    old_files = render.render(old_plan, lab.state.nodes_dir)
    new_files = render.render(new_plan, lab.state.nodes_dir)
    has_pki = any(n.pki for plan in (old_plan, new_plan) for n in plan.nodes.values())
    staged = None       # a new PKI only when what it is made of changed (a no-op stays fast)
    if has_pki and pki.inputs(lab.topology) != pki.inputs(new_topology):
        staged = p2s.stage(lab.state.dir, lab.state.pki_dir, new_topology)
    try:
        certificates = p2s.files(old_plan, new_plan, lab.state.nodes_dir, staged or lab.state.pki_dir,
                                 lab.state.pki_dir) if has_pki else None
        work = steps.work(lab.backend, old_plan, new_plan, old_files, new_files,
                          defaults()["waits"]["daemon_start"], keep_ike(changes, new_topology), certificates)
        users = p2s.ended_users(pki.load_index(lab.state.pki_dir), pki.load_index(staged), lab.topology,
                                new_topology) if staged else {}
        if work.cannot:
            raise SourceError(f"{topology_file}: vpnlab apply cannot make this change to a running lab yet "
                              f"({'; '.join(work.cannot)}); 'vpnlab down' and 'vpnlab up' make the new design")
        if lab.state.faults and not plan_only:
            raise LabError(f"lab {lab.name!r} has active faults ({', '.join(f['key'] for f in lab.state.faults)}): "
                           "'vpnlab heal --all' first; a change is rehearsed on a healthy lab")
    except BaseException:
        p2s.discard(staged)
        raise
    result = {"lab": lab.name, "topology": str(topology_file), "azure_only": azure_only,
              "changes": [c.to_json() for c in changes], "steps": [s.to_json() for s in work.steps],
              "resets": [t.name for t in work.resets], "applied": False,
              "device_not_updated": stale, "p2s_users_ended": users,
              "interrupted_apply_completed": bool(pending)}
    if plan_only:
        p2s.discard(staged)
        return result
    if not (work.steps or work.agent or pending or changes):
        p2s.discard(staged)
        return result | {"applied": True, "seconds": round(time.monotonic() - start, 3), "timeline": [],
                         "converged_s": None}
    # the tunnel ends the new plan adds are carried by their instance's charon from the
    # first step on (the kernel data plane); those it removes, until they are gone
    lab.state.charon_hosts = old_plan.charon_hosts() | new_plan.charon_hosts()
    _begin(lab, azure_only)
    if staged:
        p2s.promote(staged, lab.state.pki_dir)
    timeline = []

    def timed(what: str, fn):
        t0 = time.monotonic()
        fn()
        timeline.append({"what": what, "at_s": round(t0 - start, 3), "seconds": round(time.monotonic() - t0, 3)})

    render.write({n: f for n, f in new_files.items() if f != old_files.get(n)}, lab.state.nodes_dir)
    for step in work.steps:
        progress(f"{step.node}: {step.what}")
        timed(f"{step.node}: {step.what}", step.run)
    if users:
        progress("ending the sessions of revoked or no longer trusted point-to-site users")
        timed("point-to-site sessions of revoked or untrusted certificates ended",
              lambda: result.update(p2s_sessions_ended=p2s.end_sessions(lab.backend, new_plan, users)))
    for t in work.resets:
        progress(f"{t.name}: IKE starts again")
        timed(f"{t.name}: IKE SA closed and dialed again", lambda t=t: restart_ike(lab, new_plan, t))
    for gone in set(old_plan.nodes) - set(new_plan.nodes):
        shutil.rmtree(lab.state.nodes_dir / gone, ignore_errors=True)
    old_topology = lab.topology
    lab.save_plan(new_plan)
    shutil.copyfile(topology_file, lab.state.topology_file)
    lab.state.topology_file.chmod(0o600)
    logged.record(lab.state.dir, changes, old_topology, new_topology, new_plan)
    rules_changed = any(c.kind == "metric_alerts" for c in changes)    # the agent evaluates them
    if work.agent or pending or rules_changed:
        timed("the gateway's agent started again for the new plan", lambda: daemons.restart_agent(lab.backend))
    _end(lab)
    applied = round(time.monotonic() - start, 3)
    if wait:
        progress("waiting for tunnels, BGP sessions and routes")
        devices = {t.device for t in new_plan.tunnels if t.name in stale}
        down = [*stale, *(f"({d})" for d in devices), *(f"bgp {d} ->" for d in devices)]
        timed("the lab converged on the new plan", lambda: live.wait_converged(lab, ignore=down))
    return result | {"applied": True, "seconds": applied, "timeline": timeline,
                     "converged_s": round(time.monotonic() - start, 3) if wait else None}


def _refuse(changes: list[diff.Change], topology_file: Path):
    """Azure's refusals and what the lab cannot do yet, each at its place in the file."""
    source = load_source(topology_file)
    problems = []
    for c in changes:
        at = lambda path="": source.where((c.kind, c.name, *path.split(".")) if path else (c.kind, c.name))
        if c.action != "change":
            if c.lab:
                problems.append(f"{at()}: {c.lab}")
            continue
        for f in c.fields:
            if f.impact == "recreate":
                why = f"Azure refuses this change: {f.says}" if f.says else f"refused: {f.unconfirmed} (UNCONFIRMED)"
                problems.append(f"{at(f.path)}: {why} [{f.source}]")
            elif f.lab:
                problems.append(f"{at(f.path)}: {f.lab}")
        if c.refused and not any(f.impact == "recreate" for f in c.fields):
            problems.append(f"{at(c.refused_at)}: {c.refused}")
    if problems:
        raise SourceError("change refused; the running lab is untouched:\n" + "\n".join(problems))


def keep_ike(changes: list[diff.Change], topology) -> frozenset:
    """Connections whose IKE SA stays up: every change to them or to their site is of no
    impact, or may disconnect without Microsoft saying when (the lab then keeps it up);
    a changed tunnel's new settings apply from its next IKE SA."""
    restart = {"ike-restart", "tunnel-reset", "downtime"}
    hit = {c.name for c in changes if c.kind == "connections" and c.impact in restart}
    sites = {c.name for c in changes if c.kind == "local_network_gateways" and c.impact in restart}
    return frozenset(n for n, conn in topology.connections.items()
                     if n not in hit and conn.local_network_gateway not in sites)


def device_kept(old: Plan, new: Plan) -> Plan:
    """--azure-only: the new plan with every on-prem device's nodes as they run now (the
    next apply without it updates them)."""
    device_side = {t.onprem_end for t in old.tunnels if t.onprem_end} | \
        {n for n, node in old.nodes.items() if node.role == "device"}
    nodes = {n: (old.nodes[n] if n in device_side and n in old.nodes else node) for n, node in new.nodes.items()}
    return Plan(**{**new.__dict__, "nodes": nodes})


def restart_ike(lab: Lab, plan: Plan, t):
    """The tunnel's IKE SA closed from Azure's end (an IKE DELETE to the device), then
    dialed again as the connection's mode says: Azure dials, or (ResponderOnly) the
    device does."""
    rt = lab.backend
    control.ike_terminate(rt, t.azure_end, t.connection, timeout=2, force=True)
    if t.connection_mode != "ResponderOnly":
        control.dial(rt, plan, t)
    elif t.onprem_end:
        for child in [c["name"] for c in plan.nodes[t.onprem_end].charon["children"]]:
            control.initiate(rt, t.onprem_end, child, timeout=-1, ike=t.connection)


def _begin(lab: Lab, azure_only: bool):
    lab.state.phase = "applying"
    lab.state.save()
    # replaced whole: a kill -9 at any instant leaves no journal or a complete one
    tmp = lab.state.dir / f".{JOURNAL}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "started": time.time(), "azure_only": azure_only}))
    tmp.replace(lab.state.dir / JOURNAL)


def _end(lab: Lab):
    lab.state.phase = "up"
    lab.state.save()
    (lab.state.dir / JOURNAL).unlink(missing_ok=True)


def reset_connection(name: str, connection: str, wait: bool = True) -> dict:
    """Azure's "Reset connection": only that connection's tunnels start IKE again; the
    gateway is not rebooted [RESET]."""
    with open_lab(name) as lab:
        tunnels = [t for t in lab.plan.tunnels if t.connection == connection and t.expected_up
                   and not lab.plan.nodes[t.azure_end].standby]
        if not any(t.connection == connection for t in lab.plan.tunnels):
            raise SourceError(f"no connection {connection!r}; connections: "
                              + ", ".join(sorted({t.connection for t in lab.plan.tunnels})))
        start = time.monotonic()
        for t in tunnels:
            restart_ike(lab, lab.plan, t)
        out = {"connection": connection, "tunnels": [t.name for t in tunnels]}
        if wait:
            live.wait_converged(lab)
            out["up_again_s"] = round(time.monotonic() - start, 3)
        return out
