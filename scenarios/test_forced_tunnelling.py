"""Forced tunnelling [7.3] on topologies/forced-tunnelling.yaml: the static site "branch"
is the Default Site, the BGP site "dc" advertises 0.0.0.0/0, the dmz subnet's route
table sends 0.0.0.0/0 to the Internet. Where VM Internet traffic goes is seen with
tcpdump on the devices' tunnel interfaces and on the Internet host."""
from __future__ import annotations

import contextlib
import json

from scapy.layers.inet import ICMP, IP

from vpnlab.checks.wire import Capture
from vpnlab.gateway import control, live
from vpnlab.plan.parts import TABLE_UNDERLAY

LAB_TOPOLOGY = "../topologies/forced-tunnelling.yaml"
INTERNET_HOST = "203.0.113.254"
APP, PROXY = "10.30.1.4", "10.30.2.4"
GATEWAY = "corp-gw"


def active(lab) -> str:
    return f"{GATEWAY}-in{lab.plan.active[GATEWAY]}"


def tunnel_iface(lab, connection: str, side: str) -> tuple[str, str]:
    """(router, its tunnel interface) of a connection's tunnel from the active instance."""
    k = lab.plan.active[GATEWAY]
    router, inner, _ = lab.tunnel_links(f"{connection}-in{k}")["azure" if side == "azure" else "onprem"]
    return router, inner


def pings_seen(cap, src: str) -> int:
    return sum(1 for p in cap.packets() if IP in p and ICMP in p and p[IP].src == src
               and p[IP].dst == INTERNET_HOST and p[ICMP].type == 8)


@contextlib.contextmanager
def captures(lab, tmp_path):
    """tcpdump on both devices' tunnel interfaces and on the Internet host."""
    with contextlib.ExitStack() as stack:
        out = {}
        for site, conn in (("branch", "corp-to-branch"), ("dc", "corp-to-dc")):
            router, ifname = tunnel_iface(lab, conn, "onprem")
            out[site] = stack.enter_context(Capture(lab.backend, router, ifname, tmp_path / f"{site}.pcap"))
        out["internet"] = stack.enter_context(Capture(lab.backend, "internet-host", "pub", tmp_path / "inet.pcap"))
        yield out


def test_the_gateways_own_default_route_goes_into_the_tunnel(lab):
    """The correction: the instance's main table has no default route to the Internet
    (it would beat the VNet's forced tunnel); its IKE and ESP leave through a table of
    their own."""
    inst = active(lab)
    _, az_if = tunnel_iface(lab, "corp-to-branch", "azure")
    def defaults(*table: str) -> list[str]:
        out = lab.backend.exec(inst, ["ip", "-j", "route", "show", "0.0.0.0/0", *table]).stdout
        return [r.get("dev") for r in json.loads(out or "[]")]
    assert defaults() == [az_if]
    assert defaults("table", str(TABLE_UNDERLAY)) == ["pub"]


def test_vm_internet_traffic_goes_to_the_default_site(lab, tmp_path):
    """app's pings to the Internet host cross the tunnel to branch (the Default Site),
    which sends them on from its own public address: the ping succeeds and the Internet
    host never sees the VNet's egress address."""
    with captures(lab, tmp_path) as cap:
        assert live.ping(lab.backend, "app", INTERNET_HOST, count=3)
    assert pings_seen(cap["branch"], APP) >= 1
    assert pings_seen(cap["dc"], APP) == 0
    assert pings_seen(cap["internet"], lab.plan.nodes["branch"].public_ip) >= 1
    assert pings_seen(cap["internet"], lab.plan.nodes["corp-sdn"].public_ip) == 0


def test_a_subnet_routed_to_the_internet_bypasses_the_tunnel(lab, tmp_path):
    """dmz's route table says Internet for 0.0.0.0/0: its traffic leaves from the VNet's
    own public address, and no device sees it."""
    with captures(lab, tmp_path) as cap:
        assert live.ping(lab.backend, "proxy", INTERNET_HOST, count=3)
    assert pings_seen(cap["branch"], PROXY) == 0 and pings_seen(cap["dc"], PROXY) == 0
    assert pings_seen(cap["internet"], lab.plan.nodes["corp-sdn"].public_ip) >= 1


def test_bgp_default_route_forces_traffic_to_the_site_that_sends_it(lab, tmp_path):
    """Without the Default Site's static route, the default route dc advertises over BGP
    is what the VNet follows: app's Internet traffic crosses the tunnel to dc."""
    inst = active(lab)
    _, az_if = tunnel_iface(lab, "corp-to-branch", "azure")
    asn = lab.plan.nodes[inst].frr.asn
    control.vtysh_config(lab.backend, inst, [f"no ip route 0.0.0.0/0 {az_if}", f"router bgp {asn}",
                                             "address-family ipv4 unicast", "no network 0.0.0.0/0"])
    try:
        dc_bgp = lab.plan.nodes["dc"].frr.router_id
        lab.eventually(lambda: live.vtysh_json(lab.backend, "corp-sdn", "show ip route 0.0.0.0/0 json")
                       .get("0.0.0.0/0", [{}])[0].get("protocol"), "bgp", "routes_withdrawn",
                       "the VNet's default route from BGP")
        lab.eventually(lambda: [p["aspath"]["string"] for p in live.vtysh_json(
            lab.backend, inst, "show bgp ipv4 unicast 0.0.0.0/0 json").get("paths", []) if p.get("bestpath")],
            ["65041"], "routes_withdrawn", f"{inst} to prefer dc's default route ({dc_bgp})")
        with captures(lab, tmp_path) as cap:
            assert live.ping(lab.backend, "app", INTERNET_HOST, count=3)
        assert pings_seen(cap["dc"], APP) >= 1
        assert pings_seen(cap["branch"], APP) == 0
    finally:
        control.vtysh_config(lab.backend, inst, [f"ip route 0.0.0.0/0 {az_if}", f"router bgp {asn}",
                                                 "address-family ipv4 unicast", "network 0.0.0.0/0"])
    lab.eventually(lambda: live.ping(lab.backend, "app", INTERNET_HOST, count=1), True,
                   "routes_withdrawn", "the Default Site to carry Internet traffic again")


def test_ike_rekeys_under_forced_tunnelling(lab):
    """A new IKE SA is negotiated on both tunnels while the VNet's default route points
    into a tunnel: IKE uses the gateway's public path, and the tunnels stay up."""
    for conn in ("corp-to-branch", "corp-to-dc"):
        t = next(t for t in lab.plan.tunnels if t.connection == conn)
        before = {ike["uniqueid"] for ike in live.ike_sas(lab.backend, t.azure_end)}
        control.ike_rekey(lab.backend, t.azure_end, conn)
        lab.eventually(lambda: bool({ike["uniqueid"] for ike in live.ike_sas(lab.backend, t.azure_end)
                                     if ike["state"] == b"ESTABLISHED"} - before), True,
                       "reconverge", f"{conn}: a new IKE SA")
    assert not lab.convergence()
    assert live.ping(lab.backend, "app", "10.40.1.10", count=2)
    assert live.ping(lab.backend, "app", INTERNET_HOST, count=2)
