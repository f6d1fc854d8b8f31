"""The documentation a newcomer reads: a README of at most 8 KB, links that resolve
(files and the headings they point at), generated reference pages in step with the
parser and the model, the plugin's page naming every member of its API, and the JSON
Schema accepting every design that comes with vpnlab."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from vpnlab import reference
from vpnlab.cli import parser
from vpnlab.lint.output import rules_markdown
from vpnlab.model import shipped
from vpnlab.scenario import LabHandle, NodeHandle, Scenario

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", ROOT / "scenarios/README.md", *sorted((ROOT / "docs").glob("*.md")),
         *sorted((ROOT / "examples").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_is_at_most_8_kb():
    assert len((ROOT / "README.md").read_bytes()) <= 8192


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", page.read_text(), flags=re.S)):
        if re.match(r"[a-z]+:", target):
            continue                                  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, broken


def generated(page: str, text: str):
    path = ROOT / "docs" / page
    if os.environ.get("VPNLAB_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{page} is behind: VPNLAB_UPDATE_GOLDEN=1 pytest tests/test_docs.py"


def test_the_cli_reference_matches_the_parser():
    generated("cli-reference.md", reference.cli_markdown(parser()))


def test_the_topology_reference_matches_the_model():
    generated("topology-reference.md", reference.topology_markdown())


def test_the_lint_rule_list_matches_the_rules():
    generated("lint-rules.md", rules_markdown())


def test_every_verb_is_in_the_cli_page():
    page = (ROOT / "docs/cli.md").read_text()
    verbs = [name for name, _, _ in reference._subcommands(parser())]
    assert not [v for v in verbs if f"vpnlab {v}" not in page]


def test_the_plugin_page_names_every_member_of_the_api():
    page = (ROOT / "docs/plugin.md").read_text()
    members = {f"{cls.__name__}.{name}" for cls in (LabHandle, NodeHandle, Scenario)
               for name in vars(cls) if not name.startswith("_")}
    assert not [m for m in sorted(members) if f"`{m.split('.')[1]}" not in page]


def test_the_schema_accepts_every_shipped_design():
    res = subprocess.run([sys.executable, "-m", "vpnlab.cli", "schema"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    schema = json.loads(res.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in shipped.names():
        jsonschema.validate(yaml.safe_load((shipped.folder() / f"{name}.yaml").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"virtual_networks": {}, "unknown_key": 1}, schema)
