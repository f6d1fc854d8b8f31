"""The gateway's agent keeps its duties going and leaves without a trace when stopped."""
import contextlib
import gc
import socket
import sys
import threading

import pytest
import vici

from vpnlab.gateway import agent as agent_module
from vpnlab.gateway import control
from vpnlab.gateway.agent import Agent


def bare_agent() -> Agent:
    """An agent without a lab: enough for its supervision (no daemon is asked anything)."""
    a = Agent.__new__(Agent)
    a.stop = threading.Event()
    return a


def test_a_duty_that_raises_is_said_in_one_line_and_starts_again(monkeypatch, capsys):
    monkeypatch.setattr(agent_module, "POLL", 0.01)
    a, rounds = bare_agent(), []

    def duty(x):
        rounds.append(x)
        if len(rounds) == 1:
            raise KeyError("hub-gw-in1")

    a.supervised("hub-to-site-a-in1: dialing and rekeys", duty, ("t",))
    out = capsys.readouterr().out
    assert rounds == ["t", "t"], "the duty ran again after it raised"
    assert "ERROR hub-to-site-a-in1: dialing and rekeys: unexpected KeyError: 'hub-gw-in1'" in out
    assert "test_agent.py:" in out and "Traceback" not in out


def test_a_stopped_agent_does_not_start_a_failed_duty_again(monkeypatch):
    monkeypatch.setattr(agent_module, "POLL", 0.01)
    a, rounds = bare_agent(), []

    def duty():
        rounds.append(1)
        a.stop.set()
        raise RuntimeError("charon went away while the agent stopped")

    a.supervised("x", duty, ())
    assert rounds == [1]


class CharonGoneAway:
    """A VICI peer that confirms every event registration, then goes away as a charon
    stopped by apply does: the listener's unregistering meets a closed socket."""
    def __init__(self):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX)

    def answer_registrations(self, count: int):
        for _ in range(count):
            length = int.from_bytes(self.theirs.recv(4), "big")
            self.theirs.recv(length)
            self.theirs.sendall((1).to_bytes(4, "big") + bytes([5]))     # EVENT_CONFIRM

    @staticmethod
    def connection_of(node):
        return None             # the end's charon carries its connection alone

    @contextlib.contextmanager
    def vici(self, node, timeout):
        self.ours.settimeout(timeout)
        with self.ours:
            yield vici.Session(self.ours)


@pytest.mark.parametrize("leave", ["abandoned", "closed"])
def test_a_listener_left_after_charon_went_away_raises_nothing_unseen(monkeypatch, leave):
    """Stop 32's CI: a traceback in agent.log, from vici's generator unregistering over a
    dead socket while the garbage collector closed it."""
    unseen = []
    monkeypatch.setattr(sys, "unraisablehook", unseen.append)
    peer = CharonGoneAway()
    sender = threading.Thread(target=peer.answer_registrations, args=(2,))
    sender.start()
    events = control.listen(peer, "hub-to-site-a-in0-az", ["ike-updown", "log"], 0.05)
    assert next(events) == (None, None)
    sender.join()
    peer.theirs.close()
    if leave == "closed":
        events.close()
    del events
    gc.collect()
    assert not unseen, [u.exc_value for u in unseen]
