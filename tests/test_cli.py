"""The command line without a lab: `vpnlab new` writes designs that validate, the
completion script is valid bash and completes verbs and options, `--json` answers
carry their shape's version, and a design's graph comes in every format."""
import json
import subprocess
import sys

import pytest

from vpnlab.model.topology import load


def vpnlab(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnlab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.parametrize("sites, options", [(1, ()), (3, ("--active-standby",)), (2, ("--static",)),
                                            (100, ()), (2, ("--p2s", "--active-standby", "--static"))])
def test_new_writes_a_design_that_validates(tmp_path, sites, options):
    path = tmp_path / "new.yaml"
    res = vpnlab("new", "--sites", sites, *options, "-o", path)
    assert res.returncode == 0, res.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600", "it holds the shared keys"
    t = load(path)
    assert len(t.local_network_gateways) == len(t.connections) == sites
    gw = t.virtual_network_gateways["hub-gw"]
    assert gw.active_active is ("--active-standby" not in options)
    assert all(c.enable_bgp is ("--static" not in options) for c in t.connections.values())
    assert (gw.vpn_client_configuration is not None) is ("--p2s" in options)
    keys = [c.shared_key.get_secret_value() for c in t.connections.values()]
    assert len(set(keys)) == sites, "a key of its own per connection"


def test_new_refuses_more_sites_than_a_gateway_takes():
    res = vpnlab("new", "--sites", 101)
    assert res.returncode == 2 and "--sites 101: allowed 1 to 100" in res.stderr
    res = vpnlab("new", "--sku", "Basic")
    assert res.returncode == 2 and not res.stdout
    assert "vpnlab new: the design" in res.stderr and "active-active is not supported on SKU Basic" in res.stderr


def test_the_completion_script_completes_verbs_and_options():
    script = vpnlab("completion", "bash").stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    def complete(*words) -> set[str]:
        line = " ".join(words)
        run = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _vpnlab; echo "${{COMPREPLY[@]}}"'
        return set(subprocess.run(["bash", "-c", run], capture_output=True, text=True).stdout.split())
    assert {"status", "save"} <= complete("vpnlab", "s")
    assert complete("vpnlab", "up", "--ti") == {"--timers", "--timeout"}
    assert complete("vpnlab", "graph", "--format", "s") == {"svg"}


def test_json_answers_carry_their_shapes_version(tmp_path):
    valid = vpnlab("validate", "single-site-static", "--json")
    answer = json.loads(valid.stdout)
    assert valid.returncode == 0 and answer["api_version"] == 1 and answer["valid"] is True
    assert answer["file"].endswith("topologies/single-site-static.yaml"), answer
    bad = vpnlab("validate", "tests/bad/dpd-timeout-above-azures-maximum.yaml", "--json")
    assert bad.returncode == 2 and not bad.stdout and "less than or equal to 3600" in bad.stderr


@pytest.mark.parametrize("fmt, marker", [("mermaid", "subgraph"), ("dot", "subgraph cluster_"), ("svg", "<svg"),
                                         ("html", "<h2>Nodes</h2>")])
def test_a_designs_graph_in_every_format(fmt, marker):
    res = vpnlab("graph", "dual-site-transit", "--format", fmt)
    assert res.returncode == 0 and marker in res.stdout, res.stderr
    for site in ("site-a", "site-b", "site-c"):
        assert site in res.stdout


def test_every_shipped_design_can_be_drawn():
    from vpnlab.checks import graph
    from vpnlab.model import shipped
    from vpnlab.plan.build import build
    for name in shipped.names():
        t = load(shipped.folder() / f"{name}.yaml")
        g = graph.design_graph(build(t, "fast"), t)
        assert graph.svg(g).startswith("<svg"), name
        assert all(data["facts"] for _, data in g.nodes(data=True)), name
