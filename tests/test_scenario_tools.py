"""The scenario tools without a lab: JSON subset matching, probe analysis, the intended
reachability matrix, fault validation, the forwarding walk and the HTML report."""
import re
from ipaddress import IPv4Address
from pathlib import Path

import networkx as nx
import pytest
import yaml

from vpnlab.checks import effective_routes, faults, maintenance, routing
from vpnlab.checks.match import ABSENT, differences
from vpnlab.checks.probe import direction
from vpnlab.checks.report import render
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.plan.build import build

ROOT = Path(__file__).parent.parent
AA = ROOT / "topologies/active-active-bgp.yaml"


# ------------------------------------------------------------------ JSON subset
def test_subset_match_ignores_extra_keys_and_checks_absent_keys():
    actual = {"10.0.0.0/8": [{"installed": True, "protocol": "bgp"}], "peers": {"a": {"state": "Established"}}}
    assert differences(actual, {"10.0.0.0/8": [{"installed": True}]}) == []
    assert differences(actual, {"192.0.2.0/24": ABSENT}) == []
    assert differences(actual, {"peers": {"a": {"state": "Idle"}}}) == [
        "$.peers.a.state: expected 'Idle', got 'Established'"]
    assert differences(actual, {"10.0.0.0/8": ABSENT}) == [
        "$.10.0.0.0/8: must be absent, got [{'installed': True, 'protocol': 'bgp'}]"]
    assert differences(actual, {"x": 1}) == ["$.x: missing (expected 1)"]
    assert differences(actual, {"10.0.0.0/8": [{}, {}]}) == ["$.10.0.0.0/8: expected at least 2 items, got 1"]


# ------------------------------------------------------------------ probe analysis
def _stream(n=1000, lost=(), late=(), interval=1_000_000, delay=500_000):
    sent = [i * interval for i in range(n)]
    received = [(s, sent[s] + delay) for s in range(n) if s not in lost and s not in late]
    received += [(s, sent[s] + 50 * interval) for s in late]       # arrives after later ones
    received.sort(key=lambda r: r[1])
    return {"sent": sent, "received": received}


def test_probe_reports_loss_window_gap_recovery_and_reordering():
    data = _stream(lost=range(300, 500), late=[800])
    d = direction("a -> b", data, rate=1000, flows=4, origin_ns=0, event_ns=290_000_000,
                  until_ns=600_000_000)
    assert d["sent"] == 1000 and d["lost"] == 200 and d["reordered"] == 1
    assert d["loss_windows"] == [{"start_s": 0.3, "end_s": 0.5, "lost": 200}]
    assert d["recovered_s"] == 0.21                     # last loss ends 210 ms after the event
    assert 200 <= d["longest_gap_ms"] <= 205            # per flow: 4 ms apart normally
    assert d["window"] == {"sent": 310, "lost": 200}


def test_probe_outage_ends_with_the_loss_that_began_before_the_heal():
    """Loss after until_ns (a heal) is the heal's own: counted apart, not in the outage."""
    data = _stream(lost=[*range(300, 500), *range(900, 910)])
    d = direction("a -> b", data, rate=1000, flows=4, origin_ns=0, event_ns=290_000_000,
                  until_ns=800_000_000)
    assert d["recovered_s"] == 0.21 and d["lost_after_until"] == 10
    whole = direction("a -> b", data, rate=1000, flows=4, origin_ns=0, event_ns=290_000_000)
    assert whole["recovered_s"] == 0.62                 # without a heal, the last loss counts


def test_probe_without_loss_recovers_at_once():
    d = direction("a -> b", _stream(), rate=1000, flows=4, origin_ns=0, event_ns=100_000_000)
    assert d["lost"] == 0 and d["recovered_s"] == 0.0 and d["loss_windows"] == []
    assert d["longest_gap_ms"] == 4.0


# ------------------------------------------------------------------ intended matrix
def test_intended_matrix_of_the_active_active_design():
    t = load(AA)
    want = routing.intended(build(t, "fast"), t)
    assert want["10.10.1.0/24 -> 10.20.1.0/24"] == {"reaches": True, "paths": 2}
    assert want["10.20.2.0/24 -> 10.10.1.0/24"] == {"reaches": True, "paths": 2}
    # both sites use ASN 65010: BGP loop prevention, no transit through Azure
    assert want["10.20.1.0/24 -> 10.20.2.0/24"] == {"reaches": False, "paths": 0}


def test_sites_with_different_asns_transit_through_the_gateway(tmp_path):
    data = yaml.safe_load(AA.read_text())
    data["local_network_gateways"]["onprem-dev1"]["bgp"]["asn"] = 65020
    path = tmp_path / "transit.yaml"
    path.write_text(yaml.safe_dump(data))
    t = load(path)
    want = routing.intended(build(t, "fast"), t)
    assert want["10.20.1.0/24 -> 10.20.2.0/24"]["reaches"] is True


def test_effective_routes_follow_user_routes_bgp_and_system_routes_in_azures_order(tmp_path):
    """hub-spoke.yaml: web1's route table sends all but its VNet and the hub to the
    firewall, app1 takes the gateway's BGP route; a user route beats a BGP route of the
    same prefix; forwarded traffic enters spoke3 only with allow_forwarded_traffic."""
    data = yaml.safe_load((ROOT / "topologies/hub-spoke.yaml").read_text())
    t = load_data(tmp_path, data)
    onprem = IPv4Address("10.20.1.1")
    assert effective_routes.next_hop(t, "spoke1", "web", onprem) == ("VirtualAppliance", "10.10.2.4")
    assert effective_routes.next_hop(t, "spoke1", "app", onprem) == ("VirtualNetworkGateway", "hub-gw")
    assert effective_routes.next_hop(t, "spoke1", "web", IPv4Address("10.10.1.1")) == ("VNetPeering", "hub")
    assert effective_routes.reaches(t, ("spoke1", "web"), onprem, "onprem")
    assert effective_routes.reaches(t, "onprem", IPv4Address("10.11.2.1"))         # back through fw1
    assert not effective_routes.reaches(t, ("spoke1", "web"), IPv4Address("10.13.1.1"))
    data["virtual_networks"]["spoke3"]["peerings"]["spoke3-to-hub"]["allow_forwarded_traffic"] = True
    data["route_tables"]["drop-onprem"] = {"routes": {"x": {"address_prefix": "10.20.1.0/24", "next_hop_type": "None"}}}
    data["virtual_networks"]["spoke1"]["subnets"]["app"]["route_table"] = "drop-onprem"
    t = load_data(tmp_path, data)
    assert effective_routes.reaches(t, ("spoke1", "web"), IPv4Address("10.13.1.1"))
    assert effective_routes.next_hop(t, "spoke1", "app", onprem) == ("None", None)
    assert not effective_routes.reaches(t, ("spoke1", "app"), onprem, "onprem")
    v2v = load(ROOT / "topologies/vnet-to-vnet.yaml")      # joined by their gateways
    assert effective_routes.reaches(v2v, ("east", "workload"), IPv4Address("10.120.1.1"))


def load_data(tmp_path, data: dict):
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path)


def test_forwarding_walk_ends_in_a_drop_when_the_tunnels_are_down():
    t = load(AA)
    plan = build(t, "fast")
    fib = lambda routes: routing._Fib({p: [{"installed": True, "protocol": proto,
                                             "nexthops": [{"fib": True, "interfaceName": i}]}]
                                       for p, (proto, i) in routes.items()})
    fibs = {"onprem-dev0": fib({"10.10.0.0/16": ("bgp", "t0"), "10.20.1.0/24": ("connected", "lan0")}),
            "hub-gw-in0": fib({"10.10.0.0/16": ("static", "gws")}), "hub-sdn": fib({"10.10.1.0/24": ("connected", "s0")})}
    g = routing.forwarding_graph(plan, fibs, set(), IPv4Address("10.10.1.1"))
    assert sorted(g.successors("onprem-dev0")) == ["drop:hub-to-dev0-in0 down"]
    g = routing.forwarding_graph(plan, fibs, {"hub-to-dev0-in0"}, IPv4Address("10.10.1.1"))
    assert "deliver:hub-sdn" in nx.descendants(g, "onprem-dev0")


# ------------------------------------------------------------------ faults
@pytest.mark.parametrize("kind,target,params,message", [
    ("flood", "x", {}, "fault kind 'flood': allowed: instance, device, carrier"),
    ("instance", "onprem-dev0", {}, "unknown gateway-instance 'onprem-dev0'; known: hub-gw-in0, hub-gw-in1"),
    ("carrier", "onprem-dev0:eth9", {}, "onprem-dev0 has no link 'eth9'; its links: pub, lan0h10, t0u, t0, t1u, t1"),
    ("loss", "onprem-dev0:pub", {"percent": 120}, "--percent must be in (0, 100], got 120"),
    ("crash", "vm1", {}, "fault crash vm1 (vm): daemon None: allowed: none"),
    ("crash", "hub-gw-in0", {"daemon": "zebra"}, "daemon 'zebra': allowed: bgpd"),
])
def test_faults_that_name_nothing_real_are_refused(kind, target, params, message):
    plan = build(load(AA), "fast")
    with pytest.raises(SourceError) as err:
        faults.check(plan, kind, target, params)
    assert message in str(err.value)


def test_fault_defaults():
    plan = build(load(AA), "fast")
    assert faults.check(plan, "instance", "hub-gw-in0", {}) == {"planned": True}
    assert faults.check(plan, "device", "onprem-dev0", {}) == {"planned": False}
    assert faults.check(plan, "crash", "hub-to-dev0-in0-az", {}) == {"daemon": "charon"}


@pytest.mark.parametrize("gateway,instance,message", [
    ("nope", None, "unknown gateway 'nope'; gateways: hub-gw"),
    ("hub-gw", 2, "--instance 2: allowed: 0, 1 (IN_0, IN_1)"),
])
def test_maintenance_of_nothing_real_is_refused(gateway, instance, message):
    with pytest.raises(SourceError) as err:
        maintenance.check(load(AA), gateway, instance)
    assert message in str(err.value)


# ------------------------------------------------------------------ report
def test_report_is_one_self_contained_file():
    results = {"generated_at": 0, "machine": {"host": "h", "kernel": "k", "cpus": 2}, "scenarios": [{
        "nodeid": "scenarios/x.py::test_x", "name": "test_x", "description": "what <it> does",
        "outcome": "passed", "failure": None, "events": [{"t_s": 0.5, "kind": "fault", "what": "fault injected"}],
        "numbers": {"outage": {"value": 1.5, "unit": "s", "bound": "<= 12 s"}},
        "probes": [{"rate_pps": 1000, "flows": 4, "origin_s": 0.1, "events": [], "directions": [
            {"direction": "a -> b", "sent": 10, "lost": 2, "reordered": 0, "longest_gap_ms": 3.0,
             "recovered_s": 1.5, "loss_windows": [{"start_s": 0.5, "end_s": 2.0, "lost": 2}]}]}],
        "logs": {"n/charon.log": "line"}, "nodes": ["n"]}]}
    page = render(results)
    assert "what &lt;it&gt; does" in page and "<=" not in page.replace("&lt;=", "")
    assert '<svg class="timeline"' in page and 'class="loss"' in page and 'class="marker"' in page
    assert "http://" not in page and "https://" not in page and "<img" not in page, "nothing fetched"
    assert re.search(r"1 scenarios:\s*<span class=\"passed\">1 passed</span>", page)
