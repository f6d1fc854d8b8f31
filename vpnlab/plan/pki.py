"""The lab's small PKI for point-to-site (the `cryptography` package): the P2S roots the
gateways trust, the CA of the gateways' own certificates (VpnServerRoot), a server
certificate per gateway, a certificate per client identity, and per gateway and root
a CRL with the certificates the gateway revokes.

Azure revokes by thumbprint (SHA-1 of the certificate) [6]; strongSwan and OpenVPN
revoke by CRL, which the lab can sign because it holds the roots' keys. A thumbprint
the lab did not issue cannot be put in a CRL: it is reported, not enforced.
Private keys are files of mode 0600 in the lab's folder; they are never printed.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnlab.model.defaults import defaults
from vpnlab.plan.p2s import SERVER_ROOT, gateway_fqdn

INDEX = "certificates.json"


def thumbprint(cert: x509.Certificate) -> str:
    """Azure's thumbprint: SHA-1 of the DER certificate, upper-case hex."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


class _Issuer:
    def __init__(self, name: str, now: datetime.datetime):
        self.name, self.now = name, now
        self.key = _key()
        subject = _name(name)
        self.cert = _builder(subject, subject, self.key.public_key(), now).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
        ).sign(self.key, hashes.SHA256())
        # strongSwan finds a CA's CRL by its authority key identifier
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    def issue(self, cn: str, key, server: bool, dns: str | None = None) -> x509.Certificate:
        b = _builder(_name(cn), self.cert.subject, key.public_key(), self.now).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False).add_extension(   # OpenVPN's remote-cert-tls wants key usage too
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        ).add_extension(self.aki, critical=False)
        if dns:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        return b.sign(self.key, hashes.SHA256())

    def crl(self, revoked: list[x509.Certificate]) -> x509.CertificateRevocationList:
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(self.now).next_update(self.now + _validity()).add_extension(self.aki, critical=False)
             .add_extension(x509.CRLNumber(1), critical=False))
        for cert in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
                cert.serial_number).revocation_date(self.now).build())
        return b.sign(self.key, hashes.SHA256())


def issue(t, folder: Path) -> dict:
    """Make every file the topology's point-to-site needs in folder; returns the index
    (certificates with issuer and thumbprint, revocations), also written as JSON."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    index: dict = {"certificates": {}, "revoked": {}}
    p2s_gateways = {g: gw.vpn_client_configuration for g, gw in sorted(t.virtual_network_gateways.items())
                    if gw.vpn_client_configuration is not None}
    if not p2s_gateways:
        return index
    issuers: dict[str, _Issuer] = {}

    def issuer(name: str) -> _Issuer:
        if name not in issuers:
            issuers[name] = _Issuer(name, now)
            files[f"ca-{name}.pem"] = _pem(issuers[name].cert)
        return issuers[name]

    server_root = issuer(SERVER_ROOT)
    for g, cfg in p2s_gateways.items():
        roots = [issuer(r.name) for r in cfg.root_certificates]
        key = _key()
        cert = server_root.issue(gateway_fqdn(g), key, server=True, dns=gateway_fqdn(g))
        files[f"server-{g}.pem"], files[f"server-{g}.key"] = _pem(cert), _key_pem(key)
        files[f"bundle-{g}.pem"] = b"".join(_pem(r.cert) for r in roots)
    issued: dict[str, tuple[x509.Certificate, str]] = {}
    for name, c in sorted(t.clients.items()):
        cfg = p2s_gateways[c.virtual_network_gateway]
        ca = issuer(c.issued_by or cfg.root_certificates[0].name)
        key = _key()
        files[f"client-{name}.key"] = _key_pem(key)
        for ident in c.identities(name):
            cert = ca.issue(ident, key, server=False)
            issued[ident] = (cert, ca.name)
            files[f"cert-{ident}.pem"] = _pem(cert)
            index["certificates"][ident] = {"client": name, "issuer": ca.name, "thumbprint": thumbprint(cert),
                                            "serial": format(cert.serial_number, "X")}
    by_thumbprint = {thumbprint(cert): ident for ident, (cert, _) in issued.items()}
    for g, cfg in p2s_gateways.items():
        revoked = []
        for r in cfg.revoked_certificates:
            ident = r.certificate or by_thumbprint.get(r.thumbprint.upper())
            revoked.append({"name": r.name, "certificate": ident,
                            "thumbprint": (r.thumbprint or "").upper() or thumbprint(issued[ident][0]),
                            "enforced": ident is not None})
        index["revoked"][g] = revoked
        crls = []
        for root in cfg.root_certificates:
            mine = [issued[x["certificate"]][0] for x in revoked
                    if x["enforced"] and issued[x["certificate"]][1] == root.name]
            crl = issuers[root.name].crl(mine).public_bytes(serialization.Encoding.PEM)
            files[f"crl-{g}-{root.name}.crl"] = crl
            crls.append(crl)
        files[f"crl-{g}.pem"] = b"".join(crls)
    for name, data in files.items():
        _write(folder / name, data, secret=name.endswith(".key"))
    (folder / INDEX).write_text(json.dumps(index, indent=1))
    return index


def install(plan, nodes_dir: Path, folder: Path):
    """Copy each node's certificates, keys and CRLs into its folder."""
    for node in plan.nodes.values():
        for rel, source in node.pki:
            target = nodes_dir / node.name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / source, target)
            os.chmod(target, 0o600 if rel.endswith(".key") else 0o644)


def load_index(folder: Path) -> dict:
    path = folder / INDEX
    return json.loads(path.read_text()) if path.exists() else {"certificates": {}, "revoked": {}}


def _write(path: Path, data: bytes, secret: bool):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=defaults()["p2s"]["key_bits"])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity() -> datetime.timedelta:
    return datetime.timedelta(days=defaults()["p2s"]["certificate_days"])


def _builder(subject, issuer, public_key, now) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + _validity()))


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    # PKCS#1 ("RSA PRIVATE KEY"): charon's pkcs1 plugin and OpenVPN both read it
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())
