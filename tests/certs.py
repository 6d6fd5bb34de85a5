"""Throw-away TLS material, made with `cryptography` (dev extra): a CA, a server certificate
for 127.0.0.1 / localhost (and any further names) and a client certificate, all signed by
that CA, plus a second CA that signed nothing the server trusts (a stranger's). Used by the
tests, the security benchmark and `tools/make_certs.py`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path            # a CA nobody here trusts
    other_client_cert: Path   # a client certificate signed by it
    other_client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, *,
          ca: bool = False, server: bool = False, names: tuple[str, ...] = (), days: int = 1) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    elif server:
        sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        sans += [x509.DNSName(n) for n in names]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def make_tls_files(folder: Path, names: tuple[str, ...] = (), days: int = 1) -> TlsFiles:
    """Write the files into `folder`; the server certificate also names `names` (DNS)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = _key(), _key()
    ca = _cert("callstate test CA", ca_key, "callstate test CA", ca_key, ca=True, days=days)
    other = _cert("stranger CA", other_key, "stranger CA", other_key, ca=True, days=days)
    server_key, client_key, other_client_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, "callstate test CA", ca_key, server=True, names=names, days=days)
    client = _cert("callstate test client", client_key, "callstate test CA", ca_key, days=days)
    other_client = _cert("stranger", other_client_key, "stranger CA", other_key, days=days)
    return TlsFiles(ca=_write(folder / "ca.pem", ca), server_cert=_write(folder / "server.pem", server),
                    server_key=_write(folder / "server.key", key=server_key),
                    client_cert=_write(folder / "client.pem", client),
                    client_key=_write(folder / "client.key", key=client_key),
                    other_ca=_write(folder / "other-ca.pem", other),
                    other_client_cert=_write(folder / "other-client.pem", other_client),
                    other_client_key=_write(folder / "other-client.key", key=other_client_key))
