"""Changes to a running lab through the daemons' own APIs: VICI for strongSwan, vtysh
for FRR. Used by fault injection and by scenarios; queries live in lab.live."""
from __future__ import annotations

import contextlib
import socket

import vici
from vici.exception import CommandException

from .errors import RuntimeFailure


@contextlib.contextmanager
def _vici(rt, node: str, timeout: float):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(rt.vici_socket(node)))
        yield vici.Session(sock)


def ike_terminate(rt, node: str, ike: str, timeout: float = 3, force: bool = False) -> bool:
    """Close an IKE SA the way an operator does: the peer gets an IKE DELETE (force:
    without waiting for its answer). False when there was no such SA."""
    with _vici(rt, node, timeout + 2) as s:
        try:
            request = {"ike": ike, "timeout": int(timeout * 1000), **({"force": "yes"} if force else {})}
            for _ in s.terminate(request):
                pass
        except CommandException as err:
            if "no matching" in str(err):
                return False
            if not force:    # forced: the SA is gone even when the peer did not answer
                raise RuntimeFailure(f"{node}: terminate {ike}: {err}") from None
    return True


def initiate(rt, node: str, child: str, timeout: float = 10) -> tuple[bool, list[str]]:
    """Have this end set up a child (with an IKE SA if none: its IKE_SA_INIT goes on the
    wire). Returns whether it was established, and charon's control log lines."""
    lines = []
    with _vici(rt, node, timeout + 2) as s:
        try:
            for log in s.initiate({"child": child, "timeout": int(timeout * 1000)}):
                lines.append(log.get("msg", b"").decode())
        except CommandException:
            return False, lines
    return True, lines


def child_rekey(rt, node: str, child: str, timeout: float = 5):
    with _vici(rt, node, timeout) as s:
        s.rekey({"child": child})


def vtysh_config(rt, node: str, lines: list[str]):
    """Apply configuration lines to a router's running FRR (not saved)."""
    res = rt.exec(node, ["vtysh", "--vty_socket", str(rt.node_dir(node)),
                         "-c", "configure terminal", *[a for line in lines for a in ("-c", line)]])
    text = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or "% " in text:
        raise RuntimeFailure(f"{node}: FRR refused {lines}: {text[-300:]}")


def bgp_shutdown(rt, node: str, asn: int):
    """Administrative shutdown of the BGP instance: every peer gets a Cease NOTIFICATION
    and withdraws this router's routes at once (a planned, graceful exit)."""
    vtysh_config(rt, node, [f"router bgp {asn}", "bgp shutdown"])
