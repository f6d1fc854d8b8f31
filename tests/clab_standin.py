"""A stand-in for the `containerlab` binary, for machines where containerlab cannot be
installed (no package of it is reachable from the project's CI). It is NOT containerlab:
it does what vpnlab's files ask of containerlab, the way containerlab documents it, so
that the emitted topology and the containerlab runtime are exercised with real Docker
containers, real links and real daemons:

  deploy -t FILE      a container per node (image, cmd, env, binds relative to FILE,
                      cap-add, devices, security-opts, network-mode none, labels), named
                      clab-<lab>-<node>, its network namespace linked as
                      /var/run/netns/clab-<lab>-<node>; veth links with their MTU
  inspect -t FILE -f json   {"<lab>": [{"name", "state", ...}]} (containerlab >= 0.60)
  destroy -t FILE --cleanup
  version

Tests that use it say so; tests of the real binary skip where it is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import docker
import yaml
from pyroute2 import NetNS

NETNS_DIR = Path("/var/run/netns")


def load(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def name_of(lab: str, node: str) -> str:
    return f"clab-{lab}-{node}"


def deploy(path: str):
    topo = load(path)
    lab, base = topo["name"], Path(path).resolve().parent
    client = docker.from_env()
    for node, cfg in topo["topology"]["nodes"].items():
        volumes = {}
        for bind in cfg.get("binds", []):
            src, dst = bind.split(":", 1)
            src_path = Path(src) if src.startswith("/") else base / src
            volumes[str(src_path)] = {"bind": dst, "mode": "rw"}
        host_config = client.api.create_host_config(
            network_mode=cfg.get("network-mode", "none"), cap_add=cfg.get("cap-add"),
            devices=[f"{d}:{d}:rwm" for d in cfg.get("devices", [])],
            binds={src: v for src, v in volumes.items()}, security_opt=cfg.get("security-opts"))
        # containerlab runs nodes privileged, which this machine refuses (it withholds
        # CAP_SYS_RESOURCE); what the nodes use of it is a writable /proc/sys
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        created = client.api.create_container(
            cfg["image"], cfg.get("cmd", "").split() or None, name=name_of(lab, node), hostname=node,
            environment={k: str(v) for k, v in cfg.get("env", {}).items()}, host_config=host_config,
            labels={**{k: str(v) for k, v in cfg.get("labels", {}).items()},
                    "containerlab": lab, "clab-node-name": node})
        client.api.start(created["Id"])
        c = client.containers.get(created["Id"])
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        link = NETNS_DIR / name_of(lab, node)
        link.unlink(missing_ok=True)
        link.symlink_to(f"/proc/{c.attrs['State']['Pid']}/ns/net")
    for spec in topo["topology"].get("links", []):
        a, b = spec["endpoints"]
        with NetNS(name_of(lab, a["node"])) as ns:
            ns.link("add", ifname=a["interface"], kind="veth",
                    peer={"ifname": b["interface"], "net_ns_fd": name_of(lab, b["node"])})
            idx = ns.link_lookup(ifname=a["interface"])[0]
            ns.link("set", index=idx, mtu=spec.get("mtu", 9500), state="up")
        with NetNS(name_of(lab, b["node"])) as ns:
            idx = ns.link_lookup(ifname=b["interface"])[0]
            ns.link("set", index=idx, mtu=spec.get("mtu", 9500), state="up")


def containers(lab: str) -> list:
    return docker.from_env().containers.list(all=True, filters={"label": f"containerlab={lab}"})


def inspect(path: str):
    lab = load(path)["name"]
    print(json.dumps({lab: [{"lab_name": lab, "name": c.name, "state": c.status,
                             "image": c.attrs["Config"]["Image"]} for c in containers(lab)]}))


def destroy(path: str):
    lab = load(path)["name"]
    for c in containers(lab):
        c.remove(force=True)
    for link in NETNS_DIR.glob(f"clab-{lab}-*"):
        link.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="containerlab")
    p.add_argument("verb", choices=["deploy", "destroy", "inspect", "version"])
    p.add_argument("-t", "--topo")
    p.add_argument("-f", "--format")
    p.add_argument("--reconfigure", action="store_true")
    p.add_argument("--cleanup", action="store_true")
    args = p.parse_args(argv)
    if args.verb == "version":
        print("version: 0.79.0 (vpnlab's test stand-in, not containerlab)")
    elif args.verb == "deploy":
        if args.reconfigure:
            destroy(args.topo)
        deploy(args.topo)
    elif args.verb == "inspect":
        inspect(args.topo)
    else:
        destroy(args.topo)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main(sys.argv[1:]))
