"""Terraform's JSON configuration syntax (`*.tf.json`, as `vpnlab export --format
terraform` writes it) read as a state would be: variables from a tfvars JSON file or
their defaults, `${...}` interpolations of variables, names and IDs resolved, so that
the Terraform import maps it. A value it cannot resolve here is a placeholder."""
from __future__ import annotations

import json
import re

from vpnlab.importer.arm_expr import Unknown
from vpnlab.importer.terraform import PROVIDER
from vpnlab.model.yamlsrc import SourceError

INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
SEGMENTS = {"azurerm_virtual_network": "virtualNetworks", "azurerm_virtual_network_gateway": "virtualNetworkGateways",
            "azurerm_local_network_gateway": "localNetworkGateways", "azurerm_route_table": "routeTables",
            "azurerm_network_interface": "networkInterfaces", "azurerm_public_ip": "publicIPAddresses",
            "azurerm_virtual_network_gateway_connection": "connections",
            "azurerm_virtual_network_peering": "virtualNetworkPeerings"}


def is_config(doc: dict) -> bool:
    return isinstance(doc.get("resource"), dict) and not ("planned_values" in doc or "values" in doc)


class _Resolver:
    def __init__(self, doc: dict, tfvars: dict):
        declared = doc.get("variable", {})
        unknown = [k for k in tfvars if k not in declared]
        if unknown:
            raise SourceError(f"tfvars: {', '.join(unknown)}: not variables of the configuration; "
                              f"it has: {', '.join(declared) or '(none)'}")
        self.vars = {k: tfvars.get(k, spec.get("default", Unknown(f"variable {k} has no value")))
                     for k, spec in declared.items()}
        self.bodies = {f"{kind}.{local}": body for kind, by_name in doc["resource"].items()
                       for local, body in by_name.items()}
        self.values: dict[str, dict] = {}

    def resource(self, address: str) -> dict:
        if address not in self.values:
            if address not in self.bodies:
                raise SourceError(f"a reference to {address}, which the configuration does not declare")
            self.values[address] = {}                # a cycle resolves to nothing, not forever
            values = self.value(self.bodies[address])
            values["id"] = self.arm_id(address.split(".")[0], values)
            self.values[address] = values
        return self.values[address]

    def arm_id(self, kind: str, v: dict) -> str:
        if kind == "azurerm_subnet":
            return f"{PROVIDER}/virtualNetworks/{v.get('virtual_network_name')}/subnets/{v.get('name')}"
        if kind == "azurerm_virtual_network_gateway_nat_rule":
            gw = str(v.get("virtual_network_gateway_id", "")).rstrip("/").split("/")[-1]
            return f"{PROVIDER}/virtualNetworkGateways/{gw}/natRules/{v.get('name')}"
        return f"{PROVIDER}/{SEGMENTS.get(kind, kind)}/{v.get('name')}"

    def expression(self, expr: str):
        parts = expr.strip().split(".")
        if parts[0] == "var" and len(parts) == 2 and parts[1] in self.vars:
            return self.vars[parts[1]]
        if len(parts) == 3 and parts[0].startswith("azurerm_"):
            target = self.resource(f"{parts[0]}.{parts[1]}")
            return target.get(parts[2], Unknown(f"{expr} is known only after apply"))
        return Unknown(f"${{{expr}}} is not resolved by vpnlab import")

    def value(self, v):
        if isinstance(v, str):
            whole = INTERPOLATION.fullmatch(v)
            if whole:
                return self.expression(whole.group(1))
            parts = [self.expression(m.group(1)) for m in INTERPOLATION.finditer(v)]
            unknown = next((p for p in parts if isinstance(p, Unknown)), None)
            return unknown or INTERPOLATION.sub(lambda m: str(self.expression(m.group(1))), v)
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items() if k != "//"}
        return v


def as_state(doc: dict, tfvars: dict) -> dict:
    """The configuration as `terraform show -json` shows a state."""
    r = _Resolver(doc, tfvars)
    resources = []
    for address in r.bodies:
        kind, local = address.split(".", 1)
        resources.append({"address": address, "mode": "managed", "type": kind, "name": local,
                          "values": r.resource(address)})
    for kind, by_name in doc.get("data", {}).items():
        for local in by_name:
            resources.append({"address": f"data.{kind}.{local}", "mode": "data", "type": kind, "name": local,
                              "values": {}})
    return {"format_version": "1.0", "values": {"root_module": {"resources": resources}}}


def lab_settings(doc: dict) -> dict:
    """What vpnlab export keeps in the "//" comment: the lab's devices and clients."""
    try:
        return json.loads(doc.get("//", "{}")).get("vpnlab", {})
    except (TypeError, ValueError, AttributeError):
        return {}
