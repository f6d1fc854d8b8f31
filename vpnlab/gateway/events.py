"""The emulated gateway's diagnostic log, in the shapes of Azure's resource logs [7.5]:
GatewayDiagnosticLog (HostMaintenanceEvent, GatewayTenantPrimaryChanged,
SetGatewayConfiguration, SetConnectionConfiguration; and, for an instance lost without
maintenance, the lab's InstanceFailure / InstanceRecovered: Microsoft names no operation
for it), TunnelDiagnosticLog (TunnelConnected / TunnelDisconnected, instance_s =
GatewayTenantWorker_IN_k), RouteDiagnosticLog (BgpConnectedEvent / BgpDisconnectedEvent),
RouteDiagnosticLog also has StaticRouteUpdate (a
site's address space added or withdrawn by a change), IKEDiagnosticLog (IKE lines tagged
[SEND] / [RECEIVED] / [LOCAL]) and P2SDiagnosticLog
(P2SLogEvent: a point-to-site user connected, disconnected or failed authentication).

Written as JSON lines by the agent, and by the commands that change the gateway
(maintenance, instance faults, apply); read by `vpnlab events` (--follow). Column names follow Azure's
AzureDiagnostics table where the reference names them (OperationName, instance_s,
remoteIP_s, Message); the others (peerAddress_s, connectionName_s, protocol_s,
userName_s) are the lab's choice.
"""
from __future__ import annotations

import json
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path

from vpnlab.model import names

FILE = "events.jsonl"
MAX_BYTES = 20 * 1024 * 1024      # then the file is rotated once (events.jsonl.1)
_TAGS = (("generating ", "[SEND]"), ("sending packet", "[SEND]"),
         ("parsed ", "[RECEIVED]"), ("received packet", "[RECEIVED]"))
_PORT = re.compile(r"\[(500|4500)\]")
# what ended an IKE SA, from its last log lines: Azure's stateChangeReason_s, summarised
_REASONS = (("retransmit", "peer did not answer (DPD or IKE retransmits timed out)"),
            ("received DELETE", "deleted by the remote side"),
            ("NO_PROPOSAL_CHOSEN", "no proposal chosen"),
            ("AUTHENTICATION_FAILED", "authentication failed"),
            ("deleting IKE_SA", "deleted by the gateway"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Writer:
    def __init__(self, lab_dir: Path):
        self.path = Path(lab_dir) / FILE
        self.lock = threading.Lock()
        self.last_reason: dict[str, str] = {}     # tunnel -> reason seen in its log
        self.connected: dict[str, bool] = {}      # tunnel -> last reported state
        self.pinned: dict[str, str] = {}          # tunnel -> reason the agent gave (wins)
        self.port: dict[str, str] = {}            # tunnel -> IKE port in use (500, 4500)
        self.file = None

    def write(self, entry: dict):
        """One JSON line, flushed at once (`vpnlab events` reads while the agent runs);
        the file stays open: IKE lines come many a second."""
        line = json.dumps({"TimeGenerated": _now(), **entry}) + "\n"
        with self.lock:
            if self.file is None:
                self.file = open(self.path, "a")
            elif self.file.tell() > MAX_BYTES:
                self.file.close()
                self.path.replace(self.path.with_name(FILE + ".1"))
                self.file = open(self.path, "a")
            self.file.write(line)
            self.file.flush()

    def gateway(self, operation: str, gateway: str, message: str, instance: str | None = None, **extra):
        """GatewayDiagnosticLog: an instance event or a configuration change."""
        self.write({"Category": "GatewayDiagnosticLog", "OperationName": operation, "Resource": gateway.upper(),
                    "instance_s": names.azure_instance_name(instance) if instance else "", **extra,
                    "Message": message})

    def static_route(self, gateway: str, instance: str, prefix: str, added: bool, connection: str):
        """RouteDiagnosticLog StaticRouteUpdate: a site prefix the instance routes into a tunnel."""
        self.write({"Category": "RouteDiagnosticLog", "OperationName": "StaticRouteUpdate",
                    "Resource": gateway.upper(), "instance_s": names.azure_instance_name(instance),
                    "connectionName_s": connection, "prefix_s": prefix,
                    "Message": f"Static route {prefix} via connection {connection} "
                               f"{'added' if added else 'removed'}"})

    def close(self):
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None

    def _common(self, t, plan) -> dict:
        return {"Resource": t.gateway.upper(), "instance_s": names.azure_instance_name(t.gateway_instance),
                "connectionName_s": t.connection, "remoteIP_s": t.remote_ip}

    def tunnel(self, t, plan, up: bool, reason: str | None = None):
        """TunnelConnected / TunnelDisconnected, once per change of the tunnel's state."""
        if self.connected.get(t.name, False) == up:
            return
        self.connected[t.name] = up
        if not up and t.name in self.pinned:
            reason = self.pinned.pop(t.name)
        reason = reason or ("tunnel established" if up else self.last_reason.pop(t.name, "IKE SA closed"))
        self.write({"Category": "TunnelDiagnosticLog",
                    "OperationName": "TunnelConnected" if up else "TunnelDisconnected",
                    **self._common(t, plan), "stateChangeReason_s": reason,
                    "Message": f"Tunnel {t.connection} to {t.remote_ip} "
                               f"{'connected' if up else 'disconnected'}: {reason}"})

    def ike(self, t, plan, event: dict):
        msg = event.get("msg", b"").decode(errors="replace")
        for needle, reason in _REASONS:
            if needle in msg:
                self.last_reason[t.name] = reason
                break
        tag = next((tag for prefix, tag in _TAGS if msg.startswith(prefix)), "[LOCAL]")
        ports = _PORT.findall(msg)
        port = self.port[t.name] = ports[-1] if ports else self.port.get(t.name, "500")
        local = plan.nodes[t.gateway_instance].public_ip
        # charon sits behind the instance's NAT: show the gateway's public address, as Azure
        msg = msg.replace(plan.nodes[t.azure_end].charon["local_addr"], local)
        self.write({"Category": "IKEDiagnosticLog", **self._common(t, plan),
                    "Message": f"Remote {t.remote_ip}:{port}: Local {local}:{port}: {tag} {msg}"})

    def bgp(self, session, plan, up: bool):
        state = "connected" if up else "disconnected"
        self.write({"Category": "RouteDiagnosticLog",
                    "OperationName": "BgpConnectedEvent" if up else "BgpDisconnectedEvent",
                    "Resource": names.split_instance(session.node)[0].upper(),
                    "instance_s": names.azure_instance_name(session.node), "peerAddress_s": session.peer,
                    "Message": f"BGP peer {session.peer} ({session.peer_node}) is {state}"})

    def nat_route(self, node: str, entry: dict, source: tuple[str, str], translated: str, added: bool):
        """A learned route announced translated by a NAT rule, or withdrawn [7.2]."""
        rule, learned = source
        what = "announced as" if added else "withdrawn:"
        self.write({"Category": "RouteDiagnosticLog",
                    "OperationName": "NatRouteTranslated" if added else "NatRouteWithdrawn",
                    "Resource": names.split_instance(node)[0].upper(),
                    "instance_s": names.azure_instance_name(node), "peerAddress_s": entry["peer"],
                    "connectionName_s": entry["connection"], "natRule_s": rule,
                    "Message": f"Route {learned} learned from {entry['peer']} {what} {translated} "
                               f"(NAT rule {rule})"})

    def p2s(self, server, client: dict, connected: bool):
        """P2SLogEvent: a point-to-site user connected to a server, or disconnected."""
        user, address, vip = client["certificate"], client["address"], client["virtual_ip"]
        what = f"connected from {address} with virtual IP {vip}" if connected \
            else f"disconnected ({address}, virtual IP {vip})"
        radius = bool(client.get("radius"))
        self.write({"Category": "P2SDiagnosticLog", "OperationName": "P2SLogEvent",
                    "Resource": server.gateway.upper(), "instance_s": names.azure_instance_name(server.gateway_instance),
                    "protocol_s": server.protocol, "userName_s": user, "remoteIP_s": address,
                    "authentication_s": "Radius" if radius else "Certificate",
                    "Message": f"{server.protocol} user {_user(user, radius)} {what}"})

    def p2s_refused(self, server, user: str, address: str | None, reason: str,
                    what: str = "failed authentication", radius: bool = False):
        """P2SLogEvent: a point-to-site server refused a user (its certificate, its user
        name and password, or one connection more than the SKU takes)."""
        source = f" from {address}" if address else ""
        self.write({"Category": "P2SDiagnosticLog", "OperationName": "P2SLogEvent",
                    "Resource": server.gateway.upper(), "instance_s": names.azure_instance_name(server.gateway_instance),
                    "protocol_s": server.protocol, "userName_s": user, "remoteIP_s": address,
                    "authentication_s": "Radius" if radius else "Certificate",
                    "Message": f"{server.protocol} user {_user(user, radius)}{source} {what}: {reason}"})


def _user(user: str, radius: bool) -> str:
    """A certificate's subject (CN=...), or a RADIUS user's name as given."""
    return user if radius else f"CN={user}"


CATEGORIES = ("GatewayDiagnosticLog", "TunnelDiagnosticLog", "RouteDiagnosticLog", "IKEDiagnosticLog",
              "P2SDiagnosticLog")


def record(lab_dir: Path, kind: str, *args, **kwargs):
    """One entry written by a command rather than the agent (maintenance, faults, apply)."""
    writer = Writer(lab_dir)
    try:
        getattr(writer, kind)(*args, **kwargs)
    finally:
        writer.close()


def read(lab_dir: Path, category: str | None = None) -> list[dict]:
    out = []
    for name in (FILE + ".1", FILE):
        path = Path(lab_dir) / name
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if category is None or entry["Category"] == category:
                    out.append(entry)
    return out


def follow(lab_dir: Path, category: str | None = None, poll: float = 0.25, stop=None):
    """New entries as the agent and the commands write them (`vpnlab events --follow`),
    from the end of the file as it is at the call, until stop (a threading.Event) is
    set; a rotation is followed: the old file read to its end, then the new one."""
    path = Path(lab_dir) / FILE
    f = inode = None
    if path.exists():
        f = open(path, "rb")
        f.seek(0, 2)
        inode = os.fstat(f.fileno()).st_ino
    return _tail(path, f, inode, category, poll, stop or threading.Event())


def _tail(path: Path, f, inode, category: str | None, poll: float, stop):
    while not stop.is_set():
        line = f.readline() if f else b""
        if line.endswith(b"\n"):
            entry = json.loads(line)
            if category is None or entry["Category"] == category:
                yield entry
            continue
        if line:                    # a line being written: read it whole next time
            f.seek(-len(line), 1)
        else:                       # all read: a new file (first, or rotated) is read from its start
            try:
                new = open(path, "rb")
            except FileNotFoundError:
                new = None
            if new is not None and os.fstat(new.fileno()).st_ino != inode:
                if f is not None:
                    f.close()
                f, inode = new, os.fstat(new.fileno()).st_ino
                continue
            if new is not None:
                new.close()
        stop.wait(poll)
