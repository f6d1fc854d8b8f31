"""vpnlab import: six ARM templates and four Terraform documents (plan and state JSON),
written for these tests in the shapes of Microsoft's quickstarts and of azurerm
configurations, each against a topology written by hand and the report lines it must
carry (`# report:` in the expected file); placeholders for what cannot be known, which
every command refuses; bad input refused with exit 2; and each import brought up for
real (netns, fast timers), converged and pinging."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpnlab.gateway import live
from vpnlab.importer import import_file, to_yaml
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.session import open_lab

HERE = Path(__file__).parent / "import"
ARM = HERE / "arm"
TF = HERE / "terraform"


def params_of(path: Path):
    p = path.with_name(path.name.replace(".json", ".parameters.json"))
    return p if p.exists() else None


CASES = [(p, params_of(p)) for p in sorted(ARM.glob("*.json")) if ".parameters." not in p.name] + \
        [(p, None) for p in sorted(TF.glob("*.json"))]
IDS = [f"{p.parent.name}/{p.stem}" for p, _ in CASES]


def expected_of(path: Path) -> Path:
    return path.with_name(path.name.replace(".json", ".expected.yaml"))


def imported(tmp_path: Path, path: Path, params) -> tuple[Path, object]:
    topology, report = import_file(path, params)
    out = tmp_path / f"{path.stem.replace('.', '-')}.yaml"
    out.write_text(to_yaml(topology, report))
    return out, report


def vpnlab(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnlab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_six_arm_and_four_terraform_inputs():
    kinds = [json.loads(p.read_text()) for p, _ in CASES]
    assert sum("resources" in k for k in kinds) >= 6
    assert sum("planned_values" in k for k in kinds) >= 2 and sum("values" in k for k in kinds) >= 1
    assert sum("planned_values" in k or "values" in k for k in kinds) >= 4


@pytest.mark.parametrize("path, params", CASES, ids=IDS)
def test_the_import_is_the_hand_written_topology_and_reports_what_it_left(tmp_path, path, params):
    out, report = imported(tmp_path, path, params)
    expected = expected_of(path)
    assert load(out) == load(expected), f"{out.read_text()}"
    said = report.lines()
    wanted = [line.split("# report: ", 1)[1] for line in expected.read_text().splitlines()
              if line.startswith("# report: ")]
    assert wanted, "the expected file names the report lines it needs"
    missing = [w for w in wanted if not any(w in line for line in said)]
    assert not missing, f"not reported: {missing}\nreport: {said}"
    assert not report.required


def test_a_secure_parameter_without_a_value_is_a_placeholder_that_every_command_refuses(tmp_path):
    out, report = imported(tmp_path, ARM / "site-to-site.json", None)
    assert report.required == [("connections.Azure2Other.shared_key", "secure parameter sharedKey has no value")]
    assert "shared_key: !required 'secure parameter sharedKey has no value'" in out.read_text()
    line = next(i for i, t in enumerate(out.read_text().splitlines(), 1) if "!required" in t)
    for verb in ("validate", "lint"):
        res = vpnlab(verb, out)
        assert res.returncode == 2, res.stdout
        assert f"{out}:{line}: connections.Azure2Other.shared_key: to fill in" in res.stderr
    if os.geteuid() == 0:                    # up needs root before it reads the file
        res = vpnlab("up", out, "--name", "imp-refused")
        assert res.returncode == 2 and "to fill in" in res.stderr


def test_a_key_vault_reference_is_a_placeholder(tmp_path):
    params = tmp_path / "kv.parameters.json"
    params.write_text(json.dumps({"parameters": {"branchKeys": {"reference": {
        "keyVault": {"id": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"},
        "secretName": "branch-keys"}}}}))
    _, report = imported(tmp_path, ARM / "legacy-sku-nat.json", params)
    assert [f for f, _ in report.required] == ["connections.cn-branch-a.shared_key", "connections.cn-branch-b.shared_key"]
    assert all("Key Vault secret branch-keys" in why for _, why in report.required)


def test_parameters_are_checked_against_the_template(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"parameters": {"gatewaySku": {"value": "VpnGw9"}}}))
    with pytest.raises(SourceError, match=r"parameter 'gatewaySku': 'VpnGw9' is not allowed; allowed: Basic, VpnGw1"):
        import_file(ARM / "site-to-site.json", params)
    params.write_text(json.dumps({"parameters": {"gatewaySkew": {"value": "VpnGw1"}}}))
    with pytest.raises(SourceError, match="'gatewaySkew' is not a parameter of the template"):
        import_file(ARM / "site-to-site.json", params)
    params.write_text(json.dumps({"parameters": {"activeActive": {"value": "maybe"}}}))
    with pytest.raises(SourceError, match="'maybe' is not a boolean"):
        import_file(ARM / "active-active-bgp-apipa.json", params)


def test_what_cannot_be_read_is_refused_with_exit_2_naming_it(tmp_path):
    template = json.loads((ARM / "point-to-site.json").read_text())
    template["resources"][0]["name"] = "[mystery(variables('vnetName'))]"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(template))
    res = vpnlab("import", bad)
    assert res.returncode == 2 and not res.stdout
    assert "resource [mystery(variables('vnetName'))]" in res.stderr
    assert "the template function mystery() is not evaluated by vpnlab import" in res.stderr
    bad.write_text(json.dumps({"resources": [{"name": "no-type"}]}))
    res = vpnlab("import", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad}: cannot read it (ARM template): KeyError: 'type'" in res.stderr
    template = json.loads((ARM / "point-to-site.json").read_text())
    template["parameters"]["gatewayName"]["defaultValue"] = "[mystery()]"
    bad.write_text(json.dumps(template))
    res = vpnlab("import", bad)
    assert res.returncode == 2 and "parameter 'gatewayName': its defaultValue: the template function mystery()" in res.stderr
    bad.write_text('{"resources": [')
    res = vpnlab("import", bad)
    assert res.returncode == 2 and f"{bad}:1: not JSON" in res.stderr
    bad.write_text('{"kind": "something else"}')
    res = vpnlab("import", bad)
    assert res.returncode == 2 and "not an ARM template" in res.stderr and "az bicep build" in res.stderr


def test_the_cli_writes_a_private_file_and_reports_on_stderr(tmp_path):
    out = tmp_path / "s2s.yaml"
    res = vpnlab("import", ARM / "site-to-site.json", "--parameters", ARM / "site-to-site.parameters.json",
                 "-o", out)
    assert res.returncode == 0, res.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600", "it holds the shared keys"
    assert "not mapped: nsg-workload" in res.stderr and f"wrote {out}" in res.stderr
    assert "Wq4nR8tZ2vLk6pXc9sHd3mFb7yGj5aEu" not in res.stderr, "no key in the report"
    assert out.read_text().startswith("# imported from ")


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates network namespaces")
@pytest.mark.parametrize("path, params", CASES, ids=IDS)
def test_the_imported_design_comes_up(tmp_path, path, params):
    out, _ = imported(tmp_path, path, params)
    name = "imp-" + path.stem.split(".")[0][:20]
    vpnlab("down", "--name", name)
    try:
        res = vpnlab("up", out, "--name", name, "--timers", "fast", "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        s = json.loads(res.stdout)
        assert s["converged"] and (s["tunnels"] or s["point_to_site"]), s
        assert all(t["state"] == "ESTABLISHED" for t in s["tunnels"])
        assert all(b["state"] == "Established" for b in s["bgp"])
        lab = open_lab(name)
        try:
            assert lab.plan.pings or not s["tunnels"]
            for node, address in lab.plan.pings:
                assert live.ping(lab.backend, node, address, count=2), f"{node} -> {address}"
        finally:
            lab.close()
    finally:
        res = vpnlab("down", "--name", name)
        assert res.returncode == 0, res.stderr


ROOT = Path(__file__).parent.parent
ROUND_TRIP = sorted((ROOT / "topologies").glob("*.yaml")) + sorted(HERE.rglob("*.expected.yaml"))


@pytest.mark.parametrize("design", ROUND_TRIP, ids=lambda p: str(p.relative_to(ROOT)))
def test_export_as_arm_then_import_gives_the_same_topology(tmp_path, design):
    res = vpnlab("export", "--format", "arm", design, tmp_path / "arm")
    assert res.returncode == 0, res.stderr
    name = design.name.replace(".yaml", "")
    template, params = tmp_path / "arm" / f"{name}.json", tmp_path / "arm" / f"{name}.parameters.json"
    assert oct(params.stat().st_mode & 0o777) == "0o600", "the keys are in the parameters file"
    keys = [c.shared_key.get_secret_value() for c in load(design).connections.values()]
    assert not [k for k in keys if k in template.read_text()], "no key in the template"
    out, report = imported(tmp_path, template, params)
    assert not report.required
    assert load(out) == load(design)


@pytest.mark.parametrize("design", ROUND_TRIP, ids=lambda p: str(p.relative_to(ROOT)))
def test_export_as_terraform_then_import_gives_the_same_topology(tmp_path, design):
    res = vpnlab("export", "--format", "terraform", design, tmp_path / "tf")
    assert res.returncode == 0, res.stderr
    main, tfvars = tmp_path / "tf" / "main.tf.json", tmp_path / "tf" / "terraform.tfvars.json"
    assert oct(tfvars.stat().st_mode & 0o777) == "0o600", "the keys are in the tfvars file"
    config = json.loads(main.read_text())
    keys = [c.shared_key.get_secret_value() for c in load(design).connections.values()]
    assert not [k for k in keys if k in main.read_text()], "no key in the configuration"
    assert all(k.startswith("azurerm_") for k in config["resource"])
    assert all(v.get("sensitive") for k, v in config["variable"].items() if k.startswith("shared_key"))
    out, report = imported(tmp_path, main, tfvars)
    assert not report.required
    assert load(out) == load(design)


def test_a_terraform_variable_without_a_value_is_a_placeholder(tmp_path):
    res = vpnlab("export", "--format", "terraform", ROOT / "topologies/active-active-bgp.yaml", tmp_path)
    assert res.returncode == 0, res.stderr
    _, report = imported(tmp_path, tmp_path / "main.tf.json", None)
    assert [f for f, _ in report.required] == ["connections.hub-to-dev0.shared_key", "connections.hub-to-dev1.shared_key"]
    assert all("has no value" in why for _, why in report.required)
