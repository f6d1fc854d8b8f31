"""The gateway's agent keeps its duties going and leaves without a trace when stopped."""
import threading

from vpnlab.gateway import agent as agent_module
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
