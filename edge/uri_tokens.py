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

import base64
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadData, Signer
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


# Decoding the session part is the only JSON work on the segment path, and
# a playlist's URIs share one session, so sessions are cached by their text.
# Only the session parts of verified tokens are decoded.
@functools.lru_cache(maxsize=4096)
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
        # once here instead of with one more HMAC on every mint and check,
        # and each HMAC starts from a copy of its keyed state. Newest first:
        # most tokens were signed with it.
        self._macs = [
            hmac.new(deriving.derive_key(secret), digestmod=hashlib.sha256)
            for secret in reversed(deriving.secret_keys)
        ]

    def session_part(self, claims: PlaybackClaims) -> str:
        return _encode_session(claims)

    def mint(self, session_part: str, scope: str, path: str) -> str:
        """Return the token for ``path`` (decoded, absolute) in ``scope``."""
        signed = f"{VERSION}.{session_part}.{scope}"
        signature = _signature(self._macs[0], f"{signed}\n{path}".encode())
        return f"{signed}.{signature.decode('ascii')}"

    def _signed(self, text: str, signature: str) -> bool:
        """Compare ``signature`` with the signature of ``text`` under each key.

        The signature is compared as text, in constant time, so a string in
        another base64 spelling of the same bytes does not verify: each
        grant has exactly one token.
        """
        try:
            message, received = text.encode(), signature.encode("ascii")
        except UnicodeError:
            return False
        for mac in self._macs:
            if hmac.compare_digest(_signature(mac, message), received):
                return True
        return False

    def verify(self, token: str, path: str) -> UriGrant:
        """Check ``token`` for ``path``; raise :class:`InvalidUriToken` if bad."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise InvalidUriToken("token format is not recognised")
        _, session_part, scope, signature = parts
        if not self._signed(f"{VERSION}.{session_part}.{scope}\n{path}", signature):
            if not _canonical(signature):
                raise InvalidUriToken("signature is not in canonical base64url")
            raise InvalidUriToken("signature does not match this path")

        kind, start_ms, byte_range = _parse_scope(scope)
        return UriGrant(_decode_session(session_part), kind, start_ms, byte_range)


# Scopes repeat across sessions (one per segment start), and only the scopes
# of verified tokens are parsed, so they are cached by their text as well.
@functools.lru_cache(maxsize=4096)
def _parse_scope(scope: str) -> tuple[str, int | None, tuple[int, int] | None]:
    """Return a scope's kind, start in milliseconds and byte range."""
    if scope in (SCOPE_PLAYLIST, SCOPE_KEY):
        return scope, None, None
    key_match = _KEY_SCOPE.fullmatch(scope)
    if key_match is not None:
        offset, length = key_match.groups()
        return SCOPE_KEY, None, (int(offset), int(length))
    match = _SEGMENT_SCOPE.fullmatch(scope)
    if match is None:
        raise InvalidUriToken("scope is not recognised")
    start, offset, length = match.groups()
    byte_range = (int(offset), int(length)) if offset is not None else None
    return SCOPE_SEGMENT, int(start), byte_range


def _signature(mac: hmac.HMAC, message: bytes) -> bytes:
    """Return itsdangerous's signature text: unpadded base64url of the HMAC."""
    keyed = mac.copy()
    keyed.update(message)
    return base64.urlsafe_b64encode(keyed.digest()).rstrip(b"=")


def _canonical(signature: str) -> bool:
    # Base64 decoders ignore the unused low bits of the last character, so
    # several strings decode to one signature.
    try:
        return base64_encode(base64_decode(signature)).decode("ascii") == signature
    except (BadData, UnicodeError):
        return False


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
