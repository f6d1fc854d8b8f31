"""vpnlab lint: Azure's pitfalls and secure-configuration practice in a valid design.

The validator refuses what Azure refuses; lint reports what Azure accepts but what fails
in maintenance, on a rekey or in an audit. Each finding names its rule (rules.yaml: id,
severity, reason, fix, Microsoft's source), the file, the line and the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from vpnlab.lint.checks import CHECKS
from vpnlab.model.topology import Topology, load_with_source
from vpnlab.model.yamlsrc import Source, shown

SEVERITIES = ("error", "warning", "note")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    file: str
    line: int | None
    field: str                # dotted field path
    message: str

    def text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.field}: {self.message} [{self.rule}]"

    def as_dict(self) -> dict:
        return asdict(self)


@cache
def catalogue() -> dict:
    """rules.yaml: {"sources": key -> {title, url}, "rules": id -> {severity, title, ...}}."""
    data = yaml.safe_load(resources.files(__package__).joinpath("rules.yaml").read_text())
    rules = data["rules"]
    if set(rules) != set(CHECKS):          # a rule without its check, or the other way round
        raise RuntimeError(f"rules.yaml and checks.py differ: {sorted(set(rules) ^ set(CHECKS))}")
    return data


def lint_topology(topology: Topology, source: Source) -> list[Finding]:
    rules = catalogue()["rules"]
    found = []
    for rule_id, fn in CHECKS.items():
        for loc, message in fn(topology):
            found.append(Finding(rule_id, rules[rule_id]["severity"], str(source.path), source.line(loc),
                                 ".".join(shown(p) for p in loc), message))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda f: (order[f.severity], f.line or 0, f.rule))


def lint_file(path: Path | str) -> list[Finding]:
    """The findings of a topology file; SourceError (exit 2) when it is not valid."""
    return lint_topology(*load_with_source(path))


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
