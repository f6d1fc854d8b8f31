"""The emulated gateway's own control plane: what Azure does by itself, beside the daemons.

One process per lab (`python -m vpnlab.gateway.agent LAB`), started by `up`, tagged, ended by `down`:
- connection modes [1.3]: Default and InitiatorOnly dial the device and redial every
  `azure.redial_seconds` while a tunnel is down; ResponderOnly never dials;
- Azure's own CHILD_SA rekeys offer Azure's initiator list [3.1] (control.azure_rekey);
  IKEv1 main-mode SAs are closed and dialed again at their lifetime [3.3];
- when both ends dialed at once, the gateway's duplicate IKE SA (or CHILD SA, when
  strongSwan put it into the device's IKE SA) is deleted;
- policy-based tunnels come up on traffic and go down when idle [1.1];
- the diagnostic log [7.5]: tunnel, BGP and IKE events, in Azure's shapes, appended as
  JSON lines to the lab's events file (vpnlab.gateway.events reads it);
- point-to-site servers (lab.p2s_watch): users' sessions and refusals, the SKU's count;
- BGP route translation for NAT rules (vpnlab.gateway.nat_routes);
- Azure Monitor (monitor): every sample_seconds, the metrics into the lab's time series
  (series), the OpenMetrics endpoint (openmetrics) and the metric alert rules (alerts).
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from vpnlab.gateway import (
    alerts,
    control,
    events,
    live,
    metrics,
    nat_routes,
    openmetrics,
    p2s_watch,
    series,
)
from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.plan.parts import Tunnel, dial_children, initiator_child
from vpnlab.runtime.state import load_state
from vpnlab.session import Lab

POLL = 1.0          # seconds between looks at each tunnel end and BGP speaker
STOP_BUDGET = 2.5   # seconds its duties get to end their round when the agent stops (within procs.end's grace)
# an IKE message on the NAT-T port, and the peer's address and port it came from
_RECEIVED = re.compile(r"received packet: from ([0-9.]+)\[(\d+)\] to [0-9.]+\[4500\]")


class Agent:
    def __init__(self, lab: Lab):
        self.lab, self.rt, self.plan = lab, lab.backend, lab.plan
        self.log = events.Writer(lab.state.dir)
        self.stop = threading.Event()
        self.redial = defaults()["azure"]["redial_seconds"]
        self.p2s_users: dict = {}     # (P2S server node, protocol) -> its Sessions (p2s_watch)
        self.peer_ports: dict[str, int] = {}   # tunnel -> the port its peer's NAT sends from now
        # what the duties listed last (monotonic time, answer), for the metrics of the same second
        self.listed_sas: dict[str, tuple[float, list]] = {}      # tunnel -> its Azure end's IKE SAs
        self.listed_peers: dict[str, tuple[float, dict]] = {}    # instance -> its BGP peers
        self.say = say

    def run(self):
        jobs = [("tunnels: dialing and rekeys", self.tunnel_ends, ())]
        jobs += [(f"{t.name}: diagnostic log", self.ike_log, (t,)) for t in self.plan.tunnels]
        jobs += [(f"{t.name}: on demand", self.on_demand, (t,)) for t in self.plan.tunnels if t.policy_based]
        jobs.append(("BGP sessions", self.bgp_speakers, ()))
        if self.lab.state.sample_seconds > 0:
            jobs.append(("metrics and alerts", self.monitor, ()))
        jobs += [(f"{node.name}: NAT route translation", nat_routes.follow, (self, node.name, entry, self.stop, POLL))
                 for node in self.plan.nodes.values() if node.frr for entry in node.frr.nat_learned]
        jobs += [(f"{e.node}: {e.protocol} sessions",
                  p2s_watch.ikev2_server if e.protocol == "IkeV2" else p2s_watch.openvpn_server, (self, e, POLL))
                 for e in self.plan.p2s_ends]
        threads = [threading.Thread(target=self.supervised, args=job, daemon=True) for job in jobs]
        for th in threads:
            th.start()
        self.stop.wait()
        # each loop looks at stop at least every POLL, or when a VICI or vtysh call it
        # is in returns: joined, no thread runs while the interpreter shuts down
        deadline = time.monotonic() + STOP_BUDGET
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))

    def supervised(self, what: str, loop, args: tuple):
        """One of the agent's duties, run until the agent stops. An error none of its
        rounds expected is said in one line, with where it was raised, and the duty
        starts again: one unexpected answer must not end what Azure keeps doing (the
        redials, the diagnostic log)."""
        while not self.stop.is_set():
            try:
                loop(*args)
                return
            except Exception as err:  # noqa: BLE001 - said, and the duty goes on
                frame = traceback.extract_tb(err.__traceback__)[-1]
                say(f"ERROR {what}: unexpected {type(err).__name__}: {err} "
                    f"(at {Path(frame.filename).name}:{frame.lineno} in {frame.name}); starting it again")
                self.stop.wait(POLL)

    # ------------------------------------------------------------ dialing and rekeys
    def tunnel_ends(self):
        """Every POLL, each tunnel's Azure end in turn: dial when the mode says Azure
        dials and no IKE SA exists for redial seconds; settle duplicates; rekey CHILD SAs
        Azure answered for, at Azure's lifetime, with Azure's offers. One thread for all
        tunnels: a thread each cost twice the CPU (measured on 60 tunnels: 5.3 % of a
        core against 2.6 %), and a round of listings takes milliseconds. An action that
        waits (a rekey, a reconnect: a second or two, ten at worst) holds the round up:
        the other tunnels are looked at when it is done."""
        seen = {t.name: {"down_since": None, "last_dial": None, "duplicated_since": None,
                         "failed_rekeys": set()} for t in self.plan.tunnels}
        beat = time.monotonic()
        while not self.stop.wait(max(0.0, beat - time.monotonic())):
            beat = max(beat + POLL, time.monotonic())
            for t in self.plan.tunnels:
                if self.stop.is_set():
                    return
                self._tunnel_round(t, seen[t.name])

    def _tunnel_round(self, t: Tunnel, seen: dict):
        try:
            sas = live.ike_sas(self.rt, t.azure_end)
        except OSError:        # charon is down (a fault): nothing to do until it is back
            self.listed_sas[t.name] = (time.monotonic(), [])
            return
        except Exception as err:  # noqa: BLE001 - one bad answer must not end the round
            say(f"{t.name}: listing SAs failed: {err!r}")
            return
        now = time.monotonic()
        self.listed_sas[t.name] = (now, sas)
        self._redial(t, sas, seen, now)
        self._settle_duplicates(t, sas, seen, now)
        self._rekey_answered(t, sas, seen["failed_rekeys"])
        self._main_mode_rekey(t, sas)
        self._follow_nat(t, sas)

    def _follow_nat(self, t: Tunnel, sas: list[dict]):
        """A device behind NAT whose mapping changed (the NAT rebooted) sends from a new
        port. Azure follows an authenticated peer to its new port (RFC 7296 2.23;
        Azure's timing is UNCONFIRMED); libipsec cannot move an SA, so the lab closes the
        gateway's SA, as if its packets to the old port were lost, and the device, which
        must dial behind NAT [1.3], dials again when its DPD finds the SA gone."""
        port = self.peer_ports.get(t.name)
        established = [sa for sa in sas if sa["state"] == b"ESTABLISHED"]
        if port is None or not established or names.isp_router(t.device) not in self.plan.nodes:
            return
        stale = [sa for sa in established if int(sa.get("remote-port", 0)) != port]
        if len(stale) == len(established):
            self.peer_ports.pop(t.name, None)
            self.log.pinned[t.name] = f"the peer's NAT mapping moved to port {port}"
            say(f"{t.name}: the peer now sends from port {port}: closing the SA on the old one")
            for sa in stale:
                control.ike_terminate(self.rt, t.azure_end, t.connection, force=True,
                                      ike_id=sa["uniqueid"].decode())

    def _redial(self, t: Tunnel, sas: list[dict], seen: dict, now: float):
        if sas or t.policy_based or t.connection_mode == "ResponderOnly":
            seen["down_since"] = None     # policy-based: on demand (on_demand), not redialed
            return
        seen["down_since"] = seen["down_since"] or now
        last = seen["last_dial"]
        if now - seen["down_since"] >= self.redial and (last is None or now - last >= self.redial):
            seen["last_dial"] = now
            say(f"{t.name}: no IKE SA for {now - seen['down_since']:.0f} s: dialing {t.remote_ip}")
            self._dial(t)

    def _settle_duplicates(self, t: Tunnel, sas: list[dict], seen: dict, now: float):
        """Duplicates seen on two polls in a row go (a rekey's overlap never lasts that
        long: its old SA is no longer INSTALLED)."""
        extra = _duplicates(sas)
        children = [] if extra else _duplicate_children(sas, t.connection)
        if not (extra or children):
            seen["duplicated_since"] = None
        elif seen["duplicated_since"] is None:
            seen["duplicated_since"] = now
        elif now - seen["duplicated_since"] >= 0.9 * POLL:     # the next round (rounds drift by milliseconds)
            self._drop_duplicates(t, extra, children)
            seen["duplicated_since"] = None

    def _main_mode_rekey(self, t: Tunnel, sas: list[dict]):
        charon = self.plan.nodes[t.azure_end].charon
        if charon["version"] != 1:
            return
        lifetime = charon["policy"]["ike_lifetime"]
        if any(ike["state"] == b"ESTABLISHED" and int(ike.get("established", 0)) >= lifetime for ike in sas):
            say(f"{t.name}: IKEv1 main-mode SA reached {lifetime} s: closing it and dialing again")
            try:
                control.ikev1_reconnect(self.rt, t.azure_end, t.connection, dial_children(charon))
            except Exception as err:  # noqa: BLE001
                say(f"{t.name}: IKEv1 reconnect failed: {err!r}")

    def _rekey_answered(self, t: Tunnel, sas: list[dict], failed: set):
        lifetime = self._child_lifetime(t)
        for child in _answered_children(sas, t.connection):
            due = int(child.get("install-time", 0)) >= lifetime["seconds"] or _bytes(child) >= lifetime["bytes"]
            if not due or child["uniqueid"] in failed:
                continue
            say(f"{t.name}: CHILD SA {child['uniqueid'].decode()} reached Azure's lifetime: rekeying")
            try:
                if not control.azure_rekey(self.rt, t.azure_end, t.connection):
                    failed.add(child["uniqueid"])
                    say(f"{t.name}: the device refused Azure's rekey offers")
            except Exception as err:  # noqa: BLE001
                say(f"{t.name}: rekey failed: {err!r}")

    def _drop_duplicates(self, t: Tunnel, ikes: list[dict], children: list[dict]):
        """Both ends dialed at once: two IKE SAs came up, or strongSwan put the gateway's
        CHILD SA into the device's IKE SA. The gateway deletes its own (the lab's choice;
        how Azure settles it is not documented)."""
        for kind, sa in [("IKE SA", s) for s in ikes] + [("CHILD SA", s) for s in children]:
            say(f"{t.name}: a second {kind} (both ends dialed): deleting the gateway's own "
                f"#{sa['uniqueid'].decode()}")
            try:
                if kind == "IKE SA":
                    control.ike_terminate(self.rt, t.azure_end, t.connection, ike_id=sa["uniqueid"].decode())
                else:
                    control.child_terminate(self.rt, t.azure_end, sa["uniqueid"])
            except Exception as err:  # noqa: BLE001 - the next round sees it again
                say(f"{t.name}: deleting the duplicate {kind} failed: {err!r}")

    def _dial(self, t: Tunnel):
        try:
            control.dial(self.rt, self.plan, t)
        except Exception as err:  # noqa: BLE001 - the next round dials again
            say(f"{t.name}: dialing failed: {err!r}")

    def _child_lifetime(self, t: Tunnel) -> dict:
        policy = self.plan.nodes[t.azure_end].charon["policy"]
        return {"seconds": policy["child_lifetime"], "bytes": policy["child_kilobytes"] * 1024}

    # ------------------------------------------------------------ policy-based tunnels
    def on_demand(self, t: Tunnel):
        """A policy-based tunnel comes up when traffic flows and the gateway tears it
        down after the idle time [1.1]. libipsec raises no acquire for trap policies, so
        the agent watches the packets routed into each end's tunnel (an nftables counter)
        and starts that end's children when some arrive while none is installed."""
        ends = [e for e in (t.azure_end, t.onprem_end) if e]
        seen: dict[str, int] = {}
        idle = self.plan.timers["policy_based_idle"]
        idle_since = last_bytes = None
        while not self.stop.wait(POLL):
            try:
                for end in ends:
                    count = self._to_tunnel(end)
                    grew = end in seen and count > seen[end]
                    seen[end] = count
                    if grew and not live.child_installed(live.ike_sas(self.rt, end)):
                        say(f"{end}: traffic for the tunnel and no SA: starting it")
                        for child in self.plan.nodes[end].charon["children"]:
                            control.initiate(self.rt, end, child["name"], timeout=-1)
                sas = live.ike_sas(self.rt, t.azure_end)
                if not live.child_installed(sas):
                    idle_since = last_bytes = None
                    continue
                moved = sum(_bytes(c) for ike in sas for c in ike.get("child-sas", {}).values())
                if moved != last_bytes:
                    idle_since, last_bytes = time.monotonic(), moved
                elif time.monotonic() - idle_since >= idle:
                    say(f"{t.name}: idle for {idle} s: tearing the tunnel down")
                    self.log.pinned[t.name] = f"idle for {idle} s (policy-based gateway)"
                    control.ike_terminate(self.rt, t.azure_end, t.connection)
            except Exception as err:  # noqa: BLE001 - the next round tries again
                say(f"{t.name}: on-demand round failed: {err!r}")

    def _to_tunnel(self, end: str) -> int:
        data = self.rt.nft_json(end, "list", "counter", "inet", "vpnlab_ts", "to_tunnel")
        return next((x["counter"]["packets"] for x in data.get("nftables", []) if "counter" in x), 0)

    # ------------------------------------------------------------ Azure Monitor
    def monitor(self):
        """Sample every metric on a steady beat (a slow round skips beats, it does not
        crowd them), store, export, evaluate the alert rules."""
        cfg = defaults()["monitoring"]
        every = self.lab.state.sample_seconds
        store = series.Store(self.lab.state.dir, cfg["retention_seconds"])
        exporter = openmetrics.Exporter(self.lab.state.dir, cfg["openmetrics_address"])
        rules = alerts.Evaluator(self.lab.name, self.lab.state.dir, self.lab.topology.metric_alerts)
        sampler = series.Sampler()
        built = None       # when the lab first converged: alert rules look at samples from then
        #                    on (its first BGP sessions coming up are no outage)
        beat = time.time()
        try:
            while not self.stop.wait(max(0.0, beat - time.time())):
                t = time.time()
                beat = t - (t - beat) % every + every
                rows = sampler.samples(t, metrics.metrics(
                    self.lab, lambda tunnel: _fresh(self.listed_sas.get(tunnel.name), every),
                    lambda node: _fresh(self.listed_peers.get(node), every)))
                store.append(t, rows)
                exporter.update(rows)
                if built is None:
                    built = (load_state(self.lab.name) or self.lab.state).converged_at or None
                if built is not None:
                    rules.due(t, since=built)
        finally:
            exporter.close()
            store.close()

    # ------------------------------------------------------------ diagnostic log
    def ike_log(self, t: Tunnel):
        """Tunnel events and IKE log lines of one Azure tunnel end, from VICI events.
        Whenever the listener (re)connects, the tunnel's state is read once, so that what
        happened while charon was away (a crash, a restart) is reported too."""
        while not self.stop.is_set():
            try:
                first = True
                for kind, event in control.listen(self.rt, t.azure_end, ["ike-updown", "log"], POLL):
                    if self.stop.is_set():
                        return
                    if first:    # registered now: from here on no event is missed
                        first = False
                        sas = live.ike_sas(self.rt, t.azure_end)
                        self.log.tunnel(t, self.plan, any(sa["state"] == b"ESTABLISHED" for sa in sas))
                    if kind == b"ike-updown":
                        self.log.tunnel(t, self.plan, event.get("up") == b"yes")
                    elif kind == b"log":
                        self.log.ike(t, self.plan, event)
                        found = _RECEIVED.search(event.get("msg", b"").decode(errors="replace"))
                        if found and found[1] == t.remote_ip:
                            self.peer_ports[t.name] = int(found[2])
            except OSError:
                self.log.tunnel(t, self.plan, False, "the gateway's IKE service stopped")
                self.stop.wait(POLL)

    def bgp_speakers(self):
        """BgpConnectedEvent / BgpDisconnectedEvent when an instance's eBGP session with
        a site changes state; the 4,000-prefix limit enforced at once (enforce_limit)."""
        sessions = [s for s in self.plan.bgp if s.kind == "ebgp"
                    and self.plan.nodes[s.node].role == "gateway-instance"]
        limit = defaults()["azure"]["bgp_max_prefixes"]
        established: dict = {}
        while not self.stop.wait(POLL):
            peers = {}
            for node in sorted({s.node for s in sessions}):     # one vtysh per instance
                try:
                    peers[node] = live.bgp_peers(self.rt, node)
                except Exception:  # noqa: BLE001 - bgpd down (a fault): its sessions are down
                    peers[node] = {}
                self.listed_peers[node] = (time.monotonic(), peers[node])
            for s in sessions:
                peer = peers[s.node].get(s.peer, {})
                up = peer.get("state") == "Established"
                if up and peer.get("pfxRcd", 0) > limit:
                    self.enforce_limit(s)
                if established.get((s.node, s.peer), False) != up:
                    established[(s.node, s.peer)] = up
                    self.log.bgp(s, self.plan, up)

    def enforce_limit(self, s):
        """FRR checks maximum-prefix when an UPDATE arrives, against a count it adjusts
        later: a peer that sends 4,001 prefixes at once and then nothing stays up.
        Azure drops it [4.5]: a route refresh makes the peer send its routes again,
        and FRR's check then trips (Cease, maximum number of prefixes reached)."""
        say(f"{s.node}: {s.peer} is past the prefix limit: route refresh to enforce it")
        self.rt.vtysh(s.node, f"clear bgp ipv4 unicast {s.peer} soft in")


def say(line: str):
    """The agent's own log (agent.log in the lab's folder)."""
    print(f"{time.strftime('%F %T')} {line}", flush=True)


def _fresh(listed: tuple[float, object] | None, within: float):
    """What a duty listed, if it did within the last sampling interval."""
    if listed is not None and time.monotonic() - listed[0] <= max(within, POLL) + 0.5:
        return listed[1]
    return None


def _answered_children(sas: list[dict], connection: str) -> list[dict]:
    """Installed CHILD SAs made under the responder child (the device asked for them)."""
    return [c for ike in sas if ike["state"] == b"ESTABLISHED"
            for c in ike.get("child-sas", {}).values()
            if c["name"] == connection.encode() and c["state"] == b"INSTALLED"]


def _duplicates(sas: list[dict]) -> list[dict]:
    """The IKE SAs to delete when more than one is established: those the gateway
    initiated, keeping one (the device's, when there is one)."""
    up = [ike for ike in sas if ike["state"] == b"ESTABLISHED"]
    if len(up) < 2:
        return []
    up.sort(key=lambda ike: (ike.get("initiator") != b"yes", int(ike["uniqueid"])))
    return up[:-1]


def _duplicate_children(sas: list[dict], connection: str) -> list[dict]:
    """Installed CHILD SAs of one established IKE SA with another's traffic selectors:
    all but one, keeping the device's (made under the responder child), the newest."""
    own = initiator_child(connection).encode()
    extra = []
    for ike in sas:
        if ike["state"] != b"ESTABLISHED":
            continue
        same: dict[tuple, list[dict]] = {}
        for c in ike.get("child-sas", {}).values():
            if c["state"] == b"INSTALLED":
                same.setdefault((tuple(c.get("local-ts", [])), tuple(c.get("remote-ts", []))), []).append(c)
        for group in same.values():
            group.sort(key=lambda c: (c["name"] != own, int(c["uniqueid"])))
            extra += group[:-1]
    return extra


def _bytes(child: dict) -> int:
    return int(child.get("bytes-in", 0)) + int(child.get("bytes-out", 0))


def main(argv: list[str]) -> int:
    state = load_state(argv[0]) if argv else None
    if state is None:
        print(f"agent: no lab named {argv[0] if argv else '(none given)'!r}", file=sys.stderr)
        return 2
    agent = Agent(Lab(state))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
