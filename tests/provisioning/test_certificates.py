"""The store CA and the box's server certificate, as files on disk and as clients will judge them."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioning.certificates import (
    CertificateError,
    ServerIdentity,
    default_names,
    ensure_server_certificate,
    ensure_store_ca,
    fingerprint,
    install_supplied_certificate,
    issued_names,
    load_server_identity,
)

HOSTS = ["box-1", "box-1.local", "localhost"]
ADDRESSES = ["192.168.1.20", "127.0.0.1"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leaf(identity: ServerIdentity) -> x509.Certificate:
    return x509.load_pem_x509_certificates(identity.cert_path.read_bytes())[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_store_ca(tmp_path / "box", "Main Street")
    return tmp_path / "box"


def test_the_store_ca_may_sign_server_certificates_and_nothing_below_them(tmp_path: Path) -> None:
    ca_path = ensure_store_ca(tmp_path / "box", "Main Street")
    assert ca_path == tmp_path / "box" / "tls" / "ca.pem"
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    key_path = ca_path.with_name("ca-key.pem")

    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ca.subject == ca.issuer and "Main Street" in ca.subject.rfc4514_string()
    ca.verify_directly_issued_by(ca)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) <= lifetime <= dt.timedelta(days=3651)
    assert _mode(key_path) == 0o600 and _mode(ca_path.parent) == 0o700

    before = (ca_path.read_bytes(), key_path.read_bytes())
    assert ensure_store_ca(tmp_path / "box", "Another Name") == ca_path
    assert (ca_path.read_bytes(), key_path.read_bytes()) == before  # every device keeps trusting it


def test_half_a_ca_is_refused_rather_than_replaced(data_dir: Path) -> None:
    (data_dir / "tls" / "ca-key.pem").unlink()
    with pytest.raises(CertificateError, match="half a store CA"):
        ensure_store_ca(data_dir, "Main Street")


def test_the_server_certificate_names_the_box_and_serves_tls_only(data_dir: Path) -> None:
    assert load_server_identity(data_dir) is None
    identity = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    leaf = _leaf(identity)
    ca = x509.load_pem_x509_certificate((data_dir / "tls" / "ca.pem").read_bytes())

    assert identity.cert_path == data_dir / "tls" / "server.pem"
    assert identity.key_path == data_dir / "tls" / "server-key.pem"
    assert identity.ca_path == data_dir / "tls" / "ca.pem"
    assert identity.fingerprint == hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert identity.fingerprint == fingerprint(identity.cert_path.read_bytes())
    assert identity.not_after == leaf.not_valid_after_utc
    leaf.verify_directly_issued_by(ca)

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == HOSTS
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(a) for a in ADDRESSES]
    assert issued_names(identity.cert_path.read_bytes()) == (sorted(HOSTS), ["127.0.0.1", "192.168.1.20"])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=397)
    assert leaf.not_valid_before_utc <= dt.datetime.now(dt.UTC) < leaf.not_valid_after_utc
    assert _mode(identity.key_path) == 0o600

    # What a TLS client makes of it: the chain and the key load into a server context, and a client
    # context that trusts the store CA alone accepts the chain (checked end to end in test_https).
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(identity.cert_path, identity.key_path)
    assert load_server_identity(data_dir) == identity


def test_an_unchanged_valid_certificate_is_kept_as_is(data_dir: Path) -> None:
    first = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    pem, key = first.cert_path.read_bytes(), first.key_path.read_bytes()
    again = ensure_server_certificate(data_dir, hostnames=list(reversed(HOSTS)), addresses=ADDRESSES)
    assert again == first
    assert (again.cert_path.read_bytes(), again.key_path.read_bytes()) == (pem, key)


def test_a_certificate_due_for_renewal_is_issued_again(data_dir: Path) -> None:
    first = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    kept = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES, renew_within_days=30)
    assert kept.fingerprint == first.fingerprint
    # Due: it expires within the window asked for (397 days is every certificate this CA issues).
    renewed = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES, renew_within_days=398)
    assert renewed.fingerprint != first.fingerprint
    assert issued_names(renewed.cert_path.read_bytes()) == issued_names(first.cert_path.read_bytes())
    assert _mode(renewed.key_path) == 0o600


def test_other_names_issue_a_new_certificate(data_dir: Path) -> None:
    first = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    moved = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=["192.168.7.9", "127.0.0.1"])
    assert moved.fingerprint != first.fingerprint
    assert issued_names(moved.cert_path.read_bytes())[1] == ["127.0.0.1", "192.168.7.9"]
    renamed = ensure_server_certificate(data_dir, hostnames=["box-2", "localhost"], addresses=ADDRESSES)
    assert renamed.fingerprint != moved.fingerprint
    assert issued_names(renamed.cert_path.read_bytes())[0] == ["box-2", "localhost"]


def test_a_certificate_from_another_ca_is_issued_again(data_dir: Path, tmp_path: Path) -> None:
    ensure_store_ca(tmp_path / "elsewhere", "Elsewhere")
    foreign = ensure_server_certificate(tmp_path / "elsewhere", hostnames=HOSTS, addresses=ADDRESSES)
    install_supplied_certificate(data_dir, foreign.cert_path.read_bytes(), foreign.key_path.read_bytes())
    ours = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    assert ours.fingerprint != foreign.fingerprint and ours.ca_path == data_dir / "tls" / "ca.pem"


def test_no_server_certificate_without_a_store_ca(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no store CA"):
        ensure_server_certificate(tmp_path / "box", hostnames=HOSTS, addresses=ADDRESSES)
    with pytest.raises(CertificateError):
        ensure_server_certificate(tmp_path / "box", hostnames=[], addresses=[])


def test_a_retailers_own_certificate_is_installed_with_its_chain(data_dir: Path, tmp_path: Path) -> None:
    retailer = tmp_path / "retailer"
    ensure_store_ca(retailer, "Retailer Inc")
    issued = ensure_server_certificate(retailer, hostnames=["counts.retailer.example"], addresses=[])
    chain = issued.cert_path.read_bytes()

    identity = install_supplied_certificate(data_dir, chain, issued.key_path.read_bytes())
    assert identity.ca_path is None  # the store CA did not issue it: no CA to hand out on /ca.pem
    assert identity.fingerprint == issued.fingerprint
    assert len(x509.load_pem_x509_certificates(identity.cert_path.read_bytes())) == 2
    assert _mode(identity.key_path) == 0o600
    assert load_server_identity(data_dir) == identity


def test_a_key_that_does_not_match_is_refused_and_nothing_replaced(data_dir: Path, tmp_path: Path) -> None:
    ours = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    before = (ours.cert_path.read_bytes(), ours.key_path.read_bytes())
    retailer = tmp_path / "retailer"
    ensure_store_ca(retailer, "Retailer Inc")
    issued = ensure_server_certificate(retailer, hostnames=["counts.retailer.example"], addresses=[])
    other_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateError, match="does not belong"):
        install_supplied_certificate(data_dir, issued.cert_path.read_bytes(), other_key)
    with pytest.raises(CertificateError, match="not PEM"):
        install_supplied_certificate(data_dir, b"not a certificate", other_key)
    assert (ours.cert_path.read_bytes(), ours.key_path.read_bytes()) == before
    assert load_server_identity(data_dir) == ours


def test_a_damaged_certificate_stops_rather_than_falls_back_to_http(data_dir: Path) -> None:
    identity = ensure_server_certificate(data_dir, hostnames=HOSTS, addresses=ADDRESSES)
    identity.cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateError):
        load_server_identity(data_dir)


def test_default_names_are_what_a_lan_client_may_use() -> None:
    hostnames, addresses = default_names()
    short = socket.gethostname().lower().split(".")[0]
    assert short in hostnames and f"{short}.local" in hostnames and "localhost" in hostnames
    assert addresses[-1] == "127.0.0.1"
    assert not any(ipaddress.ip_address(a).is_loopback for a in addresses[:-1])
