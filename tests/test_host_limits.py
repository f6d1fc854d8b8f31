"""The neighbour table's limits (vpnlab.runtime.host): raised for a large lab, never
lowered, put back when the last lab is gone. The sysctl folder is a temporary copy here;
the 100-site bench row checks the real one (without it, IKE and BGP packets are lost)."""
from vpnlab.runtime import host


def _limits(tmp_path, monkeypatch, thresh3=1024):
    folder = tmp_path / "neigh"
    folder.mkdir(parents=True)
    for key, value in (("gc_thresh1", 128), ("gc_thresh2", 512), ("gc_thresh3", thresh3)):
        (folder / key).write_text(f"{value}\n")
    monkeypatch.setattr(host, "LIMITS", folder)
    monkeypatch.setenv("VPNLAB_STATE_DIR", str(tmp_path / "labs"))
    return folder


def test_a_large_lab_raises_the_limits_and_the_last_down_puts_them_back(tmp_path, monkeypatch):
    folder = _limits(tmp_path, monkeypatch)
    said = host.neighbour_room(1007)
    assert said and "gc_thresh3 1024 -> 6076" in said
    assert (folder / "gc_thresh2").read_text() == "3038" and (folder / "gc_thresh3").read_text() == "6076"
    (tmp_path / "labs" / "big").mkdir()
    (tmp_path / "labs" / "other").mkdir()
    host.restore_when_idle("big")                    # "other" still runs
    assert (folder / "gc_thresh3").read_text() == "6076"
    (tmp_path / "labs" / "other").rmdir()
    host.restore_when_idle("big")
    assert [(folder / k).read_text() for k in ("gc_thresh1", "gc_thresh2", "gc_thresh3")] == ["128", "512", "1024"]


def test_a_small_lab_or_a_roomier_machine_changes_nothing(tmp_path, monkeypatch):
    folder = _limits(tmp_path, monkeypatch, thresh3=100000)
    (folder / "gc_thresh2").write_text("50000")
    assert host.neighbour_room(1007) is None
    folder = _limits(tmp_path / "x", monkeypatch)
    assert host.neighbour_room(20) is None and (folder / "gc_thresh3").read_text() == "1024\n"
