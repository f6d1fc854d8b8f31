"""What scenarios drive: a handle on a running lab (nodes, daemon queries, the expected
model, faults, probes) and a recorder of what happened (events, numbers, probe results)
for the report. Used by the pytest plugin; usable from any script."""
from __future__ import annotations

import shlex
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

from vpnlab import engine
from vpnlab.change import apply as change
from vpnlab.checks import faults, maintenance
from vpnlab.checks.match import differences
from vpnlab.checks.probe import Probe, worst
from vpnlab.errors import LabError
from vpnlab.gateway import alerts, live, series
from vpnlab.model.defaults import defaults
from vpnlab.runtime.state import load_state
from vpnlab.session import open_lab
from vpnlab.waits import WaitTimeout, wait_until


class NodeHandle:
    def __init__(self, lab: "LabHandle", name: str):
        if name not in lab.plan.nodes:
            raise LabError(f"lab {lab.name} has no node {name!r}; nodes: {', '.join(sorted(lab.plan.nodes))}")
        self.lab, self.name, self.node = lab, name, lab.plan.nodes[name]

    def exec(self, command, timeout: float = 30):
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        return self.lab.backend.exec(self.name, argv, timeout=timeout)

    def vtysh_json(self, command: str):
        return live.vtysh_json(self.lab.backend, self.name, command)

    def sas(self) -> list[dict]:
        return live.ike_sas(self.lab.backend, self.name)

    @property
    def address(self) -> str:
        for ifname in ("eth0", "pub"):
            for iface in self.node.interfaces:
                if iface.name == ifname and iface.addresses:
                    return iface.addresses[0].split("/")[0]
        raise LabError(f"{self.name} has no eth0 or pub address")


class LabHandle:
    """A running lab, by name: its session (vpnlab.session) with what scenarios ask."""

    def __init__(self, name: str):
        self.name = name
        self.session = open_lab(name)
        self.timers = self.state.timers

    @property
    def state(self):
        return self.session.state

    @property
    def backend(self):
        return self.session.backend

    @property
    def plan(self):
        return self.session.plan

    @property
    def topology(self):
        return self.session.topology

    def node(self, name: str) -> NodeHandle:
        return NodeHandle(self, name)

    def timer(self, name: str) -> float:
        """An effective timer of the lab (bgp_hold, bgp_keepalive, dpd_timeout: the
        longest of its tunnels', as charon runs them), from its plan."""
        return self.plan.timers[name]

    def detection_budget(self, margin: float = 3) -> float:
        """How long a silent failure may last: the longer of BGP hold and DPD, plus the
        margin for rerouting."""
        return max(self.timer("bgp_hold"), self.timer("dpd_timeout")) + margin

    def budget(self, name: str | float) -> float:
        waits = defaults()["scenario_waits"][self.timers]
        seconds = waits[name] if isinstance(name, str) else float(name)
        return max(seconds, waits["minimum"])

    def status(self) -> dict:
        self.session.refresh()      # another process may have changed it (an apply, a fault)
        return engine.status(self.name, self.session)

    def convergence(self) -> list[str]:
        return live.convergence(self.backend, self.plan)

    def wait_converged(self, budget: str | float = "reconverge"):
        engine.wait_converged(self.session, self.budget(budget))

    def eventually(self, probe, expected, budget: str | float, what: str):
        """Poll probe() until its JSON contains expected (vpnlab.checks.match); fail with the
        differences last seen."""
        try:
            return wait_until(probe, lambda got: not differences(got, expected), what,
                              self.budget(budget), interval=0.2)
        except WaitTimeout as err:
            last = err.last if isinstance(err.last, str) else differences(err.last, expected)
            raise AssertionError(f"gave up after {err.budget:g} s waiting for {what}: {last}") from None

    def fail(self, kind: str, target: str, **params) -> dict:
        self.session.refresh()       # faults may have come and gone from another process
        return faults.inject(self.session, kind, target, **params)

    def heal(self, key: str | None = None) -> list[dict]:
        self.session.refresh()
        if key is None:
            return faults.heal_all(self.session)
        return [faults.heal(self.session, key)]

    def maintenance(self, gateway: str, instance: int | None = None, unplanned: bool = False) -> dict:
        """Azure's reset of a gateway instance (vpnlab.checks.maintenance); the saved plan
        follows a takeover."""
        self.session.refresh()
        return maintenance.run(self.session, gateway, instance, unplanned)

    def apply(self, topology: str | Path | dict, azure_only: bool = False, wait: bool = True,
              plan_only: bool = False) -> dict:
        """vpnlab apply of a topology file, or of a topology given as a dict (written to
        a file in the lab's folder first): the change plan, its steps and their timings."""
        self.session.refresh()
        if isinstance(topology, dict):
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.state.dir, delete=False) as f:
                yaml.safe_dump(topology, f, sort_keys=False)
            topology = f.name
        try:
            return change.apply(self.name, topology, azure_only=azure_only, wait=wait, plan_only=plan_only)
        finally:     # nodes may have been made again: no handle on the old ones is kept
            self.session.close()
            self.session = open_lab(self.name)

    def design(self) -> dict:
        """The running lab's topology as a dict: edit it and apply it."""
        return yaml.safe_load(self.state.topology_file.read_text())

    def active_faults(self) -> list[str]:
        state = load_state(self.name)
        return [f["key"] for f in (state.faults if state else [])]

    def tunnel_links(self, tunnel: str) -> dict[str, tuple[str, str, str]]:
        """side (onprem, azure) -> (router, tunnel interface, underlay interface)."""
        t = next((x for x in self.plan.tunnels if x.name == tunnel), None)
        if t is None:
            raise LabError(f"no tunnel {tunnel!r}; tunnels: {', '.join(x.name for x in self.plan.tunnels)}")
        out = {}
        for side, end, router in (("onprem", t.onprem_end, t.device), ("azure", t.azure_end, t.gateway_instance)):
            ifs = {link.b_if: link.a_if for link in self.plan.links if link.b == end and link.a == router}
            out[side] = (router, ifs["in"], ifs["ul"])
        return out

    def busiest_tunnel(self, router: str, min_bytes: int = 20000, budget: float = 10) -> str:
        """The tunnel of a router (device or instance) carrying the most traffic now:
        the one a fault must hit for the probe to see it."""
        from vpnlab.checks.throughput import esp_bytes
        mine = [t.name for t in self.plan.tunnels if router in (t.device, t.gateway_instance)]
        before = esp_bytes(self.backend, self.plan)

        def grown():
            now = esp_bytes(self.backend, self.plan)
            return sorted(((now[n] - before.get(n, 0), n) for n in mine), reverse=True)
        ranked = wait_until(grown, lambda r: r[0][0] >= min_bytes,
                            f"traffic through a tunnel of {router}", budget, interval=0.1)
        return ranked[0][1]

    def probe(self, a: str, b: str, a_addr: str | None = None, b_addr: str | None = None, **kw) -> Probe:
        """Probe flows between two nodes, from their own addresses unless given (a
        point-to-site client sends from its virtual IP)."""
        return Probe(self.backend, a, a_addr or self.node(a).address, b, b_addr or self.node(b).address,
                     **kw).start()

    def close(self):
        self.session.close()


class Watcher(threading.Thread):
    """Polls tunnel and BGP state and records every change as a timeline event."""

    def __init__(self, lab: LabHandle, record, interval: float = 0.5):
        super().__init__(daemon=True)
        self.lab, self.record, self.interval = lab, record, interval
        self.halt = threading.Event()
        self.last: dict[str, str] = {}

    def run(self):
        while not self.halt.is_set():
            try:
                now = {}
                for t in live.tunnels(self.lab.backend, self.lab.plan):
                    now[f"tunnel {t['tunnel']}"] = "up" if t["state"] == "ESTABLISHED" else "down"
                for b in live.bgp(self.lab.backend, self.lab.plan):
                    now[f"BGP {b['node']} -> {b['peer_node']}"] = "up" if b["state"] == "Established" else "down"
                for key, value in now.items():
                    if self.last and self.last.get(key) != value:
                        self.record(f"{key} {value}", kind="tunnel" if key.startswith("tunnel") else "bgp")
                self.last = now
            except Exception:  # noqa: BLE001 - a poll during a fault may fail; try again
                pass
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(timeout=10)


class Scenario:
    """The record of one scenario: timeline, numbers with their bounds, probe results,
    and the nodes involved (whose logs go into the report)."""

    def __init__(self, name: str, description: str):
        self.name, self.description = name, description
        self.origin_ns = time.monotonic_ns()
        self.started_at = time.time()
        self.events: list[dict] = []
        self.numbers: dict[str, dict] = {}
        self.probes: list[dict] = []
        self.nodes: set[str] = set()
        self.lab: LabHandle | None = None
        self._probe: Probe | None = None
        self._watcher: Watcher | None = None

    @property
    def probe(self) -> Probe | None:
        """The running probe (between start and stop)."""
        return self._probe

    def event(self, what: str, kind: str = "note", at_ns: int | None = None) -> int:
        at_ns = at_ns or time.monotonic_ns()
        self.events.append({"t_s": round((at_ns - self.origin_ns) / 1e9, 3), "kind": kind, "what": what})
        return at_ns

    def record(self, name: str, value, unit: str = "", bound: str | None = None):
        """A measured number, printed and put in the report (bound: the stated limit)."""
        self.numbers[name] = {"value": value, "unit": unit, "bound": bound}
        print(f"  {self.name}: {name} = {value} {unit}" + (f" (bound {bound})" if bound else ""))

    # -- driving a lab
    def start(self, lab: LabHandle, a: str, b: str, **probe_kw) -> Probe:
        """Watch tunnels and BGP, start the probe between a and b, and wait until all
        its flows deliver."""
        self.lab = lab
        self.nodes |= {a, b}
        self._watcher = Watcher(lab, self.event)
        self._watcher.start()
        self._probe = lab.probe(a, b, **probe_kw)
        self.event(f"probe {a} <-> {b} started", "probe", self._probe.origin_ns)
        self.wait_flowing(self._probe.origin_ns, "traffic_recovered")
        return self._probe

    def fail(self, kind: str, target: str, **params) -> int:
        self.nodes |= self._involved(target)
        at = time.monotonic_ns()
        if self._probe:
            self._probe.mark(f"fail {kind} {target}")
        fault = self.lab.fail(kind, target, **params)
        self.event(f"fault injected: {fault['key']} {fault['params'] or ''}".strip(), "fault", at)
        for step_ns, what in fault["detail"].get("steps", []):
            self.event(what, "fault", step_ns)
        return at

    def maintenance(self, gateway: str, instance: int | None = None, unplanned: bool = False) -> int:
        """Azure's reset of an instance of gateway; returns when it took over or came back."""
        self.nodes |= {n for n in self.lab.plan.nodes if n.startswith(f"{gateway}-in")}
        at = time.monotonic_ns()
        what = f"maintenance {gateway}" + (f" IN_{instance}" if instance is not None else "") + \
            (" (unplanned)" if unplanned else "")
        if self._probe:
            self._probe.mark(what)
        result = self.lab.maintenance(gateway, instance, unplanned)
        self.event(what, "fault", at)
        for step_ns, step in result["steps"]:
            self.event(step, "fault", step_ns)
        return at

    def apply(self, topology, label: str, azure_only: bool = False) -> tuple[int, dict]:
        """Rehearse a change under the running probe: apply it (LabHandle.apply), put it
        and its steps on the timeline; returns when it started, and its result."""
        at = time.monotonic_ns()
        if self._probe:
            self._probe.mark(f"apply: {label}")
        result = self.lab.apply(topology, azure_only=azure_only)
        self.event(f"change applied: {label}" + (" (Azure's side only)" if azure_only else ""), "change", at)
        for row in result["timeline"]:
            self.event(row["what"], "change", at + int(row["at_s"] * 1e9))
        return at, result

    def heal(self, key: str | None = None) -> int:
        at = time.monotonic_ns()
        if self._probe:
            self._probe.mark("heal")
        healed = self.lab.heal(key)
        self.event("healed: " + ", ".join(f["key"] for f in healed), "fault", at)
        return at

    def wait_flowing(self, since_ns: int, budget: str | float = "traffic_recovered") -> float:
        """Until every probe flow in both directions delivers again after since_ns (and
        at least 250 ms after it, so that a loss has had time to show). Returns seconds."""
        floor = since_ns + 250_000_000
        stalled = lambda: ["not yet"] if time.monotonic_ns() < floor else self._probe.flowing(since_ns)
        wait_until(stalled, lambda s: not s, "every probe flow to deliver again",
                   self.lab.budget(budget), interval=0.05)
        at = time.monotonic_ns()
        return round((at - since_ns) / 1e9, 3)

    def wait_probe_packets(self, count: int, since_ns: int, budget: float = 30):
        """Until the probe sent `count` packets in each direction since since_ns (a
        measurement window counted in packets, not slept)."""
        wait_until(lambda: self._probe.status(since_ns)["sent_since"], lambda s: min(s.values()) >= count,
                   f"{count} probe packets per direction", budget, interval=0.1)

    def wait_alert(self, rule: str, condition: str, since_ns: int, budget: str | float = "alert") -> float:
        """Until the metric alert rule has an entry (condition: Fired or Resolved) made
        after since_ns; puts it on the timeline and returns seconds from since_ns to it."""
        since = time.time() - (time.monotonic_ns() - since_ns) / 1e9

        def entries():
            return [e for e in map(alerts.summary, alerts.read(self.lab.state.dir))
                    if e["rule"] == rule and e["condition"] == condition and _epoch(e["at"]) >= since]
        found = wait_until(entries, bool, f"metric alert {rule!r} {condition}", self.lab.budget(budget),
                           interval=0.2)[0]
        seconds = round(_epoch(found["at"]) - since, 3)
        self.event(f"alert {rule} {condition} [{found['series']}]", "alert", since_ns + int(seconds * 1e9))
        return seconds

    def wait_converged(self, budget: str | float = "reconverge") -> float:
        start = time.monotonic_ns()
        self.lab.wait_converged(budget)
        self.event("lab converged", "state")
        return round((time.monotonic_ns() - start) / 1e9, 3)

    def stop(self, event_ns: int | None = None, until_ns: int | None = None) -> dict:
        """Stop probe and watcher; returns (and keeps) the probe's figures."""
        result = {}
        if self._probe:
            result = self._probe.stop(event_ns, until_ns)
            for d in result["directions"]:
                if d["first_lost_s"] is not None:
                    self.event(f"first lost probe {d['direction']}", "loss",
                               self._probe.origin_ns + int(d["first_lost_s"] * 1e9))
                    self.event(f"last lost probe {d['direction']}", "loss",
                               self._probe.origin_ns + int(d["last_lost_s"] * 1e9))
            result["origin_s"] = round((self._probe.origin_ns - self.origin_ns) / 1e9, 3)
            self.probes.append(result)
            self._probe = None
        if self._watcher:
            self._watcher.stop()
            self._watcher = None
        return result

    def planned_instance_loss(self, instance: str, bound_ms: float,
                              label: str = "probe loss (worse direction)") -> float:
        """Under the running probe, a gateway instance is lost planned (BGP Cease, IKE
        DELETE), healed, and the lab reconverges; records the recovery, the reconvergence
        and the worse direction's probe loss; returns that loss in ms (the probe's
        figures are in self.probes[-1])."""
        at = self.fail("instance", instance, planned=True)
        self.record("traffic recovered after", self.wait_flowing(at), "s")
        self.heal()
        self.record("reconverged after heal", self.wait_converged(), "s")
        result = self.stop(at)
        lost_ms = worst(result, "lost") * 1000 / result["rate_pps"]
        self.record(label, lost_ms, "ms", f"<= {bound_ms} ms")
        return lost_ms

    def _involved(self, target: str) -> set[str]:
        """The target and, for a router or a tunnel end, both ends of its tunnels."""
        node = target.partition(":")[0]
        out = {node}
        for t in self.lab.plan.tunnels:
            if node in (t.gateway_instance, t.device):
                out |= {t.azure_end, t.onprem_end}
            if node in (t.azure_end, t.onprem_end):
                out |= {t.azure_end, t.onprem_end, t.gateway_instance, t.device}
        return out

    def to_json(self) -> dict:
        self.events.sort(key=lambda e: e["t_s"])
        # the lab's metric series over the scenario, for the report's charts
        charts = series.around(self.lab.state.dir, self.started_at, time.time()) if self.lab else {}
        return {"name": self.name, "description": self.description, "started_at": self.started_at,
                "events": self.events, "numbers": self.numbers, "probes": self.probes,
                "nodes": sorted(self.nodes), "series": charts}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
