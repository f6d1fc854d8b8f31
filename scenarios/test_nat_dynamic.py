"""Dynamic NAT and BGP without route translation [7.2], on
scenarios/topologies/nat-dynamic.yaml: the VNet's workload subnet reaches partner as
one address (192.168.40.1, ports 10000-10999); branch announces 10.1.0.0/24 over BGP
through an IngressSnat rule, and the gateway does not translate BGP routes."""
from __future__ import annotations

import socket

from vpnlab.checks.wire import Capture
from vpnlab.gateway import live
from vpnlab.gateway.metrics import metrics
from vpnlab.runtime.backend import netns_socket

LAB_TOPOLOGY = "topologies/nat-dynamic.yaml"
PARTNER_HOST, EXTERNAL = "10.50.1.10", "192.168.40.1"
VMS = {"dyn-vm1": "10.40.1.4", "dyn-vm2": "10.40.1.5"}
PORTS = range(10000, 11000)
SPORT, DPORT = 40000, 40001


def drops(lab) -> int:
    return next(r["value"] for r in metrics(lab.session) if r["name"] == "TunnelNatPacketDrop"
                and r["dimensions"]["NatRule"] == "workload-out")


def test_vnet_hosts_share_one_address_by_port(lab):
    """Two VMs send from the same source port at once: partner receives both from
    192.168.40.1, on two different ports inside the rule's range (port translation)."""
    rt = lab.backend
    with netns_socket(rt.namespace("partner-host"), socket.SOCK_DGRAM) as server:
        server.bind((PARTNER_HOST, DPORT))
        server.settimeout(5)
        senders = []
        try:
            for vm, address in VMS.items():
                s = netns_socket(rt.namespace(vm), socket.SOCK_DGRAM)
                senders.append(s)
                s.bind((address, SPORT))
                s.sendto(vm.encode(), (PARTNER_HOST, DPORT))
            seen = {}
            for _ in VMS:
                data, source = server.recvfrom(64)
                seen[data.decode()] = source
        finally:
            for s in senders:
                s.close()
    assert set(seen) == set(VMS), seen
    assert {address for address, _ in seen.values()} == {EXTERNAL}, seen
    ports = {port for _, port in seen.values()}
    assert len(ports) == 2 and all(p in PORTS for p in ports), seen


def test_partner_cannot_begin_a_flow_to_the_vnet(lab, tmp_path):
    """A dynamic rule translates only flows begun on its internal side: partner's
    pings to 192.168.40.1 reach no VM and are counted as TunnelNatPacketDrop; the VMs'
    own pings to partner are answered."""
    before = drops(lab)
    with Capture(lab.backend, "dyn-vm1", "eth0", tmp_path / "vm.pcap") as cap:
        assert not live.ping(lab.backend, "partner-host", EXTERNAL, count=3, timeout=1)
    assert not [p for p in cap.packets() if p.haslayer("ICMP")]
    assert drops(lab) - before == 3
    for vm in VMS:
        assert live.ping(lab.backend, vm, PARTNER_HOST, count=2)


def test_without_bgp_route_translation_learned_routes_stay_as_sent(lab):
    """enable_bgp_route_translation_for_nat is off: the VNet learns branch's 10.1.0.0/24
    as branch announces it, and nothing of the rule's 172.16.7.0/24 (Azure translates
    learned routes only with the option)."""
    fib = live.fib_prefixes(lab.backend, "dyn-sdn")
    assert "10.1.0.0/24" in fib and "172.16.7.0/24" not in fib, fib
    paths = live.vtysh_json(lab.backend, "dyn-sdn", "show bgp ipv4 unicast json")["routes"]
    assert "172.16.7.0/24" not in paths
