"""The agent's watch on the gateway's point-to-site servers (one thread per server).

- P2SDiagnosticLog [7.5]: a user's session begins or ends, from the servers' own events
  (VICI's ike-updown; openvpn's client-connect and client-disconnect hooks), so that a
  session shorter than a poll is logged too; a server refused a certificate.
- The SKU's connection count [2.1], exactly, and for IKEv2 and OpenVPN together (one
  figure in Microsoft's table): charon's `ikesa_limit` and openvpn's `max-clients` hold
  each server to it; the watches refuse a session that comes up past the gateway's
  count of both (an IKE DELETE; openvpn's `kill`). charon checks its limit in each worker
  thread on its own, so a burst can pass it by one or two.
- One pool for both protocols [6 POOL]: an IKEv2 session on an address an OpenVPN user
  holds (where charon's addresses from the bottom met openvpn's from the top) is
  refused too.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from vpnlab.gateway import control, live
from vpnlab.plan.parts import P2sEnd
from vpnlab.plan.render import SESSIONS_FILE

_NO_TRUSTED_KEY = re.compile(r"no trusted \w+ public key found for '(?:CN=)?(?P<user>[^']+)'")
_REFUSALS = (("certificate was revoked", "certificate revoked"),
             ("no issuer certificate found", "issuer not trusted"))
# RADIUS users (EAP relayed by eap-radius): why, then whose, in a later line; the client's
# address comes from the SA's first line
_RADIUS_REFUSALS = (("RADIUS authentication of", "the RADIUS server refused the user name or password"),
                    ("timed out", "no RADIUS server answered"),      # silence: Azure's 30 s
                    ("RADIUS message failed", "no RADIUS server answered"))     # e.g. port unreachable
# the EAP exchange failed: in a RADIUS round trip ("... failed for peer <id>"), or at its
# first request to RADIUS, after the user's EAP identity came ("initiating ... failed")
_EAP_FAILED = re.compile(r"EAP method \S+ failed for peer (?P<user>\S+)|^initiating \S+ method failed")
_EAP_IDENTITY = re.compile(r"^received EAP identity '(?P<user>[^']+)'")
_INITIATING = re.compile(r"^(?P<address>[\d.]+) is initiating an IKE_SA")
# the client's IKE identity: the user, where no EAP identity line was seen for the SA
_PEER_ID = re.compile(r"^looking for peer configs matching \S+\.\.\.[^\[]*\[(?P<user>[^\]]+)\]")
SA_MEMORY = 4096       # SAs whose first line is kept (most end well and are never asked about)


class Sessions:
    """The users on one P2S server as the log last reported them: each change is one
    P2SLogEvent. Keys identify a session (an IKE SA; a TCP connection)."""

    def __init__(self, log, server: P2sEnd):
        self.log, self.server = log, server
        self.known: dict = {}

    def up(self, key, client: dict):
        if key not in self.known:
            self.known[key] = client
            self.log.p2s(self.server, client, connected=True)

    def down(self, key):
        client = self.known.pop(key, None)
        if client is not None:
            self.log.p2s(self.server, client, connected=False)

    def reconcile(self, now: dict):
        """Make the log agree with a listing of the server's sessions."""
        for key in self.known.keys() - now.keys():
            self.down(key)
        for key in now.keys() - self.known.keys():
            self.up(key, now[key])

    def clear(self):
        self.reconcile({})


def in_use(agent, gateway: str) -> int:
    """The gateway's point-to-site sessions, every server's (IKEv2 and OpenVPN together)."""
    return sum(len(s.known) for s in list(agent.p2s_users.values()) if s.server.gateway == gateway)


def ikev2_server(agent, server: P2sEnd, poll: float):
    """Sessions and refusals of a P2S IKEv2 server, from its VICI events; whenever the
    listener (re)connects, the server's SAs are read once, so nothing is missed."""
    sessions = agent.p2s_users[server.node, server.protocol] = Sessions(agent.log, server)
    limit = agent.plan.nodes[server.node].charon["ikesa_limit"]
    reasons: dict = {}      # IKE SA -> why its user failed; (IKE SA, "address") -> the client's address
    while not agent.stop.is_set():
        try:
            first = True
            for kind, event in control.listen(agent.rt, server.node, ["ike-updown", "ike-rekey", "log"], poll):
                if agent.stop.is_set():
                    return
                if first:      # registered now: from here on no event is missed
                    first = False
                    up = sorted(((name, ike) for name, ike in live.ike_sas_named(agent.rt, server.node)
                                 if ike["state"] == b"ESTABLISHED"), key=lambda sa: int(sa[1]["uniqueid"]))
                    room = max(limit - (in_use(agent, server.gateway) - len(sessions.known)), 0)
                    sessions.reconcile({ike["uniqueid"]: live.ikev2_client(ike, name) for name, ike in up[:room]})
                    for name, ike in up[room:]:
                        _refuse(agent, server, ike, name,
                                f"the gateway's point-to-site connection limit ({limit}) is reached")
                if event is None:       # a tick
                    continue
                if kind == b"ike-updown":
                    _updown(agent, server, sessions, event, limit)
                elif kind == b"ike-rekey":      # the session goes on under the new IKE SA
                    for sa in event.values():
                        if sa["old"]["uniqueid"] in sessions.known:
                            sessions.known[sa["new"]["uniqueid"]] = sessions.known.pop(sa["old"]["uniqueid"])
                else:
                    _refusal(agent, server, event, reasons)
        except OSError:      # the server stopped (maintenance, a fault): its users are gone
            sessions.clear()
            agent.stop.wait(poll)
        except Exception as err:  # noqa: BLE001 - listen again: registering reads the SAs anew
            agent.say(f"{server.node}: watching its sessions failed: {err!r}")
            agent.stop.wait(poll)


def _updown(agent, server: P2sEnd, sessions: Sessions, event: dict, limit: int):
    up = event.get("up") == b"yes"
    for name, ike in event.items():
        if name == "up":
            continue
        if not up:
            sessions.down(ike["uniqueid"])
        elif ike["uniqueid"] not in sessions.known and in_use(agent, server.gateway) >= limit:
            _refuse(agent, server, ike, name, f"the gateway's point-to-site connection limit ({limit}) is reached")
        elif ike["uniqueid"] not in sessions.known and _held_by_openvpn(agent, server, ike):
            _refuse(agent, server, ike, name, "the address pool is exhausted")
        else:
            sessions.up(ike["uniqueid"], live.ikev2_client(ike, name))


def _held_by_openvpn(agent, server: P2sEnd, ike: dict) -> bool:
    """charon gives the pool out from the bottom, openvpn from the top: when they meet,
    charon may hand out an address an OpenVPN user holds (charon cannot be told). The
    kernel knows at once which ones openvpn gave out; its session hook's log, later."""
    vip = live.ikev2_client(ike).get("virtual_ip")
    return bool(vip) and agent.plan.nodes[server.node].openvpn is not None \
        and vip in live.openvpn_leases(agent.rt, server.node)


def _refuse(agent, server: P2sEnd, ike: dict, connection: str, why: str):
    client = live.ikev2_client(ike, connection)
    agent.log.p2s_refused(server, client["certificate"], client["address"], why, "was refused", client["radius"])
    agent.say(f"{server.node}: refusing {client['certificate']} ({why}): deleting IKE SA #{client['ike_sa']}")
    try:
        control.ike_terminate(agent.rt, server.node, agent.plan.nodes[server.node].charon["connection"],
                              force=True, ike_id=client["ike_sa"])
    except Exception as err:  # noqa: BLE001 - the client stays; the next session up says so again
        agent.say(f"{server.node}: deleting IKE SA #{client['ike_sa']} failed: {err!r}")


def _refusal(agent, server: P2sEnd, event: dict, reasons: dict):
    """charon says why a certificate or a RADIUS user failed in one line, and whose it
    was in a later one."""
    msg, sa = event.get("msg", b"").decode(errors="replace"), event.get("ikesa-uniqueid", b"")
    for pattern, key, group in ((_INITIATING, "address", "address"), (_EAP_IDENTITY, "user", "user"),
                                (_PEER_ID, "peer", "user")):
        m = pattern.match(msg)
        if m:
            reasons[sa, key] = m[group]
            while len(reasons) > SA_MEMORY:
                reasons.pop(next(iter(reasons)))
    for needle, why in _REFUSALS + _RADIUS_REFUSALS:
        if needle in msg:
            reasons[sa] = why
    m = _NO_TRUSTED_KEY.search(msg)
    if m:
        agent.log.p2s_refused(server, m["user"], reasons.pop((sa, "address"), None),
                              reasons.pop(sa, "no trusted public key"))
    m = _EAP_FAILED.search(msg)
    if m:
        user = reasons.pop((sa, "user"), None) or m["user"] or reasons.get((sa, "peer")) or "(unknown)"
        reasons.pop((sa, "peer"), None)
        agent.log.p2s_refused(server, user, reasons.pop((sa, "address"), None),
                              reasons.pop(sa, "the RADIUS server refused the user name or password"), radius=True)


def openvpn_server(agent, server: P2sEnd, poll: float):
    """Sessions and refusals of a P2S OpenVPN server, every poll seconds."""
    watch = _OpenVpnWatch(agent, server)
    while not agent.stop.wait(poll):
        try:
            watch.round()
        except Exception as err:  # noqa: BLE001 - one bad answer must not end the watch
            agent.say(f"{server.node}: watching its sessions failed: {err!r}")


class _OpenVpnWatch:
    """Sessions come from the lines openvpn's session hook writes; a server that stopped
    answering has no users (a killed openvpn runs no hook). Refusals come from its log
    history (a refused client never reaches the hook)."""

    def __init__(self, agent, server: P2sEnd):
        self.agent, self.server = agent, server
        self.sessions = agent.p2s_users[server.node, server.protocol] = Sessions(agent.log, server)
        self.limit = agent.plan.nodes[server.node].openvpn["max_clients"]
        self.journal = _Journal(agent.rt.node_dir(server.node) / SESSIONS_FILE)
        self.synced = False           # the sessions agree with a listing, the journal goes on from it
        self.missing: set = set()     # known sessions the last listing did not show
        self.since = int(time.time())

    def round(self):
        rt, node = self.agent.rt, self.server.node
        if not self.synced:
            self.journal.skip()       # the listing below brings who is on now
        for entry in self.journal.read():
            client = {k: entry[k] for k in ("certificate", "address", "source_port", "virtual_ip")}
            client["radius"] = bool(entry.get("radius"))
            if entry["event"] == "auth-refused":      # openvpn-radius.sh: the user was refused
                self.agent.log.p2s_refused(self.server, entry["certificate"], entry["address"],
                                           entry["reason"], radius=True)
            elif entry["event"] == "client-connect":
                self._connected(client)
            else:
                self.sessions.down(_session(client))
        try:
            listed = live.openvpn_clients(live.openvpn_management(rt, node, "status 3"))
            history = live.openvpn_refusals(rt, node, self.since)
        except OSError:
            self.sessions.clear()
            self.synced = False
            return
        now = {_session(c): c for c in listed}
        if not self.synced:
            self.sessions.reconcile(now)
            self.synced, self.missing = True, set()
        # not listed twice in a row: gone without the hook (a listing may lag the hook)
        unlisted = self.sessions.known.keys() - now.keys()
        for key in self.missing & unlisted:
            self.sessions.down(key)
        self.missing = unlisted
        for r in history:
            self.agent.log.p2s_refused(self.server, r["certificate"], r["address"], r["reason"])
            self.since = max(self.since, r["time"] + 1)

    def _connected(self, client: dict):
        key = _session(client)
        if key in self.sessions.known or in_use(self.agent, self.server.gateway) < self.limit:
            self.sessions.up(key, client)
            return
        agent, server = self.agent, self.server
        agent.log.p2s_refused(server, client["certificate"], client["address"],
                              f"the gateway's point-to-site connection limit ({self.limit}) is reached",
                              "was refused")
        agent.say(f"{server.node}: {client['certificate']} is past the connection limit ({self.limit}): "
                  "ending its session")
        try:
            control.openvpn_kill(agent.rt, server.node, client["address"], client["source_port"])
        except OSError as err:
            agent.say(f"{server.node}: ending {client['certificate']}'s session failed: {err!r}")


def _session(client: dict) -> tuple:
    """An OpenVPN session: the user's TCP connection."""
    return client["certificate"], client["address"], client["source_port"]


class _Journal:
    """New lines of the session hook's file, from where the last read ended."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def skip(self):
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            if f.seek(0, 2) < self.offset:      # a new file (the node was set up again)
                self.offset = 0
            f.seek(self.offset)
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]     # a line being written waits for the next read
        self.offset += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]
