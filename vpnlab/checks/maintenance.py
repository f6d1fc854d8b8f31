"""Azure's reset and planned maintenance of a gateway instance [5] (`vpnlab maintenance`).

Active-standby: the active instance goes (gracefully, or not with --unplanned), and after
the platform's takeover delay the standby takes over the public IP and the BGP address
(the same MAC moves with them) and starts its daemons; the old instance stays down as
the new standby. Resetting the standby changes nothing that serves traffic.
Active-active: the instance goes, reboots, and comes back; the other instance keeps its
own tunnels and BGP sessions throughout.
"""
from __future__ import annotations

import threading
import time

from vpnlab.checks.faults import lose_router, restore_router
from vpnlab.errors import LabError
from vpnlab.gateway import control, events
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.topology import Topology
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan.parts import instance_count
from vpnlab.runtime import daemons
from vpnlab.session import Lab


def check(topology: Topology, gateway: str, instance: int | None):
    gw = topology.virtual_network_gateways.get(gateway)
    if gw is None:
        raise SourceError(f"unknown gateway {gateway!r}; gateways: "
                          f"{', '.join(sorted(topology.virtual_network_gateways)) or 'none'}")
    if instance is not None and instance not in range(instance_count(gw)):
        raise SourceError(f"--instance {instance}: allowed: 0, 1 (IN_0, IN_1)")
    return gw


def run(lab: Lab, gateway: str, instance: int | None = None, unplanned: bool = False,
        progress=lambda _: None) -> dict:
    """Returns what happened (with its steps on the monotonic clock). A takeover changes
    which instance serves: the lab's saved plan says so afterwards."""
    gw = check(lab.topology, gateway, instance)
    delays = defaults()["maintenance"][lab.state.timers]
    active = lab.plan.active.get(gateway)
    k = instance if instance is not None else (active if active is not None else 0)
    node = names.instance(gateway, k)
    busy = [f["key"] for f in lab.state.faults if f["target"] == node]
    if busy:
        raise LabError(f"{node} has an active fault ({', '.join(busy)}); heal it first")
    planned = not unplanned
    out = {"gateway": gateway, "instance": k, "planned": planned,
           "mode": "active-active" if gw.active_active else "active-standby", "steps": []}
    if not gw.active_active and k != active:
        out["note"] = f"{node} is the standby: its reboot changes nothing that serves traffic"
        return out
    progress(f"{node}: {'planned maintenance' if planned else 'unplanned loss'}")
    out["steps"] += lose_router(lab, node, planned)
    if gw.active_active:
        delay = delays["instance_reboot"]
        progress(f"{node} reboots ({delay} s)")
        _platform_delay(delay)
        restore_router(lab, node, planned)
        out["steps"].append((time.monotonic_ns(), f"{node} back"))
        return out
    delay = delays["standby_takeover_planned" if planned else "standby_takeover_unplanned"]
    progress(f"the platform promotes the standby in {delay} s")
    _platform_delay(delay)
    lab.state.active[gateway] = 1 - k
    lab.state.save()
    lab.rebuild_plan()
    standby = names.instance(gateway, 1 - k)
    restore_router(lab, standby)
    events.record(lab.state.dir, "gateway", "GatewayTenantPrimaryChanged", gateway,
                  f"Primary instance changed from {names.azure_instance_name(node)} to "
                  f"{names.azure_instance_name(standby)}", standby)
    out["steps"].append((time.monotonic_ns(), f"{standby} took over the public IP and BGP address"))
    daemons.restart_agent(lab.backend)
    dialed = _dial(lab, standby)
    out["steps"].append((time.monotonic_ns(), f"{standby} dialed {dialed} devices"))
    out["active_before"], out["active_after"] = k, 1 - k
    return out


def _dial(lab: Lab, node: str) -> int:
    """The new active instance connects at once where its connection mode dials [1.3]
    (the agent's redial covers the rest); not to a device that reconnected first."""
    dialing = [t for t in lab.plan.tunnels if t.gateway_instance == node and t.connection_mode != "ResponderOnly"]
    return sum(control.dial(lab.backend, lab.plan, t) for t in dialing)


def _platform_delay(seconds: float):
    """An emulated duration (Azure's platform at work), not a wait for a condition."""
    threading.Event().wait(seconds)
