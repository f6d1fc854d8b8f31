"""vpnlab lint's outputs: text for people, JSON for scripts, SARIF 2.1.0 for code scanning
(GitHub shows SARIF results on the lines they name), and the rule list in docs/."""
from __future__ import annotations

import json
from pathlib import Path

from vpnlab.lint import SEVERITIES, Finding, catalogue

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def text(findings: list[Finding]) -> str:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines = [f.text() for f in findings]
    lines.append(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items()))
    return "\n".join(lines)


def as_json(path: str, findings: list[Finding]) -> str:
    return json.dumps({"file": path, "findings": [f.as_dict() for f in findings],
                       "errors": sum(f.severity == "error" for f in findings)}, indent=1)


def _rule_descriptor(rule_id: str, rule: dict, sources: dict) -> dict:
    refs = [sources[k] for k in rule["sources"]]
    return {
        "id": rule_id,
        "name": "".join(w.capitalize() for w in rule_id.split("-")),
        "shortDescription": {"text": rule["title"]},
        "fullDescription": {"text": rule["reason"]},
        "help": {"text": f"{rule['reason']}\nFix: {rule['fix']}\nSources: "
                         + "; ".join(f"{r['title']} <{r['url']}>" for r in refs),
                 "markdown": f"{rule['reason']}\n\n**Fix:** {rule['fix']}\n\n**Sources:** "
                             + ", ".join(f"[{r['title']}]({r['url']})" for r in refs)},
        "helpUri": refs[0]["url"],
        "defaultConfiguration": {"level": rule["severity"]},
    }


def sarif(findings: list[Finding], version: str, root: Path | None = None) -> str:
    """One run of SARIF 2.1.0. File locations are relative to root (the working directory)
    where they lie under it, so that code scanning matches them to the repository."""
    data = catalogue()
    ids = list(data["rules"])
    root = (root or Path.cwd()).resolve()

    def uri(file: str) -> str:
        p = Path(file).resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.as_uri()

    results = []
    for f in findings:
        region = {"startLine": f.line} if f.line else {}
        results.append({
            "ruleId": f.rule, "ruleIndex": ids.index(f.rule), "level": f.severity,
            "message": {"text": f"{f.field}: {f.message}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri(f.file)},
                                                **({"region": region} if region else {})}}],
        })
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "vpnlab lint", "version": version,
                            "rules": [_rule_descriptor(i, data["rules"][i], data["sources"]) for i in ids]}},
        "results": results,
    }]}
    return json.dumps(log, indent=1)


def rules_markdown() -> str:
    """docs/lint-rules.md: every rule with its severity, reason, fix and sources."""
    data = catalogue()
    out = ["# Lint rules", "",
           "<!-- generated from vpnlab/lint/rules.yaml: VPNLAB_UPDATE_GOLDEN=1 pytest tests/test_docs.py -->", "",
           "`vpnlab lint FILE` reports what Azure accepts but what fails in maintenance, on a rekey or",
           "in an audit ([how to run it](cli.md#lint-a-design)). `error` exits 1; `warning` and `note`",
           "do not. `vpnlab up` prints errors and warnings and goes on.", "",
           "| rule | severity | what it finds |", "|---|---|---|"]
    out += [f"| [{i}](#{i}) | {r['severity']} | {r['title']} |" for i, r in data["rules"].items()]
    for i, r in data["rules"].items():
        refs = ", ".join(f"[{data['sources'][k]['title']}]({data['sources'][k]['url']})" for k in r["sources"])
        out += ["", f"## {i}", "", f"**{r['severity']}**: {r['title']}.", "", r["reason"], "",
                f"Fix: {r['fix']}", "", f"Sources: {refs}."]
    return "\n".join(out) + "\n"
