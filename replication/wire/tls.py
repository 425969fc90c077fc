"""Trusting a box's HTTPS: one CA per link, never the machine's whole trust store.

A store's boxes present certificates signed by the store's own CA. A device learns that CA at pairing
and a box has it in its data dir, so each link trusts exactly the CA it was given: a box on a hijacked
address, or a rogue one with a certificate from any other CA (a public one included), is refused in
the handshake. The host name is checked as well, so a certificate of one box cannot stand in for
another's address.

A fingerprint is the SHA-256 of a certificate's DER, in lowercase hex: what the mDNS TXT ``fp``
carries (the server certificate's) and what a person compares before trusting a CA (the CA's).
"""

from __future__ import annotations

import hashlib
import ssl

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from replication.errors import NeedsPerson


class TrustError(NeedsPerson, ValueError):
    """A CA that cannot be trusted as given: not a certificate, or not the one the person was shown.

    Asking again fetches the same wrong certificate, so a person must look; still a ``ValueError``."""


def fingerprint(cert_pem: bytes) -> str:
    """The first certificate's (a chain starts with the server's own)."""
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise TrustError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def normal_fingerprint(text: str) -> str:
    """As a person types or a QR carries it: ``AB:CD…``, ``ab cd…`` and ``abcd…`` all name one certificate."""
    digits = "".join(c for c in text.lower() if c in "0123456789abcdef")
    stripped = "".join(c for c in text.lower() if not c.isspace() and c != ":")
    if len(digits) != 64 or digits != stripped:
        raise TrustError(f"a SHA-256 fingerprint is 64 hex digits, got {text!r}")
    return digits


def check_ca(ca_pem: bytes, expected_fingerprint: str) -> bytes:
    """``ca_pem`` if it is the certificate the person was shown; it came over plain HTTP, so only the
    fingerprint makes it worth trusting."""
    expected = normal_fingerprint(expected_fingerprint)
    got = fingerprint(ca_pem)
    if got != expected:
        raise TrustError(f"the CA offered has fingerprint {got}, not the {expected} given; do not pair with this box")
    return ca_pem


def pinned_context(ca_pem: bytes | str) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` alone, with the host name checked."""
    text = ca_pem.decode("ascii") if isinstance(ca_pem, bytes) else ca_pem
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=text)
    except ssl.SSLError as exc:
        raise TrustError(f"the CA certificate could not be loaded: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
