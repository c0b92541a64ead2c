"""Asymmetric signing keys and their JSON Web Key form.

The origin signs playback tokens and event batches with a private key; edges
hold only the public half, published as a JWK set. Key ids are RFC 7638
thumbprints, so a ``kid`` names exactly one public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key(algorithm: str = "EdDSA") -> PrivateKey:
    """Create a new private key for ``algorithm`` (``EdDSA`` or ``ES256``)."""
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def public_jwk(private_key: PrivateKey, algorithm: str) -> dict[str, Any]:
    """Return the public JWK of ``private_key`` with ``kid``, ``alg`` and ``use``."""
    public = private_key.public_key()
    if algorithm == "EdDSA":
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
        members = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    else:
        jwk = json.loads(ECAlgorithm.to_jwk(public))
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    # RFC 7638: the thumbprint hashes the required members, sorted, no spaces.
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {**members, "kid": kid, "alg": algorithm, "use": "sig"}


def private_key_to_pem(private_key: PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("signing key must be Ed25519 or an EC P-256 key")
    return key


@dataclass(frozen=True)
class SigningKey:
    """A private key with its algorithm and public JWK."""

    private_key: PrivateKey = field(repr=False)
    algorithm: str
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    @classmethod
    def generate(cls, algorithm: str = "EdDSA") -> SigningKey:
        private_key = generate_private_key(algorithm)
        return cls(private_key, algorithm, public_jwk(private_key, algorithm))

    @classmethod
    def from_pem(cls, pem: bytes, algorithm: str) -> SigningKey:
        private_key = private_key_from_pem(pem)
        return cls(private_key, algorithm, public_jwk(private_key, algorithm))
