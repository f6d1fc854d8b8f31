"""The runtime backend interface: what a node is, running a command in it, starting and
stopping a daemon, and wiring a link.

Every runtime's node is a Linux network namespace (a plain one, or a container's), so
wiring (links, addresses, routes, firewalls) is shared: it goes through pyroute2 into
the namespace. A runtime says only what really differs (munet's container node
overrides one method): how nodes come to be and go (`make_nodes`, `remove_nodes`), how a
command and a daemon run in one (`exec`, `exec_argv`, `start_process`), and a few hooks
with defaults below. Only runtime backends run subprocesses and touch netlink; which
runtime a lab has is asked of the registry (vpnlab.runtime.registry) alone.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import vici
from pyroute2 import NetlinkError, NetNS, NFCTSocket, netns
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from vpnlab.errors import RuntimeFailure
from vpnlab.model.defaults import defaults
from vpnlab.model.names import INTERNET, namespace_prefix
from vpnlab.plan.parts import (
    HASH_SEED,
    Iface,
    Link,
    Node,
    Plan,
    Route,
    Rule,
)
from vpnlab.runtime import daemons, host, procs
from vpnlab.runtime.state import LabState

# Whether a kernel has ESP: it accepts an ESP state (tried in a scratch namespace)
ESP_PROBE = ["ip", "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp",
             "spi", "0x100", "mode", "tunnel", "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"]

class Backend:
    name = ""                 # the registry's name for it (--runtime)

    def __init__(self, state: LabState):
        self.state = state
        self._ipr: dict[str, NetNS] = {}
        self.warnings: list[str] = []

    # ============================================================ what each runtime says
    @classmethod
    def unavailable(cls) -> str | None:
        """Why this runtime cannot run on this machine, or None."""
        return None

    @classmethod
    def lab_names(cls) -> set[str]:
        """Labs that have nodes of this runtime on the machine, state or not."""
        return set()

    @classmethod
    def leftovers(cls, lab: str) -> dict[str, list[str]]:
        """What of a lab's nodes of this runtime is on the machine, by kind."""
        return {}

    def namespace(self, node: str) -> str:
        """The name of a node's network namespace (in /run/netns)."""
        return namespace_prefix(self.state.name) + node

    def make_nodes(self, nodes: list[Node]):
        """Make the nodes, each with a named network namespace and nothing else."""
        raise NotImplementedError

    def remove_nodes(self) -> list[str]:
        """Remove the lab's nodes; what could not be removed."""
        raise NotImplementedError

    def exec(self, node: str, argv: list[str], timeout: float = 30, input: str | None = None,
             check: bool = False) -> subprocess.CompletedProcess:
        """Run a command in a node: text output, TimeoutExpired past timeout."""
        raise NotImplementedError

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        """The argument vector that runs argv inside a node (interactive use)."""
        raise NotImplementedError

    def start_process(self, node: str, argv: list[str], log: Path, env: dict | None = None) -> int:
        """Start a long-running, lab-tagged process in a node; its PID on the host."""
        raise NotImplementedError

    # ------------------------------------------------------------ hooks with defaults
    @classmethod
    def supports(cls, plan: Plan) -> str | None:
        """Why this runtime cannot run a plan, or None."""
        return None

    def prepare(self, plan: Plan, rendered: dict[str, dict[str, str]]):
        """Files the runtime needs beside the rendered configs, before create."""

    def start_daemons(self, plan: Plan, budget: float, progress):
        """Start the lab's daemons in the one start order (vpnlab.runtime.daemons)."""
        for warning in self.warnings:
            progress(f"note: {warning}")
        daemons.start_lab(self, plan, budget, progress)

    def each(self, nodes: list[str], step):
        """step(node) for each node: in turn, where each step is a fork or a netlink call;
        a runtime whose commands are round trips overlaps them."""
        for node in nodes:
            step(node)

    def own_frr_folder(self, node: str):
        """FRR runs as user frr: its folder (vty and zserv sockets) must be frr's."""
        shutil.chown(self.node_dir(node), "frr", "frr")

    def charon_argv(self, node: str) -> list[str]:
        """charon with the node's run folder as its private /run (its pid file and VICI
        socket paths are compiled in)."""
        script = 'mount --bind "$1" /run && exec "$2"'
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "charon-run",
                str(self.node_dir(node) / "run"), defaults()["daemons"]["charon"]]

    def kernel_accepts(self, argv: list[str]) -> bool:
        """Whether the kernel accepts argv, tried in a scratch namespace (named like the
        lab's, so that down finds it if this process dies here)."""
        scratch = self.namespace("kernel-probe")
        netns.create(scratch)
        try:
            return procs.run(["ip", "netns", "exec", scratch, *argv]).returncode == 0
        finally:
            netns.remove(scratch)

    # ============================================================ shared: node access
    def node_dir(self, node: str) -> Path:
        return self.state.nodes_dir / node

    def charon_of(self, node: str) -> str:
        """The node whose charon carries a tunnel end's connection: the end itself, or
        (the kernel data plane) its gateway instance."""
        return self.state.charon_hosts.get(node, [node])[0]

    def connection_of(self, node: str) -> str | None:
        """A tunnel end's connection name where its charon carries others too, else None."""
        return self.state.charon_hosts.get(node, [None, None])[1]

    def vici_socket(self, node: str) -> Path:
        return self.node_dir(self.charon_of(node)) / "run" / "charon.vici"

    def tool_argv(self, node: str, tool: str, args: list[str]) -> list[str]:
        """The command that runs a tool in a node, pointed at that node's own daemons'
        sockets (vpnlab connect); swanctl takes its command first (default --list-sas)."""
        if tool == "swanctl":
            return ["swanctl", *(args or ["--list-sas"]), "--uri", f"unix://{self.vici_socket(node)}"]
        return {"bash": ["bash"], "vtysh": ["vtysh", "--vty_socket", str(self.node_dir(node))]}[tool] + args

    @contextlib.contextmanager
    def vici(self, node: str, timeout: float = 3):
        """A VICI session with the node's charon (the one place one is opened)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.vici_socket(node)))
            yield vici.Session(sock)

    def vty(self, node: str, daemon: str, command: str, timeout: float = 10) -> str:
        """One command to an FRR daemon on its vty socket, as vtysh sends it (the command
        and a NUL; the answer ends in three NULs and the command's status), without
        starting a vtysh: the agent asks every second, and a vtysh costs 40 ms of CPU
        where this costs 0.1 ms. FRR ships no Python client (its tools run vtysh).
        OSError when the daemon does not answer; RuntimeFailure when it refuses."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.node_dir(node) / f"{daemon}.vty"))
            sock.sendall(command.encode() + b"\0")
            answer = bytearray()
            while len(answer) < 4 or answer[-4:-1] != b"\0\0\0":
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError(f"{node}: {daemon} closed its vty before answering {command!r}")
                answer += chunk
        if answer[-1] != 0:
            raise RuntimeFailure(f"{node}: {daemon}: {command!r} failed: {answer[:-4].decode(errors='replace').strip()}")
        return answer[:-4].decode()

    def vtysh(self, node: str, command: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return self.exec(node, ["vtysh", "--vty_socket", str(self.node_dir(node)), "-c", command],
                         timeout=timeout)

    def vtysh_config(self, node: str, lines: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
        """Configuration lines in one vtysh session (each -c keeps the last one's context)."""
        argv = ["vtysh", "--vty_socket", str(self.node_dir(node))]
        for line in lines:
            argv += ["-c", line]
        return self.exec(node, argv, timeout=timeout)

    def ipr(self, node: str) -> NetNS:
        if node not in self._ipr:
            self._ipr[node] = NetNS(self.namespace(node))
        return self._ipr[node]

    def close(self):
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()

    def kernel_has_esp(self) -> bool:
        return self.kernel_accepts(ESP_PROBE)

    def kernel_has_netem(self) -> bool:
        """netem (delay, jitter) is a kernel option."""
        return self.kernel_accepts(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])

    # ============================================================ shared: wiring
    def create(self, plan: Plan):
        """Nodes, links, addresses, kernel routes and firewall rules; room for their
        neighbours in the kernel's one neighbour table."""
        self.make_room(plan)
        self.add_nodes(plan.ordered_nodes(), plan.links, [])

    def make_room(self, plan: Plan):
        raised = host.neighbour_room(len(plan.links))
        if raised:
            self.warnings.append(raised)
        if any(n.nat_udp_timeout for n in plan.nodes.values()):
            host.conntrack_loaded()

    def add_nodes(self, nodes: list[Node], links: list[Link], ends: list[tuple[Node, list[Iface]]]):
        """New nodes, wired as a whole (addresses, routes, rules, firewall), and the links
        given; ends: running nodes with the interfaces those links add to them,
        configured alone."""
        self.state.namespaces += [self.namespace(n.name) for n in nodes]
        self.state.save()                     # before creating: down must find them all
        self.make_nodes(nodes)
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
                elif iface.kind == "xfrm":      # the kernel data plane's tunnel interface
                    self._add_xfrm(node.name, iface)
        for link in links:
            self.ipr(link.a).link("add", ifname=link.a_if, kind="veth",
                                  peer={"ifname": link.b_if, "net_ns_fd": self.namespace(link.b)})
        for node in nodes:
            self._configure(node)
        for node, ifaces in ends:
            self._configure_interfaces(node.name, ifaces, node.link_starts_up)
        firewalled = [n.name for n in nodes if (self.node_dir(n.name) / "nftables.conf").exists()]
        self.each(firewalled, lambda n: self.nft(n, (self.node_dir(n) / "nftables.conf").read_text()))

    def _add_xfrm(self, node: str, iface: Iface):
        """An XFRM interface; made_in: made in that node's namespace, where the SAs it
        uses are, and moved into this one (the kernel looks its SAs up where it was made)."""
        if not iface.made_in:
            self.ipr(node).link("add", ifname=iface.name, kind="xfrm", xfrm_if_id=iface.if_id)
            return
        there = self.ipr(iface.made_in)
        scratch = f"x{iface.if_id}"     # a name free in the instance (its own are t<j>, t<j>u)
        there.link("add", ifname=scratch, kind="xfrm", xfrm_if_id=iface.if_id)
        there.link("set", index=there.link_lookup(ifname=scratch)[0], net_ns_fd=self.namespace(node))
        ipr = self.ipr(node)
        ipr.link("set", index=ipr.link_lookup(ifname=scratch)[0], ifname=iface.name)

    def remove_node(self, node: str) -> list[str]:
        """One node gone from a running lab: its daemons ended (by PID), then the node
        (its links go with it). Returns what could not be removed."""
        if self.namespace(node) in netns.listnetns():     # not a node an interrupted apply never made
            self._unlink_all(node)
        if node in self._ipr:
            with contextlib.suppress(Exception):
                self._ipr.pop(node).close()
        mine = [p for p in self.state.processes if p["node"] == node]
        survivors = procs.end([p["pid"] for p in mine], self.state.name)
        for daemon in {p["daemon"] for p in mine}:
            self._forget_sockets(node, daemon)
        self.state.processes = [p for p in self.state.processes if p["node"] != node]
        problems = [f"process {p} survived SIGKILL" for p in survivors] + self.discard_node(node)
        self.state.namespaces = [ns for ns in self.state.namespaces if ns != self.namespace(node)]
        self.state.save()
        return problems

    def _unlink_all(self, node: str):
        """Delete the node's veths now: a namespace that goes takes them with it only
        later (the kernel cleans namespaces up in the background), and a node made again
        at once would find its peers' interface names taken."""
        ipr = self.ipr(node)
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                with _unless(errno.ENODEV):
                    ipr.link("del", index=link["index"])

    def discard_node(self, node: str) -> list[str]:
        """Remove one node of a running lab (its namespace; an adapter's own node too)."""
        try:
            netns.remove(self.namespace(node))
        except FileNotFoundError:
            pass
        except OSError as err:
            return [f"namespace {self.namespace(node)}: {err}"]
        return []

    @classmethod
    def cannot_change_nodes(cls) -> str | None:
        """Why this runtime cannot add or remove nodes of a running lab, or None."""
        return None

    @contextlib.contextmanager
    def _conntrack(self, node: str):
        """The node's conntrack table (pyroute2's NFCTSocket, opened inside its namespace)."""
        netns.pushns(self.namespace(node))
        try:
            ct = NFCTSocket()
            try:
                yield ct
            finally:
                ct.close()
        finally:
            netns.popns()

    def flush_xfrm(self, node: str):
        """Delete the kernel SAs and policies (the kernel data plane) that a tunnel end's
        charon held, where it held them, as libipsec's went with its process."""
        for what in ("state", "policy"):
            self.exec(self.charon_of(node), ["ip", "xfrm", what, "flush"], check=True)

    def flush_conntrack(self, node: str) -> int:
        """Forget every flow the node's netfilter tracks, NAT mappings with them (a
        router that reboots); returns how many it held."""
        with self._conntrack(node) as ct:
            held = ct.count()
            ct.flush()
        return held

    def forget_untranslated_ike(self, node: str) -> int:
        """Delete the IKE and ESP-in-UDP flows (UDP 500, 4500) the node tracks without
        NAT. NAT is decided on a flow's first packet: a peer's packet that arrived before
        the rule translating it (a site's new public IP, during an apply) leaves such an
        entry, and every later packet of that flow, retransmits included, follows it past
        the new rule for as long as it keeps coming. Returns how many were deleted."""
        with self._conntrack(node) as ct:
            stale = [orig for orig, reply in map(_tuples, ct.dump())
                     if orig and reply and orig[2] == socket.IPPROTO_UDP and orig[4] in (500, 4500)
                     and reply == (orig[1], orig[0], orig[2], orig[4], orig[3])]
            for saddr, daddr, proto, sport, dport in stale:
                with contextlib.suppress(NetlinkError):         # gone meanwhile
                    ct.entry("del", tuple_orig=NFCTAttrTuple(saddr=saddr, daddr=daddr, proto=proto,
                                                              sport=sport, dport=dport))
        return len(stale)

    def _sysctls(self, node: str, values: dict):
        netns.pushns(self.namespace(node))
        try:
            for key, value in values.items():
                Path("/proc/sys", *key.split(".")).write_text(str(value))
        finally:
            netns.popns()

    def _configure(self, node: Node):
        ipr = self.ipr(node.name)
        self._configure_interfaces(node.name, node.interfaces, node.link_starts_up)
        for route in node.routes if not node.standby else ():   # set when it takes over
            self.set_route(node.name, route)
        if node.local_priority:      # after the rules that route a peer's packets onward
            ipr.rule("add", table=255, priority=node.local_priority)
            ipr.rule("del", table=255, priority=0)
        for rule in node.rules:
            ipr.rule("add", **_rule_spec(rule))
        for argv in node.shaping():
            self.tc(node.name, *argv)

    def _configure_interfaces(self, node: str, interfaces: list[Iface], up):
        """Masters, addresses, MTU, MAC, link state and proxy ARP; up: whether a link
        starts up (a bool, or a function of the interface)."""
        ipr = self.ipr(node)
        proxy = {}
        for iface in interfaces:
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
            ipr.link("set", index=idx, state="up" if (up(iface) if callable(up) else up) else "down")
            if iface.proxy_arp:
                # answer at once: the kernel delays proxy ARP replies by up to 0.8 s
                proxy[f"net.ipv4.conf.{iface.name}.proxy_arp"] = 1
                proxy[f"net.ipv4.neigh.{iface.name}.proxy_delay"] = 0
        if proxy:
            self._sysctls(node, proxy)

    # ------------------------------------------------------------ a running node changed
    # (vpnlab.change): each step may run again after an interrupted apply
    def set_address(self, node: str, ifname: str, cidr: str, present: bool):
        ipr = self.ipr(node)
        addr, plen = cidr.split("/")
        with _unless(errno.EEXIST if present else errno.EADDRNOTAVAIL):
            ipr.addr("add" if present else "del", index=ipr.link_lookup(ifname=ifname)[0],
                     address=addr, prefixlen=int(plen))

    def add_bridge(self, node: str, iface: Iface):
        ipr = self.ipr(node)
        if not ipr.link_lookup(ifname=iface.name):
            ipr.link("add", ifname=iface.name, kind="bridge")
        idx = ipr.link_lookup(ifname=iface.name)[0]
        for cidr in iface.addresses:
            self.set_address(node, iface.name, cidr, True)
        ipr.link("set", index=idx, state="up")

    def set_mac(self, node: str, ifname: str, mac: str | None):
        """A MAC given (an active-standby pair's, which moves with the role), or a fresh
        one of the link's own."""
        ipr = self.ipr(node)
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0],
                 address=mac or "02:%02x:%02x:%02x:%02x:%02x" % tuple(os.urandom(5)))

    def remove_link(self, node: str, ifname: str):
        ipr = self.ipr(node)
        for idx in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=idx)

    def remove_route(self, node: str, route: Route):
        with _unless(errno.ESRCH):
            self.ipr(node).route("del", dst=route.dst, table=route.table or 254)

    def set_rule(self, node: str, rule: Rule, present: bool):
        with _unless(errno.EEXIST if present else errno.ENOENT):
            self.ipr(node).rule("add" if present else "del", **_rule_spec(rule))

    def set_sysctls(self, node: str, values: dict):
        self._sysctls(node, values)

    def frr_reload(self, node: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """FRR's own frr-reload.py: the running config brought to the node's frr.conf by
        the differences alone (a session that did not change stays up)."""
        d = str(self.node_dir(node))
        return self.exec(node, ["/usr/lib/frr/frr-reload.py", "--reload", "--stdout", "--vty_socket", d,
                                "--confdir", d, "--rundir", d, "--bindir", "/usr/bin", f"{d}/frr.conf"],
                         timeout=timeout)

    def swanctl_load(self, node: str, settings: bool = False, timeout: float = 30,
                     clear: bool = False) -> subprocess.CompletedProcess:
        """strongSwan's own VICI client loads the node's swanctl.conf again (connections
        and secrets; what the file no longer has is unloaded); with settings, charon
        reads strongswan.conf again first; with clear, the certificates, CAs and CRLs
        loaded before are dropped first (a root no longer trusted)."""
        d = self.node_dir(node)
        uri = ["--uri", f"unix://{self.vici_socket(node)}"]
        env = ["env", f"SWANCTL_DIR={d}", "swanctl"]
        if settings:
            res = self.exec(node, [*env, "--reload-settings", *uri], timeout=timeout)
            if res.returncode != 0:
                return res
        return self.exec(node, [*env, "--load-all", "--noprompt", *(["--clear"] if clear else []),
                                "--file", str(d / "swanctl.conf"), *uri], timeout=timeout)

    def route(self, node, dst, via=None, dev=None, table=None, onlink: bool = False):
        ipr = self.ipr(node)
        spec = {"dst": dst, "table": table or 254}
        if onlink:
            spec["flags"] = 4     # RTNH_F_ONLINK
        if via:
            spec["gateway"] = via
        if dev:
            spec["oif"] = ipr.link_lookup(ifname=dev)[0]
        ipr.route("replace", **spec)

    def set_route(self, node: str, route: Route):
        if route.blackhole:
            self.ipr(node).route("replace", dst=route.dst, table=route.table or 254, type="blackhole")
        elif route.nexthops:
            self.ipr(node).route("replace", dst=route.dst, table=route.table or 254,
                                 multipath=[{"gateway": hop} for hop in route.nexthops])
        else:
            self.route(node, route.dst, route.via, route.dev, route.table, route.onlink)

    def restore_routes(self, node: Node):
        """Kernel routes the runtime set (a link that went down took them away)."""
        for route in node.routes:
            self.set_route(node.name, route)

    def set_link(self, node: str, ifname: str, up: bool):
        ipr = self.ipr(node)
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise RuntimeFailure(f"{node} has no interface {ifname!r}")
        ipr.link("set", index=found[0], state="up" if up else "down")

    def link_is_up(self, node: str, ifname: str) -> bool:
        link = self.ipr(node).get_links(ifname=ifname)[0]
        return link.get_attr("IFLA_OPERSTATE") == "UP"

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

    # ============================================================ shared: daemons by PID
    def start_daemon(self, node: str, daemon: str, argv: list[str], log: Path,
                     env: dict | None = None) -> int:
        """A daemon in a node, recorded by PID: in the state file at the end of each
        batch (save_processes); until then its process tag lets down find it."""
        pid = self.start_process(node, argv, log, env)
        self.state.processes.append({"pid": pid, "node": node, "daemon": daemon})
        return pid

    def save_processes(self):
        self.state.save()

    def daemon_pids(self, node: str, daemon: str) -> list[int]:
        """Live PIDs of a node's daemon, as recorded when the lab started it (a tunnel
        end's charon: the one carrying its connection)."""
        node = self.charon_of(node) if daemon == "charon" else node
        return [p["pid"] for p in self.state.processes
                if p["node"] == node and p["daemon"] == daemon and procs.alive(p["pid"])
                and procs.carries_tag(p["pid"], self.state.name)]

    def stop_daemon(self, node: str, daemon: str, graceful: bool) -> list[int]:
        """SIGTERM (graceful) or SIGKILL (a crash: no goodbye) a node's daemon; waits
        until it is gone. A stale control socket is removed so a restart is not fooled.
        A tunnel end's charon is the one carrying its connection: a gateway instance's
        carries all its tunnels, which go with it."""
        node = self.charon_of(node) if daemon == "charon" else node
        pids = self.daemon_pids(node, daemon)
        if graceful:
            survivors = procs.end(pids, self.state.name)
        else:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            survivors = procs.end(pids, self.state.name, grace=0.5)
        if survivors:
            raise RuntimeFailure(f"{node}: {daemon} {survivors} survived SIGKILL")
        self._forget_sockets(node, daemon)
        return pids

    def _forget_sockets(self, node: str, daemon: str):
        """A killed daemon leaves its control socket and pid file: charon refuses to
        start, and a stale vty socket lets the wait for a new daemon pass before it
        listens (its config then never reaches it). zebra's zserv socket too: staticd
        and bgpd that find no zebra retry only 10 s later."""
        stale = {"charon": ("run/charon.vici", "run/charon.pid"), "openvpn": ("openvpn.mgmt",),
                 "zebra": ("zebra.vty", "zebra.pid", "zserv.api")}.get(daemon, (f"{daemon}.vty", f"{daemon}.pid"))
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                (self.node_dir(node) / name).unlink()

    # ------------------------------------------------------------ measurement helpers
    def spawn(self, node: str, argv: list[str], log: Path, daemon: str) -> int:
        """A lab-tagged helper process in a node (capture, iperf3 server); recorded so
        that down ends it if the caller does not."""
        pid = self.start_daemon(node, daemon, argv, log)
        self.save_processes()
        return pid

    def helper(self, argv: list[str]) -> subprocess.Popen:
        """A short-lived measurement process talking over pipes; tagged, so that down
        ends it if its caller died."""
        return procs.helper(argv, self.state.name)

    def end(self, pids: list[int], grace: float = 3.0) -> list[int]:
        return procs.end(pids, self.state.name, grace)

    # ============================================================ shared: your own device
    def attach(self, site: str, netns_name: str, port: str, public_cidr: str,
               routes: list[tuple[str, str]]) -> dict:
        """A veth from the lab's internet bridge into the user's namespace, with the
        site's public address and routes to the lab's public addresses. Deleting the
        internet's end (detach, down) removes the pair."""
        if netns_name not in netns.listnetns():
            raise RuntimeFailure(f"network namespace {netns_name!r} does not exist "
                                 f"(create it with 'ip netns add {netns_name}')")
        if netns_name.startswith(namespace_prefix(self.state.name)):
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

    # ============================================================ shared: teardown
    def teardown(self) -> list[str]:
        """End the lab's processes (recorded or tagged), then remove its nodes.
        Returns what could not be removed."""
        self.close()
        pids = {p["pid"] for p in self.state.processes} | set(procs.tagged(self.state.name))
        survivors = procs.end(sorted(pids), self.state.name)
        problems = [f"process {p} survived SIGKILL" for p in survivors] + self.remove_nodes()
        host.restore_when_idle(self.state.name)
        return problems

    def remove_namespaces(self) -> list[str]:
        """Delete the lab's named namespaces (a container's name goes with it)."""
        problems = []
        for ns in set(self.state.namespaces) | set(lab_namespaces(self.state.name)):
            try:
                netns.remove(ns)
            except FileNotFoundError:
                pass
            except OSError as err:
                problems.append(f"namespace {ns}: {err}")
        return problems


def _tuples(entry) -> tuple:
    """A conntrack entry's original and reply direction, each (saddr, daddr, proto,
    sport, dport), or None where the entry has no such tuple."""
    def one(t):
        if t is None or t.get_attr("CTA_TUPLE_IP") is None or t.get_attr("CTA_TUPLE_PROTO") is None:
            return None
        ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        return (ip.get_attr("CTA_IP_V4_SRC"), ip.get_attr("CTA_IP_V4_DST"), proto.get_attr("CTA_PROTO_NUM"),
                proto.get_attr("CTA_PROTO_SRC_PORT"), proto.get_attr("CTA_PROTO_DST_PORT"))
    return one(entry.get_attr("CTA_TUPLE_ORIG")), one(entry.get_attr("CTA_TUPLE_REPLY"))


def node_sysctls(node: Node) -> dict:
    """The node's kernel settings; the flow hash seed only where the kernel has it
    (before 6.11 it has not)."""
    values = node.sysctls()
    if not Path("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists():
        values.pop(HASH_SEED, None)
    return values


def lab_namespaces(lab: str) -> list[str]:
    prefix = namespace_prefix(lab)
    return [ns for ns in netns.listnetns() if ns.startswith(prefix)]


def netns_socket(namespace: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket that lives in a namespace: setns applies to the calling thread only, and
    a socket keeps the namespace it was made in."""
    netns.pushns(namespace)
    try:
        return socket.socket(socket.AF_INET, kind)
    finally:
        netns.popns()


def _rule_spec(rule: Rule) -> dict:
    spec = {"priority": rule.priority}
    if rule.iif:
        spec["iifname"] = rule.iif
    if rule.src:
        spec |= {"src": rule.src, "src_len": 32}
    if rule.dst:
        dst, length = rule.dst.split("/")
        spec |= {"dst": dst, "dst_len": int(length)}
    if rule.fwmark is not None:
        spec["fwmark"] = rule.fwmark
    if rule.unreachable:
        spec["action"] = "FR_ACT_UNREACHABLE"
    else:
        spec["table"] = rule.table
    if rule.suppress_prefixlength is not None:
        spec["FRA_SUPPRESS_PREFIXLEN"] = rule.suppress_prefixlength
    return spec


@contextlib.contextmanager
def _unless(code: int):
    """A netlink request whose one error code means it is already so."""
    try:
        yield
    except NetlinkError as err:
        if err.code != code:
            raise
