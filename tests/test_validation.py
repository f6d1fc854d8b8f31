"""Bad input starts nothing: each file in tests/bad names the messages it must produce
(`# expect:` lines): file, line, field path and what is allowed."""
from pathlib import Path

import pytest

from vpnlab.cli import main
from vpnlab.engine import export
from vpnlab.model.topology import load
from vpnlab.model.yamlsrc import SourceError
from vpnlab.model.yamlsrc import load as yaml_load

ROOT = Path(__file__).parent.parent
BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
TOPOLOGIES = sorted((Path(__file__).parent.parent / "topologies").glob("*.yaml"))


def expectations(path: Path) -> list[str]:
    """The file's `# expect:` lines (some bad files are not UTF-8 on purpose)."""
    raw = path.read_bytes()
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8", "replace")
    found = [line.split("# expect:", 1)[1].strip() for line in text.splitlines() if line.startswith("# expect:")]
    assert found, f"{path} has no '# expect:' line"
    return found


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


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_file_exits_2_without_a_traceback(path, capsys):
    """Through the command line, as a user meets it."""
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert str(path) in out.err


def test_merge_keys_and_anchors_read_as_written(tmp_path):
    """`<<: *anchor` is common in real files: the merged mapping is what a user wrote
    out by hand, and an explicit key wins over a merged one."""
    plain = (ROOT / "topologies/active-active-bgp.yaml").read_text()
    merged = plain.replace("connections:\n", "x-common: &conn\n  virtual_network_gateway: hub-gw\n"
                           "  enable_bgp: false\nconnections:\n", 1)
    merged = merged.replace("    virtual_network_gateway: hub-gw\n", "    <<: *conn\n")
    assert "<<: *conn" in merged
    data = yaml_load(write(tmp_path / "merged.yaml", merged)).data
    data.pop("x-common")
    assert data == yaml_load(ROOT / "topologies/active-active-bgp.yaml").data


@pytest.mark.parametrize("stem", ["lab\n", "-lab", "a" * 33, "l\u200bab"])
def test_a_lab_name_from_the_file_name_is_checked_whole(tmp_path, stem):
    """`$` matches before a final newline: the whole name must match."""
    path = write(tmp_path / f"{stem}.yaml", (ROOT / "topologies/single-site-static.yaml").read_text())
    with pytest.raises(SourceError, match="choose one with --name"):
        export(path, tmp_path / "out", "clab")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
