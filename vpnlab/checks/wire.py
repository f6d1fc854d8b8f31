"""What crosses the lab's internet, checked with scapy on a tcpdump capture of the
internet bridge: nothing between protected prefixes in clear text, only IKE and
ESP-in-UDP between public addresses, and the proposals in IKE_SA_INIT."""
from __future__ import annotations

import shutil
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from scapy.contrib.ikev2 import IKEv2, IKEv2_Proposal, IKEv2_SA, IKEv2_Transform
from scapy.layers.inet import ICMP, IP, UDP
from scapy.utils import rdpcap

from vpnlab.checks.probe import MAGIC
from vpnlab.waits import wait_until

# IKEv2 transform ids (RFC 7296 / IANA) -> strongSwan's proposal keywords
ENCR = {12: "aes", 3: "3des", 20: "aesgcm16"}
INTEG = {2: "sha1", 12: "sha256", 13: "sha384", 14: "sha512"}
DH = {1: "modp768", 2: "modp1024", 14: "modp2048", 24: "modp2048s256", 19: "ecp256", 20: "ecp384"}


class Capture:
    """tcpdump on one interface of one node, for the duration of a with-block."""

    def __init__(self, rt, node: str, ifname: str, path: Path):
        self.rt, self.node, self.ifname, self.path = rt, node, ifname, Path(path)

    def __enter__(self):
        # tcpdump writes in the node's folder, the one place every runtime shares with
        # the host (a container sees no other host path); the file moves to path after
        self.inside = self.rt.node_dir(self.node) / f"capture-{self.ifname}-{self.path.name}"
        log = self.inside.with_suffix(".log")
        log.write_text("")
        self.pid = self.rt.spawn(self.node, ["tcpdump", "-i", self.ifname, "-n", "-U", "-s", "0",
                                             "-w", str(self.inside), "ip"], log, "tcpdump")
        wait_until(lambda: "listening on" in log.read_text(), bool,
                   f"tcpdump on {self.node}:{self.ifname} (log {log})", 10)
        return self

    def __exit__(self, *exc):
        self.rt.end([self.pid], grace=2)
        if self.inside.exists():
            shutil.move(self.inside, self.path)

    def packets(self):
        return rdpcap(str(self.path)) if self.path.stat().st_size else []


def _public(address: str, public: list[IPv4Network]) -> bool:
    return any(IPv4Address(address) in net for net in public)


def clear_text_leaks(packets, protected: list[IPv4Network], public: list[IPv4Network]) -> list[str]:
    """Every IP packet must be IKE or ESP between public addresses (UDP 500/4500, or raw
    ESP, IP protocol 50, as the kernel data plane sends it without NAT), carry no probe
    payload in clear, and never have a protected address as source or destination."""
    out = []
    for pkt in packets:
        if IP not in pkt:
            continue
        ip = pkt[IP]
        what = f"{ip.src} -> {ip.dst} proto {ip.proto}"
        if any(IPv4Address(a) in net for a in (ip.src, ip.dst) for net in protected):
            out.append(f"protected address in clear: {what}")
        elif not (_public(ip.src, public) and _public(ip.dst, public)):
            out.append(f"non-public address: {what}")
        elif MAGIC in bytes(ip.payload):
            out.append(f"probe payload readable: {what}")
        elif ICMP in ip and ip[ICMP].type == 3:
            continue     # "unreachable" about IKE to a peer whose charon is down: allowed
        elif ip.proto == socket.IPPROTO_ESP:
            continue
        elif UDP not in ip or not {ip[UDP].sport, ip[UDP].dport} & {500, 4500}:
            out.append(f"neither IKE nor ESP: {what}")
    return out


def ike_sa_init_proposals(packets, src: str) -> list[list[str]]:
    """The IKE proposals of every IKE_SA_INIT request sent from src, as strongSwan
    keywords (e.g. aes256-sha256-modp1024)."""
    out = []
    for pkt in packets:
        if IP not in pkt or pkt[IP].src != src or UDP not in pkt:
            continue
        payload = bytes(pkt[UDP].payload)
        if pkt[UDP].dport == 4500:
            if payload[:4] != b"\0\0\0\0":
                continue                     # ESP, not IKE
            payload = payload[4:]
        ike = IKEv2(payload)
        if ike.exch_type != 34 or ike.flags & 0x20:   # IKE_SA_INIT request only
            continue
        sa = ike.getlayer(IKEv2_SA)
        proposals = []
        prop = sa.prop if sa else None
        while isinstance(prop, IKEv2_Proposal):
            proposals.append(_proposal_name(prop))
            prop = prop.payload if isinstance(prop.payload, IKEv2_Proposal) else None
        out.append(proposals)
    return out


def _proposal_name(prop: IKEv2_Proposal) -> str:
    parts = {"enc": None, "integ": None, "dh": None}
    t = prop.trans
    while isinstance(t, IKEv2_Transform):
        key_len = t.key_length if hasattr(t, "key_length") and t.key_length else None
        if t.transform_type == 1:
            base = ENCR.get(t.transform_id, f"encr{t.transform_id}")
            parts["enc"] = (base.replace("aes", f"aes{key_len}") if key_len and base.startswith("aes")
                            else base)
        elif t.transform_type == 3:
            parts["integ"] = INTEG.get(t.transform_id, f"integ{t.transform_id}")
        elif t.transform_type == 4:
            parts["dh"] = DH.get(t.transform_id, f"dh{t.transform_id}")
        t = t.payload if isinstance(t.payload, IKEv2_Transform) else None
    return "-".join(p for p in (parts["enc"], parts["integ"], parts["dh"]) if p)
