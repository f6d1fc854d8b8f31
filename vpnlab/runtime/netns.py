"""The embedded runtime: every node is a named network namespace, its daemons run from
the host's strongSwan and FRR inside it (`ip netns exec`)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pyroute2 import netns

from vpnlab.model.defaults import defaults
from vpnlab.plan.parts import Node
from vpnlab.runtime import procs
from vpnlab.runtime.backend import Backend, lab_namespaces


class NetnsBackend(Backend):
    name = "netns"

    @classmethod
    def unavailable(cls) -> str | None:
        """The daemons run from the host's packages."""
        d = defaults()["daemons"]
        wanted = {"charon": (Path(d["charon"]), "strongswan-charon"),
                  "swanctl": (shutil.which("swanctl"), "strongswan-swanctl"),
                  "zebra": (Path(d["frr_dir"]) / "zebra", "frr"), "bgpd": (Path(d["frr_dir"]) / "bgpd", "frr"),
                  "vtysh": (shutil.which("vtysh"), "frr")}
        missing = {name: package for name, (path, package) in wanted.items() if not (path and Path(path).exists())}
        if missing:
            return (f"{', '.join(missing)} not installed on this host (Debian packages: "
                    f"{' '.join(sorted(set(missing.values())))}; 'make deps' installs them)")
        return None

    @classmethod
    def lab_names(cls) -> set[str]:
        return {ns.split(".")[1] for ns in netns.listnetns()
                if ns.startswith("vpnlab.") and ns.count(".") >= 2}

    @classmethod
    def leftovers(cls, lab: str) -> dict[str, list[str]]:
        return {"namespaces": lab_namespaces(lab)}

    def make_nodes(self, nodes: list[Node]):
        for node in nodes:
            netns.create(self.namespace(node.name))

    def remove_nodes(self) -> list[str]:
        return self.remove_namespaces()

    def exec(self, node: str, argv: list[str], timeout: float = 30, input: str | None = None,
             check: bool = False) -> subprocess.CompletedProcess:
        return procs.run(self.exec_argv(node, argv), timeout=timeout, input=input, check=check)

    def exec_argv(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node), *argv]

    def start_process(self, node: str, argv: list[str], log: Path, env: dict | None = None) -> int:
        return procs.spawn(self.exec_argv(node, argv), self.state.name, log, env=env)
