"""Point-to-site clients of a running lab: connect, disconnect, status (`vpnlab p2s`).

IKEv2 clients are told through VICI, OpenVPN clients run while connected; the state
comes from the daemons' APIs (VICI, openvpn's management interface), on both ends.
"""
from __future__ import annotations

import time
from pathlib import Path

from vpnlab.errors import LabError
from vpnlab.gateway import control, live
from vpnlab.model.defaults import defaults
from vpnlab.plan import pki
from vpnlab.plan.parts import P2sClient, Plan
from vpnlab.runtime import daemons
from vpnlab.session import Lab, session
from vpnlab.waits import WaitTimeout, wait_until


def _client(plan: Plan, name: str) -> P2sClient:
    found = next((c for c in plan.clients if c.name == name), None)
    if found is None:
        raise LabError(f"no point-to-site client {name!r}; clients: "
                       f"{', '.join(c.name for c in plan.clients) or '(none defined)'}")
    return found


def client_state(rt, c: P2sClient) -> dict:
    """Per identity: CONNECTED, or where it is, and its virtual IP."""
    if c.protocol == "OpenVPN":
        return {c.identities[0]: live.openvpn_client_state(rt, c.name)}
    found = live.ikev2_client_sas(rt, c.name)
    return {i: found.get(i, {"state": "DOWN", "virtual_ip": None}) for i in c.identities}


# How a refusal shows: charon logs the gateway's AUTHENTICATION_FAILED (a certificate)
# or EAP_FAILURE (a RADIUS user) and gives up; an OpenVPN client refused by RADIUS is
# told AUTH_FAILED; one refused for its certificate only sees its TLS session reset (and
# would retry for ever), while the gateway's openvpn says why, with the certificate's
# name, on its management API.
CLIENT_REFUSALS = {"IkeV2": {b"received AUTHENTICATION_FAILED": "AUTHENTICATION_FAILED",
                             b"EAP authentication failed": "EAP authentication failed (RADIUS)"},
                   "OpenVPN": {b"Received control message: AUTH_FAILED": "AUTH_FAILED (RADIUS)"}}


def _refusal(rt, plan: Plan, c: P2sClient, client_log: int, since: float) -> str | None:
    """Why the gateway refused the client since the connect began, or None."""
    log = _log(rt, c)
    if log.exists():
        with log.open("rb") as f:
            f.seek(client_log)
            text = f.read()
        for needle, why in CLIENT_REFUSALS[c.protocol].items():
            if needle in text:
                return why
    if c.protocol == "IkeV2":
        return None
    for e in plan.p2s_ends:
        if e.gateway == c.gateway and e.protocol == "OpenVPN":
            for r in live.openvpn_refusals(rt, e.node, since):
                if r["certificate"] in c.identities:
                    return f"{r['reason']} (CN={r['certificate']})"
    return None


def connect(lab: Lab, name: str, budget: float | None = None) -> dict:
    """Connect a client (every identity of a crowd); waits until all are connected, or
    the gateway refused it, and says which are not connected and why."""
    rt, plan = lab.backend, lab.plan
    c = _client(plan, name)
    budget = budget or defaults()["waits"]["p2s_connect"]
    client_log = _log(rt, c).stat().st_size if _log(rt, c).exists() else 0
    since, start = int(time.time()), time.monotonic()
    if c.protocol == "OpenVPN":
        if not rt.daemon_pids(c.name, "openvpn"):
            daemons.start_openvpn(rt, [c.name], defaults()["waits"]["daemon_start"])
    else:      # identities already connected are left as they are
        for ident, s in client_state(rt, c).items():
            if s["state"] != "CONNECTED":
                control.initiate(rt, c.name, ident, timeout=-1, ike=ident)

    def look():
        return client_state(rt, c), _refusal(rt, plan, c, client_log, since)
    try:
        states, refused = wait_until(look, lambda x: _all_connected(x[0]) or x[1],
                                     f"client {name} to connect", budget)
    except WaitTimeout as err:
        states, refused = err.last or ({}, None)
    down = sorted(i for i, s in states.items() if s["state"] != "CONNECTED")
    if refused or down or not states:
        if refused and c.protocol == "OpenVPN":
            rt.stop_daemon(c.name, "openvpn", graceful=True)     # it would retry for ever
        what = (f"refused by the gateway: {refused}" if refused
                else f"not connected after {budget} s; {_why(_log(rt, c))}")
        raise LabError(f"client {name}: {len(down)} of {len(c.identities)} "
                       f"({', '.join(down[:5])}{' ...' if len(down) > 5 else ''}) {what}")
    return {"client": name, "protocol": c.protocol, "gateway": c.gateway, "connected": len(states),
            "seconds": round(time.monotonic() - start, 2),
            "virtual_ips": sorted({s["virtual_ip"] for s in states.values() if s["virtual_ip"]})}


def _all_connected(states: dict) -> bool:
    return bool(states) and all(s["state"] == "CONNECTED" for s in states.values())


def _log(rt, c: P2sClient) -> Path:
    return rt.node_dir(c.name) / ("openvpn.out" if c.protocol == "OpenVPN" else "charon.log")


def _why(log: Path) -> str:
    """The client daemon's last words about the gateway's answer (a refusal, or none)."""
    keys = ("AUTHENTICATION_FAILED", "AUTH_FAILED", "TLS Error", "VERIFY", "retransmit", "giving up",
            "failed", "error", "Connection refused")
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if any(k in ln for k in keys)]
    except FileNotFoundError:
        return f"{log} is missing"
    return f"its log ({log}) says: {lines[-1][-300:]}" if lines else f"nothing telling in {log}"


def disconnect(lab: Lab, name: str) -> dict:
    rt, c = lab.backend, _client(lab.plan, name)
    if c.protocol == "OpenVPN":
        closed = len(rt.stop_daemon(c.name, "openvpn", graceful=True))
    else:
        closed = sum(control.ike_terminate(rt, c.name, ident) for ident in c.identities)
    return {"client": name, "protocol": c.protocol, "closed": closed}


def status(lab: Lab) -> dict:
    rt, plan = lab.backend, lab.plan
    certs = pki.load_index(lab.state.pki_dir)
    clients = []
    for c in plan.clients:
        states = client_state(rt, c)
        connected = sum(s["state"] == "CONNECTED" for s in states.values())
        clients.append({"client": c.name, "protocol": c.protocol, "gateway": c.gateway,
                        "gateway_ip": c.gateway_ip, "identities": len(c.identities), "connected": connected,
                        "state": _summary(states, connected),
                        "virtual_ips": sorted({s["virtual_ip"] for s in states.values() if s["virtual_ip"]}),
                        "certificates": {i: certs["certificates"].get(i, {}).get("thumbprint")
                                         for i in c.identities[:5]},
                        "pushed_routes": c.pushed})
    return {"clients": clients, "gateways": live.p2s_sessions(rt, plan), "revoked": certs["revoked"]}


def _summary(states: dict, connected: int) -> str:
    if connected == len(states):
        return "connected"
    if connected:
        return f"partly connected ({connected}/{len(states)})"
    return next(iter(states.values()))["state"].lower()


# ------------------------------------------------------------------ CLI entry points
def run(name: str | None, action: str, client: str | None = None) -> dict:
    with session(name) as lab:
        if action == "status":
            return status(lab)
        if client is None:
            raise LabError(f"p2s {action} needs a client name")
        return connect(lab, client) if action == "connect" else disconnect(lab, client)
