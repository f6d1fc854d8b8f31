"""The lab's effective timers: the timer profile's values (`--timers`, defaults.yaml),
and where the profile leaves a timer to the design, the design's own (a connection's
dpd_timeout_seconds). The renderer and the scenarios both read them from here, through
the plan (Plan.timers, Tunnel.dpd_timeout), so a scenario's bound is what charon does."""
from __future__ import annotations

from vpnlab.model.defaults import defaults


def profile(name: str) -> dict:
    return defaults()["timers"][name]


def azure_dpd() -> int:
    """Azure's default DPD timeout [3.2]."""
    return defaults()["azure"]["dpd_timeout_seconds"]["default"]


def dpd_timeout(values: dict, connection=None) -> int:
    """A tunnel's DPD timeout: the profile's, else the connection's, else Azure's."""
    return values["dpd_timeout"] or (connection.dpd_timeout_seconds if connection else azure_dpd())


def effective(name: str, tunnel_dpds: list[int | None]) -> dict:
    """The profile's values with its DPD timeout resolved: the longest of the lab's
    tunnels (how long a silent failure may go unnoticed)."""
    values = dict(profile(name))
    values["dpd_timeout"] = max([d for d in tunnel_dpds if d] or [dpd_timeout(values)])
    return values
