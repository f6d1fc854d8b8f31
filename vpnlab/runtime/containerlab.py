"""The containerlab runtime: `containerlab deploy` of the lab's emitted topology
(vpnlab.plan.clab), driven through subprocess; the nodes set themselves up (vpnlab-node start).

Nodes are Docker containers named clab-<lab>-<node>, and containerlab names their network
namespaces the same: fault injection, probes and status reach them as they reach the
docker runtime's, through the namespace and docker exec. Their daemons are found by the
marker in their environment (VPNLAB_DAEMON=<node>/<daemon>) and recorded by PID.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

from vpnlab.errors import RuntimeFailure
from vpnlab.plan import clab
from vpnlab.plan.parts import Plan
from vpnlab.runtime import daemons, image, procs
from vpnlab.runtime.docker import DockerBackend, remove_labelled
from vpnlab.waits import wait_until

BINARY = "containerlab"
VERSION = "0.79.0"        # the version vpnlab's files are written for (its schema)
INSTALL = (f'bash -c "$(curl -sL https://get.containerlab.dev)" -- -v {VERSION}  '
           "(see containerlab's installation guide)")


def binary() -> str | None:
    return shutil.which(BINARY)


def unavailable() -> str | None:
    if binary() is None:
        return f"the containerlab binary is not installed; install {VERSION}: {INSTALL}"
    return None


def version() -> str | None:
    """containerlab's version, from `containerlab version` (text; its layout has changed
    between releases: take the first x.y.z after 'version')."""
    if binary() is None:
        return None
    res = procs.run([binary(), "version"])
    found = re.search(r"version\W+v?(\d+\.\d+\.\d+)", res.stdout, re.IGNORECASE)
    return found.group(1) if found else None


def containers_of(inspect_json: str) -> list[dict]:
    """The containers in `containerlab inspect -f json` output. Releases differ: a list
    under "containers", or a list per lab name; read whichever is there."""
    try:
        data = json.loads(inspect_json or "null")
    except ValueError:
        return []
    if isinstance(data, dict) and isinstance(data.get("containers"), list):
        found = data["containers"]
    elif isinstance(data, dict):
        found = [c for v in data.values() if isinstance(v, list) for c in v]
    elif isinstance(data, list):
        found = data
    else:
        found = []
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("name"), str)]


class ContainerlabBackend(DockerBackend):
    """containerlab's nodes are Docker containers that set themselves up: only how the
    lab is deployed and removed, what their namespaces are called, and how their daemons
    are found differ from the docker runtime."""
    name = "containerlab"

    @classmethod
    def unavailable(cls) -> str | None:
        return unavailable() or DockerBackend.unavailable()

    @classmethod
    def lab_names(cls) -> set[str]:
        return set()          # its containers carry the docker runtime's lab label too

    def namespace(self, node: str) -> str:
        return f"clab-{self.state.name}-{node}"

    @property
    def topology_file(self):
        return self.state.nodes_dir / f"{self.state.name}.clab.yml"

    def _clab(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        if binary() is None:
            raise RuntimeFailure(unavailable())
        res = procs.run([binary(), *args, "-t", str(self.topology_file)], timeout=timeout)
        if res.returncode != 0:
            raise RuntimeFailure(f"containerlab {args[0]} failed: {(res.stderr or res.stdout).strip()[-1500:]}")
        return res

    @classmethod
    def supports(cls, plan: Plan) -> str | None:
        return clab.unsupported(plan)

    def prepare(self, plan: Plan, rendered: dict[str, dict[str, str]]):
        """The containerlab topology beside the node folders (their configs are written);
        a node's folder is at the same path inside its container as on the host."""
        state = self.state
        layout = clab.Layout(lambda node: state.nodes_dir / node, bind_folder=True, run_on_host=True)
        setup = clab.setup_files(plan, layout.node_dir)
        clab.write_folders(setup, state.nodes_dir, layout)
        files = {n: {**rendered[n], **setup[n]} for n in rendered}
        clab.dump(clab.topology(plan, state.name, image.node_image(), layout, files),
                  self.topology_file, f"lab {state.name}", str(state.topology_file))

    def create(self, plan: Plan):
        """containerlab deploy of the file prepare wrote."""
        found = version()
        if found != VERSION:
            self.warnings.append(f"containerlab {found or '(unknown version)'} is not {VERSION}, "
                                 "the version vpnlab's files are written for")
        self.make_room(plan)
        self.state.namespaces += [self.namespace(n) for n in plan.nodes]
        self.state.save()
        self._clab("deploy", "--reconfigure")
        running = {c["name"] for c in containers_of(self._clab("inspect", "-f", "json").stdout)
                   if str(c.get("state", "running")).lower() == "running"}
        missing = [n for n in plan.nodes if self.container_name(n) not in running]
        if missing:
            raise RuntimeFailure(f"containerlab deployed, but these nodes are not running: {', '.join(missing)}")

    def start_daemons(self, plan: Plan, budget: float, progress):
        """The nodes start their own daemons (vpnlab-node start, in the one start order):
        wait until each has, record their PIDs, found by the marker in their environment,
        then start the gateway instances' health probes and the agent."""
        for warning in self.warnings:
            progress(f"warning: {warning}")
        progress("waiting for the nodes to start their daemons")
        wanted = [(n.name, d) for n in plan.ordered_nodes() if not n.standby
                  for d in ((daemons.frr_daemons() if n.frr is not None else ()) + (("charon",) if n.runs_charon else ()))]
        for node, daemon in wanted:
            pids = wait_until(lambda: procs.with_env(f"VPNLAB_DAEMON={node}/{daemon}"), bool,
                              f"{daemon} of {node} (see {self.node_dir(node) / (daemon + '.out')})", budget)
            self.state.processes.append({"pid": pids[0], "node": node, "daemon": daemon})
        self.save_processes()
        daemons.start_health_probes(self, plan, [n.name for n in plan.nodes.values()
                                                 if n.role == "gateway-instance" and not n.standby])
        daemons.start_radius(self, [n.name for n in plan.ordered_nodes() if n.radius is not None], budget)
        progress("starting the gateway's agent (connection modes, Azure's rekeys, events)")
        daemons.start_agent(self)

    @classmethod
    def cannot_change_nodes(cls) -> str | None:
        return "containerlab deploys and destroys the whole topology, not a node of it"

    def remove_nodes(self) -> list[str]:
        """containerlab destroy --cleanup (its namespace links too); without the binary,
        the containers go by containerlab's own label."""
        if binary() and self.topology_file.exists():
            try:
                self._clab("destroy", "--cleanup", timeout=300)
                return []
            except (RuntimeFailure, subprocess.TimeoutExpired) as err:
                return [str(err)] + remove_labelled(f"containerlab={self.state.name}", self._client)
        return remove_labelled(f"containerlab={self.state.name}", self._client)
