"""Topology files in Azure's vocabulary: the pydantic model and its validation.

Property names follow ARM/Terraform (snake_case) so that a design maps one to one.
`load()` returns a validated Topology or raises SourceError naming file, line, field
path and what is allowed; nothing is started before this succeeds.
"""
from __future__ import annotations

import typing
from collections import Counter
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    Strict,
    ValidationError,
)

from vpnlab.model import names, nat_rules
from vpnlab.model.defaults import defaults, reserved_site_asn, reserved_site_asn_text
from vpnlab.model.fields import Address, Asn, Int32, Name, Prefix
from vpnlab.model.monitoring import MetricAlert, alert_errors
from vpnlab.model.p2s_rules import p2s_errors
from vpnlab.model.yamlsrc import Source, SourceError, paused_gc
from vpnlab.model.yamlsrc import load as load_yaml

SKUS = tuple(defaults()["skus"])
FIRST_VM_HOST = 4          # Azure reserves .1-.3 of every subnet
FIRST_SITE_HOST = 10       # a site's hosts: .10 on of its first LAN prefix (the device is .1)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VirtualMachine(Model):
    """A VM written as a mapping, for its NIC's settings. ip_forwarding_enabled (Azure's
    NIC setting, Terraform `ip_forwarding_enabled`) makes it a network virtual appliance:
    it forwards what it receives, and route tables may name it as a next hop.
    private_ip_address: the NIC's static address (ARM `privateIPAllocationMethod:
    Static`, Terraform `private_ip_address_allocation = "Static"`) [IPADDR]; without it,
    the lowest free one (Dynamic)."""
    name: Name
    ip_forwarding_enabled: bool = False
    private_ip_address: Optional[Address] = None


class Subnet(Model):
    address_prefix: IPv4Network
    vms: list[Union[Name, VirtualMachine]] = []     # a name, or a VM with NIC settings
    route_table: Optional[Name] = None              # a key of route_tables

    def vm_names(self) -> list[str]:
        return [v if isinstance(v, str) else v.name for v in self.vms]


class VirtualNetworkPeering(Model):
    """One direction of a peering (ARM `virtualNetworkPeerings`, Terraform
    `azurerm_virtual_network_peering`) [PEER]. Azure needs both directions."""
    remote_virtual_network: Name
    allow_virtual_network_access: bool = True
    allow_forwarded_traffic: bool = False
    allow_gateway_transit: bool = False
    use_remote_gateways: bool = False


class VirtualNetwork(Model):
    address_space: list[Prefix] = Field(min_length=1)
    subnets: dict[Name, Subnet] = {}
    peerings: dict[Name, VirtualNetworkPeering] = {}


NextHopType = Literal["VirtualNetworkGateway", "VnetLocal", "Internet", "VirtualAppliance", "None"]


class UserRoute(Model):
    """A user-defined route (ARM `routes`, Terraform `route`) [UDR]."""
    address_prefix: Prefix
    next_hop_type: NextHopType
    next_hop_in_ip_address: Optional[Address] = None    # VirtualAppliance only


class RouteTable(Model):
    """A route table, associated with subnets by their `route_table` [UDR]."""
    routes: dict[Name, UserRoute] = {}
    bgp_route_propagation_enabled: bool = True


class InstancePeering(Model):
    """BGP peering addresses of one gateway instance (Terraform `peering_addresses`)."""
    apipa_addresses: list[Address] = []


class GatewayBgp(Model):
    asn: Asn = defaults()["azure"]["asn"]
    peering_addresses: list[InstancePeering] = []


class RootCertificate(Model):
    """A trusted root for P2S client certificates. The lab makes the CA (and the client
    certificates it issues): Azure stores only its public part."""
    name: Name


class RevokedCertificate(Model):
    """A client certificate the gateway refuses, by thumbprint (Azure's way), or by the
    name of a certificate the lab issues (the lab fills in its thumbprint)."""
    name: Name
    thumbprint: Optional[Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{40}$")]] = None
    certificate: Optional[Name] = None


UserName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]


class RadiusServer(Model):
    """One of the gateway's RADIUS servers (ARM `radiusServers`, Terraform
    `radius_server`, New-AzRadiusServer) [RADIUSGW]. score: Azure's radiusServerScore;
    the lab gives it to strongSwan as the server's preference (UNCONFIRMED)."""
    address: Address
    secret: SecretStr
    score: Int32 = Field(default=1, ge=1)


class VpnClientConfiguration(Model):
    """Point-to-site [6] (ARM `vpnClientConfiguration`). RADIUS: one server
    (radius_server_address and radius_server_secret) or several (radius_servers)."""
    address_pool: list[Prefix] = Field(min_length=1)
    vpn_client_protocols: list[Literal["IkeV2", "OpenVPN", "SSTP"]] = Field(
        default=["IkeV2", "OpenVPN"], min_length=1)
    vpn_auth_types: list[Literal["Certificate", "AAD", "Radius"]] = ["Certificate"]
    root_certificates: list[RootCertificate] = []
    revoked_certificates: list[RevokedCertificate] = []
    custom_routes: list[Prefix] = []
    radius_server_address: Optional[Address] = None
    radius_server_secret: Optional[SecretStr] = None
    radius_servers: list[RadiusServer] = []

    def radius(self) -> list[RadiusServer]:
        """The RADIUS servers, in either form."""
        if self.radius_server_address is not None and self.radius_server_secret is not None:
            return [RadiusServer(address=self.radius_server_address, secret=self.radius_server_secret)]
        return list(self.radius_servers)


class RadiusHost(Model):
    """FreeRADIUS run by the lab on a VM or an on-prem host (the customer's RADIUS/NPS
    server): the users it knows. The gateways that name its address are its clients."""
    users: dict[UserName, SecretStr] = Field(min_length=1)


class NatMapping(Model):
    """One side of a NAT rule (ARM `internalMappings`/`externalMappings`, Terraform
    `internal_mapping`/`external_mapping`) [7.2]: one prefix, optionally a port range."""
    address_space: Prefix
    port_range: Optional[Annotated[str, Field(pattern=r"^[0-9]{1,5}-[0-9]{1,5}$")]] = None


class NatRule(Model):
    """A NAT rule of the gateway (ARM `natRules`, Terraform
    `azurerm_virtual_network_gateway_nat_rule`) [7.2]. IngressSnat maps an on-prem space,
    EgressSnat the VNet's; connections name the rules they use."""
    type: Literal["Static", "Dynamic"] = "Static"
    mode: Literal["IngressSnat", "EgressSnat"] = "EgressSnat"
    internal_mappings: list[NatMapping] = Field(min_length=1)
    external_mappings: list[NatMapping] = Field(min_length=1)
    # which public IP configuration (instance) applies the rule: `default` (instance 0, or
    # the active instance of an active-standby gateway) or `activeActive` (instance 1).
    # None: every instance (the lab's reading; Azure's default is UNCONFIRMED)
    ip_configuration_id: Optional[Literal["default", "activeActive"]] = None


class VirtualNetworkGateway(Model):
    virtual_network: Name
    sku: Literal[SKUS]  # type: ignore[valid-type]
    # Azure's gateway generation [2.1]: the throughput benchmark differs for VpnGw2/3
    generation: Optional[Literal["Generation1", "Generation2"]] = None   # None: the SKU's default
    vpn_type: Literal["RouteBased", "PolicyBased"] = "RouteBased"
    active_active: bool = False
    bgp: Optional[GatewayBgp] = None
    vpn_client_configuration: Optional[VpnClientConfiguration] = None
    # forced tunnelling with static routing: the site Internet-bound traffic goes to
    # (ARM `gatewayDefaultSite`, Set-AzVirtualNetworkGatewayDefaultSite) [7.3]
    gateway_default_site: Optional[Name] = None
    nat_rules: dict[Name, NatRule] = {}
    # translate the routes learned and advertised on connections with NAT rules [7.2]
    enable_bgp_route_translation_for_nat: bool = False


class SiteBgp(Model):
    asn: Asn
    peering_address: Address


class BehindNat(Model):
    """An ISP's NAT router between the device and the lab's internet: the local network
    gateway's gateway_ip is the NAT's public address, the device has a private one.
    carrier_grade: the ISP's carrier-grade NAT, with the shared address space (RFC 6598,
    100.64.0.0/10) between the device and it, and random source ports."""
    carrier_grade: bool = False


class Device(Model):
    """The on-prem device the lab runs behind a local network gateway."""
    lan_prefixes: list[Prefix] = []   # default: the gateway's address_space
    hosts: list[Name] = []                 # default: one host named <site>-host
    # the active-active gateway instances the device builds tunnels to (default: all);
    # [0] is the half-configured design that loses traffic when instance 0 is serviced
    connect_to_instances: list[Literal[0, 1]] = Field(default=[0, 1], min_length=1)
    # the device advertises 0.0.0.0/0 over BGP: forced tunnelling with BGP [7.3]
    advertise_default_route: bool = False
    # the device sits behind an ISP's NAT; Azure cannot dial it, it must dial [1.3]
    behind_nat: Optional[BehindNat] = None


class LocalNetworkGateway(Model):
    gateway_ip: Address
    # Azure: at most 1,000 address prefixes per local network gateway [2.3]
    address_space: list[Prefix] = Field(default=[], max_length=defaults()["azure"]["lng_max_prefixes"])
    bgp: Optional[SiteBgp] = None
    # false: the lab builds no device; the user brings one (`vpnlab attach SITE --netns NS`)
    managed: bool = True
    device: Device = Device()


IkeEncryption = Literal["GCMAES256", "GCMAES128", "AES256", "AES192", "AES128"]
IkeIntegrity = Literal["SHA384", "SHA256", "SHA1", "MD5"]
DhGroup = Literal["DHGroup24", "ECP384", "ECP256", "DHGroup14", "DHGroup2048", "DHGroup2",
                  "DHGroup1", "None"]
IpsecEncryption = Literal["GCMAES256", "GCMAES192", "GCMAES128", "AES256", "AES192", "AES128",
                          "DES3", "DES", "None"]
IpsecIntegrity = Literal["GCMAES256", "GCMAES192", "GCMAES128", "SHA256", "SHA1", "MD5"]
PfsGroup = Literal["PFS24", "ECP384", "ECP256", "PFS2048", "PFS2", "PFS1", "None"]


class IpsecPolicy(Model):
    """Custom IPsec/IKE policy: every field is required (Azure refuses partial policies)."""
    ike_encryption: IkeEncryption
    ike_integrity: IkeIntegrity
    dh_group: DhGroup
    ipsec_encryption: IpsecEncryption
    ipsec_integrity: IpsecIntegrity
    pfs_group: PfsGroup
    sa_lifetime_seconds: Int32 = Field(default=27000, ge=300)
    sa_datasize_kilobytes: Int32 = Field(default=102400000, ge=1024)


DPD = defaults()["azure"]["dpd_timeout_seconds"]
# Bounds of their own: Int32's upper bound, in the annotation, would win over a Field's.
DpdSeconds = Annotated[int, Strict(), Field(ge=DPD["min"], le=DPD["max"])]
ClientCount = Annotated[int, Strict(), Field(ge=1, le=10000)]


class CustomBgpAddresses(Model):
    """Which custom APIPA address each gateway instance peers from on this connection
    (Terraform `custom_bgp_addresses`; ARM `gatewayCustomBgpIpAddresses`) [4.3]."""
    primary: Address                  # one of instance 0's apipa_addresses
    secondary: Optional[Address] = None   # one of instance 1's (active-active)


class Connection(Model):
    """IPsec: to a local network gateway. Vnet2Vnet: to another virtual network gateway;
    Azure has one connection resource per direction [7.1], so a pair is two entries."""
    type: Literal["IPsec", "Vnet2Vnet"] = "IPsec"
    virtual_network_gateway: Name
    local_network_gateway: Optional[Name] = None         # IPsec
    peer_virtual_network_gateway: Optional[Name] = None  # Vnet2Vnet
    shared_key: SecretStr
    connection_protocol: Literal["IKEv1", "IKEv2"] = "IKEv2"
    enable_bgp: bool = False
    dpd_timeout_seconds: DpdSeconds = DPD["default"]
    ipsec_policies: list[IpsecPolicy] = Field(default=[], max_length=1)
    use_policy_based_traffic_selectors: bool = False
    connection_mode: Literal["Default", "InitiatorOnly", "ResponderOnly"] = "Default"
    custom_bgp_addresses: Optional[CustomBgpAddresses] = None
    ingress_nat_rule_ids: list[Name] = []     # IngressSnat rules of the gateway [7.2]
    egress_nat_rule_ids: list[Name] = []      # EgressSnat rules of the gateway [7.2]


class Client(Model):
    """A point-to-site client the lab runs on its internet. count > 1: a crowd, one
    namespace and one charon with count identities (<certificate>-1 ...), for scale."""
    virtual_network_gateway: Name
    protocol: Literal["IkeV2", "OpenVPN", "SSTP"]
    # RADIUS authentication [RADIUSGW]: the user name and password the client gives
    # (EAP-MSCHAPv2 over IKEv2, user name and password over OpenVPN); without them, a
    # client certificate
    username: Optional[UserName] = None
    password: Optional[SecretStr] = None
    certificate: Optional[Name] = None    # default: the client's name
    issued_by: Optional[Name] = None      # a root certificate; default: the gateway's first.
    #                                       Another name: a CA the gateway does not trust
    count: ClientCount = 1
    # Windows' IKEv2 client takes only the VNet's routes (and the pool, custom routes),
    # not the sites' [6 P2SRT]
    os: Literal["Linux", "Windows"] = "Linux"

    def identities(self, name: str) -> list[str]:
        """The client certificates' names (their subject CN)."""
        cert = self.certificate or name
        return [cert] if self.count == 1 else [f"{cert}-{i}" for i in range(1, self.count + 1)]

    @property
    def uses_radius(self) -> bool:
        return self.username is not None


class Topology(Model):
    virtual_networks: dict[Name, VirtualNetwork]
    virtual_network_gateways: dict[Name, VirtualNetworkGateway] = {}
    local_network_gateways: dict[Name, LocalNetworkGateway] = {}
    connections: dict[Name, Connection] = {}
    clients: dict[Name, Client] = {}
    route_tables: dict[Name, RouteTable] = {}
    metric_alerts: dict[Name, MetricAlert] = {}     # Azure Monitor alert rules (monitoring.py)
    radius_hosts: dict[Name, RadiusHost] = {}       # VMs and on-prem hosts running FreeRADIUS
    # dynamic addresses VMs of a running lab hold (Azure keeps them until the NIC is
    # deleted or moved to another subnet [IPADDR]): vm -> address
    _held: dict = PrivateAttr(default_factory=dict)

    def holding(self, addresses: dict[str, IPv4Address]) -> Topology:
        """This topology with the addresses a running lab's VMs hold kept: a VM removed
        before others leaves theirs as they are, as in Azure."""
        t = self.model_copy()
        t._held = dict(addresses)
        return t

    def site_lan(self, site: str) -> list[IPv4Network]:
        """The device's LAN prefixes: device.lan_prefixes, else the address space less
        host routes (a /32 there is usually the BGP peer, not a LAN)."""
        lng = self.local_network_gateways[site]
        return list(lng.device.lan_prefixes or [p for p in lng.address_space if p.prefixlen <= 30])

    def subnet_vms(self, vnet: str, subnet: str) -> list[str]:
        """Every VNet subnet gets at least one VM to send traffic from."""
        if subnet == "GatewaySubnet":
            return []
        return self.virtual_networks[vnet].subnets[subnet].vm_names() or [f"{vnet}-{subnet}-vm"]

    def appliances(self, vnet: str) -> dict[str, str]:
        """VM name -> subnet, of the VNet's VMs with IP forwarding."""
        return {v.name: sub_name for sub_name, sub in self.virtual_networks[vnet].subnets.items()
                for v in sub.vms if isinstance(v, VirtualMachine) and v.ip_forwarding_enabled}

    def vm_address(self, vnet: str, vm: str) -> IPv4Address:
        for sub_name in self.virtual_networks[vnet].subnets:
            addresses = self.subnet_addresses(vnet, sub_name)
            if vm in addresses:
                return addresses[vm]
        raise KeyError(vm)

    def subnet_addresses(self, vnet: str, subnet: str) -> dict[str, IPv4Address]:
        """Each VM's private address: its static one, or (dynamic) the one it holds in
        a running lab, or the lowest free one from .4 on (Azure reserves .0-.3 and the
        last [IPADDR]), in the subnet's VM order."""
        sub = self.virtual_networks[vnet].subnets[subnet]
        vms = self.subnet_vms(vnet, subnet)
        out = {v.name: v.private_ip_address for v in sub.vms
               if isinstance(v, VirtualMachine) and v.private_ip_address is not None}
        for vm in vms:            # held by a running lab's VM: kept, unless a static one took it
            held = self._held.get(vm)
            if vm not in out and held and held in sub.address_prefix and held not in out.values():
                out[vm] = held
        taken = set(out.values())
        free = sub.address_prefix.network_address + FIRST_VM_HOST
        for vm in vms:
            if vm not in out:
                while free in taken:
                    free += 1
                out[vm] = free
                taken.add(free)
        return {vm: out[vm] for vm in vms}

    def peered(self, vnet: str) -> dict[str, VirtualNetworkPeering]:
        """Remote VNet -> this VNet's peering to it, where both directions exist."""
        return self._peerings[vnet]

    def gateway_of(self, vnet: str) -> Optional[str]:
        """The gateway in the VNet, or the remote gateway it uses through a peering."""
        return self._gateways.get(vnet) or self._gateways.get(self._hubs[vnet])

    def transit_hub(self, vnet: str) -> Optional[str]:
        """The VNet whose gateway this VNet uses (use_remote_gateways, allowed by the hub)."""
        return self._hubs[vnet]

    def spokes(self, vnet: str) -> list[str]:
        """The VNets that use this VNet's gateway."""
        return sorted(v for v, hub in self._hubs.items() if hub == vnet)

    # The model is frozen: what peerings and gateways make of it is worked out once (a
    # plan asks for every connection's gateway prefixes).
    @cached_property
    def _gateways(self) -> dict[str, str]:
        """VNet -> the gateway in it (the first by name where validation will refuse two)."""
        out = {}
        for name, gw in self.virtual_network_gateways.items():
            out.setdefault(gw.virtual_network, name)
        return out

    @cached_property
    def _peerings(self) -> dict[str, dict[str, VirtualNetworkPeering]]:
        vnets = self.virtual_networks
        back = {(v, p.remote_virtual_network) for v, vnet in vnets.items() for p in vnet.peerings.values()}
        return {v: {p.remote_virtual_network: p for p in vnet.peerings.values()
                    if p.remote_virtual_network in vnets and (p.remote_virtual_network, v) in back}
                for v, vnet in vnets.items()}

    @cached_property
    def _hubs(self) -> dict[str, Optional[str]]:
        def hub(vnet: str) -> Optional[str]:
            for remote, p in self._peerings[vnet].items():
                if p.use_remote_gateways and self._peerings[remote][vnet].allow_gateway_transit \
                        and remote in self._gateways:
                    return remote
            return None
        return {v: hub(v) for v in self.virtual_networks}

    def gateway_prefixes(self, gw_name: str) -> list[IPv4Network]:
        """What a gateway routes to the VNet side: its VNet and its spokes' address spaces."""
        vnet = self.virtual_network_gateways[gw_name].virtual_network
        return [p for v in (vnet, *self.spokes(vnet)) for p in self.virtual_networks[v].address_space]

    def connection_prefixes(self, gw_name: str) -> list[IPv4Network]:
        """What a gateway routes through its connections, in connection name order: each
        site's address space (and over BGP the lab's device's LAN) as its IngressSnat
        rules translate it [7.2], each VNet-to-VNet peer's address space."""
        out = []
        for name, c in sorted(self.connections.items()):
            if c.virtual_network_gateway != gw_name:
                continue
            if c.type == "Vnet2Vnet":
                peer = self.virtual_network_gateways[c.peer_virtual_network_gateway]
                out += self.virtual_networks[peer.virtual_network].address_space
                continue
            lng = self.local_network_gateways[c.local_network_gateway]
            site = list(lng.address_space)
            if c.enable_bgp and lng.managed:
                site += self.site_lan(c.local_network_gateway)
            out += [seen for p in site for seen in nat_rules.view(self, name, nat_rules.INGRESS, p)]
        return list(dict.fromkeys(out))

    def site_hosts(self, site: str) -> list[str]:
        lng = self.local_network_gateways[site]
        if not lng.managed:
            return []
        return list(lng.device.hosts or [f"{site}-host"])

    def host_place(self, host: str) -> Optional[tuple[str, str, IPv4Address]]:
        """Where a VM or an on-prem host is: ("vnet", VNet, address) or ("site", site,
        address); None if no VM or site host has that name."""
        for vnet_name, vnet in self.virtual_networks.items():
            for sub_name in vnet.subnets:
                addresses = self.subnet_addresses(vnet_name, sub_name)
                if host in addresses:
                    return "vnet", vnet_name, addresses[host]
        for site in self.local_network_gateways:
            hosts = self.site_hosts(site)
            if host in hosts and self.site_lan(site):
                return "site", site, self.site_lan(site)[0].network_address + FIRST_SITE_HOST + hosts.index(host)
        return None


# ---------------------------------------------------------------- validation

def load(path: Path | str) -> Topology:
    return load_with_source(path)[0]


def load_with_source(path: Path | str) -> tuple[Topology, Source]:
    """The validated topology and its source (field paths to lines), for messages about
    a valid design (vpnlab lint)."""
    with paused_gc():
        return _load(path)


def _load(path: Path | str) -> tuple[Topology, Source]:
    source = load_yaml(path)
    if not isinstance(source.data, dict):
        raise SourceError(f"{source.path}: expected a mapping with virtual_networks, "
                          "virtual_network_gateways, local_network_gateways, connections")
    try:
        topology = Topology.model_validate(source.data)
    except ValidationError as err:
        raise SourceError(_format_pydantic(source, err)) from None
    problems = list(semantic_errors(topology))
    if problems:
        raise SourceError("\n".join(f"{source.where(loc)}: {msg}" for loc, msg in problems))
    return topology, source


def _format_pydantic(source: Source, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _fields_at(loc[:-1])
            msg = f"unknown field '{loc[-1]}'; allowed: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{source.where(loc)}: {msg}")
    return "\n".join(lines)


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at a field path, for 'allowed' lists."""
    current: object = Topology
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            current = current.model_fields[part].annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else current
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(tp):
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _names(d: dict) -> str:
    return ", ".join(sorted(d)) or "(none defined)"


def _reserved_nets(t: Topology) -> list[IPv4Network]:
    internal = defaults()["internal"]
    nat = [IPv4Network(internal["behind_nat"]["carrier_grade" if n.carrier_grade else "isp"])
           for n in (lng.device.behind_nat for lng in t.local_network_gateways.values()) if n]
    return [IPv4Network(internal["underlay"]), IPv4Network(internal["peering"]),
            IPv4Network(internal["azure_public"]),
            *map(IPv4Network, internal["site_public"]), *dict.fromkeys(nat)]


def semantic_errors(t: Topology):
    """Azure's rules across fields; yields (field path, message)."""
    yield from _address_space_errors(t)
    yield from _gateway_errors(t)
    yield from _site_errors(t)
    yield from _name_errors(t)
    yield from _connection_errors(t)
    yield from p2s_errors(t)
    yield from nat_rules.nat_errors(t)
    yield from _peering_errors(t)
    yield from _route_table_errors(t)
    yield from alert_errors(t)


def _vm_address_errors(t: Topology, vnet: str, name: str, sub: Subnet):
    """VMs' addresses: static ones inside the subnet's usable range (Azure reserves the
    first four and the last [IPADDR]) and once each; every VM fits."""
    loc = ("virtual_networks", vnet, "subnets", name, "vms")
    net = sub.address_prefix
    first, last = net.network_address + FIRST_VM_HOST, net.broadcast_address - 1
    seen = {}
    for i, v in enumerate(sub.vms):
        ip = v.private_ip_address if isinstance(v, VirtualMachine) else None
        if ip is None:
            continue
        if not first <= ip <= last:
            yield loc + (i, "private_ip_address"), (f"{ip} is not a usable address of {net} "
                                                    f"({first}-{last}: Azure reserves the first four and the last)")
        elif ip in seen:
            yield loc + (i, "private_ip_address"), f"{ip} is VM {seen[ip]}'s already"
        seen.setdefault(ip, v.name)
    if name != "GatewaySubnet" and (biggest := max(t.subnet_addresses(vnet, name).values(), default=first)) > last:
        yield loc, (f"{len(t.subnet_vms(vnet, name))} VMs do not fit in {net} ({first}-{last}, {biggest} needed): "
                    "use a larger subnet or fewer VMs")


def _address_space_errors(t: Topology):
    """Address spaces: no overlaps across VNets and sites, as the gateways see them (a
    site prefix through its connections' IngressSnat rules [7.2]), none in lab-internal
    ranges."""
    reserved_nets = _reserved_nets(t)
    spaces = []      # (field path, prefix, the NAT rule it comes through or None)
    for vnet_name, vnet in t.virtual_networks.items():
        for i, prefix in enumerate(vnet.address_space):
            spaces.append((("virtual_networks", vnet_name, "address_space", i), prefix, None))
        for sub_name, sub in vnet.subnets.items():
            loc = ("virtual_networks", vnet_name, "subnets", sub_name, "address_prefix")
            if not any(sub.address_prefix.subnet_of(p) for p in vnet.address_space):
                yield loc, (f"{sub.address_prefix} is outside the virtual network's address_space "
                            f"({', '.join(map(str, vnet.address_space))})")
        for sub_name, sub in vnet.subnets.items():
            yield from _vm_address_errors(t, vnet_name, sub_name, sub)
        subs = [((name,), sub.address_prefix) for name, sub in vnet.subnets.items()]
        for ((a_name,), a), ((b_name,), b) in overlapping(subs):
            yield (("virtual_networks", vnet_name, "subnets", b_name, "address_prefix"),
                   f"{b} overlaps subnet {a_name} ({a})")
    for site, lng in t.local_network_gateways.items():
        own = [(("local_network_gateways", site, "address_space", i), p) for i, p in enumerate(lng.address_space)]
        own += [(("local_network_gateways", site, "device", "lan_prefixes", i), p)
                for i, p in enumerate(lng.device.lan_prefixes) if p not in lng.address_space]
        for loc, prefix in own:
            for reserved in reserved_nets:
                if prefix.overlaps(reserved):
                    yield loc, f"{prefix} overlaps {reserved}, which the lab reserves for its own addressing"
            spaces += [(loc, seen, rule) for seen, rule in nat_rules.site_space_as_seen(t, site, prefix)]
        if lng.managed and not t.site_lan(site):
            yield (("local_network_gateways", site, "address_space"),
                   "the lab's on-prem device needs a LAN: give address_space or device.lan_prefixes")
    internal = defaults()["internal"]
    most = 253 - internal["vnet_egress_first"]      # one egress address each, below the Internet host
    if len(t.virtual_networks) > most:
        yield ("virtual_networks",), f"{len(t.virtual_networks)} virtual networks; the lab runs at most {most}"
    forbidden = {IPv4Network(n): why for n, why in defaults()["azure"]["vnet_forbidden_ranges"].items()}
    for loc, a, _ in spaces:
        if loc[0] != "virtual_networks":
            continue
        for r in reserved_nets:
            if a.overlaps(r):
                yield loc, f"{a} overlaps {r}, which the lab reserves for its own addressing"
        for r, why in forbidden.items():
            if a.overlaps(r):
                yield loc, f"{a} overlaps {r} ({why}), which Azure does not allow in a virtual network"
    for gw_name, gw in t.virtual_network_gateways.items():
        for rule_name, rule in gw.nat_rules.items():
            external = rule.external_mappings[0].address_space
            for r in (r for r in reserved_nets if external.overlaps(r)):
                yield (("virtual_network_gateways", gw_name, "nat_rules", rule_name, "external_mappings", 0,
                        "address_space"), f"{external} overlaps {r}, which the lab reserves for its own addressing")
    for first, second in overlapping(spaces):
        yield second[0], _overlap_message(t, first, second)
    yield from _site_view_errors(t)


def _overlap_message(t: Topology, first: tuple, second: tuple) -> str:
    """Which prefixes overlap, as what, and the NAT rule that would resolve it."""
    def translated(item) -> str:
        return f" (translated by NAT rule '{item[2]}')" if item[2] else ""
    msg = (f"{second[1]}{translated(second)} overlaps {first[1]} ({'.'.join(map(str, first[0]))}"
           f"{translated(first).replace(' (', ', ').rstrip(')')}); Azure requires non-overlapping "
           "address spaces, or NAT rules that make them disjoint")
    for loc, _, rule in (second, first):
        conns = nat_rules.site_connections(t, loc[1]) if loc[0] == "local_network_gateways" else []
        if conns and rule is None:
            return msg + (f": an IngressSnat rule on connection '{conns[0]}' mapping it to an unused range "
                          f"of the same size would resolve it (NAT needs {nat_rules.limits()['skus'][0]} or above)")
    return msg


def _site_view_errors(t: Topology):
    """A site whose own space overlaps the VNet's cannot reach those VNet addresses unless
    an EgressSnat rule shows it the VNet elsewhere (Azure: both rules then) [7.2]. Sites
    without ingress rules are refused by the overlap check above."""
    for conn_name, c in sorted(t.connections.items()):
        if c.type != "IPsec" or not c.ingress_nat_rule_ids or c.local_network_gateway not in t.local_network_gateways \
                or c.virtual_network_gateway not in t.virtual_network_gateways:
            continue
        site_space = t.site_lan(c.local_network_gateway) + list(t.local_network_gateways[c.local_network_gateway].address_space)
        for v in t.gateway_prefixes(c.virtual_network_gateway):
            for seen in nat_rules.view(t, conn_name, nat_rules.EGRESS, v):
                clash = next((p for p in site_space if p.overlaps(seen)), None)
                if clash is not None:
                    yield (("connections", conn_name, "egress_nat_rule_ids"),
                           f"the site's {clash} overlaps the VNet's {seen} as the site sees it: its hosts "
                           f"cannot reach those addresses; an EgressSnat rule mapping {v} to an unused range "
                           "would resolve it (Azure: ingress and egress rules when the on-prem space "
                           "overlaps the VNet)")
                    break


def overlapping(items: list[tuple[tuple, IPv4Network]]):
    """Pairs of overlapping prefixes, (earlier, later) in the given order, found with
    one sweep over the sorted prefixes (n log n: 10,000 sites take seconds, not
    minutes). Every prefix that overlaps another is in at least one pair."""
    order = sorted(range(len(items)), key=lambda i: (int(items[i][1].network_address),
                                                     -int(items[i][1].broadcast_address)))
    widest = None
    for i in order:
        net = items[i][1]
        if widest is not None and net.network_address <= items[widest][1].broadcast_address:
            first, second = sorted((widest, i))
            yield items[first], items[second]
        if widest is None or net.broadcast_address > items[widest][1].broadcast_address:
            widest = i


def _gateway_errors(t: Topology):
    """Gateways."""
    az = defaults()["azure"]
    apipa_low, apipa_high = (IPv4Address(a) for a in az["apipa_range"])
    gateway_of_vnet: dict[str, str] = {}
    connections_of = Counter(c.virtual_network_gateway for c in t.connections.values())
    for gw_name, gw in t.virtual_network_gateways.items():
        loc = ("virtual_network_gateways", gw_name)
        if gw.bgp is not None and reserved_site_asn(gw.bgp.asn) \
                and gw.bgp.asn not in az["gateway_allowed_reserved_asns"]:
            yield loc + ("bgp", "asn"), (f"ASN {gw.bgp.asn} is reserved; a gateway may use 65515 "
                                         f"(its default) but none of: {reserved_site_asn_text()}")
        if gw.virtual_network in gateway_of_vnet:
            yield loc + ("virtual_network",), (f"virtual network '{gw.virtual_network}' already has "
                                              f"gateway '{gateway_of_vnet[gw.virtual_network]}' "
                                              "(one VPN gateway per virtual network)")
        gateway_of_vnet[gw.virtual_network] = gw_name
        sku = defaults()["skus"][gw.sku]
        if gw.virtual_network not in t.virtual_networks:
            yield loc + ("virtual_network",), (f"unknown virtual network '{gw.virtual_network}'; "
                                              f"known: {_names(t.virtual_networks)}")
        else:
            subnet = t.virtual_networks[gw.virtual_network].subnets.get("GatewaySubnet")
            if subnet is None:
                yield loc + ("virtual_network",), (f"virtual network '{gw.virtual_network}' has no "
                                                  "subnet named GatewaySubnet, which a gateway needs")
            elif subnet.address_prefix.prefixlen > az["gateway_subnet_min_prefixlen"]:
                yield (("virtual_networks", gw.virtual_network, "subnets", "GatewaySubnet", "address_prefix"),
                       f"GatewaySubnet must be /{az['gateway_subnet_min_prefixlen']} or larger")
            elif subnet.vms:
                yield (("virtual_networks", gw.virtual_network, "subnets", "GatewaySubnet", "vms"),
                       "GatewaySubnet cannot hold VMs")
        if gw.generation is not None and gw.generation not in sku["throughput_mbps"]:
            yield loc + ("generation",), (f"{gw.sku} exists as {' or '.join(sku['throughput_mbps'])} "
                                          f"only, Azure's SKU table says")
        if gw.gateway_default_site is not None:
            yield from _default_site_errors(t, gw_name, gw, loc + ("gateway_default_site",))
        if gw.active_active and not sku["active_active"]:
            yield loc + ("active_active",), f"active-active is not supported on SKU {gw.sku}"
        if gw.bgp is not None and not sku["bgp"]:
            yield loc + ("bgp",), f"BGP is not supported on SKU {gw.sku}"
        if gw.vpn_type == "PolicyBased" and gw.sku != "Basic":
            yield loc + ("vpn_type",), "PolicyBased gateways exist only on the Basic SKU"
        if gw.vpn_type == "PolicyBased" and gw.active_active:
            yield loc + ("active_active",), "PolicyBased gateways cannot be active-active"
        if gw.bgp is not None:
            instances = 2 if gw.active_active else 1
            if len(gw.bgp.peering_addresses) > instances:
                yield loc + ("bgp", "peering_addresses"), (
                    f"{len(gw.bgp.peering_addresses)} entries, but the gateway has {instances} "
                    f"instance{'s' if instances > 1 else ''} (one entry per instance)")
            apipa_count = sum(len(p.apipa_addresses) for p in gw.bgp.peering_addresses)
            if apipa_count > az["apipa_max"]:
                yield loc + ("bgp", "peering_addresses"), (
                    f"{apipa_count} custom APIPA addresses; Azure allows at most {az['apipa_max']}")
            if not gw.active_active and any(len(p.apipa_addresses) > 1 for p in gw.bgp.peering_addresses):
                yield loc + ("bgp", "peering_addresses", 0, "apipa_addresses"), (
                    "an active-standby gateway supports one custom APIPA address")
            for k, inst in enumerate(gw.bgp.peering_addresses):
                for j, ip in enumerate(inst.apipa_addresses):
                    if not apipa_low <= ip <= apipa_high:
                        yield loc + ("bgp", "peering_addresses", k, "apipa_addresses", j), (
                            f"{ip} is outside Azure's APIPA range {apipa_low}-{apipa_high}")
        tunnels = connections_of.get(gw_name, 0)
        limit = 1 if gw.vpn_type == "PolicyBased" else sku["s2s_tunnels"]
        if tunnels > limit:
            yield loc + ("sku",), (f"{tunnels} connections, but {gw.sku} "
                                   f"{'policy-based ' if gw.vpn_type == 'PolicyBased' else ''}"
                                   f"allows at most {limit} tunnels")


def _site_errors(t: Topology):
    """Local network gateways."""
    internal = defaults()["internal"]
    reserved_nets = _reserved_nets(t)
    site_nets = [IPv4Network(n) for n in internal["site_public"]]
    seen_ips: dict = {}
    peers: dict = {}
    own = _gateway_bgp_addresses(t)
    for site, lng in t.local_network_gateways.items():
        loc = ("local_network_gateways", site)
        if not any(lng.gateway_ip in n for n in site_nets) or int(lng.gateway_ip) & 0xFF in (0, 1, 255):
            yield loc + ("gateway_ip",), (f"{lng.gateway_ip}: on-prem public IPs must be host addresses "
                                          f"in {' or '.join(internal['site_public'])} (.2-.254; the "
                                          "lab's internet owns .1)")
        if lng.gateway_ip in seen_ips:
            yield loc + ("gateway_ip",), f"{lng.gateway_ip} is already used by {seen_ips[lng.gateway_ip]}"
        seen_ips[lng.gateway_ip] = site
        if lng.device.advertise_default_route and lng.bgp is None:
            yield loc + ("device", "advertise_default_route"), "needs bgp: the device advertises it over BGP"
        if not lng.managed and "device" in lng.model_fields_set:
            yield loc + ("device",), ("describes the device the lab builds; a site with managed: false "
                                      "brings its own (remove device, or set managed: true)")
        if lng.bgp is not None:
            if reserved_site_asn(lng.bgp.asn):
                yield loc + ("bgp", "asn"), (f"ASN {lng.bgp.asn} is reserved by Azure; "
                                             f"reserved: {reserved_site_asn_text()}")
            addr = lng.bgp.peering_address
            if addr in peers:
                yield loc + ("bgp", "peering_address"), (
                    f"{addr} is already the BGP address of site {peers[addr]}: each BGP peer needs "
                    "its own address")
            peers.setdefault(addr, site)
            if addr in own:
                yield loc + ("bgp", "peering_address"), (
                    f"{addr} is {own[addr]}; a site must peer from an address of its own")
            if addr == lng.gateway_ip:
                yield loc + ("bgp", "peering_address"), "must not be the device's public IP"
            for vnet_name, vnet in t.virtual_networks.items():
                if any(addr in p for p in vnet.address_space):
                    yield loc + ("bgp", "peering_address"), (
                        f"{addr} is inside virtual network {vnet_name}'s address space")
            if any(addr in r for r in reserved_nets):
                yield loc + ("bgp", "peering_address"), f"{addr} is in a range the lab reserves"


def _gateway_bgp_addresses(t: Topology) -> dict:
    """The gateways' own custom APIPA BGP addresses, with whose they are."""
    return {ip: f"gateway {g}'s APIPA address (instance {k})"
            for g, gw in t.virtual_network_gateways.items() if gw.bgp
            for k, inst in enumerate(gw.bgp.peering_addresses) for ip in inst.apipa_addresses}


def _name_errors(t: Topology):
    """Azure's names are case-insensitive: two resources of a kind may not differ only in
    case. VMs, hosts, sites and clients become node names: they must not collide with
    each other, ignoring case, or with a name the lab generates (names.generated)."""
    for kind in ("virtual_networks", "virtual_network_gateways", "local_network_gateways",
                 "connections", "clients"):
        seen: dict[str, str] = {}
        for name in getattr(t, kind):
            if name.lower() in seen:
                yield (kind, name), (f"'{name}' differs from '{seen[name.lower()]}' only in case; "
                                     "Azure's names are case-insensitive")
            seen.setdefault(name.lower(), name)
    owners = {name.lower(): (what,) for name, what in names.generated(t).items()}
    for vnet_name, vnet in t.virtual_networks.items():
        for sub_name in vnet.subnets:
            for i, vm in enumerate(t.subnet_vms(vnet_name, sub_name)):
                yield from _claim(owners, vm, ("virtual_networks", vnet_name, "subnets", sub_name, "vms", i))
    for site in t.local_network_gateways:
        yield from _claim(owners, site, ("local_network_gateways", site))
        for i, host in enumerate(t.site_hosts(site)):
            yield from _claim(owners, host, ("local_network_gateways", site, "device", "hosts", i))
    for client in t.clients:
        yield from _claim(owners, client, ("clients", client))


def _connection_errors(t: Topology):
    """Connections."""
    link_local = IPv4Network("169.254.0.0/16")
    pairs: dict[tuple, str] = {}
    for name, c in t.connections.items():
        loc = ("connections", name)
        if c.type == "Vnet2Vnet" or c.peer_virtual_network_gateway:
            pair = (c.virtual_network_gateway, c.peer_virtual_network_gateway)
            if pair in pairs:
                yield loc + ("peer_virtual_network_gateway",), f"connection '{pairs[pair]}' already joins {pair[0]} to {pair[1]}"
            pairs[pair] = name
            yield from _vnet_to_vnet_errors(t, name, c, loc)
            continue
        if c.local_network_gateway is None:
            yield loc + ("local_network_gateway",), ("required for type IPsec (type Vnet2Vnet takes "
                                                     "peer_virtual_network_gateway)")
            continue
        pair = (c.virtual_network_gateway, c.local_network_gateway)
        if pair in pairs:
            yield loc + ("local_network_gateway",), (
                f"connection '{pairs[pair]}' already joins {pair[0]} and {pair[1]}")
        pairs[pair] = name
        gw = t.virtual_network_gateways.get(c.virtual_network_gateway)
        lng = t.local_network_gateways.get(c.local_network_gateway)
        if gw is None:
            yield loc + ("virtual_network_gateway",), (
                f"unknown gateway '{c.virtual_network_gateway}'; known: {_names(t.virtual_network_gateways)}")
        if lng is None:
            yield loc + ("local_network_gateway",), (
                f"unknown local network gateway '{c.local_network_gateway}'; "
                f"known: {_names(t.local_network_gateways)}")
        key = c.shared_key.get_secret_value()
        longest = defaults()["azure"]["shared_key_max_length"]
        if len(key) > longest:
            yield loc + ("shared_key",), f"Azure allows 1-{longest} characters (value not shown)"
        if not key or any(ch in " -~" or not 32 < ord(ch) < 127 for ch in key):
            yield loc + ("shared_key",), ("Azure allows printable ASCII except space, '-' and '~' "
                                          "(value not shown)")
        if c.connection_mode != "Default" and c.connection_protocol != "IKEv2":
            yield loc + ("connection_mode",), "connection modes other than Default need IKEv2"
        if c.ipsec_policies:
            p = c.ipsec_policies[0]
            if p.ipsec_encryption.startswith("GCM") and p.ipsec_integrity != p.ipsec_encryption:
                yield loc + ("ipsec_policies", 0, "ipsec_integrity"), (
                    f"GCM encryption {p.ipsec_encryption} needs the same GCM integrity "
                    f"({p.ipsec_encryption}), Azure says")
        if gw is None or lng is None:
            continue
        if c.ipsec_policies and gw.sku == "Basic":
            yield loc + ("ipsec_policies",), "custom IPsec/IKE policies are not supported on Basic"
        if gw.sku == "Basic" and gw.vpn_type == "RouteBased" and c.connection_protocol != "IKEv2":
            yield loc + ("connection_protocol",), "a Basic route-based gateway supports IKEv2 only"
        if gw.vpn_type == "PolicyBased" and c.connection_protocol != "IKEv1":
            yield loc + ("connection_protocol",), "a policy-based gateway supports IKEv1 only"
        if c.enable_bgp:
            if gw.bgp is None:
                yield loc + ("enable_bgp",), f"gateway '{c.virtual_network_gateway}' has no bgp settings"
            if lng.bgp is None:
                yield loc + ("enable_bgp",), f"local network gateway '{c.local_network_gateway}' has no bgp settings"
            if gw.bgp is not None and lng.bgp is not None:
                if gw.bgp.asn == lng.bgp.asn:
                    yield loc + ("enable_bgp",), f"the site's ASN must differ from the gateway's ({gw.bgp.asn})"
                if lng.bgp.peering_address in link_local:
                    instances = 2 if gw.active_active else 1
                    lists = [p.apipa_addresses for p in gw.bgp.peering_addresses]
                    if len(lists) < instances or not all(lists[:instances]):
                        yield loc + ("enable_bgp",), (
                            f"site peering_address {lng.bgp.peering_address} is APIPA, so every gateway "
                            f"instance needs custom APIPA addresses "
                            f"(virtual_network_gateways.{c.virtual_network_gateway}.bgp.peering_addresses"
                            f"[0..{instances - 1}].apipa_addresses)")
        yield from _custom_bgp_errors(c, gw, loc)
        if lng.device.behind_nat and c.connection_mode == "InitiatorOnly":
            yield loc + ("connection_mode",), (
                f"InitiatorOnly: Azure must dial, and local network gateway '{c.local_network_gateway}''s "
                "device is behind NAT, which Azure cannot dial through; Azure says the on-prem device "
                "must initiate (use Default or ResponderOnly)")
        if lng.device.connect_to_instances != [0, 1] and not gw.active_active:
            yield (("local_network_gateways", c.local_network_gateway, "device", "connect_to_instances"),
                   f"gateway '{c.virtual_network_gateway}' is active-standby: the device has one tunnel, "
                   "to its one public IP (use it with active-active gateways)")
        if c.use_policy_based_traffic_selectors:
            if gw.vpn_type == "PolicyBased":
                yield loc + ("use_policy_based_traffic_selectors",), (
                    "applies to route-based gateways (a policy-based gateway always uses them)")
            if c.connection_protocol != "IKEv2":
                yield loc + ("use_policy_based_traffic_selectors",), "needs IKEv2 (Azure's rule)"
            if c.enable_bgp:
                yield loc + ("use_policy_based_traffic_selectors",), (
                    "policy-based traffic selectors cover the address spaces, not BGP routes: "
                    "use enable_bgp: false (the lab's rule)")
        if (gw.vpn_type == "PolicyBased" or c.use_policy_based_traffic_selectors) and not lng.address_space:
            yield ("local_network_gateways", c.local_network_gateway, "address_space"), (
                "traffic selectors are built from it: give at least one prefix")


def reverse_connection(t: Topology, name: str) -> str | None:
    """The Vnet2Vnet connection resource of the other direction."""
    c = t.connections[name]
    return next((n for n, x in t.connections.items() if x.type == "Vnet2Vnet"
                 and x.virtual_network_gateway == c.peer_virtual_network_gateway
                 and x.peer_virtual_network_gateway == c.virtual_network_gateway), None)


def _vnet_to_vnet_errors(t: Topology, name: str, c: Connection, loc: tuple):
    """VNet-to-VNet [7.1]: between two route-based gateways, IKEv2, one connection
    resource per direction with the same key, BGP and policy on both; with BGP the
    gateways' ASNs differ [4.1]."""
    if c.type != "Vnet2Vnet":
        yield loc + ("peer_virtual_network_gateway",), "only for type Vnet2Vnet"
        return
    if c.local_network_gateway is not None:
        yield loc + ("local_network_gateway",), "type Vnet2Vnet connects to peer_virtual_network_gateway instead"
    for field, gw_name in (("virtual_network_gateway", c.virtual_network_gateway),
                           ("peer_virtual_network_gateway", c.peer_virtual_network_gateway)):
        if gw_name is None:
            yield loc + (field,), "required for type Vnet2Vnet"
        elif gw_name not in t.virtual_network_gateways:
            yield loc + (field,), f"unknown gateway '{gw_name}'; known: {_names(t.virtual_network_gateways)}"
        elif t.virtual_network_gateways[gw_name].vpn_type != "RouteBased":
            yield loc + (field,), f"gateway '{gw_name}' is policy-based; VNet-to-VNet needs route-based gateways"
    if c.peer_virtual_network_gateway == c.virtual_network_gateway:
        yield loc + ("peer_virtual_network_gateway",), "a gateway cannot connect to itself"
    if c.connection_protocol != "IKEv2":
        yield loc + ("connection_protocol",), "VNet-to-VNet runs IKEv2 (Azure's rule)"
    for field in ("use_policy_based_traffic_selectors", "custom_bgp_addresses"):
        if field in c.model_fields_set:
            yield loc + (field,), "not supported on a Vnet2Vnet connection in the lab"
    if c.connection_mode != "Default":
        yield loc + ("connection_mode",), "VNet-to-VNet connections use Default"
    gws = [t.virtual_network_gateways.get(g) for g in (c.virtual_network_gateway, c.peer_virtual_network_gateway)]
    if None in gws:
        return
    back = reverse_connection(t, name)
    if back is None:
        yield loc + ("peer_virtual_network_gateway",), (
            f"no connection of type Vnet2Vnet from '{c.peer_virtual_network_gateway}' back to "
            f"'{c.virtual_network_gateway}': Azure needs one per direction")
        return
    other = t.connections[back]
    if other.shared_key.get_secret_value() != c.shared_key.get_secret_value():
        yield loc + ("shared_key",), f"differs from connection '{back}' (value not shown); both directions share one key"
    for field in ("enable_bgp", "ipsec_policies", "dpd_timeout_seconds"):
        if getattr(c, field) != getattr(other, field):
            yield loc + (field,), f"differs from connection '{back}'; both directions must match"
    if c.enable_bgp:
        if any(g.bgp is None for g in gws):
            yield loc + ("enable_bgp",), "both gateways need bgp settings"
        elif gws[0].bgp.asn == gws[1].bgp.asn:
            yield loc + ("enable_bgp",), (f"both gateways use ASN {gws[0].bgp.asn}; VNet-to-VNet with BGP "
                                          "needs different ASNs (set bgp.asn on one gateway)")


def _custom_bgp_errors(c: Connection, gw: VirtualNetworkGateway, loc: tuple):
    """custom_bgp_addresses name one APIPA address of each instance [4.3]."""
    custom = c.custom_bgp_addresses
    if custom is None:
        return
    loc = loc + ("custom_bgp_addresses",)
    if not c.enable_bgp:
        yield loc, "needs enable_bgp: true"
        return
    lists = [p.apipa_addresses for p in gw.bgp.peering_addresses] if gw.bgp else []
    instances = 2 if gw.active_active else 1
    for k, (field, ip) in enumerate((("primary", custom.primary), ("secondary", custom.secondary))):
        if k >= instances:
            if ip is not None:
                yield loc + (field,), ("an active-standby gateway has one set of BGP addresses, which moves "
                                       "with the active instance: give primary only")
            continue
        allowed = [str(a) for a in (lists[k] if k < len(lists) else [])]
        if ip is None:
            yield loc + (field,), (f"required on an active-active gateway; allowed: instance {k}'s "
                                   f"apipa_addresses ({', '.join(allowed) or 'none configured'})")
        elif str(ip) not in allowed:
            yield loc + (field,), (f"{ip} is not one of instance {k}'s apipa_addresses; allowed: "
                                   f"{', '.join(allowed) or 'none configured'}")


def _claim(owners: dict, name: str, loc: tuple):
    """A node name, once (ignoring case: a name is also a file and container name)."""
    if name.lower() in owners:
        yield loc, f"name '{name}' is already used at {'.'.join(map(str, owners[name.lower()]))}"
    owners.setdefault(name.lower(), loc)


def throughput_mbps(gw: VirtualNetworkGateway) -> int:
    """The SKU's aggregate throughput benchmark for the gateway's generation [2.1]."""
    figures = defaults()["skus"][gw.sku]["throughput_mbps"]
    return figures.get(gw.generation) or list(figures.values())[-1]


def _default_site_errors(t: Topology, gw_name: str, gw: VirtualNetworkGateway, loc: tuple):
    """The Default Site [7.3]: a local network gateway this route-based gateway connects to."""
    site = gw.gateway_default_site
    if gw.vpn_type != "RouteBased":
        yield loc, "forced tunnelling with a default site needs a route-based gateway"
    if site not in t.local_network_gateways:
        yield loc, f"unknown local network gateway '{site}'; known: {_names(t.local_network_gateways)}"
    elif not any(c.virtual_network_gateway == gw_name and c.local_network_gateway == site
                 for c in t.connections.values()):
        yield loc, f"no connection joins gateway '{gw_name}' to '{site}': the default site must be connected"


def _peering_errors(t: Topology):
    """VNet peering [PEER]: both directions, gateway transit only towards a gateway that
    allows it, one remote gateway per VNet and none beside a gateway of its own."""
    vnet_gateway = {gw.virtual_network: (name, gw) for name, gw in t.virtual_network_gateways.items()}
    for vnet_name, vnet in t.virtual_networks.items():
        remotes: dict[str, str] = {}
        remote_gateways = []
        for name, p in vnet.peerings.items():
            loc = ("virtual_networks", vnet_name, "peerings", name)
            remote = p.remote_virtual_network
            if remote not in t.virtual_networks:
                yield loc + ("remote_virtual_network",), (
                    f"unknown virtual network '{remote}'; known: {_names(t.virtual_networks)}")
                continue
            if remote == vnet_name:
                yield loc + ("remote_virtual_network",), "a virtual network cannot peer with itself"
                continue
            if remote in remotes:
                yield loc + ("remote_virtual_network",), f"peering '{remotes[remote]}' already peers with {remote}"
            remotes[remote] = name
            back = [q for q in t.virtual_networks[remote].peerings.values()
                    if q.remote_virtual_network == vnet_name]
            if not back:
                yield loc, (f"virtual network '{remote}' has no peering back to '{vnet_name}': Azure "
                            "connects a peering only when both directions exist")
                continue
            if p.use_remote_gateways:
                remote_gateways.append(name)
                if vnet_name in vnet_gateway:
                    yield loc + ("use_remote_gateways",), (
                        f"virtual network '{vnet_name}' has gateway '{vnet_gateway[vnet_name][0]}' of its "
                        "own; Azure allows remote gateways only in a VNet without one")
                elif remote not in vnet_gateway:
                    yield loc + ("use_remote_gateways",), f"virtual network '{remote}' has no gateway to use"
                elif not back[0].allow_gateway_transit:
                    yield loc + ("use_remote_gateways",), (
                        f"'{remote}''s peering back to '{vnet_name}' does not set allow_gateway_transit")
                elif vnet_gateway[remote][1].sku == "Basic":
                    yield loc + ("use_remote_gateways",), "gateway transit is not supported on the Basic SKU"
            if p.allow_gateway_transit and p.use_remote_gateways:
                yield loc + ("allow_gateway_transit",), "a peering cannot both offer and use gateway transit"
        for name in remote_gateways[1:]:
            yield (("virtual_networks", vnet_name, "peerings", name, "use_remote_gateways"),
                   f"peering '{remote_gateways[0]}' already uses a remote gateway; Azure allows one per VNet")


def _route_table_errors(t: Topology):
    """Route tables [UDR]: known tables, next hops that exist, and the GatewaySubnet's
    guardrails (no 0.0.0.0/0, BGP propagation on)."""
    for vnet_name, vnet in t.virtual_networks.items():
        for sub_name, sub in vnet.subnets.items():
            if sub.route_table is None:
                continue
            loc = ("virtual_networks", vnet_name, "subnets", sub_name, "route_table")
            table = t.route_tables.get(sub.route_table)
            if table is None:
                yield loc, f"unknown route table '{sub.route_table}'; known: {_names(t.route_tables)}"
                continue
            tloc = ("route_tables", sub.route_table)
            if sub_name == "GatewaySubnet":
                if not table.bgp_route_propagation_enabled:
                    yield tloc + ("bgp_route_propagation_enabled",), (
                        "the GatewaySubnet's route table must keep BGP route propagation enabled, Azure says")
                for r_name, r in table.routes.items():
                    if r.address_prefix.prefixlen == 0:
                        yield tloc + ("routes", r_name, "address_prefix"), (
                            "a 0.0.0.0/0 route on the GatewaySubnet is not supported by Azure")
            for r_name, r in table.routes.items():
                yield from _next_hop_errors(t, vnet_name, r, tloc + ("routes", r_name))


def _next_hop_errors(t: Topology, vnet_name: str, r: UserRoute, loc: tuple):
    if r.next_hop_type != "VirtualAppliance":
        if r.next_hop_in_ip_address is not None:
            yield loc + ("next_hop_in_ip_address",), "only for next_hop_type VirtualAppliance"
        if r.next_hop_type == "VirtualNetworkGateway" and t.gateway_of(vnet_name) is None:
            yield loc + ("next_hop_type",), (f"virtual network '{vnet_name}' has no gateway, "
                                             "nor uses a remote one")
        return
    if r.next_hop_in_ip_address is None:
        yield loc + ("next_hop_in_ip_address",), "required for next_hop_type VirtualAppliance"
        return
    reachable = [vnet_name, *t.peered(vnet_name)]
    appliances = {str(t.vm_address(v, vm)): (v, vm) for v in reachable for vm in t.appliances(v)}
    if str(r.next_hop_in_ip_address) not in appliances:
        known = ", ".join(f"{a} ({vm})" for a, (_, vm) in sorted(appliances.items())) or "none"
        yield loc + ("next_hop_in_ip_address",), (
            f"{r.next_hop_in_ip_address} is not a VM with ip_forwarding_enabled in '{vnet_name}' or a "
            f"peered VNet (the lab's rule: Azure drops such traffic); appliances: {known}")
