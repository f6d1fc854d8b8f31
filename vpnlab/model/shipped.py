"""The topologies that come with vpnlab: `topologies/` of the checkout, packaged in the
wheel as `vpnlab/topologies/`. A command's FILE may name one by its stem."""
from __future__ import annotations

from pathlib import Path

DEFAULT = "active-active-bgp"


def folder() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "topologies", package.parent / "topologies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no topologies beside {package}: a broken installation")


def names() -> list[str]:
    return sorted(p.stem for p in folder().glob("*.yaml"))


def default() -> Path:
    return folder() / f"{DEFAULT}.yaml"


def resolve(file: str | Path | None) -> Path:
    """A topology file: the one given, else a shipped topology of that name, else the
    default (active-active-bgp)."""
    if file is None:
        return default()
    path = Path(file)
    if path.exists() or path.suffix or "/" in str(file):
        return path
    shipped = folder() / f"{file}.yaml"
    return shipped if shipped.exists() else path
