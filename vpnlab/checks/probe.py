"""Outage measurement between two nodes: sequence-numbered, timestamped UDP in both
directions, spread over several flows (source ports), plus a long-lived TCP session.

The probe runs in its own process, so that the scenario's own work (starting daemons,
querying them) cannot stall it and show up as a gap. Its sockets are made inside the
nodes' namespaces. CLOCK_MONOTONIC is shared by all namespaces and processes, so
one-way gaps need no clock sync and events marked by the caller line up with them.

Bounded: at most `rate * max_seconds` packets per direction, whatever the caller does.
"""
from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import threading
import time

MAGIC = b"VPLB"                       # also what the wire check looks for in clear text
HEADER = struct.Struct("!4sIIQ")      # magic, flow, sequence, send time (ns, monotonic)
PAYLOAD = 64
UDP_PORT, TCP_PORT = 47000, 47100   # plus the probe's port offset: probes side by side


# ------------------------------------------------------------------ worker process
def _worker(cfg: dict, inp, out):
    """Runs as `python -m vpnlab.checks.probe`: config on stdin, a start line then the results on
    stdout; stops on a line (or EOF) on stdin, or at the bound."""
    from vpnlab.runtime.backend import netns_socket
    stop = threading.Event()
    ends = {side: cfg[side] for side in ("a", "b")}      # {namespace, address}
    socks = {side: [] for side in ends}
    for side, end in ends.items():
        for f in range(cfg["flows"]):
            s = netns_socket(end["namespace"], socket.SOCK_DGRAM)
            s.bind((end["address"], UDP_PORT + cfg["port_offset"] + f))
            socks[side].append(s)
    data = {d: {"sent": [], "received": []} for d in ("ab", "ba")}
    # each end sends to the address the other is seen at from its side (NAT translates it)
    threads = [threading.Thread(target=_send, args=(socks["a"], ends["b"]["seen_as"], cfg, data["ab"], stop)),
               threading.Thread(target=_send, args=(socks["b"], ends["a"]["seen_as"], cfg, data["ba"], stop)),
               threading.Thread(target=_receive, args=(socks["b"], data["ab"], stop)),
               threading.Thread(target=_receive, args=(socks["a"], data["ba"], stop))]
    tcp = _Tcp(cfg, stop) if cfg["tcp"] else None
    origin = time.monotonic_ns()
    for t in threads:
        t.start()
    if tcp:
        tcp.start()
    out.write(json.dumps({"origin_ns": origin}) + "\n")
    out.flush()
    deadline = time.monotonic() + cfg["max_seconds"]
    sel = selectors.DefaultSelector()
    sel.register(inp, selectors.EVENT_READ)
    while sel.select(max(0, deadline - time.monotonic())):
        command = inp.readline().split()
        if command[:1] != ["status"]:
            break
        # the caller asks how each flow is doing: last arrival per flow and direction,
        # and packets sent since a time
        since = int(command[1]) if len(command) > 1 else 0
        out.write(json.dumps({"now_ns": time.monotonic_ns(),
                              "sent_since": {d: _count_since(data[d]["sent"], since) for d in data},
                              **{d: _last_arrivals(data[d]["received"], cfg["flows"]) for d in data}}) + "\n")
        out.flush()
    stop.set()        # "stop", EOF, or the bound
    for t in threads:
        t.join()
    out.write(json.dumps({"udp": data, "tcp": tcp.finish() if tcp else None}) + "\n")
    out.flush()


def _count_since(times: list[int], since: int) -> int:
    n = 0
    for t in reversed(times):
        if t < since:
            break
        n += 1
    return n


def _last_arrivals(received: list, flows: int) -> list:
    last = [0] * flows
    for seq, t in reversed(received[-4 * flows * 50:]):
        if not last[seq % flows]:
            last[seq % flows] = t
        if all(last):
            break
    return last


def _send(socks, dst: str, cfg: dict, out: dict, stop: threading.Event):
    interval = 1e9 / cfg["rate"]
    limit = int(cfg["rate"] * cfg["max_seconds"])
    pad = b"\0" * (PAYLOAD - HEADER.size)
    port = UDP_PORT + cfg["port_offset"]
    start = time.monotonic_ns()
    seq = 0
    while not stop.is_set() and seq < limit:
        delay = start + seq * interval - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)           # pacing, not waiting for a condition
        flow = seq % len(socks)
        now = time.monotonic_ns()
        out["sent"].append(now)
        try:
            socks[flow].sendto(HEADER.pack(MAGIC, flow, seq, now) + pad, (dst, port + flow))
        except OSError:
            pass                              # no route during the fault: a lost packet
        seq += 1


def _receive(socks, out: dict, stop: threading.Event):
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    quiet_since = None
    while True:
        ready = sel.select(timeout=0.05)
        now = time.monotonic_ns()
        if not ready and stop.is_set():
            quiet_since = quiet_since or now
            if now - quiet_since > 200e6:
                return                        # drained: nothing in flight for 200 ms
        for key, _ in ready:
            try:
                while True:
                    pkt = key.fileobj.recv(2048)
                    if len(pkt) >= HEADER.size and pkt[:4] == MAGIC:
                        _, _, seq, _ = HEADER.unpack_from(pkt)
                        out["received"].append((seq, now))
            except BlockingIOError:
                pass


class _Tcp:
    """A TCP connection a -> b carrying a 64-byte message every 10 ms."""

    def __init__(self, cfg: dict, stop: threading.Event):
        from vpnlab.runtime.backend import netns_socket
        self.stop, self.max_seconds = stop, cfg["max_seconds"]
        self.server = netns_socket(cfg["b"]["namespace"], socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((cfg["b"]["address"], TCP_PORT + cfg["port_offset"]))
        self.server.listen(1)
        self.client = netns_socket(cfg["a"]["namespace"], socket.SOCK_STREAM)
        self.client.settimeout(5)
        self.client.connect((cfg["b"]["seen_as"], TCP_PORT + cfg["port_offset"]))
        self.server.settimeout(5)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(0.05)
        self.arrivals, self.error = [], None

    def start(self):
        self.threads = [threading.Thread(target=self._send), threading.Thread(target=self._receive)]
        for t in self.threads:
            t.start()

    def _send(self):
        self.client.settimeout(None)
        while not self.stop.is_set():
            try:
                self.client.sendall(b"m" * 64)
            except OSError as err:
                self.error = f"send: {err}"
                return
            self.stop.wait(0.01)              # pacing

    def _receive(self):
        pending = 0
        while True:
            try:
                data = self.conn.recv(65536)
            except socket.timeout:
                if self.stop.is_set():
                    return
                continue
            except OSError as err:
                self.error = f"receive: {err}"
                return
            if not data:
                self.error = self.error or "connection closed by the network"
                return
            pending += len(data)
            now = time.monotonic_ns()
            while pending >= 64:
                pending -= 64
                self.arrivals.append(now)

    def finish(self) -> dict:
        for t in self.threads:
            t.join()
        for s in (self.client, self.conn, self.server):
            s.close()
        return {"arrivals": self.arrivals, "error": self.error}


# ------------------------------------------------------------------ the caller's side
class Probe:
    """Start, mark events, stop: returns per-direction figures (and TCP survival)."""

    def __init__(self, rt, a: str, a_addr: str, b: str, b_addr: str, rate: int = 1000,
                 flows: int = 4, max_seconds: float = 120, tcp: bool = True,
                 a_seen_as: str | None = None, b_seen_as: str | None = None, port_offset: int = 0):
        """x_seen_as: the address the other end reaches x at, where NAT translates it.
        port_offset: another probe runs from the same node (its flows' ports differ)."""
        self.rt, self.names = rt, (a, b)
        self.cfg = {"a": {"namespace": rt.namespace(a), "address": a_addr, "seen_as": a_seen_as or a_addr},
                    "b": {"namespace": rt.namespace(b), "address": b_addr, "seen_as": b_seen_as or b_addr},
                    "rate": rate, "flows": flows, "max_seconds": max_seconds, "tcp": tcp,
                    "port_offset": port_offset}
        self.events: list[tuple[int, str]] = []

    def start(self, budget: float = 20) -> "Probe":
        self.proc = self.rt.helper([sys.executable, "-m", "vpnlab.checks.probe"])
        self.proc.stdin.write(json.dumps(self.cfg) + "\n")
        self.proc.stdin.flush()
        self.origin_ns = json.loads(self._line(budget, "start"))["origin_ns"]
        return self

    def _line(self, budget: float, what: str) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(timeout=budget) else ""
        if not line:
            self.proc.kill()
            err = self.proc.stderr.read()[-2000:]
            raise RuntimeError(f"probe between {self.names} gave no {what} line within "
                               f"{budget} s; it said: {err or 'nothing'}")
        return line

    def status(self, since_ns: int = 0) -> dict:
        self.proc.stdin.write(f"status {since_ns}\n")
        self.proc.stdin.flush()
        return json.loads(self._line(5, "status"))

    def flowing(self, since_ns: int, fresh_ms: float = 50) -> list[str]:
        """Flows that have not delivered a packet after since_ns and within the last
        fresh_ms, per direction; empty when every flow is flowing."""
        st = self.status()
        a, b = self.names
        stalled = []
        for d, name in (("ab", f"{a} -> {b}"), ("ba", f"{b} -> {a}")):
            for flow, t in enumerate(st[d]):
                if t < since_ns or st["now_ns"] - t > fresh_ms * 1e6:
                    stalled.append(f"{name} flow {flow}")
        return stalled

    def mark(self, what: str) -> int:
        now = time.monotonic_ns()
        self.events.append((now, what))
        return now

    def seconds(self, ns: int) -> float:
        return round((ns - self.origin_ns) / 1e9, 4)

    def stop(self, event_ns: int | None = None, until_ns: int | None = None) -> dict:
        """Figures for every direction; recovery is counted from event_ns (by default
        the first mark); with until_ns, over the loss that began before it, with the
        loss among packets sent in between and the loss after it."""
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        raw = json.loads(self._line(30, "result"))
        self.proc.wait(5)
        if event_ns is None and self.events:
            event_ns = self.events[0][0]
        a, b = self.names
        rate = self.cfg["rate"]
        out = {"rate_pps": rate, "flows": self.cfg["flows"],
               "events": [{"t_s": self.seconds(t), "what": w} for t, w in self.events],
               "directions": [direction(f"{a} -> {b}", raw["udp"]["ab"], rate, self.cfg["flows"],
                                        self.origin_ns, event_ns, until_ns),
                              direction(f"{b} -> {a}", raw["udp"]["ba"], rate, self.cfg["flows"],
                                        self.origin_ns, event_ns, until_ns)]}
        if raw["tcp"]:
            arrivals = raw["tcp"]["arrivals"]
            gaps = [(y - x, x) for x, y in zip(arrivals, arrivals[1:])]
            stall, at = max(gaps, default=(0, self.origin_ns))
            out["tcp"] = {"direction": f"{a} -> {b}", "survived": raw["tcp"]["error"] is None,
                          "error": raw["tcp"]["error"], "messages": len(arrivals),
                          "longest_stall_ms": round(stall / 1e6, 1), "stall_start_s": self.seconds(at)}
        return out


def worst(result: dict, key: str):
    """The worse of the two directions of a probe result."""
    return max(d[key] or 0 for d in result["directions"])


def direction(name: str, data: dict, rate: int, flows: int, origin_ns: int, event_ns,
              until_ns: int | None = None) -> dict:
    """Loss, reordering and gaps of one direction. A gap is measured per flow (the time
    between two packets of one flow arriving), so the worst-hit flow is reported."""
    sent, received = data["sent"], data["received"]
    seen, dups, reordered, top = set(), 0, 0, -1
    last_arrival: dict[int, int] = {}
    longest, longest_at = 0, None
    for seq, t in received:
        if seq in seen:
            dups += 1
            continue
        seen.add(seq)
        reordered += seq < top
        top = max(top, seq)
        flow = seq % flows
        if flow in last_arrival and t - last_arrival[flow] > longest:
            longest, longest_at = t - last_arrival[flow], last_arrival[flow]
        last_arrival[flow] = t
    lost = [s for s in range(len(sent)) if s not in seen]
    windows = _windows(lost, sent, 1e9 / rate)
    rel = lambda ns: round((ns - origin_ns) / 1e9, 4)
    out = {"direction": name, "sent": len(sent), "received": len(seen), "lost": len(lost),
           "duplicates": dups, "reordered": reordered,
           "longest_gap_ms": round(longest / 1e6, 1),
           "longest_gap_start_s": rel(longest_at) if longest_at else None,
           "loss_windows": [{"start_s": rel(x), "end_s": rel(y), "lost": n} for x, y, n in windows[:50]],
           "first_lost_s": rel(windows[0][0]) if windows else None,
           "last_lost_s": rel(windows[-1][1]) if windows else None}
    if event_ns is not None:
        after = [w for w in windows if w[1] >= event_ns]
        out["lost_after_event"] = sum(w[2] for w in after)
        # the outage the event caused: loss that began before until_ns (a heal, say);
        # what the heal itself costs is counted apart, in lost_after_until
        caused = [w for w in after if until_ns is None or w[0] < until_ns]
        out["recovered_s"] = round((caused[-1][1] - event_ns) / 1e9, 3) if caused else 0.0
    if event_ns is not None and until_ns is not None:
        window = [s for s, t in enumerate(sent) if event_ns <= t < until_ns]
        out["window"] = {"sent": len(window), "lost": sum(1 for s in window if s not in seen)}
        out["lost_after_until"] = sum(w[2] for w in windows if w[0] >= until_ns)
    return out


def _windows(lost: list[int], sent: list[int], interval_ns: float) -> list[tuple[int, int, int]]:
    """Runs of lost packets, merged when less than 100 ms apart (the flows interleave):
    (first loss ns, end ns, count)."""
    out: list[list] = []
    for seq in lost:
        t = sent[seq]
        if out and t - out[-1][1] < 100e6:
            out[-1][1] = int(t + interval_ns)
            out[-1][2] += 1
        else:
            out.append([t, int(t + interval_ns), 1])
    return [tuple(w) for w in out]


if __name__ == "__main__":
    _worker(json.loads(sys.stdin.readline()), sys.stdin, sys.stdout)
