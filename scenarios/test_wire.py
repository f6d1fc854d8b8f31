"""What crosses the lab's internet, captured on its bridge and read with scapy."""
from ipaddress import IPv4Network

from vpnlab.checks.wire import Capture, clear_text_leaks, ike_sa_init_proposals
from vpnlab.gateway import control
from vpnlab.model.defaults import defaults
from vpnlab.plan.parts import initiator_child

LAB_TOPOLOGY = "../topologies/active-active-bgp.yaml"


def test_only_ike_and_esp_in_udp_cross_the_internet(lab, scenario, tmp_path):
    """While the probe runs between the VNet and both sites, every packet on the
    internet is IKE or ESP-in-UDP between public addresses: no protected address and no
    probe payload in clear text. Then the Azure end of one tunnel sets up an IKE SA
    itself (as Azure does when it initiates): its IKE_SA_INIT offers exactly the IKE
    proposals Azure documents, in Azure's order, DH group 2 only."""
    t = next(x for x in lab.plan.tunnels if x.name == "hub-to-dev0-in0")
    azure_ip = lab.plan.nodes[t.gateway_instance].public_ip
    protected = [IPv4Network(p) for p in ("10.10.0.0/16", "10.20.1.0/24", "10.20.2.0/24")]
    public = [IPv4Network(p) for p in (defaults()["internal"]["azure_public"], *defaults()["internal"]["site_public"])]
    with Capture(lab.backend, "internet", "br0", tmp_path / "internet.pcap") as cap:
        scenario.start(lab, "vm1", "onprem-dev0-host")
        scenario.wait_probe_packets(2000, scenario.probe.origin_ns)
        # the device's end goes quiet, so the Azure end's own IKE_SA_INIT stays unanswered
        scenario.fail("crash", t.onprem_end, daemon="charon")
        control.ike_terminate(lab.backend, t.azure_end, t.connection, force=True, timeout=0.5)
        established, log = control.initiate(lab.backend, t.azure_end, initiator_child(t.connection), timeout=3)
        control.ike_terminate(lab.backend, t.azure_end, t.connection, force=True, timeout=0.5)
        scenario.heal()
        scenario.wait_converged()
        scenario.stop()
    packets = cap.packets()
    scenario.record("packets captured", len(packets))
    assert len(packets) > 4000, "the capture saw the probe's traffic"
    assert clear_text_leaks(packets, protected, public) == []
    offers = ike_sa_init_proposals(packets, azure_ip)
    assert offers, f"no IKE_SA_INIT from {azure_ip}; charon said: {log[-3:]}"
    assert not established
    scenario.record("IKE proposals offered by the Azure side", ", ".join(offers[0]))
    assert all(o == defaults()["azure"]["ike_proposals"] for o in offers), offers
