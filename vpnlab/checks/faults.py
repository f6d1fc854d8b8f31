"""Fault injection and its inverse, usable from scenarios and the CLI (vpnlab fail/heal).

A fault is named `<kind>:<target>` (one per kind and target) and recorded in the lab's
state, so that `vpnlab heal` in another process, or the pytest plugin after a failed
scenario, can undo it. Kinds:

  instance NODE    a gateway instance is lost; planned = graceful (BGP Cease, IKE DELETE,
                   daemons stopped), unplanned = links down, daemons killed, no goodbye
  device NODE      an on-prem device is lost (unplanned by default)
  carrier N:IF     a veth goes down: the node's routes through it withdraw at once
  blackhole N:IF   carrier stays up, every packet is dropped (nftables, both directions):
                   only DPD and BGP hold timers can notice
  loss N:IF        a percentage of packets dropped in both directions (nftables)
  delay N:IF       netem delay/jitter/loss, where the kernel has netem
  crash NODE       a daemon is killed with SIGKILL (charon of a tunnel end, bgpd of a
                   router, FreeRADIUS of a RADIUS host: the RADIUS server is lost); healing
                   restarts it
  nat-flush NODE   an ISP NAT router in front of a device reboots: every NAT mapping is
                   forgotten at once (there is nothing to heal: DPD or a redial recovers)
"""
from __future__ import annotations

import re
import time

from vpnlab.errors import LabError
from vpnlab.gateway import control, events, live
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan.parts import Plan
from vpnlab.runtime import daemons
from vpnlab.session import Lab
from vpnlab.waits import wait_until

KINDS = ("instance", "device", "carrier", "blackhole", "loss", "delay", "crash", "nat-flush")
LINK_KINDS = ("carrier", "blackhole", "loss", "delay")
CRASHABLE = {"tunnel-endpoint": ("charon",), "gateway-instance": ("bgpd",), "device": ("bgpd",),
             "vnet-router": ("bgpd",), "p2s-endpoint": ("charon", "openvpn")}
RADIUS_HOST_DAEMONS = (daemons.RADIUS,)      # a VM or host the lab runs FreeRADIUS on


def key(kind: str, target: str) -> str:
    return f"{kind}:{target}"


def _nft_table(fault_key: str) -> str:
    return "vpnlab_fault_" + re.sub(r"[^A-Za-z0-9]", "_", fault_key)


# ------------------------------------------------------------------ validation
def check(plan: Plan, kind: str, target: str, params: dict) -> dict:
    """Refuse a fault that names nothing real; return its normalised parameters."""
    if kind not in KINDS:
        raise SourceError(f"fault kind {kind!r}: allowed: {', '.join(KINDS)}")
    if kind in LINK_KINDS:
        node, _, ifname = target.partition(":")
        _node(plan, node, None)
        veths = [i.name for i in plan.nodes[node].interfaces if i.kind == "veth"]
        if ifname not in veths:
            raise SourceError(f"fault {kind} {target!r}: {node} has no link {ifname!r}; "
                              f"its links: {', '.join(veths)}")
    if kind == "instance":
        _node(plan, target, "gateway-instance")
    if kind == "device":
        _node(plan, target, "device")
    if kind == "nat-flush":
        _node(plan, target, "isp-router")
    out = {}
    if kind in ("instance", "device"):
        out["planned"] = bool(params.get("planned", kind == "instance"))
    if kind == "loss":
        pct = params.get("percent")
        if pct is None or not 0 < float(pct) <= 100:
            raise SourceError(f"fault loss {target}: --percent must be in (0, 100], got {pct}")
        out["percent"] = float(pct)
    if kind == "delay":
        out.update(delay_ms=float(params.get("delay_ms") or 0), jitter_ms=float(params.get("jitter_ms") or 0),
                   percent=float(params.get("percent") or 0))
    if kind == "crash":
        node = _node(plan, target, None)
        role = node.role
        allowed = RADIUS_HOST_DAEMONS if node.radius is not None else CRASHABLE.get(role, ())
        daemon = params.get("daemon") or (allowed[0] if allowed else None)
        if daemon not in allowed:
            raise SourceError(f"fault crash {target} ({role}): daemon {daemon!r}: allowed: "
                              f"{', '.join(allowed) or 'none (no daemon runs there)'}")
        out["daemon"] = daemon
    return out


def _node(plan: Plan, name: str, role: str | None):
    node = plan.nodes.get(name)
    if node is None or (role and node.role != role):
        known = sorted(n for n, x in plan.nodes.items() if role is None or x.role == role)
        raise SourceError(f"unknown {role or 'node'} {name!r}; known: {', '.join(known)}")
    return node


# ------------------------------------------------------------------ inject / heal
def inject(lab: Lab, kind: str, target: str, **params) -> dict:
    params = check(lab.plan, kind, target, params)
    k = key(kind, target)
    if any(f["key"] == k for f in lab.state.faults):
        raise LabError(f"fault {k} is already injected; 'vpnlab heal {k}' first")
    fault = {"key": k, "kind": kind, "target": target, "params": params,
             "injected_at": time.time(), "detail": {}}
    # recorded first: a fault that fails half-way is still healed by heal --all
    lab.state.faults.append(fault)
    lab.state.save()
    try:
        _APPLY[kind](lab, fault)
    except BaseException:
        # half-applied: undo what can be undone, so the lab is as before
        try:
            _HEAL[kind](lab, fault)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        lab.state.faults.remove(fault)
        lab.state.save()
        raise
    lab.state.save()
    return fault


def heal(lab: Lab, fault_key: str) -> dict:
    fault = next((f for f in lab.state.faults if f["key"] == fault_key), None)
    if fault is None:
        active = ", ".join(f["key"] for f in lab.state.faults) or "none"
        raise LabError(f"no active fault {fault_key!r}; active: {active}")
    _HEAL[fault["kind"]](lab, fault)
    fault["healed_at"] = time.time()
    lab.state.faults.remove(fault)
    lab.state.save()
    return fault


def heal_all(lab: Lab) -> list[dict]:
    return [heal(lab, f["key"]) for f in reversed(list(lab.state.faults))]


# ------------------------------------------------------------------ router loss
def _router_parts(plan: Plan, node: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """A router's links, its charons (tunnel end, connection; a gateway instance's
    point-to-site IKEv2 server too) and its openvpn servers."""
    links = [i.name for i in plan.nodes[node].interfaces if i.kind == "veth"]
    ends = [(t.azure_end if t.gateway_instance == node else t.onprem_end, t.connection)
            for t in plan.tunnels if node in (t.gateway_instance, t.device)]
    mine = [e for e in plan.p2s_ends if e.gateway_instance == node]
    ends += [(e.node, "p2s") for e in mine if e.protocol == "IkeV2"]
    return links, ends, [e.node for e in mine if e.protocol == "OpenVPN"]


def _lose_router(lab: Lab, fault: dict):
    fault["detail"]["steps"] = lose_router(lab, fault["target"], fault["params"]["planned"])


def lose_router(lab: Lab, node: str, planned: bool) -> list[tuple[int, str]]:
    """A router goes away, gracefully or not; returns its steps (monotonic ns, what)
    for timelines. A standby instance runs nothing: there is nothing to lose."""
    steps: list[tuple[int, str]] = []
    if lab.plan.nodes[node].standby:
        return steps
    _instance_event(lab, node, planned, going=True)
    links, ends, openvpn = _router_parts(lab.plan, node)
    if planned:
        frr = lab.plan.nodes[node].frr
        if frr.asn:
            control.bgp_shutdown(lab.backend, node, frr.asn)
            steps.append((time.monotonic_ns(), "BGP Cease sent to every peer"))
            _wait_peers_dropped(lab, node)
            steps.append((time.monotonic_ns(), "peers dropped their sessions"))
        for end, conn in ends:
            control.ike_terminate(lab.backend, end, conn)
        steps.append((time.monotonic_ns(), f"IKE DELETE sent on {len(ends)} tunnels"))
    else:
        # links first: a killed daemon's kernel still closes its TCP sessions (FIN), which
        # must not reach the peers
        for ifname in links:
            lab.backend.set_link(node, ifname, False)
        steps.append((time.monotonic_ns(), f"links down: {', '.join(links)}"))
    for end, _ in ends:
        if planned:
            lab.backend.stop_daemon(end, "charon", graceful=True)
        else:
            kill_charon(lab, end)
    for end in openvpn:      # its clients see the TCP session end (planned) or go silent
        lab.backend.stop_daemon(end, "openvpn", graceful=planned)
    for daemon in (*reversed(daemons.frr_daemons()), daemons.PROBE):
        lab.backend.stop_daemon(node, daemon, graceful=planned)
    steps.append((time.monotonic_ns(), f"daemons {'stopped' if planned else 'killed'}"))
    if planned:
        for ifname in links:
            lab.backend.set_link(node, ifname, False)
    return steps


def _wait_peers_dropped(lab: Lab, node: str):
    peers = [s for s in lab.plan.bgp if s.peer_node == node]

    def established():
        return [f"{s.node}->{s.peer}" for s in peers
                if live.bgp_peers(lab.backend, s.node).get(s.peer, {}).get("state") == "Established"]
    wait_until(established, lambda left: not left, f"peers of {node} to drop their BGP sessions",
               defaults()["waits"]["graceful_drain"])


def _restore_router(lab: Lab, fault: dict):
    restore_router(lab, fault["target"], fault["params"]["planned"])


def _instance_event(lab: Lab, node: str, planned: bool, going: bool):
    """GatewayDiagnosticLog: Azure logs its maintenance of an instance (HostMaintenanceEvent);
    an instance lost without it is the lab's InstanceFailure / InstanceRecovered."""
    if lab.plan.nodes[node].role != "gateway-instance":
        return
    gateway = names.split_instance(node)[0]
    if planned:
        op, what = "HostMaintenanceEvent", ("planned maintenance started: the instance leaves service"
                                            if going else "planned maintenance completed: the instance is back")
    else:
        op, what = ("InstanceFailure", "the instance failed (unplanned)") if going else \
            ("InstanceRecovered", "the instance recovered and is back in service")
    events.record(lab.state.dir, "gateway", op, gateway, f"{names.azure_instance_name(node)}: {what}", node)


def restore_router(lab: Lab, node: str, planned: bool = False):
    """Links up, routes back, FRR and the charons of the node's tunnels started. A
    standby instance stays as it is: links down, no daemons."""
    if lab.plan.nodes[node].standby:
        return
    links, ends, openvpn = _router_parts(lab.plan, node)
    # a heal that failed half-way may have started some daemons: start from none
    for end, _ in ends:
        lab.backend.stop_daemon(end, "charon", graceful=False)
    for end in openvpn:
        lab.backend.stop_daemon(end, "openvpn", graceful=False)
    for daemon in (*daemons.frr_daemons(), daemons.PROBE):
        lab.backend.stop_daemon(node, daemon, graceful=False)
    for ifname in links:
        lab.backend.set_link(node, ifname, True)
    for name in [node] + [end for end, _ in ends] + openvpn:
        lab.backend.restore_routes(lab.plan.nodes[name])
    budget = defaults()["waits"]["daemon_start"]
    daemons.start_routers(lab.backend, [node], budget)
    daemons.start_tunnel_ends(lab.backend, [end for end, _ in ends], budget)
    daemons.start_openvpn(lab.backend, openvpn, budget)
    if lab.plan.nodes[node].role == "gateway-instance":
        daemons.start_health_probes(lab.backend, lab.plan, [node])
    _instance_event(lab, node, planned, going=False)


# ------------------------------------------------------------------ link faults
def _split(target: str) -> tuple[str, str]:
    node, _, ifname = target.partition(":")
    return node, ifname


def _carrier_down(lab: Lab, fault: dict):
    lab.backend.set_link(*_split(fault["target"]), False)


def _carrier_up(lab: Lab, fault: dict):
    node, ifname = _split(fault["target"])
    lab.backend.set_link(node, ifname, True)
    lab.backend.restore_routes(lab.plan.nodes[node])


def _drop_rules(lab: Lab, fault: dict):
    node, ifname = _split(fault["target"])
    pct = fault["params"].get("percent")
    match = f"numgen random mod 1000 < {round(pct * 10)} " if fault["kind"] == "loss" else ""
    table = _nft_table(fault["key"])
    lab.backend.nft(node, f"""table netdev {table} {{
  chain ingress {{ type filter hook ingress device "{ifname}" priority -500; policy accept; {match}counter drop; }}
  chain egress {{ type filter hook egress device "{ifname}" priority -500; policy accept; {match}counter drop; }}
}}
""")


def _remove_drop_rules(lab: Lab, fault: dict):
    node, _ = _split(fault["target"])
    table = _nft_table(fault["key"])
    dropped = 0
    for item in lab.backend.nft_json(node, "list", "table", "netdev", table).get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            dropped += expr.get("counter", {}).get("packets", 0)
    fault["detail"]["packets_dropped"] = dropped
    lab.backend.nft(node, f"delete table netdev {table}\n")


def _netem(lab: Lab, fault: dict):
    if not lab.state.kernel_netem:
        raise LabError("this kernel has no netem (sch_netem): delay and jitter cannot be "
                       "emulated here; use 'loss' or 'blackhole' (nftables) instead")
    node, ifname = _split(fault["target"])
    p = fault["params"]
    args = ["qdisc", "add", "dev", ifname, "root", "netem", "delay", f"{p['delay_ms']}ms"]
    if p["jitter_ms"]:
        args.append(f"{p['jitter_ms']}ms")
    if p["percent"]:
        args += ["loss", f"{p['percent']}%"]
    lab.backend.tc(node, *args)


def _netem_off(lab: Lab, fault: dict):
    node, ifname = _split(fault["target"])
    lab.backend.tc(node, "qdisc", "del", "dev", ifname, "root", check=False)


# ------------------------------------------------------------------ daemon crash
def _crash(lab: Lab, fault: dict):
    node, daemon = fault["target"], fault["params"]["daemon"]
    if daemon == "charon":
        fault["detail"]["killed"] = kill_charon(lab, node)
    else:
        fault["detail"]["killed"] = lab.backend.stop_daemon(node, daemon, graceful=False)


def kill_charon(lab: Lab, end: str) -> list[int]:
    """SIGKILL a tunnel end's charon (on the kernel data plane, its gateway instance's,
    with every tunnel it carries); its SAs go with it on both data planes: libipsec's
    live in the process; the kernel's would outlive it and carry traffic on, so they are
    deleted too (the tunnel end failed, not only its IKE daemon)."""
    killed = lab.backend.stop_daemon(end, "charon", graceful=False)
    if lab.plan.dataplane == "kernel":
        lab.backend.flush_xfrm(end)
    return killed


def _restart(lab: Lab, fault: dict):
    node, daemon = fault["target"], fault["params"]["daemon"]
    budget = defaults()["waits"]["daemon_start"]
    lab.backend.stop_daemon(node, daemon, graceful=False)    # idempotent: none may run twice
    if daemon == "charon":
        daemons.start_tunnel_ends(lab.backend, [node], budget)
    elif daemon == "openvpn":
        daemons.start_openvpn(lab.backend, [node], budget)
    elif daemon == daemons.RADIUS:
        daemons.start_radius(lab.backend, [node], budget)
    else:
        daemons.restart_frr_daemon(lab.backend, node, daemon, budget)


def _flush_nat(lab: Lab, fault: dict):
    fault["detail"]["mappings_forgotten"] = lab.backend.flush_conntrack(fault["target"])


def _nothing_to_heal(lab: Lab, fault: dict):
    """The fault was a moment: what it broke recovers by itself, or the scenario says not."""


_APPLY = {"instance": _lose_router, "device": _lose_router, "carrier": _carrier_down,
          "blackhole": _drop_rules, "loss": _drop_rules, "delay": _netem, "crash": _crash,
          "nat-flush": _flush_nat}
_HEAL = {"instance": _restore_router, "device": _restore_router, "carrier": _carrier_up,
         "blackhole": _remove_drop_rules, "loss": _remove_drop_rules, "delay": _netem_off,
         "crash": _restart, "nat-flush": _nothing_to_heal}
