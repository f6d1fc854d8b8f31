"""What a lab needs of the host's kernel: room in the neighbour (ARP) table, and
connection tracking loaded where a node sets its timeouts.

Linux keeps one IPv4 neighbour table for every network namespace, and its limits
(gc_thresh1..3) exist only in the root namespace. Past gc_thresh3 entries the kernel
refuses new ones ("neighbour table overflow") and packets to an unresolved neighbour are
dropped: a 100-site lab, about 1000 links, loses IKE and BGP packets under the default
of 1024. The limits are raised, never lowered, while a lab needs them; the values found
are kept beside the labs' folders and put back when the last lab is gone. Nothing else
of the root namespace is touched (no address, route or bridge)."""
from __future__ import annotations

import json
from pathlib import Path

from vpnlab.runtime import procs
from vpnlab.runtime.state import known_labs, state_root

LIMITS = Path("/proc/sys/net/ipv4/neigh/default")
# what the rest of the machine may use besides the labs (Linux's own default gc_thresh3)
HEADROOM = 1024


def _saved() -> Path:
    return state_root() / ".neighbour-limits.json"


def _read() -> dict[str, int]:
    return {k: int((LIMITS / k).read_text()) for k in ("gc_thresh1", "gc_thresh2", "gc_thresh3")}


def neighbour_room(links: int) -> str | None:
    """Room for a lab of this many links (two neighbours each) beside the machine's own:
    what was raised, in words, or None when there was room already."""
    found = _read()
    if 2 * links <= found["gc_thresh3"] // 2:        # the lab fits in half of it
        return None
    need = 2 * links + HEADROOM
    wanted = {"gc_thresh2": need, "gc_thresh3": 2 * need}
    raise_ = {k: v for k, v in wanted.items() if found[k] < v}
    if not raise_:
        return None
    if not _saved().exists():
        _saved().parent.mkdir(parents=True, exist_ok=True)
        _saved().write_text(json.dumps(found))
    for key in ("gc_thresh3", "gc_thresh2"):           # thresh2 may not pass thresh3
        if key in raise_:
            (LIMITS / key).write_text(str(raise_[key]))
    return ("the kernel's neighbour table (one for all namespaces) raised for "
            f"{links} links: " + ", ".join(f"net.ipv4.neigh.default.{k} {found[k]} -> {v}" for k, v in raise_.items())
            + "; put back when the last lab is down")


def conntrack_loaded():
    """An ISP's NAT router sets its own UDP mapping timeout, a setting of connection
    tracking, which a namespace has only once the kernel has loaded nf_conntrack (a
    fresh machine may not have: nftables loads it later, with the router's rules)."""
    if not Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").exists():
        procs.run(["modprobe", "nf_conntrack"], check=True)


def restore_when_idle(leaving: str):
    """The limits found before the first lab raised them, once no other lab is left."""
    if not _saved().exists() or [n for n in known_labs() if n != leaving]:
        return
    found = json.loads(_saved().read_text())
    for key in ("gc_thresh1", "gc_thresh2", "gc_thresh3"):    # thresh2 may not pass thresh3
        (LIMITS / key).write_text(str(found[key]))
    _saved().unlink()
