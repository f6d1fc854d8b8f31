"""A device the lab does not manage, as a user brings one: a namespace of its own running
its own strongSwan (the steps of docs/own-device.md), attached to a
`managed: false` site with `vpnlab attach`. The tests configure it over VICI, as a
script would, so that one charon can try many proposals in turn.

Its processes are the test's, not the lab's: they carry no lab tag and are ended here,
by PID.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import vici
from vici.exception import CommandException

from vpnlab import engine
from vpnlab.waits import wait_until

CHARON = "/usr/lib/ipsec/charon"
STRONGSWAN_CONF = """\
charon {
    load = random nonce openssl aes sha1 sha2 md5 hmac gcm gmp curve25519 pem pkcs1 x509 pubkey kdf kernel-libipsec kernel-netlink socket-default vici
    # libipsec: keep charon's own ESP-in-UDP out of the 0.0.0.0/0 route into ipsec0
    plugins {
        socket-default {
            fwmark = 0x42
        }
        kernel-netlink {
            fwmark = !0x42
        }
        vici {
            socket = unix:///run/charon.vici
        }
    }
    retransmit_tries = 2
    retransmit_timeout = 1.0
    retransmit_base = 1.0
    filelog {
        own {
            path = %(dir)s/charon.log
            time_format = %%F %%T
            default = 1
            cfg = 2
            flush_line = yes
        }
    }
}
"""


class OwnDevice:
    def __init__(self, lab_name: str, site: str, workdir: Path):
        self.lab, self.site = lab_name, site
        self.netns = f"own-{site}"[:15]
        self.dir = workdir / self.netns
        self.proc: subprocess.Popen | None = None
        self.attached: dict = {}

    # ------------------------------------------------------------ life cycle
    def start(self) -> "OwnDevice":
        run = self.dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        for stale in run.iterdir():        # a charon that was killed leaves them
            stale.unlink()
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        self.attached = engine.attach(self.lab, self.site, self.netns)
        conf = self.dir / "strongswan.conf"
        conf.write_text(STRONGSWAN_CONF % {"dir": self.dir})
        script = 'mount --bind "$1" /run && exec "$2"'
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
             "sh", "-c", script, "own-charon", str(self.dir / "run"), CHARON],
            env={**os.environ, "STRONGSWAN_CONF": str(conf)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_until(lambda: (self.dir / "run/charon.vici").exists(), bool,
                   f"the VICI socket of {self.netns}'s charon", 15)
        return self

    def add_lan(self, *addresses: str):
        """Addresses of the device's own LAN (libipsec routes a CHILD SA only with a
        local address inside its local traffic selector)."""
        for a in addresses:
            subprocess.run(["ip", "-n", self.netns, "addr", "replace", a, "dev", "lo"], check=True)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(Exception):
            engine.detach(self.lab, self.site)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)

    @property
    def gateway_ip(self) -> str:
        return self.attached["gateways"][0]

    @property
    def public_ip(self) -> str:
        return self.attached["public_ip"]

    # ------------------------------------------------------------ VICI
    @contextlib.contextmanager
    def session(self, timeout: float = 15):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.dir / "run/charon.vici"))
            yield vici.Session(sock)

    def configure(self, secret: str, ike: str = "aes256-sha256-modp1024", esp: str = "aes256gcm16",
                  version: int = 2, start: bool = False, local_ts: list[str] = ("0.0.0.0/0",),
                  remote_ts: list[str] = ("0.0.0.0/0",)):
        """(Re)load the device's one connection, 'azure', and its PSK; closes its SAs."""
        self.terminate()
        conn = {"azure": {
            "version": str(version), "remote_addrs": [self.gateway_ip], "proposals": [ike],
            "encap": "yes", "keyingtries": "1", "rekey_time": "0", "reauth_time": "0",
            "local": {"auth": "psk", "id": self.public_ip},
            "remote": {"auth": "psk", "id": self.gateway_ip},
            "children": {"azure": {"local_ts": list(local_ts), "remote_ts": list(remote_ts),
                                   "esp_proposals": [esp], "rekey_time": "0",
                                   "start_action": "start" if start else "none"}}}}
        with self.session() as s:
            s.load_shared({"id": "azure", "type": "IKE", "data": secret,
                           "owners": [self.public_ip, self.gateway_ip]})
            s.load_conn(conn)

    def initiate(self, timeout: float = 10) -> tuple[bool, list[str]]:
        lines = []
        with self.session(timeout + 5) as s:
            try:
                for log in s.initiate({"child": "azure", "ike": "azure", "timeout": int(timeout * 1000)}):
                    lines.append(log.get("msg", b"").decode())
            except CommandException:
                return False, lines
        return True, lines

    def rekey_child(self):
        with self.session() as s:
            s.rekey({"child": "azure"})

    def terminate(self):
        with self.session() as s:
            for ike in self.ike_sas():
                with contextlib.suppress(CommandException):
                    for _ in s.terminate({"ike-id": ike["uniqueid"], "force": "yes", "timeout": 2000}):
                        pass

    def ike_sas(self) -> list[dict]:
        with self.session() as s:
            return [ike for entry in s.list_sas() for ike in entry.values()]

    def log(self) -> str:
        path = self.dir / "charon.log"
        return path.read_text(errors="replace") if path.exists() else ""


def shell_config(secret: str, public_ip: str, gateway_ip: str, local_ts: str, remote_ts: str) -> str:
    """A swanctl.conf written by hand, as docs/own-device.md shows it."""
    return textwrap.dedent(f"""\
        connections {{
            azure {{
                version = 2
                remote_addrs = {gateway_ip}
                proposals = aes256-sha256-modp1024
                encap = yes
                local {{
                    auth = psk
                    id = {public_ip}
                }}
                remote {{
                    auth = psk
                    id = {gateway_ip}
                }}
                children {{
                    azure {{
                        local_ts = {local_ts}
                        remote_ts = {remote_ts}
                        esp_proposals = aes256gcm16
                        start_action = start
                    }}
                }}
            }}
        }}
        secrets {{
            ike-azure {{
                id = {gateway_ip}
                secret = "{secret}"
            }}
        }}
        """)
