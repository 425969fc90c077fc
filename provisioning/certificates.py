"""The box's TLS: the store's own CA, the server certificate it signs, or a retailer's own certificate.

A store has no domain name and often no internet, so no public CA can vouch for its boxes. Instead
provisioning makes one CA per store (ECDSA P-256, ten years, allowed to sign server certificates and
nothing below them) and each box a server certificate signed by it, naming every way a handheld may
reach the box: its host name, ``<name>.local`` for mDNS, ``localhost``, and its addresses. Devices
install the CA once (docs/tls.md) or are given it at pairing; the dashboard then has the secure
context a service worker and WebCrypto need, and a device knows it talks to a box of its store.

Server certificates live 397 days at most (the longest Apple and Chrome accept), so a box renews its
own at start once it is within ``renew_within_days`` of expiry; nobody has to remember a date.

Files, under ``<data_dir>/tls`` (folder 0700)::

    ca.pem          the store CA's certificate (every box of the store has the same one)
    ca-key.pem      its key, 0600; only where certificates are issued
    server.pem      this box's certificate, then the chain above it
    server-key.pem  its key, 0600

Every file is written whole and renamed into place, so a box that loses power mid-write keeps the
previous certificate rather than half of a new one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ifaddr
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.files import write_whole
from replication.wire import tls

TLS_DIR = "tls"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"

CA_DAYS = 3650
SERVER_DAYS = 397  # Apple's and Chrome's ceiling is 398; a day under leaves room for clock skew
BACKDATE = dt.timedelta(hours=1)  # a handheld whose clock runs a little behind still accepts a new certificate

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateError(ValueError):
    """A certificate or key that cannot serve: unreadable, mismatched, or with no CA to sign it."""


@dataclass(frozen=True)
class ServerIdentity:
    """What the HTTPS listener serves, and what mDNS and pinning clients are told about it."""

    cert_path: Path
    key_path: Path
    ca_path: Path | None  # None for a retailer's own certificate: the store CA did not issue it
    fingerprint: str  # sha256 hex (lowercase) of the server certificate's DER
    not_after: dt.datetime


def fingerprint(cert_pem: bytes) -> str:
    """The first certificate's: the one a client's handshake shows."""
    return tls.fingerprint(cert_pem)


def _tls_dir(data_dir: Path) -> Path:
    folder = data_dir / TLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        certificate = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY_FILE).read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"no store CA in {folder}; make it first (ensure_store_ca)") from None
    except ValueError as exc:
        raise CertificateError(f"the store CA in {folder} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"the store CA key in {folder} is not an EC key")
    return certificate, key


def ensure_store_ca(data_dir: Path, store_name: str) -> Path:
    """The store CA's certificate, made on the first call; later calls keep it (every device trusts it)."""
    folder = _tls_dir(data_dir)
    ca_path, key_path = folder / CA_FILE, folder / CA_KEY_FILE
    if ca_path.exists() and key_path.exists():
        _load_ca(folder)
        return ca_path
    if ca_path.exists() or key_path.exists():
        raise CertificateError(
            f"{folder} holds half a store CA ({ca_path.name if ca_path.exists() else key_path.name} alone); "
            "restore the other file from a backup rather than make a new CA every device would have to trust"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{store_name} StockVerify CA"[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, store_name[:64]),
        ]
    )
    start = _now() - BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_whole(key_path, _key_pem(key), 0o600)
    write_whole(ca_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_path


def _names(hostnames: list[str], addresses: list[str]) -> tuple[list[str], list[IPAddress]]:
    dns = list(dict.fromkeys(name.strip().lower().rstrip(".") for name in hostnames if name.strip()))
    try:
        ips = list(dict.fromkeys(ipaddress.ip_address(address.strip()) for address in addresses))
    except ValueError as exc:
        raise CertificateError(str(exc)) from None
    if not dns and not ips:
        raise CertificateError("a server certificate needs at least one host name or address")
    return dns, ips


def _sans(certificate: x509.Certificate) -> tuple[set[str], set[IPAddress]]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {ip for ip in san.get_values_for_type(x509.IPAddress) if isinstance(ip, IPAddress)}
    return {name.lower() for name in san.get_values_for_type(x509.DNSName)}, ips


def issued_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """The host names and addresses a certificate names: what a renewal issues for again."""
    dns, ips = _sans(x509.load_pem_x509_certificates(cert_pem)[0])
    return sorted(dns), sorted((str(ip) for ip in ips), key=lambda text: ipaddress.ip_address(text).packed)


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _current(folder: Path, ca: x509.Certificate, dns: list[str], ips: list[IPAddress], renew_within_days: int) -> bool:
    """Whether the certificate in place can be kept: the store CA's, naming exactly these, not due."""
    try:
        certificate = x509.load_pem_x509_certificates((folder / SERVER_FILE).read_bytes())[0]
        key = serialization.load_pem_private_key((folder / SERVER_KEY_FILE).read_bytes(), password=None)
    except (FileNotFoundError, ValueError):
        return False
    due = certificate.not_valid_after_utc - dt.timedelta(days=renew_within_days)
    return (
        _same_key(key, certificate)
        and _issued_by(certificate, ca)
        and _sans(certificate) == (set(dns), set(ips))
        and _now() < due
    )


def ensure_server_certificate(
    data_dir: Path, *, hostnames: list[str], addresses: list[str], renew_within_days: int = 30
) -> ServerIdentity:
    """This box's certificate from the store CA, issued again only when missing, due, or naming other
    hosts; one that can stay is left untouched, so its fingerprint (in mDNS) does not change."""
    folder = _tls_dir(data_dir)
    ca, ca_key = _load_ca(folder)
    dns, ips = _names(hostnames, addresses)
    if not _current(folder, ca, dns, ips, renew_within_days):
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - BACKDATE
        end = min(start + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc)
        common_name = (dns or [str(ip) for ip in ips])[0][:64]
        san: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        san += [x509.IPAddress(ip) for ip in ips]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
        # The key first: a certificate in place without its key would stop the next start.
        write_whole(folder / SERVER_KEY_FILE, _key_pem(key), 0o600)
        write_whole(folder / SERVER_FILE, chain, 0o644)
    identity = load_server_identity(data_dir)
    assert identity is not None  # written above or kept because it was readable
    return identity


def _same_key(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == certificate.public_key().public_bytes(der, spki)


def install_supplied_certificate(data_dir: Path, cert_pem: bytes, key_pem: bytes) -> ServerIdentity:
    """A retailer's own certificate (its chain after it) and key, for stores whose devices already trust
    the retailer's CA. Checked before anything is replaced: a key that does not match would leave a box
    that cannot start its HTTPS."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise CertificateError(f"the certificate is not PEM: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"the key is not an unencrypted PEM private key: {exc}") from None
    if not _same_key(key, chain[0]):
        raise CertificateError("the key does not belong to the certificate (the first one in the file)")
    if chain[0].not_valid_after_utc <= _now():
        raise CertificateError(f"the certificate expired on {chain[0].not_valid_after_utc:%Y-%m-%d}")
    folder = _tls_dir(data_dir)
    pem = b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in chain)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_whole(folder / SERVER_KEY_FILE, key_bytes, 0o600)
    write_whole(folder / SERVER_FILE, pem, 0o644)
    identity = load_server_identity(data_dir)
    assert identity is not None
    return identity


def load_server_identity(data_dir: Path) -> ServerIdentity | None:
    """None on a box provisioned without TLS; an unreadable certificate is an error, never plain HTTP."""
    folder = data_dir / TLS_DIR
    cert_path, key_path, ca_path = folder / SERVER_FILE, folder / SERVER_KEY_FILE, folder / CA_FILE
    if not cert_path.exists() and not key_path.exists():
        return None
    try:
        pem = cert_path.read_bytes()
        certificate = x509.load_pem_x509_certificates(pem)[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"the server certificate in {folder} cannot be used: {exc}") from None
    if not _same_key(key, certificate):
        raise CertificateError(f"{key_path} does not belong to {cert_path}")
    issued_by_store = False
    if ca_path.exists():
        try:
            issued_by_store = _issued_by(certificate, x509.load_pem_x509_certificate(ca_path.read_bytes()))
        except ValueError as exc:
            raise CertificateError(f"{ca_path} cannot be read: {exc}") from None
    return ServerIdentity(
        cert_path=cert_path,
        key_path=key_path,
        ca_path=ca_path if issued_by_store else None,
        fingerprint=fingerprint(pem),
        not_after=certificate.not_valid_after_utc,
    )


def default_names() -> tuple[list[str], list[str]]:
    """Every name a handheld or browser on the LAN may use for this box, and ``localhost`` for the box
    itself; addresses are the non-loopback ones present now (link-local IPv6 needs a scope no URL
    carries well, so it is left out) and ``127.0.0.1``."""
    host = socket.gethostname().strip().lower().rstrip(".")
    short = host.split(".")[0]
    names = list(dict.fromkeys(name for name in (host, short, f"{short}.local", "localhost") if name))
    found: list[IPAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not (address.is_loopback or address.is_link_local or address.is_multicast):
                found.append(address)
    ordered = sorted(set(found), key=lambda a: (a.version, a.packed))
    return names, [str(address) for address in ordered] + ["127.0.0.1"]
