"""From a validated topology to the lab plan: nodes, links, addresses, tunnels, BGP.

Internal addressing is allocated here, deterministically (sorted names, fixed ranges),
so the same file always yields the same lab. Nothing here touches the system.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from vpnlab.model import names
from vpnlab.model.defaults import defaults
from vpnlab.model.topology import (
    FIRST_SITE_HOST,
    Topology,
    reverse_connection,
    throughput_mbps,
)
from vpnlab.plan import nat
from vpnlab.plan import p2s as p2s_plan
from vpnlab.plan import radius as radius_plan
from vpnlab.plan import timers as timers_of
from vpnlab.plan import vnet as vnet_plan
from vpnlab.plan.parts import (
    INTERNET,
    LOCAL_PRIORITY,
    PEER_PRIORITY,
    TABLE_FIRST_PEER,
    TABLE_FROM_TUNNEL,
    TABLE_INTO_TUNNEL,
    TABLE_UNDERLAY,
    UNDERLAY_PRIORITY,
    XFRM_IF_ID,
    BgpSession,
    Frr,
    Iface,
    Link,
    Neighbor,
    Node,
    Plan,
    Route,
    Rule,
    Tunnel,
    initiator_child,
    instance_count,
    selector_anchors,
    serves,
)


def _internet_side(public_ip: IPv4Address) -> str:
    """The internet's own address on a public /24: .1, every router's default gateway."""
    return f"{IPv4Network(f'{public_ip}/24', strict=False).network_address + 1}/24"


def selectors(t: Topology, conn_name: str) -> list[tuple[str, str]]:
    """(VNet prefix, site prefix) pairs of a connection with policy-based traffic
    selectors (a PolicyBased gateway, or use_policy_based_traffic_selectors): every
    VNet prefix x every local network gateway prefix [1.1, 1.2]. Empty: any-to-any."""
    c = t.connections[conn_name]
    gw = t.virtual_network_gateways[c.virtual_network_gateway]
    if gw.vpn_type != "PolicyBased" and not c.use_policy_based_traffic_selectors:
        return []
    site = t.local_network_gateways[c.local_network_gateway]
    return [(str(v), str(s)) for v in t.virtual_networks[gw.virtual_network].address_space
            for s in site.address_space]


def _child(name: str, local_ts: list[str], remote_ts: list[str], esp: list[str], policy: dict,
           rekey: bool = True, **actions) -> dict:
    seconds, kb = policy["child_lifetime"], policy["child_kilobytes"]
    return dict(name=name, local_ts=local_ts, remote_ts=remote_ts, esp=esp,
                rekey_time=seconds if rekey else 0, rekey_bytes=kb * 1024 if rekey else 0,
                life_time=int(seconds * 1.1), life_bytes=int(kb * 1024 * 1.1),
                start_action="none", dpd_action="clear", close_action="none", comment="") | actions


def azure_children(c, conn: str, policy: dict, pairs: list, policy_based: bool) -> list[dict]:
    """The Azure end's child configs. Route-based: one answers the device with the
    responder offers; Azure's own rekeys of it go through the agent (control.azure_rekey),
    because strongSwan would offer that child's list again. The initiator child carries
    what Azure offers when it dials and rekeys. Policy-based (IKEv1): one child per
    prefix pair; traffic brings an idle tunnel back [1.1] through the agent (libipsec
    raises no acquire, so start_action = trap cannot)."""
    if policy_based:
        return [_child(f"{conn}-{i}", [v], [s], policy["esp"], policy,
                       comment=f"selector pair {v} <-> {s}") for i, (v, s) in enumerate(pairs)]
    local = [v for v, _ in pairs] or ["0.0.0.0/0"]
    remote = [s for _, s in pairs] or ["0.0.0.0/0"]
    local, remote = list(dict.fromkeys(local)), list(dict.fromkeys(remote))
    return [
        _child(conn, local, remote, policy["esp"], policy, rekey=False,
               comment="answers the device with Azure's responder offers"),
        _child(initiator_child(conn), local, remote, policy["esp_initiator"], policy,
               start_action="start" if c.connection_mode == "InitiatorOnly" else "none",
               comment="Azure's initiator offers: when it dials, and its own rekeys")]


def device_children(conn: str, policy: dict, pairs: list, policy_based: bool,
                    behind_nat: bool = False) -> list[dict]:
    if policy_based:   # one tunnel per subnet pair, as Azure asks of policy-based devices
        return [_child(f"{conn}-{i}", [s], [v], policy["esp"], policy, start_action="start",
                       dpd_action="none", comment=f"selector pair {s} <-> {v}")
                for i, (v, s) in enumerate(pairs)]
    local = list(dict.fromkeys(s for _, s in pairs)) or ["0.0.0.0/0"]
    remote = list(dict.fromkeys(v for v, _ in pairs)) or ["0.0.0.0/0"]
    # close_action none: when the gateway deletes the SA (planned maintenance, a duplicate
    # from both ends dialing) the gateway's redial brings the tunnel back, not a race.
    # Behind NAT the gateway cannot dial [1.3]: the device dials again at once.
    return [_child(conn, local, remote, policy["esp"], policy, start_action="start",
                   dpd_action="restart", close_action="start" if behind_nat else "none",
                   comment="policy-based traffic selectors: every site prefix x every VNet prefix"
                   if pairs else "route-based: any-to-any traffic selectors, routing decides")]


def azure_bgp_address(addresses: dict, c, k: int, apipa_peer: bool) -> str:
    """The address instance k peers from on connection c [4.3]: its GatewaySubnet BGP
    address, unless the site peers from APIPA; then the connection's custom address
    for the instance, else the instance's first APIPA address."""
    if not apipa_peer:
        return addresses["bgp_ip"]
    custom = c.custom_bgp_addresses
    chosen = (custom.primary, custom.secondary)[k] if custom else None
    return str(chosen) if chosen else addresses["apipa"][0]


def gateway_subnet_ips(prefix: IPv4Network, active_active: bool) -> list[IPv4Address]:
    """Azure's BGP addresses in the GatewaySubnet: .4/.5 active-active, last usable
    address active-standby ([4.2]; the general rule beyond these examples is UNCONFIRMED)."""
    if active_active:
        return [prefix.network_address + 4, prefix.network_address + 5]
    return [prefix.broadcast_address - 1]


class _Builder:
    def __init__(self, t: Topology, timers: str, active: dict[str, int] | None = None,
                 dataplane: str = "userspace"):
        self.t = t
        self.dataplane = dataplane
        self.active = {g: (active or {}).get(g, 0) for g, gw in t.virtual_network_gateways.items()
                       if not gw.active_active}
        self.d = defaults()
        self.profile = timers
        self.timers = timers_of.profile(timers)
        self.nodes: dict[str, Node] = {}
        self.links: list[Link] = []
        self.tunnels: list[Tunnel] = []
        self.bgp: list[BgpSession] = []
        self.expected: dict[str, list[str]] = {}
        self.pings: list[tuple[str, str]] = []
        self.inet_ports: list[IPv4Address] = []
        self.underlay = IPv4Network(self.d["internal"]["underlay"])
        self.bgp_addresses: dict[str, dict] = {}   # instance -> {bgp_ip, apipa}
        self.egress_gw: dict[str, str] = {}         # VNet -> its router's Internet next hop
        self.peer_links: dict[tuple, tuple] = {}    # (VNet, peer VNet) -> (ifname, far, own)
        self.hop_links: dict[tuple, str] = {}       # (VNet, VNet, next hop) -> far address

    # -- helpers
    def add(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def link(self, a: Node, a_if: Iface, b: Node, b_if: Iface):
        a.interfaces.append(a_if)
        b.interfaces.append(b_if)
        self.links.append(Link(a.name, a_if.name, b.name, b_if.name))

    def attach_public(self, node: Node, ip: IPv4Address, mac: str | None = None,
                      host_only: bool = False) -> str:
        """Connect a router to the internet bridge with a public /24 address; returns
        the internet's address on that /24 (the router's default gateway). host_only: a
        /32 instead, the internet reached on-link, so that no part of the Internet is
        connected beside a default route the router learns (Azure's side: forced
        tunnelling must capture all of it)."""
        node.public_ip = str(ip)
        net = IPv4Network(f"{ip}/24", strict=False)
        inet = self.nodes[INTERNET]
        br = inet.iface("br0")
        br.addresses.append(_internet_side(ip))
        gw = str(net.network_address + 1)
        # the internet's port is named by the address it serves (and a count, for an
        # active-standby pair's shared address): a site added or removed by vpnlab apply
        # leaves every other port as it is
        port = f"p{int(ip):08x}{self.inet_ports.count(ip)}"
        self.inet_ports.append(ip)
        self.link(node, Iface("pub", [f"{ip}/{32 if host_only else 24}"], mac=mac),
                  inet, Iface(port, master="br0"))
        return gw

    def own_public_address(self, inst: Node, address: str):
        """A gateway instance's public address: what it sends from it leaves through the
        underlay table, not the VNet's default route."""
        if f"{address}/32" not in inst.iface("pub").addresses:
            inst.iface("pub").addresses.append(f"{address}/32")
        inst.rules.append(Rule(None, TABLE_UNDERLAY, UNDERLAY_PRIORITY, src=address))

    def lan(self, router: Node, ifname: str, prefix: IPv4Network, hosts: dict[str, IPv4Address], role: str):
        """A bridge on the router with .1, and a namespace per host at its address (its
        port on the bridge is named by the address: it stays while others come and go)."""
        gw = prefix.network_address + 1
        router.interfaces.append(Iface(ifname, [f"{gw}/{prefix.prefixlen}"], kind="bridge"))
        for host, addr in hosts.items():
            h = self.add(Node(host, role, routes=[Route("0.0.0.0/0", via=str(gw))]))
            self.link(h, Iface("eth0", [f"{addr}/{prefix.prefixlen}"]),
                      router, Iface(f"{ifname}h{int(addr) - int(prefix.network_address)}", master=ifname))

    # -- build
    def build(self) -> Plan:
        self.add(Node(INTERNET, "internet", [Iface("br0", kind="bridge")], forwarding=True))
        vnet_plan.internet_host(self)
        for index, vnet in enumerate(sorted(self.t.virtual_networks)):
            vnet_plan.router(self, index, vnet)
        for gw_index, gw_name in enumerate(sorted(self.t.virtual_network_gateways)):
            self.gateway(gw_index, gw_name)
        vnet_plan.peerings(self)
        unmanaged = {}
        for site, lng in sorted(self.t.local_network_gateways.items()):
            if lng.managed:
                self.device(site)
            else:
                unmanaged[site] = str(lng.gateway_ip)
                self.nodes[INTERNET].iface("br0").addresses.append(_internet_side(lng.gateway_ip))
        for conn in sorted(self.t.connections):
            self.connection(conn)
        p2s_ends, clients = p2s_plan.build(self)
        radius_plan.build(self)
        if self.dataplane == "kernel":      # reach_end's rules (a later apply's too) go first
            for node in self.nodes.values():
                if node.role == "device":
                    node.local_priority = LOCAL_PRIORITY
        vnet_plan.route_tables(self)
        self.finish_routing()
        br = self.nodes[INTERNET].iface("br0")
        br.addresses = list(dict.fromkeys(br.addresses))
        return Plan(self.nodes, self.links, self.tunnels, self.bgp, self.expected, self.pings,
                    unmanaged, dict(self.active), p2s_ends, clients,
                    timers_of.effective(self.profile, [t.dpd_timeout for t in self.tunnels]), self.dataplane)

    def serves(self, gw_name: str, k: int) -> bool:
        gw = self.t.virtual_network_gateways[gw_name]
        return serves(gw, self.active.get(gw_name, 0), k)

    def gateway(self, gw_index: int, gw_name: str):
        gw = self.t.virtual_network_gateways[gw_name]
        vnet = self.t.virtual_networks[gw.virtual_network]
        asn = gw.bgp.asn if gw.bgp else self.d["azure"]["asn"]
        sdn = self.nodes[names.vnet_router(gw.virtual_network)]
        gws = vnet.subnets["GatewaySubnet"].address_prefix
        sdn_ip = gws.network_address + 1
        sdn.interfaces.append(Iface("gws", [f"{sdn_ip}/{gws.prefixlen}"], kind="bridge"))
        bgp_ips = gateway_subnet_ips(gws, gw.active_active)
        # what the gateway routes to the VNet side: its VNet and the spokes that use it
        vnet_prefixes = [str(p) for p in self.t.gateway_prefixes(gw_name)]
        for k in range(instance_count(gw)):
            name = names.instance(gw_name, k)
            # active-standby: one public IP and one BGP address, held by the active
            # instance, with the same MAC, so that they move as Azure moves them [5]
            slot = k if gw.active_active else 0
            public_ip = IPv4Network(self.d["internal"]["azure_public"]).network_address + 10 + 2 * gw_index + slot
            mac = None if gw.active_active else f"02:00:00:00:{gw_index:02x}:"
            node = self.add(Node(name, "gateway-instance", forwarding=True,
                                 standby=not self.serves(gw_name, k),
                                 shaping_mbps=throughput_mbps(gw)))
            inet_gw = self.attach_public(node, public_ip, mac and mac + "01", host_only=True)
            # its own IKE and ESP take the public path, whatever default route the VNet has
            node.routes.append(Route("0.0.0.0/0", via=inet_gw, dev="pub", onlink=True, table=TABLE_UNDERLAY))
            self.own_public_address(node, str(public_ip))
            self.link(node, Iface("gws", [f"{bgp_ips[slot]}/{gws.prefixlen}"], mac=mac and mac + "02"),
                      sdn, Iface(f"gws{k}", master="gws"))
            apipa = []
            if gw.bgp and slot < len(gw.bgp.peering_addresses):
                apipa = [str(a) for a in gw.bgp.peering_addresses[slot].apipa_addresses]
            node.interfaces.append(Iface("lo", [f"{a}/32" for a in apipa], kind="lo"))
            node.frr = Frr(asn, str(bgp_ips[slot]), self.timers,
                           static=[(p, str(sdn_ip)) for p in vnet_prefixes],
                           networks=list(vnet_prefixes), vnet_prefixes=vnet_prefixes)
            self.sdn_peer(node, sdn, str(sdn_ip), str(bgp_ips[slot]), slot == k)
            self.bgp_addresses[name] = dict(bgp_ip=str(bgp_ips[slot]), apipa=apipa)
            node.nft = dict(dnat=[], inner=[], mss_clamp=None)

    def sdn_peer(self, inst: Node, router: Node, router_ip: str, bgp_ip: str, configure_router: bool,
                 spoke: bool = False):
        """The emulated SDN's iBGP session between a gateway instance and a VNet router
        (its own VNet's, or a spoke's that uses it): the VNet learns what the instance
        learns. An active-standby gateway's two instances share one address: the router
        is configured once."""
        asn = inst.frr.asn
        inst.frr.neighbors.append(Neighbor(router_ip, asn, internal=True, next_hop_self=True,
                                           update_source=bgp_ip, route_map_out="TO-SDN",
                                           timers=self.d["sdn_timers"]))
        if configure_router:
            # a spoke's router reaches the hub's instances across the peering, from its
            # address on that link
            router.frr.neighbors.append(Neighbor(bgp_ip, asn, internal=True, timers=self.d["sdn_timers"],
                                                 update_source=router_ip if spoke else None))
        if not inst.standby:
            self.bgp.append(BgpSession(inst.name, router_ip, router.name, "sdn"))
            self.bgp.append(BgpSession(router.name, bgp_ip, inst.name, "sdn"))

    def device(self, site: str):
        """The lab's on-prem device: its LAN bridges, hosts from .10, BGP if the site has it."""
        lng = self.t.local_network_gateways[site]
        node = self.add(Node(site, "device", forwarding=True))
        if lng.device.behind_nat:
            inet_gw = self.isp_nat(site, node)
        else:
            inet_gw = self.attach_public(node, lng.gateway_ip)
        addresses = []
        for i, prefix in enumerate(self.t.site_lan(site)):
            hosts = self.t.site_hosts(site) if i == 0 else []
            self.lan(node, f"lan{i}", prefix, {h: prefix.network_address + FIRST_SITE_HOST + j
                                              for j, h in enumerate(hosts)}, "host")
            addresses.append(str(prefix.network_address + 1))
        lo = []
        if lng.bgp and str(lng.bgp.peering_address) not in addresses:
            lo.append(f"{lng.bgp.peering_address}/32")
        node.interfaces.append(Iface("lo", lo, kind="lo"))
        router_id = str(lng.bgp.peering_address) if lng.bgp else str(lng.gateway_ip)
        node.frr = Frr(lng.bgp.asn if lng.bgp else None, router_id, self.timers,
                       static=[("0.0.0.0/0", inet_gw)],
                       networks=[str(p) for p in self.t.site_lan(site)]
                       + (["0.0.0.0/0"] if lng.device.advertise_default_route else []))
        # its LAN, and what Azure forces to it, reach the Internet through its public address
        node.nft = dict(dnat=[], inner=[], mss_clamp=self.d["device"]["mss_clamp"], snat_all=True)

    def isp_nat(self, site: str, device: Node) -> str:
        """An ISP's NAT router between the device and the internet: the site's public
        address is the NAT's, the device's is private; the NAT maps what the device
        sends out and lets in only the answers (Azure cannot dial the device [1.3]). A
        carrier-grade NAT picks random source ports. Returns the device's default gateway."""
        lng = self.t.local_network_gateways[site]
        nat = lng.device.behind_nat
        isp = self.add(Node(names.isp_router(site), "isp-router", forwarding=True,
                            nat_udp_timeout=self.d["internal"]["nat_udp_timeout"]))
        isp.routes.append(Route("0.0.0.0/0", via=self.attach_public(isp, lng.gateway_ip)))
        pool = IPv4Network(self.d["internal"]["behind_nat"]["carrier_grade" if nat.carrier_grade else "isp"])
        behind = sorted(s for s, x in self.t.local_network_gateways.items()
                        if x.device.behind_nat and x.device.behind_nat.carrier_grade == nat.carrier_grade)
        link = IPv4Network((int(pool.network_address) + 4 * behind.index(site), 30))
        isp_ip, wan_ip = link.network_address + 1, link.network_address + 2
        self.link(device, Iface("pub", [f"{wan_ip}/30"]), isp, Iface("lan", [f"{isp_ip}/30"]))
        device.public_ip = str(wan_ip)
        isp.nft = dict(isp_nat=dict(random_ports=nat.carrier_grade))
        return str(isp_ip)

    def tunnel_end(self, router: Node, name: str, standby: bool = False,
                   role: str = "tunnel-endpoint", devices: tuple[str, ...] = ("ipsec0",)) -> tuple[Node, str]:
        """A tunnel namespace beside a router: underlay veth + inner veth (the tunnel
        interface); devices are where the tunnels' traffic goes (charon's ipsec0,
        openvpn's tun0). Returns the node and the router's inner interface name."""
        j = sum(1 for i in router.interfaces if i.name.startswith("t") and i.name.endswith("u"))
        net = IPv4Network((int(self.underlay.network_address) + 4 * j, 30))
        r_ip, t_ip = net.network_address + 1, net.network_address + 2
        end = self.add(Node(name, role, forwarding=True, standby=standby))
        self.link(router, Iface(f"t{j}u", [f"{r_ip}/30"]), end, Iface("ul", [f"{t_ip}/30"]))
        # the inner veth is the tunnel interface: MTU 1400 as Azure advises [3.1], which
        # also matches libipsec's ipsec0, so large segments are not silently lost
        mtu = self.d["internal"]["tunnel_mtu"]
        self.link(router, Iface(f"t{j}", proxy_arp=True, mtu=mtu),
                  end, Iface("in", proxy_arp=True, mtu=mtu))
        end.charon = dict(local_addr=str(t_ip))
        if self.dataplane == "kernel" and role == "tunnel-endpoint":     # point-to-site stays on libipsec
            # ESP in the kernel: ipsec0 is an XFRM interface (made with the node, routed
            # into at once), not the TUN device libipsec makes when charon starts. IKE
            # comes from the router's public address untranslated, so ESP goes raw, as
            # Azure sends it (reach_end).
            end.routes.append(Route("0.0.0.0/0", dev="ipsec0", table=TABLE_INTO_TUNNEL))
            end.charon = dict(local_addr=router.public_ip)
            if router.role == "gateway-instance":
                # one charon per instance, as on Azure: the instance's carries every
                # tunnel, each ipsec0 made in the instance (its SAs are there) and moved
                # into the tunnel end (a cross-namespace XFRM interface)
                end.interfaces.append(Iface("ipsec0", kind="xfrm", mtu=mtu, if_id=j + 1, made_in=router.name))
                end.charon_host = router.name
                # its charon: the hosted ends' connections (vpnlab.plan.render)
                router.charon = dict(hosts=True, local_addr=router.public_ip)
            else:
                # a device's tunnel end runs its own charon on the router's address
                end.interfaces.append(Iface("ipsec0", kind="xfrm", mtu=mtu, if_id=XFRM_IF_ID))
                end.iface("ul").addresses.append(f"{router.public_ip}/32")
                end.shares_public_address = router.shares_public_address = True
        end.routes.append(Route("0.0.0.0/0", via=str(r_ip)))
        end.routes.append(Route("0.0.0.0/0", dev="in", table=TABLE_FROM_TUNNEL))
        end.rules += [Rule(device, TABLE_FROM_TUNNEL, 100) for device in devices]
        if "ipsec0" in devices:   # openvpn's clients: tun0 (their /32s in the same table)
            end.rules.append(Rule("in", TABLE_INTO_TUNNEL, 101))
        router.nft["inner"].append(f"t{j}")
        if router.role == "gateway-instance":
            router.rules.append(Rule(f"t{j}u", TABLE_UNDERLAY, UNDERLAY_PRIORITY))
        return end, f"t{j}"

    def connection(self, conn_name: str):
        if self.t.connections[conn_name].type == "Vnet2Vnet":
            self.vnet_to_vnet(conn_name)
        else:
            self.site_connection(conn_name)

    def site_connection(self, conn_name: str):
        """The tunnels of a connection: one per gateway instance. Active-active: each
        instance has its own tunnel to the device [5]. Active-standby: the device has
        one tunnel end, towards the gateway's one public IP; both instances have theirs
        ready, the standby's idle until it takes over."""
        c = self.t.connections[conn_name]
        gw = self.t.virtual_network_gateways[c.virtual_network_gateway]
        lng = self.t.local_network_gateways[c.local_network_gateway]
        vnet = self.t.virtual_networks[gw.virtual_network]
        device = self.nodes.get(c.local_network_gateway)     # None: not managed
        pairs = selectors(self.t, conn_name)
        policy_based = gw.vpn_type == "PolicyBased"
        common = dict(connection=conn_name, version=2 if c.connection_protocol == "IKEv2" else 1,
                      secret=c.shared_key.get_secret_value(),
                      dpd_timeout=None if policy_based else self.dpd(c))
        policy = self.azure_policy(c, policy_based)
        dev_policy = self.device_policy(c, policy_based)
        op_end = op_if = None
        for k in range(instance_count(gw)):
            inst = self.nodes[names.instance(c.virtual_network_gateway, k)]
            tname = names.tunnel(conn_name, k)
            az_end, az_if = self.tunnel_end(inst, names.tunnel_end(tname, "az"), standby=inst.standby)
            az_end.interfaces.append(Iface("lo", selector_anchors(
                list(vnet.address_space) + [s.address_prefix for s in vnet.subnets.values()]), kind="lo"))
            connected = k in lng.device.connect_to_instances or not gw.active_active
            new_device_end = device is not None and connected and (gw.active_active or op_end is None)
            if new_device_end:
                op_end, op_if = self.tunnel_end(device, names.tunnel_end(tname if gw.active_active else conn_name, "op"))
                op_end.interfaces.append(Iface("lo", selector_anchors(
                    list(lng.address_space) + self.t.site_lan(c.local_network_gateway)), kind="lo"))
            if not inst.standby:
                self.tunnels.append(Tunnel(tname, conn_name, c.virtual_network_gateway, inst.name,
                                           c.local_network_gateway, az_end.name,
                                           op_end.name if op_end and connected else None,
                                           str(lng.gateway_ip), c.connection_mode, policy_based,
                                           expected_up=connected or device is None,
                                           dpd_timeout=common["dpd_timeout"]))
            self.azure_end(inst, az_end, c, common | dict(policy=policy), str(lng.gateway_ip), pairs,
                           policy_based)
            if new_device_end:
                self.device_end(device, op_end, inst.public_ip, c, common | dict(policy=dev_policy),
                                pairs, policy_based)
            if gw.gateway_default_site == c.local_network_gateway:
                # forced tunnelling to the Default Site: Internet-bound traffic into its tunnel [7.3]
                inst.frr.static.append(("0.0.0.0/0", az_if))
                inst.frr.networks.append("0.0.0.0/0")
            # the site's address space: static routes, with BGP too ("in addition to the
            # routes learned via BGP"), announced to the VNet and the BGP peers [4.2, 4.5],
            # as its IngressSnat rules translate it [7.2]
            slot = self.slot(c.virtual_network_gateway, k)
            nat.plan_connection(self.t, inst, slot, conn_name, az_if)
            for p in self.static_prefixes(lng, c):
                nat.announce(inst, str(nat.seen(self.t, conn_name, nat.INGRESS, slot, IPv4Network(p))), az_if)
            if c.enable_bgp:
                local = self.bgp_over(inst, az_if, device if connected else None, op_if, gw, c, k,
                                      new_device_end, conn_name)
                nat.plan_bgp(self.t, inst, slot, conn_name, az_if, str(lng.bgp.peering_address), local)
            if new_device_end and not nat.bgp_translated(self.t, conn_name):
                # the VNet (as EgressSnat rules show it), and the P2S pool: a careful
                # engineer routes them back; with BGP, what BGP does not carry
                p2s = gw.vpn_client_configuration
                prefixes = nat.vnet_as_seen(self.t, conn_name, slot)
                routed = ([p for p in prefixes if p not in self.t.gateway_prefixes(c.virtual_network_gateway)]
                          if c.enable_bgp else prefixes + (p2s.address_pool if p2s else []))
                for p in routed:
                    device.frr.static.append((str(p), op_if))

    # -- VNet-to-VNet
    def vnet_to_vnet(self, conn_name: str):
        """A VNet-to-VNet pair [7.1], built once, from the connection whose name sorts
        first: its gateway dials (the agent), the other answers; both ends run Azure's
        proposals. Each instance has one tunnel end per public IP of the other gateway;
        a tunnel joins two serving instances (both active-active: four tunnels)."""
        back = reverse_connection(self.t, conn_name)
        if back < conn_name:
            return
        c = self.t.connections[conn_name]
        a, b = c.virtual_network_gateway, c.peer_virtual_network_gateway
        ends = {**self.v2v_ends(a, b, c, conn_name), **self.v2v_ends(b, a, c, conn_name)}
        for i in self.serving(a):
            for j in self.serving(b):
                sa, sb = self.slot(a, i), self.slot(b, j)
                az_end, peer_end = ends[(a, i, sb)][0], ends[(b, j, sa)][0]
                name = names.tunnel(conn_name, i) + (f"-{sb}" if self.gw(b).active_active else "")
                self.tunnels.append(Tunnel(name, conn_name, a, names.instance(a, i), names.instance(b, j),
                                           az_end.name, peer_end.name,
                                           self.nodes[names.instance(b, j)].public_ip,
                                           dpd_timeout=self.dpd(c)))
                if c.enable_bgp:
                    for g, k, peer in ((a, i, (b, j)), (b, j, (a, i))):
                        self.bgp.append(BgpSession(names.instance(g, k), self.bgp_addresses[names.instance(*peer)]["bgp_ip"],
                                                   names.instance(*peer), "ebgp"))

    def gw(self, name: str):
        return self.t.virtual_network_gateways[name]

    def serving(self, gw_name: str) -> list[int]:
        return [k for k in range(instance_count(self.gw(gw_name))) if self.serves(gw_name, k)]

    def slot(self, gw_name: str, k: int) -> int:
        """Which of the gateway's public IPs (and BGP addresses) instance k holds."""
        return k if self.gw(gw_name).active_active else 0

    def v2v_ends(self, g: str, peer: str, c, conn_name: str) -> dict:
        """Gateway g's tunnel ends towards peer: per instance, one per peer public IP,
        with its routing: BGP sessions to the peer's instances, or static routes to the
        peer's VNet that BGP peers never learn (no transit without BGP [4.6])."""
        out = {}
        peer_vnet = [str(p) for p in self.t.virtual_networks[self.gw(peer).virtual_network].address_space]
        slots = sorted({self.slot(peer, k) for k in range(instance_count(self.gw(peer)))})
        policy = self.azure_policy(c)
        for k in range(instance_count(self.gw(g))):
            inst = self.nodes[names.instance(g, k)]
            for s in slots:
                peer_inst = self.nodes[names.instance(peer, s)]
                towards = names.instance(peer, s) if len(slots) > 1 else peer
                end, ifname = self.tunnel_end(inst, names.v2v_end(inst.name, towards), standby=inst.standby)
                out[(g, k, s)] = (end, ifname)
                self.azure_end(inst, end, c, dict(connection=conn_name, version=2, policy=policy,
                                                  secret=c.shared_key.get_secret_value(),
                                                  dpd_timeout=self.dpd(c)), peer_inst.public_ip)
                if c.enable_bgp:
                    self.azure_peer(inst, ifname, self.bgp_addresses[peer_inst.name]["bgp_ip"],
                                    self.gw(peer).bgp.asn, self.bgp_addresses[inst.name]["bgp_ip"])
                else:
                    inst.frr.static += [(p, ifname) for p in peer_vnet]
                    inst.frr.networks += [p for p in peer_vnet if p not in inst.frr.networks]
                    inst.frr.no_transit += [p for p in peer_vnet if p not in inst.frr.no_transit]
        return out

    def azure_peer(self, inst: Node, ifname: str, peer_ip: str, asn: int, local: str, passive: bool = False):
        """An eBGP peer of a gateway instance: Azure installs the host route to it
        through the tunnel [4.2], filters what it advertises and accepts and drops the
        session past 4,000 prefixes [4.5]. One neighbor per address (an active-standby
        peer is reached through two tunnel ends, one per instance)."""
        inst.frr.static.append((f"{peer_ip}/32", ifname))
        if any(n.address == peer_ip for n in inst.frr.neighbors):
            return
        az = self.d["azure"]
        inst.frr.neighbors.append(Neighbor(
            peer_ip, asn, multihop=True, update_source=local, passive=passive,
            route_map_in="FROM-BGP-PEER", route_map_out="TO-BGP-PEER",
            maximum_prefix=(az["bgp_max_prefixes"], az["bgp_max_prefixes_restart_minutes"])))

    # -- tunnel ends
    def reach_end(self, router: Node, end: Node, peer: str, refuse_peer_init: bool):
        """What peer sends to the router's public address (IKE, ESP) reaches the tunnel
        end. On the kernel data plane the end holds that address: the router routes the
        peer's packets to it, untranslated, before delivering anything locally. On the
        userspace data plane libipsec sends ESP in UDP anyway: the router translates."""
        routed = end.charon["local_addr"] == router.public_ip
        entry = dict(peer=peer, to=end.charon["local_addr"], refuse_peer_init=refuse_peer_init)
        router.nft["dnat"].append(entry)
        if not routed:
            return
        entry["routed"] = True
        if end.charon_host == router.name:      # the router's own charon answers
            return
        link = next(ln for ln in self.links if ln.b == end.name and ln.b_if == "ul")
        table = TABLE_FIRST_PEER + int(link.a_if[1:-1])
        ul = end.iface("ul").addresses[0].split("/")[0]
        router.routes.append(Route("0.0.0.0/0", via=ul, table=table))
        router.rules.append(Rule("pub", table, PEER_PRIORITY, src=peer, dst=f"{router.public_ip}/32"))

    def azure_end(self, inst: Node, end: Node, c, common: dict, peer: str, pairs: list = (),
                  policy_based: bool = False):
        """An Azure tunnel end facing peer (a device's or another gateway's public IP)."""
        conn = common["connection"]
        self.reach_end(inst, end, peer, refuse_peer_init=c.connection_mode == "InitiatorOnly")
        end.charon.update(common, side="azure", local_id=inst.public_ip, remote_id=peer,
                          remote_addr=peer,
                          children=azure_children(c, conn, common["policy"], list(pairs), policy_based))
        if pairs:
            end.nft = dict(selectors=pairs)

    def device_end(self, device: Node, end: Node, az_pub: str, c, common: dict, pairs: list,
                   policy_based: bool):
        conn = common["connection"]
        op_pub = str(self.t.local_network_gateways[c.local_network_gateway].gateway_ip)
        if pairs:
            end.nft = dict(selectors=[(s, v) for v, s in pairs])
        self.reach_end(device, end, az_pub, refuse_peer_init=False)
        end.charon.update(common, side="onprem", local_id=op_pub, remote_id=az_pub, remote_addr=az_pub,
                          children=device_children(conn, common["policy"], pairs, policy_based,
                                                   self.t.local_network_gateways[c.local_network_gateway]
                                                   .device.behind_nat is not None))

    @staticmethod
    def static_prefixes(lng, c) -> list[str]:
        """What Azure routes statically to a site: its address space, less the BGP peer's
        host route, which Azure installs by itself [4.2] (the lab: in azure_peer)."""
        peer = f"{lng.bgp.peering_address}/32" if c.enable_bgp else None
        return [str(p) for p in lng.address_space if str(p) != peer]

    def bgp_over(self, inst: Node, az_if: str, device: Node | None, op_if: str | None, gw,
                 c, k: int, configure_device: bool, conn_name: str) -> str:
        """BGP over a site connection; returns the address the instance peers from."""
        site = c.local_network_gateway
        lng = self.t.local_network_gateways[site]
        peer = str(lng.bgp.peering_address)
        apipa_peer = lng.bgp.peering_address.is_link_local
        local = azure_bgp_address(self.bgp_addresses[inst.name], c, k, apipa_peer)
        # Azure never opens a session from APIPA [4.3]
        self.azure_peer(inst, az_if, peer, lng.bgp.asn, local, passive=apipa_peer)
        if not inst.standby and (device is not None or not lng.managed):
            self.bgp.append(BgpSession(inst.name, peer, site, "ebgp"))
        if device is None:
            return local
        # the device peers with the post-NAT address where an EgressSnat rule maps it [7.2]
        seen = nat.translated_address(self.t, conn_name, nat.EGRESS, self.slot(c.virtual_network_gateway, k),
                                      local) or local
        if configure_device:
            device.frr.static.append((f"{seen}/32", op_if))
            device.frr.neighbors.append(Neighbor(seen, gw.bgp.asn, multihop=True, update_source=peer))
        if not inst.standby:
            self.bgp.append(BgpSession(device.name, seen, inst.name, "ebgp"))
        return local

    def dpd(self, c) -> int:
        return timers_of.dpd_timeout(self.timers, c)

    def azure_policy(self, c, policy_based: bool = False) -> dict:
        """Azure's proposals per role [3.1]: esp answers the device, esp_initiator is what
        Azure offers when it creates or rekeys a CHILD SA. A custom policy replaces both.
        Policy-based gateways have one list for both roles and 3,600 s quick-mode SAs."""
        az = self.d["azure"]
        if policy_based:
            pb = self.d["policy_based"]
            return dict(ike=pb["ike_proposals"], esp=pb["esp_proposals"], esp_initiator=pb["esp_proposals"],
                        ike_lifetime=az["ike_lifetime_seconds"],
                        child_lifetime=pb["child_lifetime_seconds"],
                        child_kilobytes=az["child_lifetime_kilobytes"])
        if c.ipsec_policies:
            policy = custom_policy(c.ipsec_policies[0], az["ike_lifetime_seconds"])
            return policy | dict(esp_initiator=policy["esp"])
        return dict(ike=az["ike_proposals"], esp=az["esp_proposals_responder"],
                    esp_initiator=az["esp_proposals_initiator"],
                    ike_lifetime=az["ike_lifetime_seconds"],
                    child_lifetime=az["child_lifetime_seconds"],
                    child_kilobytes=az["child_lifetime_kilobytes"])

    def device_policy(self, c, policy_based: bool = False) -> dict:
        """The lab's device, configured as a careful engineer does for this gateway."""
        az, dev = self.d["azure"], self.d["device"]
        if policy_based:
            pb = self.d["policy_based"]
            return dict(ike=pb["ike_proposals"][:1], esp=pb["esp_proposals"][:1],
                        ike_lifetime=az["ike_lifetime_seconds"],
                        child_lifetime=pb["child_lifetime_seconds"],
                        child_kilobytes=az["child_lifetime_kilobytes"])
        if c.ipsec_policies:   # a careful engineer mirrors the custom policy
            return custom_policy(c.ipsec_policies[0], az["ike_lifetime_seconds"])
        return dict(ike=dev["ike_proposals"], esp=dev["esp_proposals"],
                    ike_lifetime=az["ike_lifetime_seconds"],
                    child_lifetime=az["child_lifetime_seconds"],
                    child_kilobytes=az["child_lifetime_kilobytes"])

    def finish_routing(self):
        """What must be reachable once converged: every VM <-> every on-prem host, and
        the prefixes each router must have in its FIB."""
        for conn_name in sorted(self.t.connections):
            c = self.t.connections[conn_name]
            if c.type == "Vnet2Vnet":
                self.vnet_to_vnet_routing(c)
                continue
            if not self.t.local_network_gateways[c.local_network_gateway].managed:
                continue   # the user's device: nothing the lab can expect of it
            gw = self.t.virtual_network_gateways[c.virtual_network_gateway]
            slot = self.slot(c.virtual_network_gateway, self.serving(c.virtual_network_gateway)[0])
            # BGP without route translation: the site's routes arrive as it sends them, and
            # its translated space is routed nowhere [7.2]
            untranslated = c.enable_bgp and not nat.bgp_translated(self.t, conn_name)
            site_prefixes = [str(p if untranslated else nat.seen(self.t, conn_name, nat.INGRESS, slot, p))
                             for p in self.t.site_lan(c.local_network_gateway)]
            served = [gw.virtual_network, *self.t.spokes(gw.virtual_network)]
            self._expect(c.local_network_gateway, [str(p) for p in nat.vnet_as_seen(self.t, conn_name, slot)])
            for vnet in served:
                self._expect(names.vnet_router(vnet), site_prefixes)
            connected = self.t.local_network_gateways[c.local_network_gateway].device.connect_to_instances
            for k in range(instance_count(gw)):
                if self.serves(c.virtual_network_gateway, k) and (k in connected or not gw.active_active):
                    self._expect(names.instance(c.virtual_network_gateway, k), site_prefixes)
            if untranslated and c.ingress_nat_rule_ids:
                continue
            hosts = self.t.site_hosts(c.local_network_gateway)
            for vm in (vm for vnet in served for vm in self._plain_vms(vnet)):
                for h in hosts:
                    # as each side sees the other; none where a dynamic rule allows only
                    # flows the other side begins [7.2]
                    to_host = nat.translated_address(self.t, conn_name, nat.INGRESS, slot, self._address(h))
                    to_vm = nat.translated_address(self.t, conn_name, nat.EGRESS, slot, self._address(vm))
                    if to_host:
                        self.pings.append((vm, to_host))
                    if to_vm:
                        self.pings.append((h, to_vm))

    def _plain_vms(self, vnet: str) -> list[str]:
        """VMs of subnets without a route table: what they reach follows from the design
        alone (a route table may send traffic anywhere; the routing checks cover it)."""
        subnets = self.t.virtual_networks[vnet].subnets
        return [vm for sub in sorted(subnets) if subnets[sub].route_table is None
                for vm in self.t.subnet_vms(vnet, sub)]

    def vnet_to_vnet_routing(self, c):
        """Each direction's connection: its gateway's serving instances and VNet reach
        the peer VNet, and its VMs ping the peer's VMs."""
        gw, peer = self.gw(c.virtual_network_gateway), self.gw(c.peer_virtual_network_gateway)
        peer_vnet = [str(p) for p in self.t.virtual_networks[peer.virtual_network].address_space]
        self._expect(names.vnet_router(gw.virtual_network), peer_vnet)
        for k in self.serving(c.virtual_network_gateway):
            self._expect(names.instance(c.virtual_network_gateway, k), peer_vnet)
        for vm in self._plain_vms(gw.virtual_network):
            for other in self._plain_vms(peer.virtual_network):
                self.pings.append((vm, self._address(other)))

    def _expect(self, node: str, prefixes: list[str]):
        have = self.expected.setdefault(node, [])
        have += [p for p in prefixes if p not in have]

    def _address(self, node: str) -> str:
        return self.nodes[node].iface("eth0").addresses[0].split("/")[0]


_ENC = {"GCMAES256": "aes256gcm16", "GCMAES192": "aes192gcm16", "GCMAES128": "aes128gcm16",
        "AES256": "aes256", "AES192": "aes192", "AES128": "aes128", "DES3": "3des", "DES": "des",
        "None": "null"}
_INTEG = {"SHA384": "sha384", "SHA256": "sha256", "SHA1": "sha1", "MD5": "md5"}
_DH = {"DHGroup24": "modp2048s256", "ECP384": "ecp384", "ECP256": "ecp256",
       "DHGroup14": "modp2048", "DHGroup2048": "modp2048", "DHGroup2": "modp1024",
       "DHGroup1": "modp768", "None": None}
_PFS = {"PFS24": "modp2048s256", "ECP384": "ecp384", "ECP256": "ecp256", "PFS2048": "modp2048",
        "PFS2": "modp1024", "PFS1": "modp768", "None": None}


def custom_policy(p, ike_lifetime: int) -> dict:
    """Azure custom IPsec/IKE policy -> strongSwan proposals (mapping is ours, DERIVED)."""
    ike = "-".join(x for x in (_ENC[p.ike_encryption], _INTEG[p.ike_integrity], _DH[p.dh_group]) if x)
    esp_integ = None if p.ipsec_encryption.startswith("GCM") else _INTEG.get(p.ipsec_integrity)
    esp = "-".join(x for x in (_ENC[p.ipsec_encryption], esp_integ, _PFS[p.pfs_group]) if x)
    return dict(ike=[ike], esp=[esp], ike_lifetime=ike_lifetime,
                child_lifetime=p.sa_lifetime_seconds, child_kilobytes=p.sa_datasize_kilobytes)


def build(t: Topology, timers: str = "azure", active: dict[str, int] | None = None,
          dataplane: str = "userspace") -> Plan:
    """active: which instance serves each active-standby gateway (default: instance 0);
    dataplane: where the site-to-site tunnels' ESP runs (parts.DATAPLANES)."""
    return _Builder(t, timers, active, dataplane).build()
