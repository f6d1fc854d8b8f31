"""Where a lab lives on disk, and its state file (written as the lab is built, so that
`down` can clean up after an `up` that was killed)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

_SAVE_LOCK = threading.Lock()


def state_root() -> Path:
    return Path(os.environ.get("VPNLAB_STATE_DIR", "/var/lib/vpnlab"))


@dataclass
class LabState:
    name: str
    runtime: str = "netns"
    timers: str = "azure"
    dataplane: str = ""
    kernel_esp: bool = False
    kernel_netem: bool = False
    sample_seconds: float = 1.0      # the agent's metric sampling (0: off): vpnlab up --sample-seconds
    phase: str = "building"          # building | up | failed
    converged_at: float = 0.0        # when `up` saw the lab converge first (epoch seconds; 0: not yet)
    owner_pid: int = 0               # the `up` that is building it
    namespaces: list[str] = field(default_factory=list)
    processes: list[dict] = field(default_factory=list)   # {pid, node, daemon}
    faults: list[dict] = field(default_factory=list)      # active faults (vpnlab.checks.faults)
    attached: dict = field(default_factory=dict)          # site -> {netns, port}: vpnlab attach
    active: dict = field(default_factory=dict)            # active-standby gateway -> serving instance
    charon_hosts: dict = field(default_factory=dict)      # tunnel end -> [node running its charon,
                                                          # its connection] (Plan.charon_hosts)

    @property
    def dir(self) -> Path:
        return lab_dir(self.name)

    @property
    def nodes_dir(self) -> Path:
        return self.dir / "nodes"

    @property
    def pki_dir(self) -> Path:
        """Point-to-site certificates, keys (0600) and CRLs (vpnlab.plan.pki)."""
        return self.dir / "pki"

    @property
    def topology_file(self) -> Path:
        return self.dir / "topology.yaml"

    def save(self):
        """Atomic replace; threads of one process (concurrent helpers) take turns."""
        with _SAVE_LOCK:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f"state.json.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(asdict(self), indent=1))
            tmp.replace(self.dir / "state.json")


@contextlib.contextmanager
def claim_lock():
    """Serialises claiming lab names (check + first state file), across processes."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lab_dir(name: str) -> Path:
    return state_root() / name


def load_state(name: str) -> LabState | None:
    try:
        return LabState(**json.loads((lab_dir(name) / "state.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def known_labs() -> list[str]:
    root = state_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def remove_lab_dir(name: str):
    shutil.rmtree(lab_dir(name), ignore_errors=True)
