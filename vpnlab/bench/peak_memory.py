"""Memory of a lab's processes, for benchmarks: summed RSS, and its peak over a run."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from vpnlab import engine
from vpnlab.runtime import procs


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class PeakMemory(threading.Thread):
    """Samples the summed RSS of the lab's tagged processes until stopped."""

    def __init__(self, lab: str):
        super().__init__(daemon=True)
        self.lab, self.peak, self.stop = lab, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(procs.tagged(self.lab)))
            self.stop.wait(0.5)


@contextlib.contextmanager
def measured(name: str, row: dict):
    """A benchmark's lab: removed before and after; the peak RSS of its processes while
    the block runs goes into row (also when the block fails)."""
    engine.down(name)
    sampler = PeakMemory(name)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.peak = max(sampler.peak, rss_mb(procs.tagged(name)))
        sampler.stop.set()
        sampler.join()
        engine.down(name)
        row["peak_rss_mb"] = round(sampler.peak, 1)
