"""NAT rules' arithmetic [7.2]: how a rule maps a prefix, what a connection shows the
other side, what the agent announces for learned routes; and the shipped design's
nftables, checked by nft itself."""
import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from vpnlab.gateway.nat_routes import wanted
from vpnlab.model import nat_rules
from vpnlab.model.topology import load

ROOT = Path(__file__).parent.parent
DESIGN = load(ROOT / "topologies/nat-overlapping-sites.yaml")


def test_static_rules_keep_the_host_part_and_dynamic_rules_take_the_pool():
    assert nat_rules.map_prefix(IPv4Network("10.1.0.128/25"), IPv4Network("10.1.0.0/24"),
                                IPv4Network("172.16.2.0/24"), "Static") == IPv4Network("172.16.2.128/25")
    assert nat_rules.map_prefix(IPv4Network("10.40.1.0/24"), IPv4Network("10.40.0.0/16"),
                                IPv4Network("192.168.40.0/30"), "Dynamic") == IPv4Network("192.168.40.0/30")


def test_each_connection_shows_its_own_translation():
    """Both branches have 10.1.0.0/24; the gateway sees each as its rule says, the same
    on both instances (a rule per instance); branch2 sees the VNet as 172.20.0.0/16."""
    lan = IPv4Network("10.1.0.0/24")
    assert nat_rules.view(DESIGN, "hub-to-branch1", nat_rules.INGRESS, lan) == [IPv4Network("172.16.1.0/24")]
    assert nat_rules.view(DESIGN, "hub-to-branch2", nat_rules.INGRESS, lan) == [IPv4Network("172.16.2.0/24")]
    assert nat_rules.view(DESIGN, "hub-to-branch2", nat_rules.EGRESS, IPv4Network("10.10.0.0/16")) == \
        [IPv4Network("172.20.0.0/16")]
    assert nat_rules.view(DESIGN, "hub-to-branch3", nat_rules.INGRESS, IPv4Network("10.3.0.0/24")) == \
        [IPv4Network("10.3.0.0/24")]
    assert DESIGN.connection_prefixes("hub-gw") == [IPv4Network(p) for p in
                                                    ("172.16.1.0/24", "172.16.2.0/24", "10.3.0.0/24")]


def test_learned_routes_inside_a_rule_are_announced_translated():
    rule = [["branch2-in0", "10.1.0.0/24", "172.16.2.0/24", "Static"]]
    assert wanted(["10.1.0.0/24", "10.1.0.128/25", "10.9.0.0/24"], rule) == {
        "172.16.2.0/24": ("branch2-in0", "10.1.0.0/24"), "172.16.2.128/25": ("branch2-in0", "10.1.0.128/25")}


@pytest.mark.skipif(shutil.which("nft") is None or shutil.which("unshare") is None, reason="needs nft")
@pytest.mark.parametrize("node", ["hub-gw-in0", "hub-gw-in1", "branch3-isp"])
def test_the_designs_nftables_is_accepted_by_nft(node):
    """nft -c in a throwaway network namespace (a syntax or kernel-feature error would
    only show at `up` otherwise)."""
    path = ROOT / "tests/golden/nat-overlapping-sites" / node / "nftables.conf"
    res = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    if res.returncode != 0 and "Operation not permitted" in res.stderr:
        pytest.skip("needs root (a network namespace)")
    assert res.returncode == 0, res.stderr
