"""Memory of a lab's processes, for benchmarks, three ways, each at its peak over a run:
- RSS summed over the lab's processes: counts a shared library's pages once per process
  that maps them (400 charons count libcrypto 400 times);
- PSS summed: each shared page divided among the processes that map it, so the sum is
  what the processes really occupy;
- the machine's used memory (MemTotal - MemAvailable) above what it was before the lab:
  the processes and the kernel's share (namespaces, veths, sockets, conntrack)."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from vpnlab import engine
from vpnlab.runtime import procs


def fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """Named numbers of a /proc file of "Name: value kB" lines (smaps_rollup, meminfo)."""
    out = dict.fromkeys(names, 0)
    for line in Path(path).read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in out:
            out[key] = int(line.split()[1])
    return out


def rss_mb(pids: list[int]) -> float:
    return rss_pss_mb(pids)["Rss"]


def rss_pss_mb(pids: list[int]) -> dict[str, float]:
    """The summed RSS and PSS of these processes, in MB ({"Rss", "Pss"})."""
    total = {"Rss": 0, "Pss": 0}
    for pid in pids:
        try:
            got = fields(f"/proc/{pid}/smaps_rollup", ("Rss", "Pss"))
        except OSError:                     # gone meanwhile
            continue
        for key in total:
            total[key] += got[key]
    return {k: v / 1024 for k, v in total.items()}


def machine_used_mb() -> float:
    got = fields("/proc/meminfo", ("MemTotal", "MemAvailable"))
    return (got["MemTotal"] - got["MemAvailable"]) / 1024


class PeakMemory(threading.Thread):
    """Samples the lab's processes (RSS, PSS) and the machine's used memory until stopped."""

    def __init__(self, lab: str):
        super().__init__(daemon=True)
        self.lab, self.stop = lab, threading.Event()
        self.baseline = machine_used_mb()
        self.peak = {"Rss": 0.0, "Pss": 0.0, "machine": 0.0}

    def sample(self):
        now = rss_pss_mb(procs.tagged(self.lab)) | {"machine": machine_used_mb() - self.baseline}
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}

    def run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(1.0)


@contextlib.contextmanager
def measured(name: str, row: dict):
    """A benchmark's lab: removed before and after; the peaks of its memory while the
    block runs go into row (also when the block fails): peak_rss_mb, peak_pss_mb,
    machine_mb."""
    engine.down(name)
    sampler = PeakMemory(name)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        engine.down(name)
        row.update(peak_rss_mb=round(sampler.peak["Rss"], 1), peak_pss_mb=round(sampler.peak["Pss"], 1),
                   machine_mb=round(sampler.peak["machine"], 1))
