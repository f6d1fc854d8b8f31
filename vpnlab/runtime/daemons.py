"""The one daemon start order, for up, heal, maintenance and point-to-site. Its steps are
data (`daemons` in defaults.yaml): this module follows them from the host through a
backend, and the node image's entry point follows the same data through a script
rendered per node (start-daemons.sh.j2, for containerlab).

  routers    FRR: zebra alone first and its zserv socket awaited (a client that finds no
             zebra retries only 10 s later), then the rest, then the integrated config
  probes     the serving gateway instances' health probes (HTTPS on 8081)
  radius     FreeRADIUS on the RADIUS hosts, before the point-to-site servers that ask it
  agent      the gateway's agent, before any charon, so its log sees the first exchanges
  tunnels    charon per tunnel end, Azure's ends first so that a device's first
             IKE_SA_INIT finds a responder; IKE is dropped until the connection is loaded
             (the IKE start guard)
  p2s        point-to-site servers, then the clients' charons
"""
from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from vpnlab.errors import RuntimeFailure
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.plan import pki
from vpnlab.plan.parts import TABLE_INTO_TUNNEL, Plan
from vpnlab.plan.render import STARTING_GUARD
from vpnlab.runtime import procs
from vpnlab.waits import wait_until

AGENT = "agent"     # the node name under which the agent's process is recorded


def order() -> dict:
    return defaults()["daemons"]


def frr_daemons() -> tuple[str, ...]:
    """Every FRR daemon of a router, in start order."""
    return tuple(d for step in order()["frr_steps"] for d in step)


# ------------------------------------------------------------------ the whole lab
def start_lab(backend, plan: Plan, budget: float, progress):
    nodes = plan.ordered_nodes()
    routers = [n.name for n in nodes if n.frr is not None and not n.standby]
    progress(f"starting FRR on {len(routers)} routers")
    start_routers(backend, routers, budget)
    start_health_probes(backend, plan, [n.name for n in nodes if n.role == "gateway-instance" and not n.standby])
    radius = [n.name for n in nodes if n.radius is not None]
    if radius:
        progress(f"starting FreeRADIUS on {len(radius)} RADIUS hosts")
        start_radius(backend, radius, budget)
    progress("starting the gateway's agent (connection modes, Azure's rekeys, events)")
    start_agent(backend)
    for side in ("az", "op"):
        ends = [e for t in plan.tunnels if (e := t.azure_end if side == "az" else t.onprem_end)]
        progress(f"starting {len(ends)} charon instances ({'Azure' if side == 'az' else 'on-prem'} side)")
        start_tunnel_ends(backend, ends, budget)
    start_p2s(backend, plan, budget, progress)


def start_p2s(backend, plan: Plan, budget: float, progress, only: set[str] | None = None):
    """Point-to-site servers on the serving instances, then the clients' charons (only:
    of these nodes, new in a running lab)."""
    ends = [e for e in plan.p2s_ends if only is None or e.node in only]
    clients = [c for c in plan.clients if only is None or c.name in only]
    if not (ends or clients):
        return
    progress(f"starting {len(ends)} point-to-site servers")
    start_tunnel_ends(backend, [e.node for e in ends if e.protocol == "IkeV2"], budget)
    start_openvpn(backend, [e.node for e in ends if e.protocol == "OpenVPN"], budget)
    ikev2 = [c.name for c in clients if c.protocol == "IkeV2"]
    progress(f"starting {len(ikev2)} IKEv2 clients (they connect with 'vpnlab p2s connect')")
    start_p2s_clients(backend, ikev2, budget)


# ------------------------------------------------------------------ health probes
PROBE = "healthprobe"


def start_health_probes(backend, plan: Plan, instances: list[str]):
    """Each serving instance answers on its public IP, naming the primary instance: the
    active one of an active-standby gateway; on active-active each instance names itself
    (the lab's choice: Microsoft documents the answer of one). The node image has the
    standard library only: the probe is a script copied into the node's folder, with a
    self-signed certificate made once per address."""
    probe = defaults()["monitoring"]["health_probe"]
    for node in instances:
        d, address = backend.node_dir(node), plan.nodes[node].public_ip
        gateway, k = names.split_instance(node)
        primary = names.instance(gateway, plan.active.get(gateway, k))
        cert, key = d / "healthprobe.crt", d / "healthprobe.key"
        if not cert.exists():          # once per lab: the node keeps its address
            pki.self_signed(address, cert, key)
        shutil.copyfile(Path(__file__).with_name("healthprobe.py"), d / "healthprobe.py")
        text = f"Primary Instance: {names.azure_instance_name(primary)} GatewayTenantVersion: {probe['tenant_version']}"
        backend.start_daemon(node, PROBE, ["python3", str(d / "healthprobe.py"), address, str(probe["port"]),
                                           str(cert), str(key), text], d / "healthprobe.log")
    backend.save_processes()


# ------------------------------------------------------------------ RADIUS
RADIUS = "freeradius"


def start_radius(backend, nodes: list[str], budget: float):
    """FreeRADIUS in the foreground with the node's own config folder, ready once it
    says so in its log (it has bound its address then); the log is kept across
    restarts (its logons are the server's record), so only what follows is read."""
    logs = {n: backend.node_dir(n) / "radius.log" for n in nodes}
    start = {n: log.stat().st_size if log.exists() else 0 for n, log in logs.items()}

    def one(node: str):
        d = backend.node_dir(node)
        backend.start_daemon(node, RADIUS, ["freeradius", "-f", "-d", str(d), "-n", "radiusd"],
                             d / "freeradius.out")
    backend.each(nodes, one)
    backend.save_processes()

    def since_start(node: str) -> str:
        if not logs[node].exists():
            return ""
        with logs[node].open("rb") as f:
            f.seek(start[node])
            return f.read().decode(errors="replace")

    def ready(node: str):
        log = logs[node]
        wait_until(lambda: since_start(node),
                   lambda text: "Ready to process requests" in text,
                   f"FreeRADIUS in {node} to be ready (see {log} and "
                   f"{backend.node_dir(node) / 'freeradius.out'})", budget)
    backend.each(nodes, ready)


# ------------------------------------------------------------------ FRR
def start_routers(backend, nodes: list[str], budget: float):
    """FRR on routers, step by step; each step's sockets awaited before the next."""
    for step in order()["frr_steps"]:
        start_frr(backend, nodes, tuple(step))
        if "zebra" in step:
            backend.each(nodes, lambda r: wait_zebra(backend, r, budget))
    backend.each(nodes, lambda r: configure_frr(backend, r, budget))


def start_frr(backend, nodes: list[str], daemons: tuple[str, ...]):
    frr_dir = order()["frr_dir"]

    def one(node: str):
        d = backend.node_dir(node)
        backend.own_frr_folder(node)
        for daemon in daemons:
            backend.start_daemon(node, daemon, [f"{frr_dir}/{daemon}", "--vty_socket", str(d),
                                                "-z", str(d / "zserv.api"), "-i", str(d / f"{daemon}.pid"),
                                                "-f", "/dev/null", "-u", "frr", "-g", "frr",
                                                *order()["frr_options"]],
                                 d / f"{daemon}.out")
    backend.each(nodes, one)
    backend.save_processes()


def restart_frr_daemon(backend, node: str, daemon: str, budget: float):
    """One FRR daemon again (after a crash), zebra's socket awaited first, then the
    config (it is the integrated one: every daemon's part is applied again)."""
    start_frr(backend, [node], (daemon,))
    if daemon == "zebra":
        wait_zebra(backend, node, budget)
    configure_frr(backend, node, budget)


def wait_zebra(backend, node: str, budget: float = 15):
    sock = backend.node_dir(node) / "zserv.api"
    wait_until(sock.exists, bool, f"zebra's zserv socket of {node}", budget)


def configure_frr(backend, node: str, budget: float = 15):
    d = backend.node_dir(node)
    wait_until(lambda: [x for x in frr_daemons() if not (d / f"{x}.vty").exists()],
               lambda missing: not missing, f"FRR vty sockets of {node}", budget)
    res = backend.exec(node, ["vtysh", "--vty_socket", str(d), "--config_dir", str(d), "-b"])
    if res.returncode != 0:
        raise RuntimeFailure(f"{node}: FRR refused its config {d / 'frr.conf'}: "
                             f"{(res.stdout + res.stderr).strip()[-400:]}")


# ------------------------------------------------------------------ charon, openvpn
def start_charons(backend, nodes: list[str]):
    """One charon per tunnel end, each with a private /run."""
    def one(node: str):
        d = backend.node_dir(node)
        (d / "run").mkdir(exist_ok=True)
        # SWANCTL_DIR: swanctl --load-all finds the node's certificates, keys and CRLs
        backend.start_daemon(node, "charon", backend.charon_argv(node), d / "charon.out",
                             env={"STRONGSWAN_CONF": str(d / "strongswan.conf"), "SWANCTL_DIR": str(d)})
    backend.each(nodes, one)
    backend.save_processes()


def start_tunnel_ends(backend, nodes: list[str], budget: float):
    """The charons of tunnel ends: each end's own, or the one of the gateway instance
    that carries it (backend.charon_of; started once, and not again while it runs);
    ready once ipsec0 is routed and the connections are loaded. Until its connections
    are loaded charon answers IKE_SA_INIT with NO_PROPOSAL_CHOSEN, after which a peer
    never retries (keyingtries counts only timeouts): IKE is dropped until then (the
    start guard), so that the peer's retransmits wait."""
    hosts = list(dict.fromkeys(backend.charon_of(e) for e in nodes))
    charons = [h for h in hosts if h in nodes or not backend.daemon_pids(h, "charon")]
    backend.each(charons, lambda c: backend.nft(c, STARTING_GUARD))
    start_charons(backend, charons)
    backend.each(nodes, lambda e: route_into_tunnel(backend, e, budget))

    def ready(c: str):
        wait_until(lambda: loaded_connections(backend, c), bool,
                   f"charon of {c} to load its connections (see {backend.node_dir(c) / 'charon.log'})",
                   budget)
        backend.nft(c, f"delete table inet {order()['ike_guard_table']}\n")
    backend.each(charons, ready)


def start_p2s_clients(backend, nodes: list[str], budget: float):
    """charon of IKEv2 clients, ready once it loaded its connections (it dials only
    when told: vpnlab p2s connect)."""
    start_charons(backend, nodes)
    backend.each(nodes, lambda n: wait_until(
        lambda: loaded_connections(backend, n), bool,
        f"charon of {n} to load its connections (see {backend.node_dir(n) / 'charon.log'})", budget))


def start_openvpn(backend, nodes: list[str], budget: float):
    """openvpn on P2S servers (and clients that connect), ready once its management
    socket answers."""
    def one(node: str):
        d = backend.node_dir(node)
        with contextlib.suppress(FileNotFoundError):
            (d / "openvpn.mgmt").unlink()      # a killed openvpn leaves it
        backend.start_daemon(node, "openvpn", ["openvpn", "--cd", str(d), "--config", str(d / "openvpn.conf")],
                             d / "openvpn.out")
    backend.each(nodes, one)
    backend.save_processes()
    backend.each(nodes, lambda n: wait_until(
        lambda: (backend.node_dir(n) / "openvpn.mgmt").exists(), bool,
        f"openvpn's management socket in {n} (see {backend.node_dir(n) / 'openvpn.out'})", budget))


def loaded_connections(backend, node: str) -> list[str]:
    with backend.vici(node) as session:
        return [c.decode() for c in session.get_conns().get("conns", [])]


def route_into_tunnel(backend, node: str, budget: float = 15):
    """Once charon made ipsec0, send what arrives on the inner veth into it."""
    ipr = backend.ipr(node)
    log = backend.node_dir(node) / "charon.log"
    wait_until(lambda: ipr.link_lookup(ifname="ipsec0"), bool,
               f"charon's ipsec0 device in {node} (see {log})", budget)
    ipr.link("set", index=ipr.link_lookup(ifname="ipsec0")[0], state="up")
    backend.route(node, "0.0.0.0/0", dev="ipsec0", table=TABLE_INTO_TUNNEL)


# ------------------------------------------------------------------ the agent
def start_agent(backend):
    """The emulated gateway's own control plane (vpnlab.gateway.agent), in the root
    namespace: it only talks to the lab's daemons through their sockets. It runs in
    the lab's folder with the package's own path first, so that nothing in the
    caller's working folder can stand in for vpnlab."""
    argv = [sys.executable, "-m", "vpnlab.gateway.agent", backend.state.name]
    pid = procs.spawn(argv, backend.state.name, backend.state.dir / "agent.log", cwd=backend.state.dir,
                      env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    backend.state.processes.append({"pid": pid, "node": AGENT, "daemon": "agent"})
    backend.save_processes()


def restart_agent(backend):
    """A new agent for a changed plan (an active-standby takeover)."""
    backend.stop_daemon(AGENT, "agent", graceful=True)
    start_agent(backend)
