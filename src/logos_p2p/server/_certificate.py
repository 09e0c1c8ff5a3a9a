"""The node's TLS certificate: named by the operator, or self-signed and kept.

A ``tls:`` endpoint without ``--tls-cert``/``--tls-key`` uses a self-signed certificate
(ECDSA P-256, 20 years) that the node makes on its first start and keeps beside its
identity key (or in the RPC state directory when it has none), so its fingerprint --
what remote modules pin -- stays the same across restarts. The key is a private file
(:mod:`logos_p2p._private`).
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .. import _private
from .._tls import CERT_NAME, KEY_NAME

log = logging.getLogger("logos_p2p.node")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """The kept self-signed certificate and key in ``directory``, made if missing."""
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if not (cert.exists() and key.exists()):
        private_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logos-p2p node")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=20 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(private_key, hashes.SHA256())
        )
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        if _private.create(key, key_pem):
            cert.unlink(missing_ok=True)  # a certificate of another key would never load
            _private.create(cert, certificate.public_bytes(serialization.Encoding.PEM))
            log.info("made a self-signed TLS certificate in %s", directory)
    _private.read(key)  # a key others can read, or a symlink, is refused
    return cert, key
