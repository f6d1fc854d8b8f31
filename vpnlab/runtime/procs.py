"""Processes the lab starts: spawned with a tag, ended by PID after checking the tag."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from vpnlab.model.names import process_tag

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def spawn(argv: list[str], lab: str, log: Path, env: dict | None = None, cwd: Path | None = None) -> int:
    """Start a long-running daemon in its own session; its stdout/stderr go to log."""
    key, value = process_tag(lab).split("=", 1)
    full_env = {"PATH": PATH, "LANG": "C", key: value, **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    return proc.pid


def helper(argv: list[str], lab: str) -> subprocess.Popen:
    """A tagged child with text pipes (the caller drives it and waits for it)."""
    key, value = process_tag(lab).split("=", 1)
    return subprocess.Popen(argv, env={**os.environ, key: value}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv: list[str], timeout: float = 30, check: bool = False, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check,
                          env={"PATH": PATH, "LANG": "C"}, **kw)


def carries_tag(pid: int, lab: str) -> bool:
    return _has_env(pid, process_tag(lab))


def alive(pid: int) -> bool:
    """Running and not a zombie (an exited daemon waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tagged(lab: str) -> list[int]:
    """Every live process carrying this lab's tag (leftovers of a crashed run included)."""
    return with_env(process_tag(lab))


def end(pids: list[int], lab: str, grace: float = 3.0) -> list[int]:
    """SIGTERM the lab's processes, SIGKILL what is left after the grace time.
    Only PIDs that still carry this lab's tag are signalled. Returns survivors."""
    mine = [p for p in pids if carries_tag(p, lab)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p) for p in mine):
            time.sleep(0.05)
        mine = [p for p in mine if alive(p)]
        if not mine:
            break
    return mine


def with_env(entry: str) -> list[int]:
    """Live processes whose environment holds entry ("KEY=value"): the lab's tag, or the
    marker by which the host finds a daemon it started inside a container."""
    return [int(pid) for pid in os.listdir("/proc")
            if pid.isdigit() and _has_env(int(pid), entry) and alive(int(pid))]


def _has_env(pid: int, entry: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in environ.split(b"\0")
