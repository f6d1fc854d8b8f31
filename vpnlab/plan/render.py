"""Rendered node configs: Jinja2 templates under vpnlab/plan/templates, one folder per node."""
from __future__ import annotations

import base64
import math
import os
from ipaddress import IPv4Address
from pathlib import Path

import jinja2

from vpnlab.model.defaults import defaults
from vpnlab.plan import timers
from vpnlab.plan.parts import TABLE_INTO_TUNNEL, Node, Plan

PLUGINS = ("random nonce openssl aes sha1 sha2 md5 hmac gcm gmp curve25519 pem pkcs1 pkcs8 x509 "
           "revocation constraints pubkey kdf kernel-libipsec kernel-netlink socket-default vici "
           "updown").split()
KERNEL_PLUGINS = [p for p in PLUGINS if p != "kernel-libipsec"]     # ESP in the kernel (XFRM)
SECRET_FILES = {"swanctl.conf", "strongswan.conf", "radiusd.conf", "users", "credentials"}
SECRET_PREFIXES = ("radius-",)       # an OpenVPN server's RADIUS secrets (radius-<server>.secret)
# where a P2S openvpn server's session hook writes (the agent reads it)
SESSIONS_FILE = "openvpn-sessions.jsonl"
# the table charon routes its clients' virtual IPs in (strongSwan's default routing_table)
CHARON_ROUTES = 220
RADIUS_PORT = defaults()["p2s"]["radius"]["port"]


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vpnlab.plan", "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["b64"] = lambda s: base64.b64encode(s.encode()).decode()
    return env


# nftables rules a tunnel end holds while its charon starts (the template says why)
STARTING_GUARD = _env().get_template("starting-guard.nft.j2").render(
    table=defaults()["daemons"]["ike_guard_table"])


def retransmit(dpd_timeout: int) -> dict:
    """charon gives up on a peer after (tries + 1) * timeout seconds of silence."""
    tries = 3
    return dict(tries=tries, timeout=round(dpd_timeout / (tries + 1), 2))


def node_files(env: jinja2.Environment, node: Node, node_dir: Path, hosted: list[Node] = ()) -> dict[str, str]:
    """hosted: the tunnel ends whose connections this node's charon carries."""
    ctx = dict(node=node, dir=str(node_dir))
    files = {}
    if node.frr is not None:
        files["frr.conf"] = env.get_template("frr.conf.j2").render(ctx, frr=node.frr)
        files["vtysh.conf"] = "service integrated-vtysh-config\n"
    if node.nft is not None:
        files["nftables.conf"] = env.get_template("nftables.conf.j2").render(
            ctx, nft=node.nft, underlay=defaults()["internal"]["underlay"], radius_port=RADIUS_PORT)
    if node.charon is not None and node.charon.get("hosts"):
        files |= _hosting_charon(env, ctx, hosted)
    elif node.runs_charon:
        c = node.charon
        # no DPD (policy-based gateways): IKE retransmits as with Azure's default timeout
        dpd = c["dpd_timeout"] or timers.azure_dpd()
        if_id = next((i.if_id for i in node.interfaces if i.kind == "xfrm"), None)
        files["strongswan.conf"] = env.get_template("strongswan.conf.j2").render(
            ctx, c=c | {"dpd_timeout": dpd}, plugins=(KERNEL_PLUGINS if if_id else PLUGINS) + _eap_plugins(c),
            if_id=if_id, retransmit=retransmit(dpd), radius_port=RADIUS_PORT)
        template = "swanctl-p2s.conf.j2" if c.get("p2s") else "swanctl.conf.j2"
        files["swanctl.conf"] = env.get_template(template).render(
            ctx, c=c, dpd_delay=max(1, math.ceil(dpd / 3)) if c["dpd_timeout"] else 0, if_id=if_id)
    if node.openvpn is not None:
        files |= _openvpn_files(env, ctx, node)
    if node.radius is not None:
        files["radiusd.conf"] = env.get_template("radiusd.conf.j2").render(ctx, r=node.radius)
        # names and passwords hold no quote or backslash (vpnlab.model.p2s_rules)
        files["users"] = "".join(f'"{u["name"]}" Cleartext-Password := "{u["password"]}"\n'
                                 for u in node.radius["users"])
    return files


def _eap_plugins(c: dict) -> list[str]:
    """A P2S server relays EAP to RADIUS; a RADIUS user's client speaks EAP-MSCHAPv2."""
    if c.get("radius"):
        return ["eap-identity", "eap-radius"]
    if c.get("eap"):
        return ["eap-identity", "eap-mschapv2"]
    return []


def _openvpn_files(env: jinja2.Environment, ctx: dict, node: Node) -> dict[str, str]:
    o = node.openvpn
    files = {"openvpn.conf": env.get_template("openvpn.conf.j2").render(ctx, o=o)}
    if o["role"] == "client":
        if o.get("credentials"):
            files["credentials"] = f'{o["credentials"]["username"]}\n{o["credentials"]["password"]}\n'
        return files
    if o.get("radius"):
        files["openvpn-radius.sh"] = env.get_template("openvpn-radius.sh.j2").render(
            ctx, o=o, sessions_file=SESSIONS_FILE, radius_port=RADIUS_PORT)
        files |= {f"radius-{s['name']}.secret": s["secret"] + "\n" for s in o["radius"]}
    files["openvpn-session.sh"] = env.get_template("openvpn-session.sh.j2").render(
        ctx, o=o, sessions_file=SESSIONS_FILE, into_tunnel=TABLE_INTO_TUNNEL, charon_routes=CHARON_ROUTES,
        first=int(IPv4Address(o["pool_start"])), last=int(IPv4Address(o["pool_end"])))
    return files


def _hosting_charon(env: jinja2.Environment, ctx: dict, ends: list[Node]) -> dict[str, str]:
    """One charon for several tunnel ends (a gateway instance's, on the kernel data
    plane): each end's connection with its XFRM interface's ID. Retransmits are
    charon-wide: the shortest DPD timeout of its connections decides when it gives up."""
    dpd = min(e.charon["dpd_timeout"] or timers.azure_dpd() for e in ends)
    conf = env.get_template("strongswan.conf.j2").render(
        ctx, c={"dpd_timeout": dpd}, plugins=KERNEL_PLUGINS, if_id=True, retransmit=retransmit(dpd))
    swanctl = "".join(env.get_template("swanctl.conf.j2").render(
        node=e, dir=ctx["dir"], c=e.charon, if_id=e.iface("ipsec0").if_id,
        dpd_delay=max(1, math.ceil(e.charon["dpd_timeout"] / 3)) if e.charon["dpd_timeout"] else 0) for e in ends)
    return {"strongswan.conf": conf, "swanctl.conf": swanctl}


def render(plan: Plan, nodes_dir: Path) -> dict[str, dict[str, str]]:
    """Render every node's configs in memory (no file is written)."""
    return render_with(plan, lambda node: nodes_dir / node)


def render_with(plan: Plan, node_dir) -> dict[str, dict[str, str]]:
    """Render with node_dir(name): the folder the configs name (inside a container, for
    an export, it is not where the files are written)."""
    env = _env()
    return {n.name: node_files(env, n, node_dir(n.name), plan.hosted_ends(n.name)) for n in plan.ordered_nodes()}


def write(rendered: dict[str, dict[str, str]], nodes_dir: Path):
    for node, files in rendered.items():
        d = nodes_dir / node
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = d / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600 if name in SECRET_FILES or name.startswith(SECRET_PREFIXES) else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
