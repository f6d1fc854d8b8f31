"""Changes to a running lab through the daemons' own APIs: VICI for strongSwan, vtysh
for FRR. Used by fault injection and by scenarios; queries live in vpnlab.gateway.live."""
from __future__ import annotations

import contextlib

from vici.exception import CommandException

from vpnlab.errors import RuntimeFailure
from vpnlab.gateway import live
from vpnlab.plan.parts import dial_children, initiator_child
from vpnlab.waits import WaitTimeout, wait_until


def ike_terminate(rt, node: str, ike: str, timeout: float = 3, force: bool = False,
                  ike_id: str | None = None) -> bool:
    """Close an IKE SA (all of the connection's, or the one ike_id names) the way an
    operator does: the peer gets an IKE DELETE (force: without waiting for its answer).
    False when there was no such SA."""
    with rt.vici(node, timeout + 2) as s:
        try:
            which = {"ike-id": ike_id} if ike_id else {"ike": ike}
            request = {**which, "timeout": int(timeout * 1000), **({"force": "yes"} if force else {})}
            for _ in s.terminate(request):
                pass
        except CommandException as err:
            if "no matching" in str(err):
                return False
            if not force:    # forced: the SA is gone even when the peer did not answer
                raise RuntimeFailure(f"{node}: terminate {ike}: {err}") from None
    return True


def initiate(rt, node: str, child: str, timeout: float = 10, ike: str | None = None
             ) -> tuple[bool, list[str]]:
    """Have this end set up a child (with an IKE SA if none: its IKE_SA_INIT goes on the
    wire). Returns whether it was established, and charon's control log lines. A
    negative timeout returns at once (the result is then unknown: False)."""
    lines = []
    request = {"child": child, "timeout": int(timeout * 1000), **({"ike": ike} if ike else {})}
    with rt.vici(node, max(timeout, 0) + 2) as s:
        try:
            for log in s.initiate(request):
                lines.append(log.get("msg", b"").decode())
        except CommandException:
            return False, lines
    return timeout >= 0, lines


def dial(rt, plan, t) -> bool:
    """The Azure end of tunnel t dials: it starts the child configs Azure starts when it
    connects (plan.dial_children); returns at once. Not when the device got there first
    (a CHILD SA is installed): strongSwan would reuse its IKE SA and add a second CHILD
    SA beside the device's. False when it did not dial."""
    if live.child_installed(live.ike_sas(rt, t.azure_end)):
        return False
    for child in dial_children(plan.nodes[t.azure_end].charon):
        initiate(rt, t.azure_end, child, timeout=-1, ike=t.connection)
    return True


def child_terminate(rt, node: str, child_id: bytes, timeout: float = 10):
    """Delete one CHILD SA (the peer gets an INFORMATIONAL DELETE); its IKE SA stays."""
    with rt.vici(node, timeout + 2) as s:
        for _ in s.terminate({"child-id": child_id, "timeout": int(timeout * 1000)}):
            pass


def azure_rekey(rt, node: str, connection: str, timeout: float = 10) -> bool:
    """Rekey the tunnel's CHILD SA as Azure does: offering Azure's initiator list [3.1].
    A CHILD SA Azure created rekeys in place (its child config holds that list). One the
    device created was negotiated from the responder list, which strongSwan would offer
    again, so it is replaced: a new CHILD SA through the initiator child, then the old
    one deleted. False when the device refused (NO_PROPOSAL_CHOSEN): the old SA then
    runs out its lifetime, as on Azure."""
    children = [c for ike in live.ike_sas(rt, node) for c in ike.get("child-sas", {}).values()
                if c["state"] == b"INSTALLED"]
    if not children:
        raise RuntimeFailure(f"{node}: no installed CHILD SA to rekey")
    child = children[0]
    if child["name"].decode() == initiator_child(connection):
        with rt.vici(node, timeout) as s:
            s.rekey({"child-id": child["uniqueid"]})
        return True
    ok, _ = initiate(rt, node, initiator_child(connection), timeout, ike=connection)
    if ok:
        _until_quiet(rt, node, child["uniqueid"])
        child_terminate(rt, node, child["uniqueid"], timeout)
    return ok


def _until_quiet(rt, node: str, child_id: bytes, budget: float = 5):
    """Packets the device sent on the old CHILD SA before it moved to the new one are
    still arriving: wait until the old SA's inbound counter stops moving (at most as
    long as strongSwan keeps a rekeyed SA, 5 s), then it can go."""
    def inbound():
        return next((int(c.get("packets-in", 0)) for ike in live.ike_sas(rt, node)
                     for c in ike.get("child-sas", {}).values()
                     if c["uniqueid"] == child_id), None)
    history: list = []

    def quiet(count) -> bool:
        history.append(count)
        return count is None or history[-3:] == [count] * 3
    with contextlib.suppress(WaitTimeout):    # still busy after 5 s: it goes anyway
        wait_until(inbound, quiet, "the old CHILD SA to fall silent", budget, interval=0.1)


def ikev1_reconnect(rt, node: str, connection: str, children: list[str], timeout: float = 10) -> bool:
    """Azure's IKEv1 main-mode rekey: no in-place rekey, so the SA and its CHILD SAs are
    closed and dialed again [3.3]. True when the new SAs are up."""
    ike_terminate(rt, node, connection, timeout=2, force=True)
    return all(initiate(rt, node, child, timeout, ike=connection)[0] for child in children)


def listen(rt, node: str, kinds: list[str], tick: float):
    """charon's VICI events of a tunnel end, with (None, None) every tick seconds.

    vici's generator unregisters its events when it is closed, over a socket that may be
    gone by then (charon stopped, restarted by apply). Left early, this generator closes
    it and lets that go: raised from a generator closed by the garbage collector, it
    would be printed as an ignored exception, not caught by anyone.

    A charon that carries other tunnels too (a gateway instance's) reports theirs as
    well: only the end's own connection's events are given."""
    conn = rt.connection_of(node)
    with rt.vici(node, tick + 2) as s:
        events = s.listen(kinds, timeout=tick)
        try:
            for item in events:
                if conn is None or item[0] is None or _about(item, conn):
                    yield item
        finally:
            with contextlib.suppress(OSError):
                events.close()


def _about(item: tuple, conn: str) -> bool:
    """Whether a VICI event concerns this connection: an ike-updown event is keyed by
    the IKE SA's name; a log line names its IKE SA, if any."""
    kind, event = item
    if kind == b"log":
        return event.get("ikesa-name") == conn.encode()
    return conn in event


def ike_rekey(rt, node: str, ike: str, timeout: float = 5):
    """Rekey an IKE SA now, in place (IKEv2). strongSwan also rekeys IKEv1 SAs without a
    gap, which Azure does not: ikev1_reconnect is Azure's IKEv1 rekey."""
    with rt.vici(node, timeout) as s:
        s.rekey({"ike": ike})


def child_rekey(rt, node: str, child: str, timeout: float = 5):
    with rt.vici(node, timeout) as s:
        s.rekey({"child": child})


def vtysh_config(rt, node: str, lines: list[str]):
    """Apply configuration lines to a router's running FRR (not saved)."""
    res = rt.exec(node, ["vtysh", "--vty_socket", str(rt.node_dir(node)),
                         "-c", "configure terminal", *[a for line in lines for a in ("-c", line)]])
    text = (res.stdout + res.stderr).strip()
    if res.returncode != 0 or "% " in text:
        shown = lines if len(lines) <= 6 else [*lines[:5], f"... {len(lines) - 5} more lines"]
        raise RuntimeFailure(f"{node}: FRR refused {shown}: {text[-300:]}")


def bgp_shutdown(rt, node: str, asn: int):
    """Administrative shutdown of the BGP instance: every peer gets a Cease NOTIFICATION
    and withdraws this router's routes at once (a planned, graceful exit)."""
    vtysh_config(rt, node, [f"router bgp {asn}", "bgp shutdown"])


def openvpn_kill(rt, node: str, address: str, port: int | str) -> list[str]:
    """End one OpenVPN client's session (its TCP connection) on a server."""
    return live.openvpn_management(rt, node, f"kill {address}:{port}")
