"""containerlab files (vpnlab.plan.clab, `vpnlab export`): they validate against containerlab's own
schema, clabernetes' constraints hold, and a split over hosts keeps every link exactly once.
Nothing is started here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import regex
import yaml

from vpnlab.model.topology import load
from vpnlab.plan import clab
from vpnlab.plan.build import build
from vpnlab.plan.parts import INTERNET
from vpnlab.runtime.containerlab import containers_of

ROOT = Path(__file__).parent.parent
SCHEMA = Path(__file__).parent / "containerlab-v0.79.0.schema.json"   # containerlab v0.79.0's own
# point-to-site is not in the containerlab files yet (test_point_to_site_export_is_refused)
TOPOLOGIES = sorted(p for p in (ROOT / "topologies").glob("*.yaml") if "vpn_client_configuration" not in p.read_text())
P2S = ROOT / "topologies/point-to-site.yaml"


def _pattern(validator, pattern, instance, schema):
    """JSON Schema patterns are ECMA-262 regular expressions: containerlab's use Unicode
    classes (\\p{L}) that Python's re lacks, so they are matched with regex."""
    if isinstance(instance, str) and not regex.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    base = jsonschema.validators.validator_for(schema)
    return jsonschema.validators.extend(base, {"pattern": _pattern})(schema)


def export(topology, fmt, out, *options) -> subprocess.CompletedProcess:
    """vpnlab export --format FMT [options] TOPOLOGY DIR"""
    return subprocess.run([sys.executable, "-m", "vpnlab.cli", "export", "--format", fmt,
                           *map(str, options), str(topology), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("fmt", clab.FORMATS)
@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_exported_topology_validates_against_containerlabs_schema(topology, fmt, tmp_path, validator):
    res = export(topology, fmt, tmp_path)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load((tmp_path / f"{topology.stem}.clab.yml").read_text())
    assert errors(validator, doc) == []
    plan = build(load(topology), "azure")
    assert set(doc["topology"]["nodes"]) == set(plan.nodes)
    assert len(doc["topology"]["links"]) == len(plan.links)
    for node in plan.nodes:             # every node folder has its setup and configs
        assert (tmp_path / node / "setup.sh").exists()


def test_the_validator_rejects_what_containerlab_would(tmp_path, validator):
    """The schema check can fail: an unknown kind, a link endpoint with an unknown
    field, a node name containerlab refuses."""
    assert export(ROOT / "topologies/single-site-static.yaml", "clab", tmp_path).returncode == 0
    good = yaml.safe_load((tmp_path / "single-site-static.clab.yml").read_text())
    for breaks in (lambda d: d["topology"]["nodes"]["internet"].update(kind="router-os-9000"),
                   lambda d: d["topology"]["links"][0]["endpoints"][0].update(port=1),
                   lambda d: d["topology"]["nodes"].update({"-bad name": {"kind": "linux"}})):
        doc = json.loads(json.dumps(good))
        breaks(doc)
        assert errors(validator, doc), "the schema accepted a broken file"


def test_clabernetes_export_has_veth_links_relative_binds_and_self_setup(tmp_path):
    res = export(ROOT / "topologies/active-active-bgp.yaml", "clabernetes", tmp_path)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load((tmp_path / "active-active-bgp.clab.yml").read_text())
    assert {link["type"] for link in doc["topology"]["links"]} == {"veth"}
    for name, node in doc["topology"]["nodes"].items():
        assert node["cmd"] == "start" and node["network-mode"] == "none"
        for bind in node["binds"]:
            src, dst = bind.split(":")
            assert not src.startswith("/") and (tmp_path / src).is_file(), bind
            assert dst.startswith(f"{clab.IN_CONTAINER}/{name}/")
    # the configs name the folder as the container sees it
    assert f"{clab.IN_CONTAINER}/hub-gw-in0/frr.conf" in "".join(doc["topology"]["nodes"]["hub-gw-in0"]["binds"])
    assert "/var/lib/vpnlab" not in (tmp_path / "hub-to-dev0-in0-az/strongswan.conf").read_text()
    assert (tmp_path / "hub-to-dev0-in0-az/swanctl.conf").stat().st_mode & 0o077 == 0


def test_setup_script_brings_links_up_except_on_a_standby_instance(tmp_path):
    plan = build(load(ROOT / "topologies/active-standby-bgp.yaml"), "azure")
    files = clab.setup_files(plan, lambda n: clab.IN_CONTAINER / n)
    standby = [n.name for n in plan.nodes.values() if n.standby and n.role == "gateway-instance"]
    active = [n.name for n in plan.nodes.values() if not n.standby and n.role == "gateway-instance"]
    assert standby and active
    assert "ip link set pub down" in files[standby[0]]["setup.sh"] and "standby" in files[standby[0]]
    assert "ip route replace" not in files[standby[0]]["setup.sh"]
    assert "ip link set pub up" in files[active[0]]["setup.sh"] and "standby" not in files[active[0]]


def test_split_hosts_keeps_every_link_once_with_one_vni_per_crossing_link(tmp_path, validator):
    topology = ROOT / "topologies/dual-site-transit.yaml"
    res = export(topology, "clab", tmp_path, "--split-hosts", "3",
                 "--host-addresses", "10.0.0.1,10.0.0.2,10.0.0.3")
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "split.json").read_text())
    assert summary["mtu_budget"]["host_network_mtu_min"] == 1550
    docs = [yaml.safe_load(p.read_text()) for p in sorted(tmp_path.glob("host*/*.clab.yml"))]
    assert len(docs) == 3
    for doc in docs:
        assert errors(validator, doc) == []
    plan = build(load(topology), "azure")
    owner = {node: k for k, doc in enumerate(docs) for node in doc["topology"]["nodes"]}
    assert set(owner) == set(plan.nodes)              # every node on exactly one host
    assert sum(len(d["topology"]["nodes"]) for d in docs) == len(plan.nodes)
    veths = {tuple(sorted(f"{e['node']}:{e['interface']}" for e in link["endpoints"]))
             for d in docs for link in d["topology"]["links"] if link["type"] == "veth"}
    vxlans = {}
    for k, d in enumerate(docs):
        for link in d["topology"]["links"]:
            if link["type"] == "vxlan":
                e = link["endpoint"]
                vxlans.setdefault(link["vni"], []).append((k, f"{e['node']}:{e['interface']}", link["remote"]))
    for vni, ends in vxlans.items():                 # both halves, pointing at each other
        (ka, a, remote_a), (kb, b, remote_b) = ends
        assert ka != kb and remote_a == f"10.0.0.{kb + 1}" and remote_b == f"10.0.0.{ka + 1}"
    crossing = {tuple(sorted((a, b))) for ends in vxlans.values() for (_, a, _), (_, b, _) in [ends]}
    wanted = {tuple(sorted((f"{link.a}:{link.a_if}", f"{link.b}:{link.b_if}"))) for link in plan.links}
    assert veths | crossing == wanted and not veths & crossing
    # only the emulated internet is crossed: a site or a VNet stays on one host
    assert all(INTERNET in a + b for a, b in crossing)
    assert len(set(owner.values())) == 3


def test_split_hosts_refuses_what_it_cannot_do(tmp_path):
    aa = ROOT / "topologies/active-active-bgp.yaml"
    res = export(aa, "clab", tmp_path, "--split-hosts", "2")
    assert res.returncode == 2 and "needs --host-addresses with 2 addresses" in res.stderr
    res = export(aa, "clabernetes", tmp_path, "--split-hosts", "2", "--host-addresses", "10.0.0.1,10.0.0.2")
    assert res.returncode == 2 and "only with --format clab" in res.stderr
    res = export(aa, "clab", tmp_path, "--split-hosts", "2", "--host-addresses", "10.0.0.1,nope")
    assert res.returncode == 2 and "'nope' is not an IPv4 address" in res.stderr
    five = ",".join(f"10.0.0.{k}" for k in range(1, 6))    # hub, two devices, the internet
    res = export(aa, "clab", tmp_path, "--split-hosts", "5", "--host-addresses", five)
    assert res.returncode == 2 and "splits over at most 4 hosts" in res.stderr
    assert not list(tmp_path.iterdir())             # nothing written


@pytest.mark.parametrize("output, names", [
    ('{"containers": [{"name": "clab-x-a", "state": "running"}]}', ["clab-x-a"]),     # before 0.60
    ('{"x": [{"name": "clab-x-a", "state": "running"}, {"name": "clab-x-b"}]}', ["clab-x-a", "clab-x-b"]),
    ('[{"name": "clab-x-a"}, 3, {"nameless": 1}]', ["clab-x-a"]),
    ("not json", []), ("", []), ('{"x": "y"}', []),
])
def test_containerlab_inspect_output_is_read_defensively(output, names):
    assert [c["name"] for c in containers_of(output)] == names


@pytest.mark.parametrize("fmt", clab.FORMATS)
def test_point_to_site_export_is_refused_with_the_reason(fmt, tmp_path):
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "export", "--format", fmt, str(P2S), str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "point-to-site" in res.stderr and "netns or docker" in res.stderr, res.stderr
    assert not any(tmp_path.iterdir())
