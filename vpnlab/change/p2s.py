"""Point-to-site in a change to a running lab: the PKI brought to the new topology
beside the running one (what is there is kept: a root added is a new CA, a revocation a
new CRL), the nodes' certificate files compared, and the sessions the change ends.

Azure: a root certificate removed means its clients "won't be able to authenticate";
a revoked certificate "can no longer be used to connect" [P2SPORTAL]. Whether users
connected at that moment stay is not said (UNCONFIRMED): the lab ends their sessions,
as the change means them gone."""
from __future__ import annotations

import shutil
from pathlib import Path

from vpnlab.change.steps import Pki
from vpnlab.gateway import control, live
from vpnlab.plan import pki
from vpnlab.plan.parts import Plan

STAGED = "pki.next"


def stage(lab_dir: Path, pki_dir: Path, topology) -> Path:
    """The new topology's PKI, issued into a copy of the running one (the lab's own is
    untouched until the change is applied)."""
    staged = lab_dir / STAGED
    shutil.rmtree(staged, ignore_errors=True)
    if pki_dir.exists():
        shutil.copytree(pki_dir, staged)
    pki.issue(topology, staged)
    return staged


def discard(staged: Path | None):
    """A staged PKI that is not applied (a refusal, --plan, nothing to do)."""
    if staged:
        shutil.rmtree(staged, ignore_errors=True)


def promote(staged: Path, pki_dir: Path):
    """The staged PKI becomes the lab's (the journal's apply may run this again)."""
    if not staged.exists():
        return
    old = pki_dir.with_name(pki_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if pki_dir.exists():
        pki_dir.rename(old)
    staged.rename(pki_dir)
    shutil.rmtree(old, ignore_errors=True)


def files(old: Plan, new: Plan, nodes_dir: Path, staged: Path, pki_dir: Path) -> Pki:
    """Each node's certificate files: in its folder now, and wanted by the new plan."""
    installed = {}
    for name, node in new.nodes.items():
        rels = {r for r, _ in node.pki} | {r for r, _ in (old.nodes[name].pki if name in old.nodes else [])}
        here = {rel: (nodes_dir / name / rel) for rel in rels}
        installed[name] = {rel: path.read_bytes() for rel, path in here.items() if path.exists()}
    wanted = {name: pki.node_files(node, staged) for name, node in new.nodes.items() if node.pki}
    return Pki(installed, wanted, lambda node, was: pki.install_node(node, nodes_dir, pki_dir, was))


def ended_users(old_index: dict, new_index: dict, old_t, new_t) -> dict[str, list[str]]:
    """Per gateway, the users whose sessions the change ends: a certificate newly
    revoked, or issued by a root the gateway no longer trusts. From the topologies (the
    indexes only name the certificates), so that an interrupted apply's next run, whose
    PKI is already the new one, finds the same users."""
    certificates = old_index["certificates"] | new_index["certificates"]
    by_thumbprint = {c["thumbprint"]: i for i, c in certificates.items()}

    def revoked(cfg) -> set[str]:
        return {r.certificate or by_thumbprint.get((r.thumbprint or "").upper())
                for r in cfg.revoked_certificates} - {None}
    out = {}
    for g, gw in new_t.virtual_network_gateways.items():
        was_gw = old_t.virtual_network_gateways.get(g)
        cfg, was = gw.vpn_client_configuration, was_gw and was_gw.vpn_client_configuration
        if cfg is None or not was:
            continue
        gone_roots = {r.name for r in was.root_certificates} - {r.name for r in cfg.root_certificates}
        users = (revoked(cfg) - revoked(was)) | {i for i, c in certificates.items() if c["issuer"] in gone_roots}
        if users:
            out[g] = sorted(users)
    return out


def end_sessions(rt, plan: Plan, users: dict[str, list[str]]) -> list[str]:
    """End those users' sessions on the gateways' P2S servers (an IKE DELETE; openvpn's
    kill); what was ended. Their clients may redial: the gateway refuses them."""
    ended = []
    for e in plan.p2s_ends:
        who = set(users.get(e.gateway, []))
        if not who:
            continue
        if e.protocol == "IkeV2":
            for c in live.ikev2_server_clients(rt, e.node):
                if c["certificate"] in who:
                    control.ike_terminate(rt, e.node, plan.nodes[e.node].charon["connection"], force=True,
                                          ike_id=c["ike_sa"])
                    ended.append(f"{c['certificate']} (IkeV2)")
        else:
            for c in live.openvpn_server_clients(rt, e.node):
                if c["certificate"] in who:
                    control.openvpn_kill(rt, e.node, c["address"], c["source_port"])
                    ended.append(f"{c['certificate']} (OpenVPN)")
    return ended
