"""The origin's public keys verified with the Workers runtime's WebCrypto.

Pyodide in workerd has no ``cryptography`` package, which PyJWT needs for
EdDSA and ES256, so on Workers the edge checks a JWT's signature with
``crypto.subtle.verify`` through Pyodide's JavaScript FFI. PyJWT then
checks the claims (``exp``, ``iat``, ``aud``, ``iss``, required claims) as
on a server edge. The module imports ``js`` only when it verifies, so it
loads outside Workers too.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

import jwt
from jwt.utils import base64url_decode

# Per JWS algorithm: the JWK members it needs, the key's kty and crv, and
# WebCrypto's parameters for importKey and for verify. A JWS ES256
# signature is r || s, the format WebCrypto's ECDSA verify takes.
# NOTE: tests/test_workerd_smoke.py verifies EdDSA tokens only, because the
# test origin signs with Ed25519. No test runs the ES256 path in workerd.
_ALGORITHMS: dict[
    str, tuple[tuple[str, ...], str, str, dict[str, str], dict[str, str]]
] = {
    "EdDSA": (
        ("x",),
        "OKP",
        "Ed25519",
        {"name": "Ed25519"},
        {"name": "Ed25519"},
    ),
    "ES256": (
        ("x", "y"),
        "EC",
        "P-256",
        {"name": "ECDSA", "namedCurve": "P-256"},
        {"name": "ECDSA", "hash": "SHA-256"},
    ),
}
# Ed25519 public keys and P-256 coordinates are both 32 bytes long.
_COORDINATE_BYTES = 32


class WebCryptoKey:
    """A public key that the runtime's ``crypto.subtle`` verifies."""

    def __init__(self, jwk: dict[str, Any]) -> None:
        algorithm = jwk.get("alg")
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"unsupported JWK algorithm {algorithm!r}")
        members, kty, crv, self._import_params, self._verify_params = _ALGORITHMS[
            algorithm
        ]
        if jwk.get("kty") != kty or jwk.get("crv") != crv:
            raise ValueError(f"an {algorithm} JWK must have kty {kty} and crv {crv}")
        for member in members:
            _check_coordinate(jwk.get(member), member)
        self.algorithm = algorithm
        self._jwk = {"kty": kty, "crv": crv, **{m: jwk[m] for m in members}}
        # Imported on first use, because importKey is asynchronous.
        self._crypto_key: Any = None

    async def decode(
        self,
        token: str,
        *,
        audience: str,
        issuer: str,
        leeway: float,
        require: Sequence[str],
    ) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != self.algorithm:
            raise jwt.InvalidAlgorithmError("The specified alg value is not allowed")
        # The signing input is what PyJWT would verify: all before the last dot.
        signing_input, _, signature_part = token.rpartition(".")
        try:
            signature = base64url_decode(signature_part)
        except (binascii.Error, ValueError):
            raise jwt.DecodeError("Invalid crypto padding") from None
        if not await self._verify(signing_input.encode("ascii"), signature):
            raise jwt.InvalidSignatureError("Signature verification failed")
        # The signature is verified, so PyJWT only checks the claims.
        claims: dict[str, Any] = jwt.decode(
            token,
            options={
                "verify_signature": False,
                "verify_exp": True,
                "verify_nbf": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
                "verify_sub": True,
                "verify_jti": True,
                "require": list(require),
            },
            audience=audience,
            issuer=issuer,
            leeway=leeway,
        )
        return claims

    async def _verify(self, message: bytes, signature: bytes) -> bool:
        from js import Object, crypto  # provided by the Workers runtime
        from pyodide.ffi import JsException, to_js

        def js_object(value: Any) -> Any:
            return to_js(value, dict_converter=Object.fromEntries)

        subtle = crypto.subtle
        if self._crypto_key is None:
            try:
                self._crypto_key = await subtle.importKey(
                    "jwk",
                    js_object(self._jwk),
                    js_object(self._import_params),
                    False,
                    js_object(["verify"]),
                )
            except JsException as exc:
                raise jwt.InvalidKeyError(
                    f"the runtime rejected the key: {exc}"
                ) from None
        try:
            verified = await subtle.verify(
                js_object(self._verify_params),
                self._crypto_key,
                to_js(signature),
                to_js(message),
            )
        except JsException:
            # A signature of the wrong length, for instance.
            return False
        return verified is True


def _check_coordinate(value: object, member: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"JWK member {member!r} is missing")
    try:
        decoded = base64url_decode(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"JWK member {member!r} is not base64url") from None
    if len(decoded) != _COORDINATE_BYTES:
        raise ValueError(f"JWK member {member!r} must be {_COORDINATE_BYTES} bytes")
