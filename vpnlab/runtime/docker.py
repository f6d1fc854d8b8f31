"""The docker runtime: every node is a container from the node image (vpnlab/runtime/images).

Only how a node comes to be and goes, and how commands run in it, differ from the netns
runtime. A container starts with no network (`network_mode=none`); its network namespace
is then given the lab's name (`ip netns attach`, through pyroute2), and the backend's
shared code wires links, addresses, routes and firewalls exactly as it does for plain
namespaces. Daemons run inside the containers (docker exec), with the image's
strongSwan and FRR: the host needs neither.

Least privilege: no --privileged; the capabilities below and /dev/net/tun (libipsec's
ipsec0) only. A node's folder is bind-mounted at the same path, so rendered configs and
control sockets (vty, VICI) read the same from the host and from inside; a tunnel end's
`run` folder is its /run (charon's pid file and VICI socket).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
import uuid
from pathlib import Path

from pyroute2 import netns

from vpnlab.errors import RuntimeFailure
from vpnlab.model.defaults import defaults
from vpnlab.model.names import process_tag
from vpnlab.plan.parts import Node
from vpnlab.runtime import image, procs
from vpnlab.runtime.backend import Backend
from vpnlab.runtime.state import LabState
from vpnlab.waits import wait_until

LABEL_LAB = "io.vpnlab.lab"
LABEL_NODE = "io.vpnlab.node"
TIMED_OUT = 124                     # timeout(1)'s exit status
PARALLEL = 8                        # engine calls in flight while a lab is built


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, state: LabState):
        super().__init__(state)
        self._client = None
        self._containers: dict[str, object] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        return unavailable()

    @classmethod
    def lab_names(cls) -> set[str]:
        return all_lab_names()

    @classmethod
    def leftovers(cls, lab: str) -> dict[str, list[str]]:
        return {"containers": [c.name for c in lab_containers(lab)]}

    # ------------------------------------------------------------ containers
    @property
    def client(self):
        if self._client is None:
            self._client = image.client()
        return self._client

    def container_name(self, node: str) -> str:
        return self.namespace(node)

    def container(self, node: str):
        if node not in self._containers:
            self._containers[node] = self.client.containers.get(self.container_name(node))
        return self._containers[node]

    def make_nodes(self, nodes: list[Node]):
        """Containers from the node image, started in parallel; each one's network
        namespace is then named like the netns runtime's."""
        why = unavailable()
        if why:
            raise RuntimeFailure(why)
        tag = image.node_image()
        for node in nodes:
            (self.node_dir(node.name) / "run").mkdir(parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            pids = dict(zip([n.name for n in nodes], pool.map(lambda n: self._run(tag, n.name), nodes)))
        for node, pid in pids.items():
            netns.attach(self.namespace(node), pid)

    def each(self, nodes: list[str], step):
        """Overlapped: each command in a container is a round trip to the engine. The
        namespaces' netlink sockets are opened first, one thread making them."""
        for node in nodes:
            self.ipr(node)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(step, nodes))          # the first failure is raised here

    def _run(self, tag: str, node: str) -> int:
        d = str(self.node_dir(node))
        c = self.client.containers.run(
            tag, ["hold"], name=self.container_name(node), hostname=node[:63], detach=True,
            network_mode="none", cap_drop=["ALL"], cap_add=defaults()["containers"]["capabilities"],
            devices=["/dev/net/tun:/dev/net/tun:rwm"],
            volumes={d: {"bind": d, "mode": "rw"}, f"{d}/run": {"bind": "/run", "mode": "rw"}},
            labels={LABEL_LAB: self.state.name, LABEL_NODE: node})
        c.reload()
        self._containers[node] = c
        return c.attrs["State"]["Pid"]

    def discard_node(self, node: str) -> list[str]:
        """Its named namespace, then its container."""
        problems = super().discard_node(node)
        self._containers.pop(node, None)
        try:
            self.client.containers.get(self.container_name(node)).remove(force=True)
        except Exception as err:  # noqa: BLE001 - docker's NotFound or an engine error
            if "No such container" not in str(err) and "404" not in str(err):
                problems.append(f"container {self.container_name(node)}: {err}")
        return problems

    def remove_nodes(self) -> list[str]:
        """The named namespaces, then the containers."""
        return self.remove_namespaces() + remove_labelled(f"{LABEL_LAB}={self.state.name}", self._client)

    # ------------------------------------------------------------ commands in a node
    def exec(self, node: str, argv: list[str], timeout: float = 30, input: str | None = None,
             check: bool = False) -> subprocess.CompletedProcess:
        """docker exec, with the netns runtime's contract: text output, TimeoutExpired."""
        cmd = ["timeout", "-k", "2", str(timeout), *argv]
        stdin = None
        if input is not None:           # the exec API takes no stdin data: a file it reads
            stdin = self.node_dir(node) / f".stdin-{uuid.uuid4().hex[:8]}"
            stdin.write_text(input)
            cmd = ["sh", "-c", 'exec "$@" < "$0"', str(stdin), *cmd]
        try:
            res = self.container(node).exec_run(cmd, demux=True, environment={"LANG": "C"})
        finally:
            if stdin:
                stdin.unlink(missing_ok=True)
        if res.exit_code == TIMED_OUT:
            raise subprocess.TimeoutExpired(argv, timeout)
        out, err = res.output or (None, None)
        done = subprocess.CompletedProcess(argv, res.exit_code, (out or b"").decode(errors="replace"),
                                           (err or b"").decode(errors="replace"))
        if check:
            done.check_returncode()
        return done

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        tty = ["-t"] if sys.stdin.isatty() else []
        return ["docker", "exec", "-i", *tty, self.container_name(node), *argv]

    def start_process(self, node: str, argv: list[str], log: Path, env: dict | None = None) -> int:
        """docker exec, detached; the host finds the PID by a marker in its environment."""
        marker = f"{node}/{argv[0].rsplit('/', 1)[-1]}/{uuid.uuid4().hex[:8]}"
        key, value = process_tag(self.state.name).split("=", 1)
        self.container(node).exec_run(["sh", "-c", 'exec "$@" >>"$0" 2>&1', str(log), *argv],
                                      detach=True, environment={key: value, "LANG": "C",
                                                                "VPNLAB_DAEMON": marker, **(env or {})})
        pids = wait_until(lambda: procs.with_env(f"VPNLAB_DAEMON={marker}"), bool,
                          f"{argv[0]} in {node} to start (see {log})", 10, interval=0.02)
        return pids[0]

    def own_frr_folder(self, node: str):
        self.exec(node, ["chown", "frr:frr", str(self.node_dir(node))], check=True)

    def charon_argv(self, node: str) -> list[str]:
        return [defaults()["daemons"]["charon"]]    # the container's /run is the node's run folder

    def kernel_accepts(self, argv: list[str]) -> bool:
        """Tried in a throwaway container of the node image (the host may lack the tool)."""
        import docker
        try:
            self.client.containers.run(image.node_image(), argv[1:], entrypoint=argv[0],
                                       network_mode="none", cap_drop=["ALL"], cap_add=["NET_ADMIN"],
                                       remove=True, labels={LABEL_LAB: self.state.name})
            return True
        except docker.errors.ContainerError:
            return False


def unavailable() -> str | None:
    """Why the docker runtime cannot run here (no engine, no node image), or None."""
    try:
        c = image.client()
    except RuntimeFailure as err:
        return str(err)
    if not image.has_image(c, image.node_image()):
        return f"the node image {image.node_image()} is missing: build it with 'vpnlab image build'"
    return None


def _client_or_none(client=None):
    """A client of the engine, or None where none answers (no socket, or no reply)."""
    if client is not None:
        return client
    if not Path("/var/run/docker.sock").exists():
        return None
    try:
        return image.client()
    except RuntimeFailure:
        return None


def lab_containers(lab: str, client=None) -> list:
    """This lab's containers, running or not; none when no Docker engine answers."""
    client = _client_or_none(client)
    return client.containers.list(all=True, filters={"label": f"{LABEL_LAB}={lab}"}) if client else []


def remove_labelled(label: str, client=None) -> list[str]:
    """Remove the containers carrying label ("key=value"); what could not be removed.
    Without an engine to ask, says that some may be left."""
    client = _client_or_none(client)
    if client is None:
        return [f"no Docker engine answers: containers labelled {label} may be left"]
    problems = []
    for c in client.containers.list(all=True, filters={"label": label}):
        try:
            c.remove(force=True)
        except Exception as err:       # the SDK's APIError
            with contextlib.suppress(Exception):
                c.reload()             # raises if it is gone after all: no problem then
                problems.append(f"container {c.name}: {err}")
    return problems


def all_lab_names() -> set[str]:
    """Labs that have containers on this machine."""
    client = _client_or_none()
    if client is None:
        return set()
    return {c.labels[LABEL_LAB] for c in client.containers.list(all=True, filters={"label": LABEL_LAB})}
