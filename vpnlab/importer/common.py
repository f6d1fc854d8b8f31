"""What ARM and Terraform imports share: the report of what was not mapped, renamed,
remapped or left to fill in; lab names; public addresses moved into the lab's
documentation ranges; the topology written as YAML with its report on top."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import yaml

from vpnlab.model.defaults import defaults
from vpnlab.model.fields import NAME_RE
from vpnlab.model.yamlsrc import REQUIRED_TAG

# One field, three spellings: ARM's property, the topology's field, azurerm's argument.
POLICY_FIELDS = (("ikeEncryption", "ike_encryption", "ike_encryption"),
                 ("ikeIntegrity", "ike_integrity", "ike_integrity"),
                 ("dhGroup", "dh_group", "dh_group"),
                 ("ipsecEncryption", "ipsec_encryption", "ipsec_encryption"),
                 ("ipsecIntegrity", "ipsec_integrity", "ipsec_integrity"),
                 ("pfsGroup", "pfs_group", "pfs_group"),
                 ("saLifeTimeSeconds", "sa_lifetime_seconds", "sa_lifetime"),
                 ("saDataSizeKilobytes", "sa_datasize_kilobytes", "sa_datasize"))
PEERING_FLAGS = (("allowVirtualNetworkAccess", "allow_virtual_network_access", "allow_virtual_network_access"),
                 ("allowForwardedTraffic", "allow_forwarded_traffic", "allow_forwarded_traffic"),
                 ("allowGatewayTransit", "allow_gateway_transit", "allow_gateway_transit"),
                 ("useRemoteGateways", "use_remote_gateways", "use_remote_gateways"))


def write_private(path: Path, text: str):
    """A file that holds shared keys: made 0600 before a byte is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)              # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


# Legacy SKUs: Azure migrates them to these after September 2025 [FAQ, deprecation FAQ].
LEGACY_SKUS = {"Standard": "VpnGw1AZ", "HighPerformance": "VpnGw2AZ"}
SITE_ADDRESSES = IPv4Network("198.51.100.0/24")     # where remapped on-prem addresses go
FIRST_SITE_HOST = 10


@dataclass(frozen=True)
class Required:
    """A value the import could not know: written as `!required '<why>'`, which every
    command refuses (exit 2) until it is filled in."""
    why: str


@dataclass
class Report:
    source: str
    kind: str                                       # "ARM template", "Terraform plan", ...
    unmapped: list[tuple[str, str]] = field(default_factory=list)    # (what, why)
    changed: list[tuple[str, str]] = field(default_factory=list)     # (what, how)
    required: list[tuple[str, str]] = field(default_factory=list)    # (field path, why)

    def not_mapped(self, what: str, why: str):
        self.unmapped.append((what, why))

    def change(self, what: str, how: str):
        self.changed.append((what, how))

    def lines(self) -> list[str]:
        out = [f"imported from {self.source} ({self.kind}) by vpnlab import"]
        out += [f"not mapped: {what}: {why}" for what, why in self.unmapped]
        out += [f"changed: {what}: {how}" for what, how in self.changed]
        out += [f"fill in: {where}: {why}" for where, why in self.required]
        return out

    def as_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind,
                "not_mapped": [{"what": w, "why": y} for w, y in self.unmapped],
                "changed": [{"what": w, "how": h} for w, h in self.changed],
                "fill_in": [{"field": f, "why": y} for f, y in self.required]}


class Names:
    """Azure names to lab names (1-40 letters, digits, '-', '_'), the same one each time."""

    def __init__(self, report: Report):
        self.report, self.known = report, {}

    def __call__(self, azure_name: str) -> str:
        if azure_name in self.known:
            return self.known[azure_name]
        name = azure_name
        if not NAME_RE.fullmatch(name):
            name = re.sub(r"[^A-Za-z0-9_-]", "-", name).lstrip("-_")[:40] or "unnamed"
            taken = set(self.known.values())
            base, n = name[:37], 2
            while name in taken:
                name, n = f"{base}-{n}", n + 1
            self.report.change(f"name '{azure_name}'", f"'{name}' (the lab's names are 1-40 letters, digits, '-' or '_')")
        self.known[azure_name] = name
        return name


def move_site_addresses(topology: dict, report: Report):
    """On-prem public addresses outside the lab's documentation ranges move into
    198.51.100.0/24, reported: the lab's internet exists only on this machine."""
    allowed = [IPv4Network(n) for n in defaults()["internal"]["site_public"]]
    sites = topology.get("local_network_gateways", {})
    taken = {IPv4Address(s["gateway_ip"]) for s in sites.values()
             if isinstance(s.get("gateway_ip"), str) and any(IPv4Address(s["gateway_ip"]) in n for n in allowed)}
    free = (a for a in SITE_ADDRESSES.hosts() if int(a) - int(SITE_ADDRESSES.network_address) >= FIRST_SITE_HOST
            and a not in taken)
    for name, site in sites.items():
        ip = site.get("gateway_ip")
        if isinstance(ip, str) and any(IPv4Address(ip) in n for n in allowed):
            continue
        new = str(next(free))
        was = ip if isinstance(ip, str) else f"fqdn {site.pop('_fqdn', '?')}"
        site["gateway_ip"] = new
        report.change(f"local_network_gateways.{name}.gateway_ip",
                      f"{was} -> {new} (on-prem addresses come from the documentation ranges, inside the lab)")


def give_devices_a_lan(topology: dict, report: Report):
    """A BGP site whose address space is empty (Azure learns its networks over BGP) gets
    a LAN for the lab's device to announce, from 192.168.100.0/22 up, clear of every
    prefix in the design, reported."""
    used = [IPv4Network(p) for p in _prefixes(topology)]
    candidates = (n for n in IPv4Network("192.168.0.0/16").subnets(new_prefix=24)
                  if n.network_address >= IPv4Address("192.168.100.0") and not any(n.overlaps(u) for u in used))
    for name, site in topology.get("local_network_gateways", {}).items():
        device = site.get("device") or {}
        if site.get("bgp") and not site.get("address_space") and not device.get("lan_prefixes") \
                and site.get("managed", True):
            lan = next(candidates)
            site["device"] = {**device, "lan_prefixes": [str(lan)]}
            report.change(f"local_network_gateways.{name}.device.lan_prefixes",
                          f"{lan}: the networks the lab's device announces over BGP (the design does not say them)")


def _prefixes(data):
    if isinstance(data, str) and "/" in data:
        try:
            yield IPv4Network(data)
        except ValueError:
            pass
    elif isinstance(data, dict):
        for v in data.values():
            yield from _prefixes(v)
    elif isinstance(data, list):
        for v in data:
            yield from _prefixes(v)


def _required(dumper, value: Required):
    return dumper.represent_scalar(REQUIRED_TAG, value.why, style="'")


class _Dumper(yaml.SafeDumper):
    pass


def _scalar(v) -> bool:
    return not isinstance(v, (dict, list))


def _list(dumper, value: list):
    """Lists of plain values on one line ([10.0.0.0/16, ...]), others one item a line."""
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=all(map(_scalar, value)))


def _dict(dumper, value: dict):
    """Small mappings of plain values on one line ({address_prefix: ...}), others a key a line."""
    short = len(value) <= 3 and all(_scalar(v) and not isinstance(v, Required) for v in value.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=short)


_Dumper.add_representer(Required, _required)
_Dumper.add_representer(list, _list)
_Dumper.add_representer(dict, _dict)


def as_bool(v):
    """ARM and Terraform write booleans as strings too ("false")."""
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return v


def as_int(v):
    return int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v


def find_required(data, path: tuple = ()):
    """(dotted field path, why) of every placeholder."""
    if isinstance(data, Required):
        yield ".".join(map(str, path)), data.why
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from find_required(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from find_required(v, path + (i,))


def to_yaml(topology: dict, report: Report) -> str:
    head = "".join(f"# {line}\n" for line in report.lines())
    body = yaml.dump(prune(topology), Dumper=_Dumper, sort_keys=False, width=100)
    return head + body


def prune(data):
    """Empty mappings and lists left out, in the order the lab's files use."""
    if isinstance(data, dict):
        out = {k: prune(v) for k, v in data.items()}
        return {k: v for k, v in out.items() if v not in ({}, [], None)}
    if isinstance(data, list):
        return [prune(v) for v in data]
    return data
