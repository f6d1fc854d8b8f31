"""The embedded runtime: every node is a network namespace, links are veths.

Only this package runs subprocesses and touches netlink. Daemons run inside their
node's namespace: FRR per router (its own vty/zserv socket folder), one charon per
tunnel with a private /run (charon's pid file path is compiled in).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import vici
from pyroute2 import NetNS, netns

from vpnlab.errors import RuntimeFailure
from vpnlab.plan.build import HASH_SEED, INTERNET, TABLE_INTO_TUNNEL, Node, Plan
from vpnlab.plan.render import STARTING_GUARD
from vpnlab.model.names import namespace_prefix
from vpnlab.runtime.state import LabState
from vpnlab.waits import wait_until
from vpnlab.runtime import procs

FRR_DAEMONS = ("zebra", "staticd", "bgpd")
AGENT = "agent"     # the node name under which the agent's process is recorded
FRR_DIR = "/usr/lib/frr"
CHARON = "/usr/lib/ipsec/charon"


class NetnsRuntime:
    name = "netns"
    nodes_start_themselves = False      # the engine starts the daemons (containerlab: the nodes)

    def __init__(self, state: LabState):
        self.state = state
        self.prefix = namespace_prefix(state.name)
        self._ipr: dict[str, NetNS] = {}

    # ------------------------------------------------------------ naming & access
    def namespace(self, node: str) -> str:
        return self.prefix + node

    def node_dir(self, node: str) -> Path:
        return self.state.nodes_dir / node

    def ipr(self, node: str) -> NetNS:
        if node not in self._ipr:
            self._ipr[node] = NetNS(self.namespace(node))
        return self._ipr[node]

    def close(self):
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()

    def exec(self, node: str, argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return procs.run(["ip", "netns", "exec", self.namespace(node), *argv], timeout=timeout, **kw)

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        """Argument vector that runs argv inside a node (for interactive use)."""
        return ["ip", "netns", "exec", self.namespace(node), *argv]

    def vtysh(self, node: str, command: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return self.exec(node, ["vtysh", "--vty_socket", str(self.node_dir(node)), "-c", command],
                         timeout=timeout)

    def vici_socket(self, node: str) -> Path:
        return self.node_dir(node) / "run" / "charon.vici"

    # ------------------------------------------------------------ kernel facts
    def kernel_has_esp(self) -> bool:
        return self._works_in_scratch("esp-probe", [
            "ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
            "spi", "0x100", "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"])

    def kernel_has_netem(self) -> bool:
        """netem (delay, jitter) is a kernel option."""
        return self._works_in_scratch("netem-probe", ["tc", "qdisc", "add", "dev", "lo", "root",
                                                      "netem", "delay", "1ms"])

    def _works_in_scratch(self, name: str, argv: list[str]) -> bool:
        """Whether the kernel accepts argv, tried in a scratch namespace (named like the
        lab's, so that down finds it if this process dies here)."""
        scratch = self.namespace(name)
        netns.create(scratch)
        try:
            return procs.run(["ip", "netns", "exec", scratch, *argv]).returncode == 0
        finally:
            netns.remove(scratch)

    # ------------------------------------------------------------ build
    def create(self, plan: Plan):
        """Namespaces, links, addresses, kernel routes and firewall rules."""
        nodes = plan.ordered_nodes()
        self.state.namespaces += [self.namespace(n.name) for n in nodes]
        self.state.save()                     # before creating: down must find them all
        self._make_nodes(nodes)
        for node in nodes:
            self._sysctls(node.name, node_sysctls(node))
            ipr = self.ipr(node.name)
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for iface in node.interfaces:
                if iface.kind == "bridge":
                    ipr.link("add", ifname=iface.name, kind="bridge")
                    # A bridge takes the lowest MAC of its ports unless its own is set:
                    # a port added later (vpnlab attach) or removed would change it, and
                    # neighbours would send to the old MAC until their ARP entry expires.
                    idx = ipr.link_lookup(ifname=iface.name)[0]
                    mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
                    ipr.link("set", index=idx, address=mac)
        for link in plan.links:
            self.ipr(link.a).link("add", ifname=link.a_if, kind="veth",
                                  peer={"ifname": link.b_if, "net_ns_fd": self.namespace(link.b)})
        for node in plan.ordered_nodes():
            self._configure(node)
        firewalled = [n.name for n in nodes if (self.node_dir(n.name) / "nftables.conf").exists()]
        self._each(firewalled, lambda n: self.exec(n, ["nft", "-f", str(self.node_dir(n) / "nftables.conf")],
                                                   check=True))

    def _make_nodes(self, nodes: list[Node]):
        """A node is a named network namespace."""
        for node in nodes:
            netns.create(self.namespace(node.name))

    def _sysctls(self, node: str, values: dict):
        netns.pushns(self.namespace(node))
        try:
            for key, value in values.items():
                Path("/proc/sys", *key.split(".")).write_text(str(value))
        finally:
            netns.popns()

    def _configure(self, node: Node):
        ipr = self.ipr(node.name)
        proxy = {}
        for iface in node.interfaces:
            idx = ipr.link_lookup(ifname=iface.name)[0]
            if iface.master:
                ipr.link("set", index=idx, master=ipr.link_lookup(ifname=iface.master)[0])
            for cidr in iface.addresses:
                addr, plen = cidr.split("/")
                ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
            if iface.mtu:
                ipr.link("set", index=idx, mtu=iface.mtu)
            if iface.mac:
                ipr.link("set", index=idx, address=iface.mac)
            ipr.link("set", index=idx, state="up" if node.link_starts_up(iface) else "down")
            if iface.proxy_arp:
                # answer at once: the kernel delays proxy ARP replies by up to 0.8 s
                proxy[f"net.ipv4.conf.{iface.name}.proxy_arp"] = 1
                proxy[f"net.ipv4.neigh.{iface.name}.proxy_delay"] = 0
        if proxy:
            self._sysctls(node.name, proxy)
        for route in node.routes if not node.standby else ():   # set when it takes over
            self._route(node.name, route.dst, route.via, route.dev, route.table)
        for rule in node.rules:
            ipr.rule("add", iifname=rule.iif, table=rule.table, priority=rule.priority)
        for argv in node.shaping():
            self.tc(node.name, *argv)

    def _route(self, node, dst, via=None, dev=None, table=None):
        ipr = self.ipr(node)
        spec = {"dst": dst, "table": table or 254}
        if via:
            spec["gateway"] = via
        if dev:
            spec["oif"] = ipr.link_lookup(ifname=dev)[0]
        ipr.route("replace", **spec)

    # ------------------------------------------------------------ daemons
    def _record(self, pid: int, node: str, daemon: str):
        """Remembered in the state file at the end of each batch; until then the
        process tag lets down find it."""
        self.state.processes.append({"pid": pid, "node": node, "daemon": daemon})

    def start_frr(self, nodes: list[str], daemons: tuple[str, ...]):
        """Start FRR daemons on routers. Start zebra alone first and wait for its zserv
        socket (wait_zebra): a client that finds no zebra retries only 10 s later."""
        def one(node: str):
            d = self.node_dir(node)
            self._chown_frr(node)
            for daemon in daemons:
                self._start_daemon(node, daemon, [f"{FRR_DIR}/{daemon}", "--vty_socket", str(d),
                                                  "-z", str(d / "zserv.api"), "-i", str(d / f"{daemon}.pid"),
                                                  "-f", "/dev/null", "-u", "frr", "-g", "frr"],
                                   d / f"{daemon}.out")
        self._each(nodes, one)
        self.state.save()

    def _each(self, nodes: list[str], step):
        """step(node) for each node: in turn here, where each step is a fork or a netlink
        call; the docker runtime overlaps them (each command is an API round trip)."""
        for node in nodes:
            step(node)

    def _chown_frr(self, node: str):
        shutil.chown(self.node_dir(node), "frr", "frr")

    def _start_daemon(self, node: str, daemon: str, argv: list[str], log: Path,
                      env: dict | None = None) -> int:
        """A long-running lab process inside a node, recorded by PID."""
        pid = procs.spawn(self.exec_argv(node, argv), self.state.name, log, env=env)
        self._record(pid, node, daemon)
        return pid

    def wait_zebra(self, node: str, budget: float = 15):
        sock = self.node_dir(node) / "zserv.api"
        wait_until(sock.exists, bool, f"zebra's zserv socket of {node}", budget)

    def configure_frr(self, node: str, budget: float = 15):
        d = self.node_dir(node)
        wait_until(lambda: [x for x in FRR_DAEMONS if not (d / f"{x}.vty").exists()],
                   lambda missing: not missing, f"FRR vty sockets of {node}", budget)
        res = self.exec(node, ["vtysh", "--vty_socket", str(d), "--config_dir", str(d), "-b"])
        if res.returncode != 0:
            raise RuntimeFailure(f"{node}: FRR refused its config {d / 'frr.conf'}: "
                                f"{(res.stdout + res.stderr).strip()[-400:]}")

    def start_charons(self, nodes: list[str]):
        """One charon per tunnel end, each with a private /run."""
        def one(node: str):
            d = self.node_dir(node)
            (d / "run").mkdir(exist_ok=True)
            # SWANCTL_DIR: swanctl --load-all finds the node's certificates, keys and CRLs
            self._start_daemon(node, "charon", self._charon_argv(node), d / "charon.out",
                               env={"STRONGSWAN_CONF": str(d / "strongswan.conf"), "SWANCTL_DIR": str(d)})
        self._each(nodes, one)
        self.state.save()

    def _charon_argv(self, node: str) -> list[str]:
        """charon with the node's run folder as its private /run."""
        script = 'mount --bind "$1" /run && exec "$2"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "charon-run",
                str(self.node_dir(node) / "run"), CHARON]

    def start_routers(self, nodes: list[str], budget: float):
        """FRR on routers: zebra first (clients retry it only after 10 s), then the rest,
        then the integrated config."""
        self.start_frr(nodes, ("zebra",))
        self._each(nodes, lambda r: self.wait_zebra(r, budget))
        self.start_frr(nodes, ("staticd", "bgpd"))
        self._each(nodes, lambda r: self.configure_frr(r, budget))

    def start_agent(self):
        """The emulated gateway's own control plane (vpnlab.gateway.agent), in the root namespace:
        it only talks to the lab's daemons through their sockets."""
        argv = [sys.executable, "-m", "vpnlab.gateway.agent", self.state.name]
        pid = procs.spawn(argv, self.state.name, self.state.dir / "agent.log",
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        self._record(pid, AGENT, "agent")
        self.state.save()

    def restart_agent(self):
        """A new agent for a changed plan (an active-standby takeover)."""
        self.stop_daemon(AGENT, "agent", graceful=True)
        self.start_agent()

    def start_tunnel_ends(self, nodes: list[str], budget: float):
        """charon per tunnel end; ready once ipsec0 is routed and its connection is
        loaded. Until its connection is loaded charon answers IKE_SA_INIT with
        NO_PROPOSAL_CHOSEN, after which a peer never retries (keyingtries counts only
        timeouts): IKE is dropped until then, so that the peer's retransmits wait."""
        self._each(nodes, lambda e: self.nft(e, STARTING_GUARD))
        self.start_charons(nodes)

        def ready(e: str):
            self.route_into_tunnel(e, budget)
            wait_until(lambda: self._loaded_connections(e), bool,
                       f"charon of {e} to load its connection (see {self.node_dir(e) / 'charon.log'})",
                       budget)
            self.nft(e, "delete table inet vpnlab_starting\n")
        self._each(nodes, ready)

    def start_p2s_clients(self, nodes: list[str], budget: float):
        """charon of IKEv2 clients, ready once it loaded its connections (it dials only
        when told: vpnlab p2s connect)."""
        self.start_charons(nodes)
        self._each(nodes, lambda n: wait_until(
            lambda: self._loaded_connections(n), bool,
            f"charon of {n} to load its connections (see {self.node_dir(n) / 'charon.log'})", budget))

    def start_openvpn(self, nodes: list[str], budget: float):
        """openvpn on P2S servers (and clients that connect), ready once its management
        socket answers."""
        def one(node: str):
            d = self.node_dir(node)
            with contextlib.suppress(FileNotFoundError):
                (d / "openvpn.mgmt").unlink()      # a killed openvpn leaves it
            self._start_daemon(node, "openvpn", ["openvpn", "--cd", str(d), "--config", str(d / "openvpn.conf")],
                               d / "openvpn.out")
        self._each(nodes, one)
        self.state.save()
        self._each(nodes, lambda n: wait_until(
            lambda: (self.node_dir(n) / "openvpn.mgmt").exists(), bool,
            f"openvpn's management socket in {n} (see {self.node_dir(n) / 'openvpn.out'})", budget))

    def _loaded_connections(self, node: str) -> list[str]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(3)
            sock.connect(str(self.vici_socket(node)))
            return [c.decode() for c in vici.Session(sock).get_conns().get("conns", [])]

    def route_into_tunnel(self, node: str, budget: float = 15):
        """Once charon made ipsec0, send what arrives on the inner veth into it."""
        ipr = self.ipr(node)
        log = self.node_dir(node) / "charon.log"
        wait_until(lambda: ipr.link_lookup(ifname="ipsec0"), bool,
                   f"charon's ipsec0 device in {node} (see {log})", budget)
        idx = ipr.link_lookup(ifname="ipsec0")[0]
        ipr.link("set", index=idx, state="up")
        self._route(node, "0.0.0.0/0", dev="ipsec0", table=TABLE_INTO_TUNNEL)

    # ------------------------------------------------------------ bring your own device
    def attach(self, site: str, netns_name: str, port: str, public_cidr: str,
               routes: list[tuple[str, str]]) -> dict:
        """A veth from the lab's internet bridge into the user's namespace, with the
        site's public address and routes to the lab's public addresses. Deleting the
        internet's end (detach, down) removes the pair."""
        if netns_name not in netns.listnetns():
            raise RuntimeFailure(f"network namespace {netns_name!r} does not exist "
                                 f"(create it with 'ip netns add {netns_name}')")
        if netns_name.startswith(self.prefix):
            raise RuntimeFailure(f"{netns_name!r} is one of the lab's own namespaces")
        inside = f"vl-{site}"[:15]
        inet = self.ipr(INTERNET)
        inet.link("add", ifname=port, kind="veth", peer={"ifname": inside, "net_ns_fd": netns_name})
        try:
            idx = inet.link_lookup(ifname=port)[0]
            inet.link("set", index=idx, master=inet.link_lookup(ifname="br0")[0], state="up")
            with NetNS(netns_name) as ns:
                i = ns.link_lookup(ifname=inside)[0]
                addr, plen = public_cidr.split("/")
                ns.addr("add", index=i, address=addr, prefixlen=int(plen))
                ns.link("set", index=i, state="up")
                for dst, via in routes:
                    ns.route("replace", dst=dst, gateway=via)
        except Exception:
            inet.link("del", ifname=port)
            raise
        self._forget_neighbour(public_cidr.split("/")[0])
        self.state.attached[site] = {"netns": netns_name, "port": port, "interface": inside,
                                     "public_ip": public_cidr.split("/")[0]}
        self.state.save()
        return self.state.attached[site]

    def _forget_neighbour(self, address: str | None):
        """The internet's ARP entry for a site address: a device attached again has a new
        MAC, and the old entry would hold its traffic until it expires."""
        inet = self.ipr(INTERNET)
        with contextlib.suppress(Exception):
            inet.neigh("del", dst=address, ifindex=inet.link_lookup(ifname="br0")[0])

    def detach(self, site: str) -> bool:
        found = self.state.attached.pop(site, None)
        if found:
            with contextlib.suppress(Exception):
                self.ipr(INTERNET).link("del", ifname=found["port"])
            self._forget_neighbour(found.get("public_ip"))
            self.state.save()
        return found is not None

    # ------------------------------------------------------------ faults
    def daemon_pids(self, node: str, daemon: str) -> list[int]:
        """Live PIDs of a node's daemon, as recorded when the lab started it."""
        return [p["pid"] for p in self.state.processes
                if p["node"] == node and p["daemon"] == daemon and procs.alive(p["pid"])
                and procs.carries_tag(p["pid"], self.state.name)]

    def stop_daemon(self, node: str, daemon: str, graceful: bool) -> list[int]:
        """SIGTERM (graceful) or SIGKILL (a crash: no goodbye) a node's daemon; waits
        until it is gone. A stale control socket is removed so a restart is not fooled."""
        pids = self.daemon_pids(node, daemon)
        if graceful:
            survivors = procs.end(pids, self.state.name)
        else:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            survivors = procs.end(pids, self.state.name, grace=0.5)
        if survivors:
            raise RuntimeFailure(f"{node}: {daemon} {survivors} survived SIGKILL")
        # zebra's zserv socket too: a stale one lets wait_zebra pass before the new zebra
        # listens, and staticd and bgpd that find no zebra retry only 10 s later
        stale = {"charon": ("run/charon.vici", "run/charon.pid"), "openvpn": ("openvpn.mgmt",),
                 "zebra": ("zebra.vty", "zebra.pid", "zserv.api")}.get(daemon, (f"{daemon}.vty", f"{daemon}.pid"))
        for name in stale:     # a killed daemon leaves them; charon refuses to start
            with contextlib.suppress(FileNotFoundError):
                (self.node_dir(node) / name).unlink()
        return pids

    def set_link(self, node: str, ifname: str, up: bool):
        ipr = self.ipr(node)
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise RuntimeFailure(f"{node} has no interface {ifname!r}")
        ipr.link("set", index=found[0], state="up" if up else "down")

    def link_is_up(self, node: str, ifname: str) -> bool:
        link = self.ipr(node).get_links(ifname=ifname)[0]
        return link.get_attr("IFLA_OPERSTATE") == "UP"

    def restore_routes(self, node: Node):
        """Kernel routes the runtime set (a link that went down took them away)."""
        for route in node.routes:
            self._route(node.name, route.dst, route.via, route.dev, route.table)

    def nft(self, node: str, ruleset: str):
        res = self.exec(node, ["nft", "-f", "-"], input=ruleset)
        if res.returncode != 0:
            raise RuntimeFailure(f"{node}: nft refused the rules: {res.stderr.strip()}")

    def nft_json(self, node: str, *args: str) -> dict:
        res = self.exec(node, ["nft", "-j", *args])
        return json.loads(res.stdout) if res.returncode == 0 and res.stdout else {}

    def tc(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = self.exec(node, ["tc", *args])
        if check and res.returncode != 0:
            raise RuntimeFailure(f"{node}: tc {' '.join(args)}: {res.stderr.strip()}")
        return res

    # ------------------------------------------------------------ measurement helpers
    def spawn(self, node: str, argv: list[str], log: Path, daemon: str) -> int:
        """A lab-tagged helper process in a node (capture, iperf3 server); recorded so
        that down ends it if the caller does not."""
        pid = self._start_daemon(node, daemon, argv, log)
        self.state.save()
        return pid

    def helper(self, argv: list[str]) -> subprocess.Popen:
        """A short-lived measurement process talking over pipes; tagged, so that down
        ends it if its caller died."""
        return procs.helper(argv, self.state.name)

    def end(self, pids: list[int], grace: float = 3.0) -> list[int]:
        return procs.end(pids, self.state.name, grace)

    # ------------------------------------------------------------ teardown
    def teardown(self) -> list[str]:
        """End the lab's processes (recorded or tagged), then remove its nodes.
        Returns what could not be removed."""
        self.close()
        pids = {p["pid"] for p in self.state.processes} | set(procs.tagged(self.state.name))
        survivors = procs.end(sorted(pids), self.state.name)
        return [f"process {p} survived SIGKILL" for p in survivors] + self._remove_nodes()

    def _remove_nodes(self) -> list[str]:
        """Delete the lab's namespaces."""
        problems = []
        for ns in set(self.state.namespaces) | set(lab_namespaces(self.state.name)):
            try:
                netns.remove(ns)
            except FileNotFoundError:
                pass
            except OSError as err:
                problems.append(f"namespace {ns}: {err}")
        return problems


def node_sysctls(node: Node) -> dict:
    """The node's kernel settings; the flow hash seed only where the kernel has it
    (before 6.11 it has not)."""
    values = node.sysctls()
    if not Path("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists():
        values.pop(HASH_SEED, None)
    return values


def netns_socket(namespace: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket that lives in a namespace: setns applies to the calling thread only, and
    a socket keeps the namespace it was made in."""
    netns.pushns(namespace)
    try:
        return socket.socket(socket.AF_INET, kind)
    finally:
        netns.popns()


def lab_namespaces(lab: str) -> list[str]:
    prefix = namespace_prefix(lab)
    return [ns for ns in netns.listnetns() if ns.startswith(prefix)]


def all_lab_names() -> set[str]:
    """Labs that have namespaces on this machine (whether or not their state survived)."""
    return {ns.split(".")[1] for ns in netns.listnetns()
            if ns.startswith("vpnlab.") and ns.count(".") >= 2}
