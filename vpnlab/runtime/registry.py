"""Runtime backends by name (containerlab's runtime registry is the model): the one place
that knows which runtimes exist. Everything else holds a Backend and asks it."""
from __future__ import annotations

from vpnlab.errors import LabError
from vpnlab.runtime.backend import Backend
from vpnlab.runtime.containerlab import ContainerlabBackend
from vpnlab.runtime.docker import DockerBackend
from vpnlab.runtime.netns import NetnsBackend
from vpnlab.runtime.state import LabState

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (NetnsBackend, DockerBackend, ContainerlabBackend)}
DEFAULT = NetnsBackend.name


def names() -> list[str]:
    return list(BACKENDS)


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise LabError(f"runtime {name!r}: allowed: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def unavailable(name: str) -> str | None:
    """Why a runtime cannot run on this machine, or None."""
    return backend_class(name).unavailable()


def backend_for(state: LabState) -> Backend:
    return backend_class(state.runtime)(state)


def lab_names() -> set[str]:
    """Labs that have nodes on this machine, of any runtime."""
    return set().union(*(b.lab_names() for b in BACKENDS.values()))


def leftovers(lab: str) -> dict[str, list[str]]:
    """What of a lab's nodes is on the machine, of any runtime, by kind (empty: none)."""
    found: dict[str, dict[str, None]] = {}     # containerlab's containers are docker's too
    for b in BACKENDS.values():
        for kind, items in b.leftovers(lab).items():
            found.setdefault(kind, {}).update(dict.fromkeys(items))
    return {kind: list(items) for kind, items in found.items() if items}


def leftover_runtime(lab: str) -> str:
    """The runtime whose nodes a lab without a state file left (down still finds them)."""
    return next((name for name, b in BACKENDS.items() if name != DEFAULT and any(b.leftovers(lab).values())),
                DEFAULT)
