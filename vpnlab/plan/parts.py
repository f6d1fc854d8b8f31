"""The plan's parts: nodes with their interfaces, routes and daemon contexts, links,
tunnels, BGP sessions, point-to-site ends and clients, and the Plan itself; with the
small rules several stages read from them. Plain dataclasses: the plan is saved as
JSON (vpnlab.plan.document) and read back typed."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from vpnlab.model import names

INTERNET = names.INTERNET
# Policy routing in a tunnel namespace: what arrives on the inner veth goes into ipsec0,
# what comes out of ipsec0 goes back to the router through the inner veth.
TABLE_INTO_TUNNEL = 101
TABLE_FROM_TUNNEL = 102
# The kernel data plane: a tunnel namespace's ipsec0 is an XFRM interface, and its
# connection's SAs and policies carry its interface ID (strongSwan's if_id_in/if_id_out):
# this one where the end runs its own charon (a device's); a gateway instance's ends
# take 1 + the number of their router's tunnel interface t<j> (Iface.if_id).
XFRM_IF_ID = 1
# where ESP runs: userspace (libipsec: every kernel) or kernel (XFRM: a kernel with ESP);
# `vpnlab up --dataplane auto` takes the kernel's when it has ESP
DATAPLANES = ("userspace", "kernel")
# A gateway instance's own traffic (IKE, ESP, OpenVPN from its tunnel namespaces) leaves
# through its public path in a table of its own: a default route the VNet learns (forced
# tunnelling) never captures it [7.3].
TABLE_UNDERLAY = 103
UNDERLAY_PRIORITY = 100
TABLE_MAIN = 254          # the kernel's main table (a rule that sends some of the above back to it)
# VNet routers: a subnet's route table, one kernel table per prefix length (see
# vpnlab.plan.vnet), and the system routes alone for tables without BGP propagation.
TABLE_SYSTEM = 200
TABLE_FIRST_UDR = 1000
# A gateway instance: traffic to an IngressSnat rule's external prefix goes to its
# connection whatever the translated address is (two sites may share one space): nftables
# marks it before NAT, and a table per tunnel interface t<j> routes the mark (vpnlab.plan.nat).
TABLE_FIRST_NAT = 2000
NAT_PRIORITY = 90
# The kernel data plane: a tunnel namespace holds its router's public address itself, so
# that charon sees no NAT and ESP travels raw (IP protocol 50), as Azure sends it. The
# router hands what a peer sends to that address to the peer's tunnel namespace (a table
# per tunnel interface t<j>), before its own local delivery, which moves after that rule.
TABLE_FIRST_PEER = 3000
PEER_PRIORITY = 10
LOCAL_PRIORITY = 20
HASH_SEED = "net.ipv4.fib_multipath_hash_seed"    # per router: see Node.sysctls
ROLE_ORDER = ("internet", "internet-host", "isp-router", "vnet-router", "gateway-instance", "device", "tunnel-endpoint",
              "p2s-endpoint", "vm", "host", "p2s-client")


@dataclass
class Iface:
    name: str
    addresses: list[str] = field(default_factory=list)   # "a.b.c.d/len"
    kind: str = "veth"                                    # veth | bridge | lo | xfrm
    master: str | None = None                             # bridge in the same node
    proxy_arp: bool = False
    mtu: int | None = None
    mac: str | None = None        # set: the address moves with the role (active-standby)
    if_id: int | None = None      # xfrm: the interface ID its SAs and policies carry
    made_in: str | None = None    # xfrm: made in this node's namespace, whose SAs it then
                                  # uses (a gateway instance's), and moved here


@dataclass
class Route:
    dst: str
    via: str | None = None
    dev: str | None = None
    table: int | None = None
    nexthops: list[str] = field(default_factory=list)   # equal-cost next hops (instead of via)
    blackhole: bool = False
    onlink: bool = False     # via is on dev's link without a prefix route to it


@dataclass
class Rule:
    iif: str | None
    table: int
    priority: int
    src: str | None = None        # from this address (a /32)
    dst: str | None = None        # to this prefix
    # only routes longer than this count (`ip rule ... suppress_prefixlength N`)
    suppress_prefixlength: int | None = None
    unreachable: bool = False     # stop here: no route (a table without the main one)
    fwmark: int | None = None     # packets nftables marked (NAT: the connection they go to)


@dataclass
class Neighbor:
    address: str
    asn: int
    internal: bool = False
    multihop: bool = False
    passive: bool = False
    next_hop_self: bool = False
    update_source: str | None = None
    route_map_out: str | None = None
    route_map_in: str | None = None
    maximum_prefix: tuple[int, int] | None = None   # (prefixes, restart minutes)
    timers: dict | None = None       # None: the router's timer profile
    soft_reconfiguration: bool = False   # keep what the peer sent before the route map (NAT)


@dataclass
class Frr:
    asn: int | None
    router_id: str
    timers: dict
    static: list[tuple[str, str]] = field(default_factory=list)   # (prefix, next hop or dev)
    # Azure's system routes that a BGP route of the same prefix beats (the default route
    # to the Internet): static routes with a distance above iBGP's
    system: list[tuple[str, str]] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    neighbors: list[Neighbor] = field(default_factory=list)
    vnet_prefixes: list[str] = field(default_factory=list)
    no_transit: list[str] = field(default_factory=list)   # static VNet-to-VNet prefixes: kept from BGP peers
    maximum_paths: int = 8
    # NAT [7.2] (vpnlab.plan.nat): EgressSnat external prefixes, announced only to their
    # sites; per-neighbor route maps; learned routes the agent announces translated
    nat_externals: list[str] = field(default_factory=list)
    nat_maps: list[dict] = field(default_factory=list)
    nat_learned: list[dict] = field(default_factory=list)

    @property
    def not_advertised(self) -> list[str]:
        """Prefix-list entries the router keeps from its eBGP peers (TO-BGP-PEER):
        empty without such a peer."""
        if not any(n.route_map_out == "TO-BGP-PEER" for n in self.neighbors):
            return []
        return never_advertised([IPv4Network(p) for p in self.vnet_prefixes]) + self.no_transit + self.nat_externals


@dataclass
class Node:
    name: str
    role: str
    interfaces: list[Iface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)     # kernel routes set by the runtime
    rules: list[Rule] = field(default_factory=list)
    forwarding: bool = False
    public_ip: str | None = None     # routers on the internet
    frr: Frr | None = None          # context for frr.conf.j2
    charon: dict | None = None       # context for strongswan.conf.j2 / swanctl.conf.j2
    nft: dict | None = None          # context for nftables.conf.j2
    standby: bool = False            # an active-standby gateway's idle instance (and its
                                     # tunnel ends): links down, no daemons
    shaping_mbps: int | None = None  # egress cap on pub and gws: the SKU's rated throughput
    openvpn: dict | None = None      # context for openvpn.conf.j2 (point-to-site)
    pki: list[tuple[str, str]] = field(default_factory=list)   # (path in the node folder,
                                                                # vpnlab.plan.pki file) to install
    nat_udp_timeout: int | None = None   # an ISP NAT router: how long a UDP mapping lasts idle
    local_priority: int | None = None    # the local table's rule at this priority, not 0
                                         # (see TABLE_FIRST_PEER)
    shares_public_address: bool = False  # the kernel data plane: a router, or a tunnel
                                         # end, that holds the router's public address
    radius: dict | None = None       # context for radiusd.conf.j2 (FreeRADIUS, vpnlab.plan.radius)
    charon_host: str | None = None   # a tunnel end whose connection (charon) another
                                     # node's charon carries: the kernel data plane's
                                     # gateway instance, one charon for all its tunnels

    @property
    def runs_charon(self) -> bool:
        return self.charon is not None and self.charon_host is None

    def iface(self, name: str) -> Iface:
        return next(i for i in self.interfaces if i.name == name)

    def sysctls(self) -> dict:
        """Kernel settings of the node's network namespace. Each router hashes flows over
        equal paths with its own seed, so that the way out and the way back are chosen
        independently and a flow may return through the other instance, as on Azure [5].
        With one seed everywhere, Linux's symmetric flow hash sends every flow back the
        way it came."""
        return {HASH_SEED: zlib.crc32(self.name.encode()) or 1,
                "net.ipv4.ip_forward": int(self.forwarding),
                "net.ipv4.fib_multipath_hash_policy": 1,   # ECMP per flow (5-tuple), as Azure spreads flows
                "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv4.conf.default.rp_filter": 0,
                "net.ipv6.conf.all.disable_ipv6": 1,
                "net.ipv6.conf.default.disable_ipv6": 1,
                "net.ipv4.conf.all.send_redirects": 0,
                "net.ipv4.conf.default.send_redirects": 0} | ({
                    "net.netfilter.nf_conntrack_udp_timeout": self.nat_udp_timeout,
                    "net.netfilter.nf_conntrack_udp_timeout_stream": self.nat_udp_timeout}
                    if self.nat_udp_timeout else {}) | ({
                    # a router's tunnel namespace sends from the router's own public
                    # address, and the router asks for neighbours on its tunnel
                    # interfaces from it: each must accept the other's packets
                    "net.ipv4.conf.all.accept_local": 1} if self.shares_public_address else {})

    def link_starts_up(self, iface: Iface) -> bool:
        """A standby instance holds its addresses with its links down until it takes over."""
        return not (self.standby and self.role == "gateway-instance" and iface.kind == "veth")

    def shaping(self) -> list[list[str]]:
        """tc commands for the SKU's throughput on a gateway instance, both directions:
        out to the internet (ESP to the sites) and to the GatewaySubnet (into the VNet).
        Burst: 5 ms at the rate."""
        if not self.shaping_mbps:
            return []
        burst = max(32 * 1024, int(self.shaping_mbps * 1e6 / 8 * 0.005))
        return [["qdisc", "replace", "dev", ifname, "root", "tbf", "rate", f"{self.shaping_mbps}mbit",
                 "burst", str(burst), "latency", "50ms"] for ifname in ("pub", "gws")]


@dataclass
class Link:
    a: str
    a_if: str
    b: str
    b_if: str


@dataclass
class BgpSession:
    node: str
    peer: str            # peer address
    peer_node: str
    kind: str            # ebgp (over a tunnel) | sdn (gateway instance <-> VNet router)


@dataclass
class Tunnel:
    name: str            # <connection>-in<k>
    connection: str
    gateway: str
    gateway_instance: str
    device: str          # the site (local network gateway) name
    azure_end: str       # tunnel-endpoint node names
    onprem_end: str | None   # None: the site is not managed (the user brings the device)
    remote_ip: str = ""      # the site's public IP
    connection_mode: str = "Default"
    policy_based: bool = False   # a PolicyBased gateway: IKEv1, on demand, idle teardown
    expected_up: bool = True     # False: the device builds no tunnel to this instance
    dpd_timeout: int | None = None   # None: no DPD (policy-based)

    @property
    def managed(self) -> bool:
        return self.onprem_end is not None


@dataclass
class P2sEnd:
    """A gateway instance's point-to-site server: charon (IkeV2) or openvpn (OpenVPN)."""
    gateway: str
    gateway_instance: str
    node: str
    protocol: str            # IkeV2 | OpenVPN
    pool: list[str]          # this protocol's share of the address pool


@dataclass
class P2sClient:
    name: str                # the client's node
    gateway: str
    protocol: str
    identities: list[str]    # client certificate names (one per connection)
    gateway_ip: str          # the gateway's public IP it connects to
    pushed: list[str]        # the routes Azure pushes to it [6]


@dataclass
class Plan:
    nodes: dict[str, Node]
    links: list[Link]
    tunnels: list[Tunnel]
    bgp: list[BgpSession]
    expected_routes: dict[str, list[str]]   # node -> prefixes that must be in its FIB
    pings: list[tuple[str, str]]            # (from node, to address) that must answer
    unmanaged: dict[str, str] = field(default_factory=dict)   # site -> public IP (attach)
    active: dict[str, int] = field(default_factory=dict)      # active-standby gateway -> instance
    p2s_ends: list[P2sEnd] = field(default_factory=list)
    clients: list[P2sClient] = field(default_factory=list)
    timers: dict = field(default_factory=dict)    # effective timers (vpnlab.plan.timers)
    dataplane: str = "userspace"    # where ESP runs: userspace (libipsec) | kernel (XFRM)

    def ordered_nodes(self) -> list[Node]:
        return sorted(self.nodes.values(), key=lambda n: (ROLE_ORDER.index(n.role), n.name))

    def hosted_ends(self, host: str) -> list[Node]:
        """The tunnel ends whose connections host's charon carries, by name."""
        return sorted((n for n in self.nodes.values() if n.charon_host == host), key=lambda n: n.name)

    def charon_hosts(self) -> dict[str, list[str]]:
        """Tunnel end -> [the node running its charon, its connection's name], for the
        ends another node's charon carries."""
        return {n.name: [n.charon_host, n.charon["connection"]] for n in self.nodes.values() if n.charon_host}

    def vm_addresses(self) -> dict[str, IPv4Address]:
        """The VMs' private addresses (what they hold while the lab runs)."""
        return {n.name: IPv4Address(n.iface("eth0").addresses[0].split("/")[0])
                for n in self.nodes.values() if n.role == "vm"}


def selector_anchors(nets: list[IPv4Network]) -> list[str]:
    """libipsec installs a CHILD SA's route (and trap) only with a local address inside
    the local traffic selector, and Azure accepts any selector a device narrows to
    [1.2]. The network address of every prefix of that side (never a host's: Azure
    reserves it in every subnet), as a /32 in the tunnel end, lies inside every
    selector derived from those prefixes. A /32 is a host (usually the site's BGP peer,
    which lives on the device): never an anchor, which would answer in its place."""
    return list(dict.fromkeys(f"{n.network_address}/32" for n in nets if n.prefixlen < 32))


def dial_children(charon: dict) -> list[str]:
    """The child configs the Azure end starts when it dials: the initiator child of a
    route-based connection, every selector pair of a policy-based one."""
    names = [c["name"] for c in charon["children"]]
    init = initiator_child(charon["connection"])
    return [init] if init in names else names


def initiator_child(connection: str) -> str:
    """The Azure end's child config that carries Azure's initiator offers [3.1]."""
    return f"{connection}-init"


def never_advertised(vnet_prefixes: list[IPv4Network]) -> list[str]:
    """What an Azure gateway never advertises to a BGP peer [4.5]: the default route and
    any route overlapping a VNet prefix (more specifics and supernets; the VNet prefix
    itself it originates). FRR prefix-list entries, in order."""
    out = ["0.0.0.0/0"]
    for p in vnet_prefixes:
        out += [str(p.supernet(new_prefix=n)) for n in range(1, p.prefixlen)]
        if p.prefixlen < 32:
            out.append(f"{p} ge {p.prefixlen + 1}")
    return list(dict.fromkeys(out))


def instance_count(gw) -> int:
    """Every gateway has two instances: both serve (active-active) or one serves and
    the other stands by with the same public IP and BGP address [5]. Policy-based
    (Basic) gateways too."""
    return len(names.INSTANCES)


def serves(gw, active: int, k: int) -> bool:
    return gw.active_active or k == active


