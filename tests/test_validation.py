"""Bad input starts nothing: each file in tests/bad names the messages it must produce
(`# expect:` lines): file, line, field path and what is allowed."""
from pathlib import Path

import pytest

from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
TOPOLOGIES = sorted((Path(__file__).parent.parent / "topologies").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    return [line.split("# expect:", 1)[1].strip()
            for line in path.read_text().splitlines() if line.startswith("# expect:")]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_is_refused_with_its_message(path):
    with pytest.raises(SourceError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for expected in expectations(path):
        assert expected in message, f"expected {expected!r} in:\n{message}"


def test_secret_never_in_messages():
    path = next(p for p in BAD if p.stem == "shared-key-characters")
    with pytest.raises(SourceError) as info:
        load(path)
    assert "Secret-Key~1" not in str(info.value)


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.stem)
def test_shipped_topologies_are_valid(path):
    load(path)


def test_missing_file():
    with pytest.raises(SourceError, match="cannot read"):
        load("/nonexistent/topology.yaml")
