"""Waiting on a condition with a time budget; giving up names what it waited for."""
from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

from vpnlab.errors import LabError

T = TypeVar("T")


class WaitTimeout(LabError):
    def __init__(self, what: str, budget: float, last):
        super().__init__(f"gave up after {budget:g} s waiting for {what}; last seen: {last}")
        self.what, self.budget, self.last = what, budget, last


def scaled(budget: float) -> float:
    """A wait budget on this machine: times VPNLAB_WAIT_SCALE (default 1), for a machine
    much slower than the one the budgets were set on (a kernel under QEMU without KVM
    forks about 60 times slower)."""
    return budget * float(os.environ.get("VPNLAB_WAIT_SCALE", "1"))


def wait_until(probe: Callable[[], T], ok: Callable[[T], bool], what: str, budget: float,
               interval: float = 0.1) -> T:
    """Call probe() until ok(result); raise WaitTimeout with the last result otherwise.
    An exception from probe counts as a failed attempt and is reported as last seen."""
    budget = scaled(budget)
    deadline = time.monotonic() + budget
    while True:
        try:
            last = probe()
            if ok(last):
                return last
        except Exception as err:  # noqa: BLE001 - reported in the timeout message
            last = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, budget, last)
        time.sleep(interval)
