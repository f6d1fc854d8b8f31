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
import ipaddress
import json
import os
import shutil
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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
    """A CA: made once, its key kept (0600) so that a running lab's change can issue
    what is missing, and revoke, without reissuing what its users hold."""

    def __init__(self, name: str, now: datetime.datetime, key=None, cert: x509.Certificate | None = None):
        self.name, self.now = name, now
        self.key = key or _key()
        self.cert = cert or _builder(_name(name), _name(name), self.key.public_key(), now).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
        ).sign(self.key, hashes.SHA256())
        # strongSwan finds a CA's CRL by its authority key identifier
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    @classmethod
    def load(cls, name: str, now: datetime.datetime, folder: Path) -> _Issuer | None:
        cert_file, key_file = folder / f"ca-{name}.pem", folder / f"ca-{name}.key"
        if not (cert_file.exists() and key_file.exists()):
            return None
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        return cls(name, now, key, x509.load_pem_x509_certificate(cert_file.read_bytes()))

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether this CA (this very key) signed cert."""
        try:
            cert.verify_directly_issued_by(self.cert)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False

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
        # a later list has a higher number: strongSwan keeps the newest CRL of a CA
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(self.now).next_update(self.now + _validity()).add_extension(self.aki, critical=False)
             .add_extension(x509.CRLNumber(int(time.time() * 1000)), critical=False))
        for cert in revoked:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(
                cert.serial_number).revocation_date(self.now).build())
        return b.sign(self.key, hashes.SHA256())

    def crl_current(self, path: Path, revoked: list[x509.Certificate]) -> bool:
        """Whether the CRL at path is this CA's and lists exactly these certificates."""
        if not path.exists():
            return False
        crl = x509.load_pem_x509_crl(path.read_bytes())
        return crl.is_signature_valid(self.key.public_key()) and \
            {r.serial_number for r in crl} == {c.serial_number for c in revoked}


class _Folder:
    """The PKI's files: what is there already is kept (so that a change to a running
    lab issues only what is missing); what changes is written at the end."""

    def __init__(self, folder: Path):
        self.folder, self.files = folder, {}

    def cert(self, name: str) -> x509.Certificate | None:
        path = self.folder / name
        return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None

    def key(self, name: str):
        path = self.folder / name
        if path.exists():
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        key = _key()
        self.files[name] = _key_pem(key)
        return key

    def write(self):
        for name, data in self.files.items():
            path = self.folder / name
            if not path.exists() or path.read_bytes() != data:
                _write(path, data, secret=name.endswith(".key"))


def inputs(t) -> dict:
    """What issue() reads of a topology: equal inputs, the same PKI."""
    cfgs = {g: gw.vpn_client_configuration for g, gw in t.virtual_network_gateways.items()
            if gw.vpn_client_configuration}
    return {"gateways": {g: ([r.name for r in c.root_certificates],
                             [r.model_dump(mode="json") for r in c.revoked_certificates]) for g, c in cfgs.items()},
            "clients": {n: (c.virtual_network_gateway, c.issued_by, c.identities(n)) for n, c in t.clients.items()}}


def issue(t, folder: Path) -> dict:
    """Make every file the topology's point-to-site needs in folder, keeping what is
    there and still fits (CAs and their keys, server and client certificates): a root
    added is a new CA, a client added a new certificate, a revocation a new CRL. Returns
    the index (certificates with issuer and thumbprint, revocations), also written as JSON."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = _Folder(folder)
    index: dict = {"certificates": {}, "revoked": {}}
    p2s_gateways = {g: gw.vpn_client_configuration for g, gw in sorted(t.virtual_network_gateways.items())
                    if gw.vpn_client_configuration is not None}
    if not p2s_gateways:
        (folder / INDEX).write_text(json.dumps(index, indent=1))
        return index
    issuers: dict[str, _Issuer] = {}

    def issuer(name: str) -> _Issuer:
        if name not in issuers:
            issuers[name] = _Issuer.load(name, now, folder) or _Issuer(name, now)
            store.files[f"ca-{name}.pem"] = _pem(issuers[name].cert)
            store.files[f"ca-{name}.key"] = _key_pem(issuers[name].key)
        return issuers[name]

    def certificate(file: str, ca: _Issuer, cn: str, key, server: bool) -> x509.Certificate:
        cert = store.cert(file)
        if not (cert and ca.issued(cert) and cert.subject == _name(cn) and _same_key(cert, key)):
            cert = ca.issue(cn, key, server=server, dns=cn if server else None)
        store.files[file] = _pem(cert)
        return cert

    server_root = issuer(SERVER_ROOT)
    for g, cfg in p2s_gateways.items():
        roots = [issuer(r.name) for r in cfg.root_certificates]
        certificate(f"server-{g}.pem", server_root, gateway_fqdn(g), store.key(f"server-{g}.key"), server=True)
        # openvpn wants a CA even where it asks for no client certificate (RADIUS alone)
        store.files[f"bundle-{g}.pem"] = b"".join(_pem(r.cert) for r in roots or [server_root])
    issued: dict[str, tuple[x509.Certificate, str]] = {}
    for name, c in sorted(t.clients.items()):
        if c.uses_radius or c.protocol not in ("IkeV2", "OpenVPN"):     # a user name, no certificate
            continue
        cfg = p2s_gateways[c.virtual_network_gateway]
        ca = issuer(c.issued_by or cfg.root_certificates[0].name)
        key = store.key(f"client-{name}.key")
        for ident in c.identities(name):
            cert = certificate(f"cert-{ident}.pem", ca, ident, key, server=False)
            issued[ident] = (cert, ca.name)
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
            file = f"crl-{g}-{root.name}.crl"
            ca = issuers[root.name]
            crl = (folder / file).read_bytes() if ca.crl_current(folder / file, mine) else \
                ca.crl(mine).public_bytes(serialization.Encoding.PEM)
            store.files[file] = crl
            crls.append(crl)
        store.files[f"crl-{g}.pem"] = b"".join(crls)
    store.write()
    (folder / INDEX).write_text(json.dumps(index, indent=1))
    return index


def node_files(node, folder: Path) -> dict[str, bytes]:
    """What a node's folder holds of the PKI: path in the node folder -> content."""
    return {rel: (folder / source).read_bytes() for rel, source in node.pki}


def install_node(node, nodes_dir: Path, folder: Path, old=None):
    """Copy a node's certificates, keys and CRLs into its folder; what the node's old
    plan had and the new one has not (a root no longer trusted) is removed."""
    for rel, source in node.pki:
        target = nodes_dir / node.name / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / source, target)
        os.chmod(target, 0o600 if rel.endswith(".key") else 0o644)
    for rel in {r for r, _ in (old.pki if old else [])} - {r for r, _ in node.pki}:
        (nodes_dir / node.name / rel).unlink(missing_ok=True)


def install(plan, nodes_dir: Path, folder: Path):
    """Copy each node's certificates, keys and CRLs into its folder."""
    for node in plan.nodes.values():
        install_node(node, nodes_dir, folder)


def load_index(folder: Path) -> dict:
    path = folder / INDEX
    return json.loads(path.read_text()) if path.exists() else {"certificates": {}, "revoked": {}}


def _same_key(cert: x509.Certificate, key) -> bool:
    return cert.public_key().public_numbers() == key.public_key().public_numbers()


def self_signed(address: str, cert_path: Path, key_path: Path):
    """A self-signed server certificate for an IP address and its key (0600), in PEM:
    what a gateway instance's health probe presents."""
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (_builder(_name(address), _name(address), key.public_key(), now)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address(address))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, _pem(cert), secret=False)


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
