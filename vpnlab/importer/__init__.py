"""vpnlab import: a real design (ARM template, Bicep compiled to ARM, Terraform's plan or
state JSON, or its JSON configuration syntax) as a lab topology, with a report of what could not be mapped, what was
renamed or moved into the lab's address ranges, and what is left to fill in."""
from __future__ import annotations

import json
from pathlib import Path

from vpnlab.importer import tf_config
from vpnlab.importer.arm import import_arm
from vpnlab.importer.common import (
    Report,
    find_required,
    give_devices_a_lan,
    move_site_addresses,
    to_yaml,
)
from vpnlab.importer.terraform import import_terraform
from vpnlab.model.yamlsrc import SourceError


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return data


def kind_of(doc: dict) -> str:
    if tf_config.is_config(doc):
        return "Terraform configuration"
    if "planned_values" in doc:
        return "Terraform plan"
    if "values" in doc and "format_version" in doc:
        return "Terraform state"
    if "resources" in doc and "deploymentTemplate" in str(doc.get("$schema", "")) or "resources" in doc:
        return "ARM template"
    raise SourceError("not an ARM template (resources) nor Terraform's JSON (planned_values or values); "
                      "for Bicep, compile it first: az bicep build --file main.bicep")


def import_file(path: Path | str, parameters: Path | str | None = None) -> tuple[dict, Report]:
    """The topology (plain data, placeholders as Required) and the report."""
    path = Path(path)
    doc = _json(path)
    try:
        kind = kind_of(doc)
    except SourceError as e:
        raise SourceError(f"{path}: {e}") from None
    report = Report(str(path), kind)
    try:
        topology = _import(doc, kind, path, parameters, report)
        move_site_addresses(topology, report)
        give_devices_a_lan(topology, report)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        # a shape the import does not expect (a resource without "type", an address that
        # is not one): bad input, named, never a traceback
        raise SourceError(f"{path}: cannot read it ({kind}): {type(e).__name__}: {e}") from None
    report.required = list(find_required(topology))
    return topology, report


def _import(doc: dict, kind: str, path: Path, parameters, report: Report) -> dict:
    if kind == "ARM template":
        given = _json(Path(parameters)).get("parameters", {}) if parameters else {}
        topology = import_arm(doc, given, report)
    elif kind == "Terraform configuration":
        tfvars = _json(Path(parameters)) if parameters else {}
        topology = import_terraform(tf_config.as_state(doc, tfvars), report, tf_config.lab_settings(doc))
    else:
        if parameters:
            raise SourceError(f"{parameters}: --parameters is for ARM templates and Terraform configurations "
                              "(a tfvars JSON file); a plan or state holds its variables")
        topology = import_terraform(doc, report)
    return topology


__all__ = ["import_file", "to_yaml", "Report"]
