"""vpnlab lint: every rule finds its bad example on the line of the field it names and
stays silent on the corrected one (tests/lint/<rule>/), the SARIF output validates
against SARIF 2.1.0's schema (Microsoft's SARIF multitool ships the copy in tests/), the
exit codes, no shared key in any output, and `up` printing warnings without stopping."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from vpnlab import cli, lint
from vpnlab.lint import output

HERE = Path(__file__).parent
EXAMPLES = HERE / "lint"
SCHEMA = HERE / "sarif-2.1.0.schema.json"
RULES = sorted(lint.catalogue()["rules"])


def vpnlab(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnlab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60, **kw)


def test_there_are_at_least_20_rules_each_with_both_examples():
    assert len(RULES) >= 20
    assert sorted(p.name for p in EXAMPLES.iterdir()) == RULES
    for rule in RULES:
        assert {p.name for p in (EXAMPLES / rule).iterdir()} == {"bad.yaml", "good.yaml"}, rule


def test_every_rule_has_words_and_known_sources():
    data = lint.catalogue()
    for rule_id, rule in data["rules"].items():
        assert rule["severity"] in lint.SEVERITIES, rule_id
        assert all(rule[k].strip() for k in ("title", "reason", "fix")), rule_id
        assert rule["sources"] and set(rule["sources"]) <= set(data["sources"]), rule_id


@pytest.mark.parametrize("rule", RULES)
def test_the_bad_example_is_found_on_the_fields_line(rule):
    path = EXAMPLES / rule / "bad.yaml"
    found = [f for f in lint.lint_file(path) if f.rule == rule]
    assert found, f"{rule} does not find {path}"
    lines = path.read_text().splitlines()
    for f in found:
        assert f.line, f
        last = f.field.split(".")[-1]
        assert last in lines[f.line - 1], f"{f.text()}: line {f.line} is '{lines[f.line - 1]}'"


@pytest.mark.parametrize("rule", RULES)
def test_the_good_example_is_clean(rule):
    found = lint.lint_file(EXAMPLES / rule / "good.yaml")
    assert not [f.text() for f in found], "the corrected design has no finding at all"


def test_sarif_validates_against_the_schema_and_points_at_the_lines(tmp_path):
    findings = [f for rule in RULES for f in lint.lint_file(EXAMPLES / rule / "bad.yaml")]
    assert {f.severity for f in findings} == set(lint.SEVERITIES)
    log = json.loads(output.sarif(findings, "test", root=HERE.parent))
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(log)
    run = log["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert sorted(rules) == RULES
    assert len(run["results"]) == len(findings)
    for result, f in zip(run["results"], findings):
        assert rules[result["ruleIndex"]] == result["ruleId"] == f.rule
        loc = result["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == f"tests/lint/{Path(f.file).parent.name}/bad.yaml"
        assert loc["region"]["startLine"] == f.line


def test_the_exit_code_is_1_on_errors_only_and_2_on_an_invalid_design(tmp_path):
    error = EXAMPLES / "traffic-selectors-over-limit" / "bad.yaml"
    warning = EXAMPLES / "dpd-timeout-long" / "bad.yaml"
    res = vpnlab("lint", error)
    assert res.returncode == 1 and "[traffic-selectors-over-limit]" in res.stdout, res.stderr
    res = vpnlab("lint", warning, "--format", "json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["errors"] == 0 and [f["rule"] for f in got["findings"]] == ["dpd-timeout-long"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(warning.read_text().replace("dpd_timeout_seconds: 300", "dpd_timeout_seconds: 5"))
    res = vpnlab("lint", bad)
    assert res.returncode == 2 and f"{bad}:" in res.stderr and "dpd_timeout_seconds" in res.stderr
    out = tmp_path / "lint.sarif"
    res = vpnlab("lint", error, "--format", "sarif", "-o", out)
    assert res.returncode == 1 and not res.stdout
    assert json.loads(out.read_text())["runs"][0]["results"][0]["level"] == "error"


def test_no_output_shows_a_shared_key():
    path = EXAMPLES / "shared-key-reused" / "bad.yaml"
    keys = {c["shared_key"] for c in yaml.safe_load(path.read_text())["connections"].values()}
    short = EXAMPLES / "shared-key-short" / "bad.yaml"
    keys |= {c["shared_key"] for c in yaml.safe_load(short.read_text())["connections"].values()}
    for p in (path, short):
        for fmt in ("text", "json", "sarif"):
            res = vpnlab("lint", p, "--format", fmt)
            assert res.returncode == 0 and "shared-key" in res.stdout
            assert not [k for k in keys if k in res.stdout + res.stderr], fmt


def test_up_prints_warnings_but_not_notes(capsys):
    path = EXAMPLES / "ikev1-connection" / "bad.yaml"
    notes = EXAMPLES / "active-standby-gateway" / "bad.yaml"
    cli._lint_before_up(path)
    cli._lint_before_up(notes)
    err = capsys.readouterr().err
    assert "[ikev1-connection]" in err and "not stopping" in err
    assert "[active-standby-gateway]" not in err
