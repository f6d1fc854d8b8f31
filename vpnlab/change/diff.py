"""What a new topology changes in a running design, in Azure's resources: each resource
added, removed or changed (its changed fields), with Azure's documented impact
(impacts.yaml) and whether Azure, or the lab's apply, refuses it."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel, SecretStr

from vpnlab.model.topology import Topology

KINDS = ("virtual_networks", "route_tables", "virtual_network_gateways", "local_network_gateways",
         "connections", "clients", "metric_alerts", "radius_hosts")
# impacts in rising order: a change's impact is the worst of its fields'
ORDER = ("none", "may-disconnect", "ike-restart", "tunnel-reset", "downtime", "recreate")
SECRET = "(secret)"


@cache
def table() -> dict:
    return yaml.safe_load(resources.files("vpnlab.change").joinpath("impacts.yaml").read_text())


@dataclass
class FieldChange:
    path: str
    old: object
    new: object
    impact: str
    source: str
    says: str = ""
    unconfirmed: str = ""
    lab: str = ""            # why the lab's apply cannot make it yet ("" when it can)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None) or k in ("old", "new")}


@dataclass
class Change:
    kind: str                # a key of Topology: connections, local_network_gateways, ...
    name: str
    action: str              # add | remove | change
    fields: list[FieldChange] = field(default_factory=list)
    refused: str = ""        # Azure refuses it (recreate, an impossible resize)
    refused_at: str = ""     # the field it refuses
    lab: str = ""            # the lab's apply cannot make it yet

    @property
    def impact(self) -> str:
        return max((f.impact for f in self.fields), key=ORDER.index, default="none")

    @property
    def address(self) -> str:
        return f"{self.kind}.{self.name}"

    def to_json(self) -> dict:
        return {"resource": self.address, "action": self.action, "impact": self.impact,
                "meaning": table()["meaning"][self.impact], "refused": self.refused or None,
                "not_applied_by_the_lab": self.lab or None,
                "fields": [f.to_json() for f in self.fields]}


def changes(old: Topology, new: Topology) -> list[Change]:
    """Every resource the new topology adds, removes or changes, in Topology's order."""
    out = []
    for kind in KINDS:
        before, after = getattr(old, kind), getattr(new, kind)
        for name in [*before, *(n for n in after if n not in before)]:
            if name not in after or name not in before:
                row = table()["lifecycle"][kind]
                action = "remove" if name not in after else "add"
                out.append(Change(kind, name, action, [FieldChange("", None, None, row["impact"], row["source"],
                                                                   row.get("says", ""), row.get("unconfirmed", ""))],
                                  lab=row.get("lab", "")))
            else:
                fields = field_changes(kind, flat(before[name]), flat(after[name]))
                if fields:
                    out.append(_judged(Change(kind, name, "change", fields), old, new))
    return out


def field_changes(kind: str, before: dict, after: dict) -> list[FieldChange]:
    out = []
    for path in [*before, *(p for p in after if p not in before)]:
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        row = impact_row(kind, path)
        secret = _has_secret(a) or _has_secret(b)
        out.append(FieldChange(path, SECRET if secret else a, SECRET if secret else b, row["impact"],
                               row["source"], row.get("says", ""), row.get("unconfirmed", ""),
                               row.get("lab", "")))
    return out


def impact_row(kind: str, path: str) -> dict:
    for row in table()["impacts"].get(kind, []):
        if fnmatch.fnmatchcase(path, row["field"]):
            return row
    return {"impact": "none", "source": "LAB", "lab": f"{kind} field {path} is not applied to a running lab yet"}


class _Secret(str):
    """A secret's value, kept for comparison only: it is never shown."""
    def __repr__(self):
        return SECRET


def _has_secret(value) -> bool:
    """A value holds a secret anywhere (a list of models with one): shown whole as (secret)."""
    if isinstance(value, dict):
        return any(_has_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_secret(v) for v in value)
    return isinstance(value, _Secret)


def flat(value, prefix: str = "") -> dict:
    """A resource as {field path: value}: models and dicts go deeper, lists are values
    (their order matters to Azure: a policy list, a prefix list)."""
    if isinstance(value, BaseModel):
        items = {k: getattr(value, k) for k in type(value).model_fields}
    elif isinstance(value, dict):
        items = value
    else:
        return {prefix: _plain(value)}
    out = {}
    for k, v in items.items():
        out |= flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _plain(value):
    if isinstance(value, SecretStr):
        return _Secret(value.get_secret_value())
    if isinstance(value, list):
        return [_plain(v) if not isinstance(v, BaseModel) else flat(v) for v in value]
    if isinstance(value, BaseModel):
        return flat(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


# ------------------------------------------------------------------ Azure's rules
def _judged(change: Change, old: Topology, new: Topology) -> Change:
    """Azure's refusals, and what the lab cannot do yet, on a changed resource."""
    recreate = [f for f in change.fields if f.impact == "recreate"]
    if recreate:
        change.refused = "; ".join(f"{f.path}: {f.says} [{f.source}]" for f in recreate)
    elif change.kind == "virtual_network_gateways":
        change.refused_at = "sku"
        change.refused = sku_refusal(old.virtual_network_gateways[change.name].sku,
                                     new.virtual_network_gateways[change.name].sku)
    elif change.kind == "virtual_networks":
        change.refused_at, change.refused = subnet_refusal(old, new, change.name)
    change.lab = "; ".join(dict.fromkeys(f.lab for f in change.fields if f.lab))
    return change


def subnet_refusal(old: Topology, new: Topology, vnet: str) -> tuple[str, str]:
    """Azure changes a subnet's range "if no resources are deployed within the subnet"
    [SUBNETMANAGE]: a VM that stays in it, or the gateway in GatewaySubnet, keeps it.
    (field path, why), or ("", "")."""
    before, after = old.virtual_networks[vnet].subnets, new.virtual_networks[vnet].subnets
    has_gateway = any(gw.virtual_network == vnet for gw in new.virtual_network_gateways.values())
    for name in sorted(set(before) & set(after)):
        if before[name].address_prefix == after[name].address_prefix:
            continue
        stay = sorted(set(before[name].vm_names()) & set(after[name].vm_names()))
        if name == "GatewaySubnet" and has_gateway:
            stay.append("the virtual network gateway")
        if stay:
            return (f"subnets.{name}.address_prefix",
                    f"subnets.{name}.address_prefix {before[name].address_prefix} -> {after[name].address_prefix}: "
                    f"a subnet's address range can change only if no resources are deployed in it; "
                    f"move or delete {', '.join(stay)} first [SUBNETMANAGE]")
    return "", ""


_SKU = re.compile(r"^VpnGw(\d)(AZ)?$")


def sku_refusal(old: str, new: str) -> str:
    """Why Azure refuses to move a gateway from SKU old to new in place ("" when it
    upgrades it) [SKUUP]."""
    if old == new:
        return ""
    if "Basic" in (old, new):
        return (f"sku {old} -> {new}: a Basic gateway can't be upgraded, nor another SKU moved to "
                "Basic; delete the gateway and create it again [SKUUP]")
    (tier_a, az_a), (tier_b, az_b) = (_SKU.match(s).groups() for s in (old, new))
    if int(tier_b) < int(tier_a) or (az_a and not az_b):
        return (f"sku {old} -> {new}: a SKU can't be downgraded without deleting the gateway "
                "and creating it again [SKUUP]")
    return ""


def impact_table() -> str:
    """impacts.yaml as the Markdown table of docs/rehearsing-a-change.md (a test keeps
    the page in step with the data)."""
    rows = ["| resource | field | Azure's impact | Azure says | source | the lab | UNCONFIRMED |",
            "|---|---|---|---|---|---|---|"]
    cell = lambda text: (text or "").replace("|", "\\|")
    for kind, fields in table()["impacts"].items():
        for r in fields:
            rows.append(f"| {kind} | `{r['field']}` | {table()['meaning'][r['impact']]} | {cell(r.get('says'))} "
                        f"| {r['source']} | {cell(r.get('lab')) or 'applies it'} | {cell(r.get('unconfirmed'))} |")
    for kind, r in table()["lifecycle"].items():
        rows.append(f"| {kind} | (added or removed) | {table()['meaning'][r['impact']]} | {cell(r.get('says'))} "
                    f"| {r['source']} | {cell(r.get('lab')) or 'applies it'} | {cell(r.get('unconfirmed'))} |")
    return "\n".join(rows) + "\n"
