"""TLS 1.3 for modules on other machines: the contexts both ends use, and fingerprints.

A ``tls:HOST:PORT`` endpoint is the TCP endpoint inside TLS 1.3 (stdlib :mod:`ssl`):

1. TLS handshake. The client checks the node's certificate: pinned by its
   *fingerprint* (``sha256:`` and the hex SHA-256 of the certificate's DER bytes, as
   ``logos-p2p info`` and the node's ready line print it), or, when no fingerprint is
   given, against a CA file with the hostname checked. With ``--tls-client-certs`` the
   node asks for a client certificate and admits only those in that file.
2. Inside TLS, the token exchange of :mod:`logos_p2p._auth` (version 1), unchanged --
   or, on an endpoint that admits clients by certificate, the node's hello carries
   version 2: the certificate was the proof, no token is asked.
3. Cap'n Proto RPC, on the same TLS connection.

Because the token proof runs inside TLS and the client has verified the node first,
a relay cannot pass one node's proof on to another, and nothing after the handshake
is readable or writable on the path. Plain Python: the client imports it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from pathlib import Path

from .errors import AuthenticationFailed, InvalidArgument

FINGERPRINT_ENV = "LOGOS_P2P_FINGERPRINT"
CA_ENV = "LOGOS_P2P_TLS_CA"
PREFIX = "sha256:"
CERT_NAME, KEY_NAME = "tls-cert.pem", "tls-key.pem"  # a node's self-signed pair, in its state directory


def fingerprint(der: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER bytes."""
    return PREFIX + hashlib.sha256(der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """A fingerprint as :func:`fingerprint` spells it, from ``sha256:…`` (colons between
    bytes and upper case allowed, as ``openssl x509 -fingerprint`` prints it)."""
    value = text.strip()
    if value.lower().startswith(PREFIX):
        value = value[len(PREFIX) :]
    value = value.replace(":", "").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidArgument(f"not a sha256 certificate fingerprint: {text!r}")
    return PREFIX + value


def file_fingerprint(path: Path) -> str:
    """The fingerprint of the first certificate in a PEM file."""
    return fingerprint(ssl.PEM_cert_to_DER_cert(path.read_text()))


def pem_certificates(path: Path) -> list[str]:
    """The PEM certificates in ``path``, each as its own text."""
    text, out, end = path.read_text(), [], "-----END CERTIFICATE-----"
    while (start := text.find("-----BEGIN CERTIFICATE-----")) != -1:
        stop = text.find(end, start)
        if stop == -1:
            break
        out.append(text[start : stop + len(end)] + "\n")
        text = text[stop + len(end) :]
    return out


def _tls13(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


# -- the node ---------------------------------------------------------------------------------


def server_context(cert: Path, key: Path, client_certs: Path | None = None) -> tuple[ssl.SSLContext, set[str]]:
    """The node's context, and the fingerprints of the client certificates it admits
    (empty: no client certificate is asked for).

    Python's ssl cannot accept a certificate by its fingerprint alone, so the allowed
    client certificates are loaded as the only trust anchors (a self-signed certificate
    then verifies as itself) and each client's fingerprint is checked after the handshake.
    """
    ctx = _tls13(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    allowed: set[str] = set()
    if client_certs is not None:
        pems = pem_certificates(client_certs)
        if not pems:
            raise InvalidArgument(f"{client_certs} holds no PEM certificate")
        ctx.load_verify_locations(cadata="".join(pems))
        ctx.verify_mode = ssl.CERT_REQUIRED
        allowed = {fingerprint(ssl.PEM_cert_to_DER_cert(pem)) for pem in pems}
    return ctx, allowed


def check_client(ssl_object: ssl.SSLObject | None, allowed: set[str]) -> str:
    """The fingerprint of an admitted client's certificate ("" when none is asked for)."""
    if not allowed:
        return ""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    seen = fingerprint(der) if der else ""
    if seen not in allowed:
        raise AuthenticationFailed(f"client certificate {seen or '(none)'} is not one this node admits")
    return seen


# -- the client -------------------------------------------------------------------------------


def client_context(
    pinned: str | None, ca_file: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client's context: ``pinned`` (a fingerprint, checked by :func:`check_node` after the
    handshake) or ``ca_file`` (chain and hostname checked in the handshake); ``cert`` and
    ``key`` for a node that admits clients by certificate."""
    if pinned is None and ca_file is None:
        raise AuthenticationFailed(
            "a tls: endpoint needs the node's certificate fingerprint (fingerprint=..., or "
            f"${FINGERPRINT_ENV}; `logos-p2p info` on the node prints it) or a CA file (tls_ca=..., ${CA_ENV})"
        )
    ctx = _tls13(ssl.PROTOCOL_TLS_CLIENT)
    if pinned is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin is the check, right after the handshake
    else:
        ctx.load_verify_locations(cafile=ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def check_node(ssl_object: ssl.SSLObject | None, pinned: str | None) -> None:
    """Refuse a node whose certificate is not the pinned one."""
    if pinned is None:
        return
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    seen = fingerprint(der) if der else ""
    if not hmac.compare_digest(seen, pinned):
        raise AuthenticationFailed(
            f"the node's certificate is {seen or '(none)'}, not the pinned {pinned}: "
            "another server answers at this address (or the node's certificate changed)"
        )


def client_pin(given: str | None) -> str | None:
    """The fingerprint a client pins: given, else ``$LOGOS_P2P_FINGERPRINT``; None if neither."""
    text = given if given is not None else os.environ.get(FINGERPRINT_ENV) or None
    return parse_fingerprint(text) if text is not None else None


def client_ca(given: str | Path | None) -> Path | None:
    text = given if given is not None else os.environ.get(CA_ENV) or None
    return Path(text) if text is not None else None
