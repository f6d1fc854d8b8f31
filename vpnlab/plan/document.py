"""The plan as a saved document (plan.json in the lab's folder): written at `up` and at
every change of the running lab (an active-standby takeover), read by every later
command, so that what runs is what the plan says even when the topology file changed.

JSON of the plan's dataclasses, read back typed by pydantic (its TypeAdapter validates
nested dataclasses). Secrets (shared keys) are in it, as in the lab's copy of the
topology: the file is readable by root alone. `redacted` gives a copy without them, for
golden files and for showing."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from vpnlab.errors import LabError
from vpnlab.plan.parts import Plan

FORMAT = 1
SECRET_KEYS = {"secret", "password"}   # where a plan holds a shared key or a password
_ADAPTER = TypeAdapter(Plan)


def to_dict(plan: Plan) -> dict:
    return {"vpnlab_plan": FORMAT, "plan": asdict(plan)}


def from_dict(data: dict, where: str = "plan") -> Plan:
    if not isinstance(data, dict) or data.get("vpnlab_plan") != FORMAT:
        raise LabError(f"{where}: not a vpnlab plan of format {FORMAT}")
    try:
        return _ADAPTER.validate_python(data["plan"])
    except ValidationError as err:
        raise LabError(f"{where}: the saved plan does not read back: {err.errors()[0]}") from None


def save(plan: Plan, path: Path):
    """Atomic, and root's alone (shared keys)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(to_dict(plan), out, indent=1)
    tmp.replace(path)


def load(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LabError(f"{path}: cannot read the saved plan: {err}") from None
    return from_dict(data, str(path))


def redacted(plan: Plan) -> dict:
    """The document with every secret replaced (golden files, display)."""
    def scrub(value):
        if isinstance(value, dict):
            return {k: "(secret)" if k in SECRET_KEYS else scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value
    return scrub(to_dict(plan))
