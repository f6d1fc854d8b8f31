"""Live state of a running lab, through the daemons' APIs: VICI for strongSwan,
`vtysh ... json` for FRR. Pure queries; nothing here changes the lab."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vici.exception import SessionException

from vpnlab.errors import LabError
from vpnlab.model.defaults import defaults
from vpnlab.plan.p2s import IKEV2_CONNECTIONS
from vpnlab.plan.parts import TABLE_INTO_TUNNEL, Plan
from vpnlab.waits import scaled


def _only_its_own(rt, node: str) -> dict:
    """A VICI filter for a tunnel end whose charon carries other tunnels too."""
    conn = rt.connection_of(node)
    return {"ike": conn} if conn else {}


def vici_sas(rt, node: str, noblock: bool = False) -> list[dict]:
    """charon's IKE SAs (VICI list-sas). noblock: leave out an SA a thread holds rather
    than wait for it: a point-to-site server holds a user's SA while RADIUS answers, up to
    Azure's 30 s timeout. A listing that times out raises its timeout (an OSError): the
    vici library's clean-up after it would otherwise hide it behind a SessionException."""
    with rt.vici(node) as session:
        try:
            return list(session.list_sas(_only_its_own(rt, node) | ({"noblock": "yes"} if noblock else {})))
        except SessionException as err:
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def vici_conns(rt, node: str) -> list[dict]:
    """The connections charon has loaded, with their settings (VICI list-conns)."""
    with rt.vici(node) as session:
        return list(session.list_conns(_only_its_own(rt, node)))


def ike_sas(rt, node: str) -> list[dict]:
    """Every IKE SA of a tunnel end (any state), with its CHILD SAs under "child-sas"."""
    return [ike for entry in vici_sas(rt, node) for ike in entry.values()]


def child_installed(sas: list[dict]) -> bool:
    """Whether any of these IKE SAs (ike_sas) carries an installed CHILD SA."""
    return any(c["state"] == b"INSTALLED" for ike in sas for c in ike.get("child-sas", {}).values())


def sa_counters(rt, node: str) -> dict:
    """Established IKE SAs, installed CHILD SAs and their traffic (summed over the SAs
    installed now: strongSwan counts per SA), and the average bytes/s since each was
    installed. All zero when the tunnel end does not answer."""
    try:
        return counters(ike_sas(rt, node))
    except OSError:
        return counters([])


def counters(sas: list[dict]) -> dict:
    """sa_counters of IKE SAs already listed (ike_sas)."""
    out = {"ike": 0, "child": 0, "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
           "bandwidth": 0.0}
    for ike in sas:
        out["ike"] += ike["state"] == b"ESTABLISHED"
        for child in ike.get("child-sas", {}).values():
            if child["state"] != b"INSTALLED":
                continue
            out["child"] += 1
            for key in ("bytes_in", "bytes_out", "packets_in", "packets_out"):
                out[key] += int(child.get(key.replace("_", "-"), 0))
            out["bandwidth"] += _child_bandwidth(child)
    return out


def ts_mismatch_drops(rt, node: str) -> dict:
    """Packets a tunnel end dropped for falling outside its traffic selectors (the
    nftables counters of vpnlab/plan/templates/nftables.conf.j2); zero without selectors."""
    data = rt.nft_json(node, "list", "counters", "table", "inet", "vpnlab_ts")
    found = {x["counter"]["name"]: x["counter"]["packets"] for x in data.get("nftables", []) if "counter" in x}
    return {"egress": found.get("ts_mismatch_egress", 0), "ingress": found.get("ts_mismatch_ingress", 0)}


def nat_counters(rt, node: str) -> dict[str, dict]:
    """A gateway instance's NAT counters (vpnlab/plan/templates/nat.nft.j2), by name
    (<nated|reverse|drop>.<rule>.<connection>): packets and bytes."""
    data = rt.nft_json(node, "list", "counters", "table", "ip", "vpnlab_nat")
    return {x["counter"]["name"]: {"packets": x["counter"]["packets"], "bytes": x["counter"]["bytes"]}
            for x in data.get("nftables", []) if "counter" in x}


def tunnel_state(rt, node: str) -> dict:
    """IKE and CHILD SA state of one tunnel endpoint, as strongSwan names it. Where
    several IKE SAs exist (a rekey in flight), an established one with an installed
    CHILD SA is the one reported."""
    try:
        sas = ike_sas(rt, node)
    except OSError as err:
        return {"state": "UNREACHABLE", "established_seconds": None, "child_state": None,
                "error": err.strerror or str(err)}
    found = []
    for ike in sas:
        children = [c["state"].decode() for c in ike.get("child-sas", {}).values()]
        found.append({"state": ike["state"].decode(),
                      "established_seconds": int(ike["established"]) if "established" in ike else None,
                      "child_state": "INSTALLED" if "INSTALLED" in children else next(iter(children), None)})
    rank = lambda sa: (sa["state"] == "ESTABLISHED", sa["child_state"] == "INSTALLED")
    return max(found, key=rank, default={"state": "DOWN", "established_seconds": None,
                                         "child_state": None})


def each(fn, items) -> list:
    """Query many nodes at once: each query waits on a daemon, not on the CPU."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(items)))) as pool:
        return list(pool.map(fn, items))


def tunnels(rt, plan: Plan) -> list[dict]:
    out = []
    states = each(lambda t: tunnel_state(rt, t.azure_end), plan.tunnels)
    for t, az in zip(plan.tunnels, states):
        out.append({"tunnel": t.name, "connection": t.connection, "gateway_instance": t.gateway_instance,
                    "device": t.device, "state": az["state"],
                    "established_seconds": az.get("established_seconds"),
                    "child_state": az.get("child_state")})
    return out


# the FRR daemon that answers a show command, asked on its vty socket (Backend.vty)
_DAEMONS = (("show bgp ", "bgpd"), ("show ip bgp ", "bgpd"), ("show ip route", "zebra"))


def vtysh_json(rt, node: str, command: str):
    daemon = next((d for prefix, d in _DAEMONS if command.startswith(prefix)), None)
    if daemon:
        try:
            return json.loads(rt.vty(node, daemon, command) or "{}")
        except OSError as err:
            raise RuntimeError(f"{node}: {daemon} does not answer '{command}': {err}") from err
    res = rt.vtysh(node, command)
    if res.returncode != 0:
        raise RuntimeError(f"{node}: vtysh '{command}' failed: {(res.stderr or res.stdout).strip()}")
    return json.loads(res.stdout or "{}")


def bgp_peers(rt, node: str) -> dict:
    data = vtysh_json(rt, node, "show bgp ipv4 unicast summary json")
    return data.get("peers", data.get("ipv4Unicast", {}).get("peers", {}))


def received_routes(rt, node: str, peer: str) -> list[str]:
    """What a BGP peer sent, before the route map in (soft-reconfiguration inbound)."""
    data = vtysh_json(rt, node, f"show bgp ipv4 unicast neighbors {peer} received-routes json")
    return sorted(data.get("receivedRoutes", {}))


def static_routes(rt, node: str) -> set[str]:
    """Prefixes of the static routes zebra holds (staticd's, installed or not)."""
    return set(vtysh_json(rt, node, "show ip route static json"))


def bgp(rt, plan: Plan) -> list[dict]:
    def query(node):
        try:
            return bgp_peers(rt, node)
        except Exception as err:  # noqa: BLE001 - reported as the session's state
            return {"__error__": str(err)}
    nodes = sorted({s.node for s in plan.bgp})
    cache = dict(zip(nodes, each(query, nodes)))
    out = []
    for s in plan.bgp:
        peer = cache[s.node].get(s.peer, {})
        state = peer.get("state") or ("UNREACHABLE" if "__error__" in cache[s.node] else "Missing")
        out.append({"node": s.node, "peer": s.peer, "peer_node": s.peer_node, "kind": s.kind,
                    "state": state, "prefixes_received": peer.get("pfxRcd")})
    return out


def fib_prefixes(rt, node: str) -> dict[str, int]:
    """Prefix -> number of installed next hops, from zebra's view of the FIB."""
    routes = vtysh_json(rt, node, "show ip route json")
    out = {}
    for prefix, entries in routes.items():
        for e in entries:
            if e.get("installed"):
                out[prefix] = sum(1 for nh in e.get("nexthops", []) if nh.get("fib"))
    return out


def missing_routes(rt, plan: Plan) -> list[str]:
    def check(item):
        node, prefixes = item
        try:
            fib = fib_prefixes(rt, node)
        except Exception as err:  # noqa: BLE001
            return [f"{node}: {err}"]
        return [f"{node}: {p}" for p in prefixes if p not in fib]
    wanted = [(n, p) for n, p in plan.expected_routes.items() if p and plan.nodes[n].frr is not None]
    return [m for found in each(check, wanted) for m in found]


# a client of the gateway's health probe, run in a node (the node image has python3):
# TLS without verification, as Microsoft's steps say "click through the certificate warning"
_PROBE_CLIENT = ("import ssl, sys, urllib.request\n"
                 "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
                 "print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=3).read().decode())")


def health_probe(rt, node: str, address: str) -> str | None:
    """What https://<address>:8081/healthprobe answers a client in node; None: no answer."""
    port = defaults()["monitoring"]["health_probe"]["port"]
    res = rt.exec(node, ["python3", "-c", _PROBE_CLIENT, f"https://{address}:{port}/healthprobe"], timeout=10)
    return res.stdout.strip() if res.returncode == 0 else None


def ping(rt, node: str, address: str, count: int = 1, timeout: int = 2) -> bool:
    res = rt.exec(node, ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), address],
                  timeout=count * timeout + 5)
    return res.returncode == 0


def convergence(rt, plan: Plan, tunnel_rows: list | None = None, bgp_rows: list | None = None) -> list[str]:
    """What is not converged yet: tunnels not ESTABLISHED/INSTALLED, BGP sessions not
    Established, expected prefixes missing from a FIB. Empty when converged. Tunnels and
    sessions already queried (status) are not queried again."""
    return progress_of(rt, plan, tunnel_rows, bgp_rows)[0]


def progress_of(rt, plan: Plan, tunnel_rows: list | None = None, bgp_rows: list | None = None) -> tuple[list, dict]:
    """What is not converged yet, and how far it got: {"tunnels": [up, of], "bgp": [up,
    of], "routes": missing or None (not looked at until tunnels and sessions are up)}."""
    problems = []
    # the user's device is up when they bring it; a half-configured device never dials
    # some instances (device.connect_to_instances)
    skipped = {t.name for t in plan.tunnels if t.device in plan.unmanaged or not t.expected_up}
    watched = [t for t in (tunnels(rt, plan) if tunnel_rows is None else tunnel_rows) if t["tunnel"] not in skipped]
    for t in watched:
        if t["state"] != "ESTABLISHED" or t["child_state"] != "INSTALLED":
            problems.append(f"tunnel {t['tunnel']}: {t['state']}/{t['child_state']}")
    sessions = [b for b in (bgp(rt, plan) if bgp_rows is None else bgp_rows) if b["peer_node"] not in plan.unmanaged]
    for b in sessions:
        if b["state"] != "Established":
            problems.append(f"bgp {b['node']} -> {b['peer']} ({b['peer_node']}): {b['state']}")
    counts = {"tunnels": [len(watched) - sum(p.startswith("tunnel ") for p in problems), len(watched)],
              "bgp": [len(sessions) - sum(p.startswith("bgp ") for p in problems), len(sessions)], "routes": None}
    if not problems:
        missing = missing_routes(rt, plan)
        problems += [f"route {m}" for m in missing]
        counts["routes"] = len(missing)
    return problems, counts


def progress_line(counts: dict) -> str:
    routes = "" if counts["routes"] is None else \
        (", routes in place" if not counts["routes"] else f", {counts['routes']} routes missing")
    return (f"tunnels {counts['tunnels'][0]}/{counts['tunnels'][1]} ESTABLISHED, "
            f"BGP {counts['bgp'][0]}/{counts['bgp'][1]} Established{routes}")


# ------------------------------------------------------------------ point-to-site
def openvpn_management(rt, node: str, command: str, timeout: float = 3) -> list[str]:
    """One command on openvpn's management interface (its API); the reply's lines up to
    END (status, state) or the single SUCCESS/ERROR line."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(rt.node_dir(node) / "openvpn.mgmt"))
        f = sock.makefile("rw", encoding="utf-8", newline="\n")
        f.write(command + "\n")
        f.flush()
        lines = []
        for line in f:
            line = line.rstrip("\r\n")
            if line.startswith(">"):          # banner and real-time notifications
                continue
            if line == "END" or line.startswith(("SUCCESS:", "ERROR:")):
                if not line == "END":
                    lines.append(line)
                break
            lines.append(line)
        return lines


def openvpn_server_clients(rt, node: str) -> list[dict]:
    """Clients connected to a P2S OpenVPN server (none when it does not answer)."""
    try:
        return openvpn_clients(openvpn_management(rt, node, "status 3"))
    except OSError:
        return []


def openvpn_clients(status: list[str]) -> list[dict]:
    """The clients in openvpn's `status 3`: certificate name, address and source port,
    virtual IP, bandwidth."""
    out = []
    now = time.time()
    for line in status:
        # CLIENT_LIST, name, real address, virtual address, virtual IPv6, bytes received,
        # bytes sent, connected since, connected since (time_t), user name (RADIUS), ...
        f = line.split("\t")
        if f[0] == "CLIENT_LIST" and len(f) > 8:
            age = max(1.0, now - int(f[8]))
            address, _, port = f[2].rpartition(":")
            user = f[9] if len(f) > 9 and f[9] not in ("", "UNDEF") else None
            out.append({"certificate": user or f[1], "address": address, "source_port": port, "virtual_ip": f[3],
                        "radius": user is not None, "bandwidth": round((int(f[5]) + int(f[6])) / age, 1)})
    return out


_VERIFY_ERROR = re.compile(r"^(?P<address>[\d.]+):\d+ VERIFY ERROR: depth=0, error=(?P<error>[^:]+): "
                           r"CN=(?P<user>[^,]+)")


def openvpn_refusals(rt, node: str, since: float = 0) -> list[dict]:
    """Client certificates a P2S OpenVPN server refused since a time (revoked, or from
    an untrusted root), from its log history on the management interface."""
    try:
        lines = openvpn_management(rt, node, "log all")
    except OSError:
        return []
    out = []
    for line in lines:
        when, _, rest = line.partition(",")
        message = rest.partition(",")[2]
        m = _VERIFY_ERROR.match(message)
        if m and when.isdigit() and int(when) >= since:
            out.append({"time": int(when), "certificate": m["user"], "address": m["address"],
                        "reason": m["error"]})
    return out


def openvpn_client_state(rt, node: str) -> dict:
    """A P2S OpenVPN client's state (CONNECTED when up) and virtual IP; DOWN when its
    openvpn does not run."""
    try:
        lines = openvpn_management(rt, node, "state")
    except OSError:
        return {"state": "DOWN", "virtual_ip": None}
    f = (lines[-1] if lines else "").split(",")
    return {"state": f[1] if len(f) > 1 else "UNKNOWN", "virtual_ip": f[3] if len(f) > 3 and f[3] else None}


def ikev2_server_clients(rt, node: str, noblock: bool = False) -> list[dict]:
    """Clients with an established IKE SA on a P2S IKEv2 server (none when it does not
    answer). noblock: an SA charon holds at that moment is left out, not waited for."""
    try:
        sas = ike_sas_named(rt, node, noblock)
    except OSError:
        return []
    return [ikev2_client(ike, name) for name, ike in sas if ike["state"] == b"ESTABLISHED"]


def ikev2_client(ike: dict, connection: str = "") -> dict:
    """A P2S IKEv2 server's IKE SA (VICI) of one of its connections, as a client:
    identity (a RADIUS user's EAP identity, or a certificate's CN), address, virtual IP."""
    eap = ike.get("remote-eap-id", b"").decode()
    return {"certificate": eap or _cn(ike.get("remote-id", b"").decode()),
            "radius": bool(eap) or connection == IKEV2_CONNECTIONS["Radius"],
            "address": ike.get("remote-host", b"").decode(),
            "virtual_ip": ", ".join(v.decode() for v in ike.get("remote-vips", [])),
            "ike_sa": ike.get("uniqueid", b"").decode(),
            "bandwidth": round(sum(_child_bandwidth(c) for c in ike.get("child-sas", {}).values()), 1)}


def _child_bandwidth(child: dict) -> float:
    """Bytes/s both ways since the CHILD SA was installed (0 unless installed)."""
    if child["state"] != b"INSTALLED":
        return 0.0
    age = max(1, int(child.get("install-time", 1)))
    return (int(child.get("bytes-in", 0)) + int(child.get("bytes-out", 0))) / age


def p2s_sessions(rt, plan: Plan, noblock: bool = False) -> list[dict]:
    """Each serving P2S server with the clients connected to it, as the gateway sees them
    (noblock: see ikev2_server_clients)."""
    out = []
    for e in plan.p2s_ends:
        sessions = ikev2_server_clients(rt, e.node, noblock) if e.protocol == "IkeV2" \
            else openvpn_server_clients(rt, e.node)
        out.append({"gateway": e.gateway, "instance": e.gateway_instance, "protocol": e.protocol,
                    "pool": e.pool, "connections": len(sessions), "clients": sessions})
    return out


def route_get(rt, node: str, dst: str, src: str, iif: str) -> dict | None:
    """The kernel's decision for a packet arriving on iif (its rules and tables, policy
    routing included): `ip -j route get`; None when it has no route."""
    res = rt.exec(node, ["ip", "-j", "route", "get", dst, "from", src, "iif", iif])
    return json.loads(res.stdout)[0] if res.returncode == 0 and res.stdout.strip() else None


def openvpn_leases(rt, node: str) -> set[str]:
    """The pool addresses a P2S server's openvpn gave out: its session hook routes each
    to tun0 in the table what comes from the gateway looks up first (openvpn-session.sh)."""
    res = rt.exec(node, ["ip", "-j", "route", "show", "table", str(TABLE_INTO_TUNNEL), "dev", "tun0"])
    return {r["dst"] for r in json.loads(res.stdout or "[]")} if res.returncode == 0 else set()


def ikev2_client_sas(rt, node: str) -> dict[str, dict]:
    """A P2S IKEv2 client's connections (one per identity): state and virtual IP."""
    try:
        sas = ike_sas_named(rt, node)
    except OSError:
        return {}
    out = {}
    for name, ike in sas:
        children = [c["state"].decode() for c in ike.get("child-sas", {}).values()]
        up = ike["state"] == b"ESTABLISHED" and "INSTALLED" in children
        if name not in out or up:
            out[name] = {"state": "CONNECTED" if up else ike["state"].decode(),
                         "virtual_ip": ", ".join(v.decode() for v in ike.get("local-vips", [])) or None,
                         "unique_id": ike.get("uniqueid", b"").decode()}
    return out


def ike_sas_named(rt, node: str, noblock: bool = False) -> list[tuple[str, dict]]:
    return [(name, ike) for entry in vici_sas(rt, node, noblock) for name, ike in entry.items()]


def _cn(identity: str) -> str:
    return identity[3:] if identity.startswith("CN=") else identity


def wait_converged(lab, budget: float | None = None, ignore: list[str] = (), progress=None):
    """Until the lab converged (convergence() is empty); what a string of ignore names
    (a tunnel, a device's BGP sessions) may stay down. progress(line): told the counts
    (tunnels x/y, BGP x/y, routes) whenever they move.

    A budget given is the whole wait. Without one, the wait grows with the lab: it gives
    up when nothing has progressed for the timer profile's `converge` seconds, or at
    `converge` plus `converge_per_tunnel` per tunnel in all. LabError names what is
    stuck, with what its tunnel end's charon last said."""
    waits = defaults()["waits"]
    stall = scaled(waits["converge"][lab.state.timers])
    cap = scaled(budget if budget is not None
                 else waits["converge"][lab.state.timers] + waits["converge_per_tunnel"] * len(lab.plan.tunnels))
    start = time.monotonic()
    best, moved = None, start
    shown = [None]
    while True:
        try:
            problems, counts = progress_of(lab.backend, lab.plan)
        except Exception as err:  # noqa: BLE001 - a daemon between states; reported if it lasts
            problems, counts = [f"{type(err).__name__}: {err}"], shown[0] or {"tunnels": [0, 0], "bgp": [0, 0],
                                                                              "routes": None}
        if progress and counts != shown[0]:
            progress(progress_line(counts))
        shown[0] = counts
        problems = [p for p in problems if not any(x in p for x in ignore)]
        if not problems:
            return
        now = time.monotonic()
        if best is None or _score(counts) > best:
            best, moved = _score(counts), now
        if now - start >= cap or (budget is None and now - moved >= stall):
            why = (f"within {cap:g} s" if now - start >= cap
                   else f"after {now - start:.0f} s: nothing progressed for {stall:g} s")
            raise LabError(f"lab {lab.name!r} did not converge {why}; {progress_line(counts)}; "
                           f"not converged: {'; '.join(problems[:20])}"
                           + (f" (and {len(problems) - 20} more)" if len(problems) > 20 else "")
                           + stuck_ends(lab, problems))
        time.sleep(0.25)


def _score(counts: dict) -> tuple:
    """How far convergence got: more tunnels and sessions up, then routes known, then
    fewer routes missing."""
    known = counts["routes"] is not None
    return (counts["tunnels"][0] + counts["bgp"][0], known, -counts["routes"] if known else 0)


def stuck_ends(lab, problems: list[str], most: int = 3) -> str:
    """For the first few tunnels not up: whether their Azure end's charon runs, and the
    last lines it wrote (an unanswered VICI socket, a refused proposal, a lost peer)."""
    names = [p.split(":")[0].removeprefix("tunnel ") for p in problems if p.startswith("tunnel ")][:most]
    ends = {t.name: t.azure_end for t in lab.plan.tunnels}
    notes = []
    for name in names:
        end = ends.get(name)
        if end is None:
            continue
        running = bool(lab.backend.daemon_pids(end, "charon"))
        said = []
        for log in ("charon.out", "charon.log"):
            said += [line.strip() for line in last_lines(lab.backend.node_dir(lab.backend.charon_of(end)) / log, 2)
                     if line.strip()]
        notes.append(f"{end}: charon {'running' if running else 'NOT running'}"
                     + (f", last said: {' | '.join(said[-3:])}" if said else ""))
    return ("\n  " + "\n  ".join(notes)) if notes else ""


def last_lines(path: Path, count: int, tail_bytes: int = 8192) -> list[str]:
    """The last lines of a log, read from its end (a charon log grows to megabytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            return f.read().decode(errors="replace").splitlines()[-count:]
    except FileNotFoundError:
        return []
