"""A lab session: one running lab opened once, its state, runtime backend, saved plan and
topology together.

    with session("aa") as lab:
        faults.inject(lab, "carrier", "hub-gw-in0:pub")
        print(lab.plan.tunnels, lab.backend.exec("vm1", ["ip", "route"]).stdout)

Which labs exist (by their state folders and by what their runtimes left on the
machine) is also answered here.
"""
from __future__ import annotations

from vpnlab.errors import LabError
from vpnlab.model.names import check_lab_name
from vpnlab.model.topology import Topology
from vpnlab.model.topology import load as load_topology
from vpnlab.plan import document
from vpnlab.plan.build import build
from vpnlab.plan.parts import Plan
from vpnlab.runtime import procs, registry
from vpnlab.runtime.backend import Backend
from vpnlab.runtime.state import LabState, known_labs, lab_dir, load_state


class Lab:
    def __init__(self, state: LabState):
        self.state = state
        self.backend: Backend = registry.backend_for(state)
        self._plan: Plan | None = None
        self._topology: Topology | None = None

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def plan_file(self):
        return self.state.dir / "plan.json"

    @property
    def plan(self) -> Plan:
        """The saved plan (plan.json), as `up` or the last change left it."""
        if self._plan is None:
            self._plan = document.load(self.plan_file)
        return self._plan

    @property
    def topology(self) -> Topology:
        """The lab's copy of its topology file, validated, with the addresses its VMs
        hold."""
        if self._topology is None:
            self._topology = load_topology(self.state.topology_file).holding(self.plan.vm_addresses())
        return self._topology

    def save_plan(self, plan: Plan):
        """The lab now runs this plan."""
        document.save(plan, self.plan_file)
        self._plan = plan
        self.state.charon_hosts = plan.charon_hosts()
        self.state.save()

    def rebuild_plan(self) -> Plan:
        """The plan of the lab's topology with its timers and serving instances (after an
        active-standby takeover), saved."""
        plan = build(self.topology, self.state.timers, self.state.active, self.plan.dataplane)
        self.save_plan(plan)
        return plan

    def refresh(self):
        """State, plan and topology as another process may have left them (a fault
        injected, a takeover by `vpnlab maintenance`, a change by `vpnlab apply`)."""
        self.state = self.backend.state = load_state(self.name) or self.state
        self._plan = None
        self._topology = None

    def close(self):
        self.backend.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc):
        self.close()


def session(name: str | None = None) -> Lab:
    """The named lab (or the only one there is), opened; `with` closes it."""
    return open_lab(resolve_name(name))


def open_lab(name: str) -> Lab:
    return Lab(require_state(name))


# ------------------------------------------------------------------ which labs exist
def is_alive(name: str) -> bool:
    """A lab is alive while any of its nodes or tagged processes exist, or while an
    `up` is still building it."""
    state = load_state(name)
    building = state is not None and state.phase == "building" and procs.alive(state.owner_pid)
    return bool(building or registry.leftovers(name) or procs.tagged(name))


def running_labs() -> list[str]:
    return sorted(set(known_labs()) | registry.lab_names())


def resolve_name(name: str | None) -> str:
    """--name, or the only lab there is."""
    if name:
        return check_lab_name(name)
    labs = running_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up (vpnlab up starts one)")
    raise LabError(f"several labs are up ({', '.join(labs)}): choose one with --name")


def require_state(name: str) -> LabState:
    state = load_state(name)
    if state is None:
        if is_alive(name):
            raise LabError(f"lab {name!r} has leftovers but no state; 'vpnlab down --name {name}'")
        raise LabError(f"no lab named {name!r} (state folder {lab_dir(name)} is missing)")
    return state
