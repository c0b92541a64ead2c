"""Signed authorizations that the edge writes into every playlist URI.

A URI token binds one resolved media path to one playback session::

    1.<session>.<scope>.<signature>

``session`` is the base64url JSON of the session's claims, shared by every
URI of a playlist. ``scope`` is ``p`` (a playlist), ``k`` (a key or init
segment) or ``s<ms>`` (a media segment starting ``ms`` milliseconds into the
presentation). A segment that is a byte range of a larger file has the scope
``s<ms>r<offset>-<length>``, and an init segment that is one has
``kr<offset>-<length>``. The HMAC-SHA256 signature covers the session, the scope and
the decoded request path, so a token copied to another path, another
content item or another start time does not verify.

The alphabet is base64url, digits and ``.``: a token needs no escaping inside
``URI="..."`` and cannot end a line or start a fragment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import LRUCache
from itsdangerous import BadData, BadSignature, Signer
from itsdangerous.encoding import base64_decode, base64_encode

from shared.tokens import PlaybackClaims

VERSION = "1"
SCOPE_PLAYLIST = "p"
SCOPE_KEY = "k"
SCOPE_SEGMENT = "s"
_KEY_SCOPE = re.compile(r"kr([0-9]{1,19})-([0-9]{1,19})")
_SEGMENT_SCOPE = re.compile(r"s([0-9]{1,15})(?:r([0-9]{1,19})-([0-9]{1,19}))?")


class InvalidUriToken(ValueError):
    """Raised when a URI token is malformed or its signature does not verify."""


@dataclass(frozen=True)
class UriGrant:
    """A verified URI token: the session and what the URI is."""

    claims: PlaybackClaims
    scope: str
    start_ms: int | None
    byte_range: tuple[int, int] | None = None


def _encode_session(claims: PlaybackClaims) -> str:
    fields = [
        claims.session_id,
        claims.content_id,
        claims.viewer_ref,
        claims.expires_at,
        claims.entitlement_version,
        int(claims.entitled),
        claims.preview_seconds,
        claims.key_id,
    ]
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64_encode(raw).decode("ascii")


def _decode_session(text: str) -> PlaybackClaims:
    try:
        fields = json.loads(base64_decode(text))
        sid, cid, ref, exp, version, entitled, preview, key_id = fields
        return PlaybackClaims(
            session_id=str(sid),
            content_id=str(cid),
            viewer_ref=str(ref),
            expires_at=int(exp),
            entitled=bool(entitled),
            entitlement_version=int(version),
            preview_seconds=float(preview),
            key_id=str(key_id),
        )
    except (ValueError, TypeError) as exc:
        raise InvalidUriToken("session part is malformed") from exc


class UriSigner:
    """Mint and verify URI tokens with a list of HMAC secrets.

    The last secret signs; every secret verifies, so secrets rotate by
    appending a new one and dropping the oldest once its tokens expired.
    """

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one URI signing secret is required")
        deriving = Signer(
            list(secrets),
            salt="segmentgate.uri-token",
            sep=".",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )
        # The same keys and signatures as ``deriving``, but each key is derived
        # once here instead of with one more HMAC on every mint and check.
        self._signer = Signer(
            [deriving.derive_key(secret) for secret in deriving.secret_keys],
            sep=".",
            key_derivation="none",
            digest_method=hashlib.sha256,
        )
        # Decoding the session part is the only JSON work on the segment
        # path; a playlist's URIs share one session, so cache by its text.
        self._sessions: LRUCache[str, PlaybackClaims] = LRUCache(maxsize=4096)

    def session_part(self, claims: PlaybackClaims) -> str:
        return _encode_session(claims)

    def mint(self, session_part: str, scope: str, path: str) -> str:
        """Return the token for ``path`` (decoded, absolute) in ``scope``."""
        signed = f"{VERSION}.{session_part}.{scope}"
        signature = self._signer.get_signature(f"{signed}\n{path}").decode("ascii")
        return f"{signed}.{signature}"

    def verify(self, token: str, path: str) -> UriGrant:
        """Check ``token`` for ``path``; raise :class:`InvalidUriToken` if bad."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise InvalidUriToken("token format is not recognised")
        _, session_part, scope, signature = parts
        # Base64 decoders ignore the unused low bits of the last character,
        # so several strings decode to one signature; accept only the one
        # this signer writes, so each grant has exactly one token.
        try:
            canonical = base64_encode(base64_decode(signature)).decode("ascii")
        except BadData:
            canonical = ""
        if canonical != signature:
            raise InvalidUriToken("signature is not in canonical base64url")
        signed = f"{VERSION}.{session_part}.{scope}\n{path}"
        try:
            valid = self._signer.verify_signature(signed, signature)
        except (BadSignature, UnicodeError):
            valid = False
        if not valid:
            raise InvalidUriToken("signature does not match this path")

        claims = self._sessions.get(session_part)
        if claims is None:
            claims = _decode_session(session_part)
            self._sessions[session_part] = claims
        if scope in (SCOPE_PLAYLIST, SCOPE_KEY):
            return UriGrant(claims, scope, None)
        key_match = _KEY_SCOPE.fullmatch(scope)
        if key_match is not None:
            offset, length = key_match.groups()
            return UriGrant(claims, SCOPE_KEY, None, (int(offset), int(length)))
        match = _SEGMENT_SCOPE.fullmatch(scope)
        if match is None:
            raise InvalidUriToken("scope is not recognised")
        start, offset, length = match.groups()
        byte_range = (int(offset), int(length)) if offset is not None else None
        return UriGrant(claims, SCOPE_SEGMENT, int(start), byte_range)


def key_scope(byte_range: tuple[int, int] | None = None) -> str:
    """Return the scope text of a key or init segment, with its byte range."""
    if byte_range is None:
        return SCOPE_KEY
    offset, length = byte_range
    return f"{SCOPE_KEY}r{offset}-{length}"


def segment_scope(start_ms: int, byte_range: tuple[int, int] | None = None) -> str:
    """Return the scope text of a segment: its start and optional byte range."""
    if byte_range is None:
        return f"{SCOPE_SEGMENT}{start_ms}"
    offset, length = byte_range
    return f"{SCOPE_SEGMENT}{start_ms}r{offset}-{length}"
