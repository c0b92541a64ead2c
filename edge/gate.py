"""The decision on every media request: who is asking, and may they have it.

Two kinds of credential reach the gate:

* a playback token, a JWT from the origin, in the ``sg`` query parameter, an
  ``Authorization: Bearer`` header or a ``/_sg/<token>/`` path prefix;
* a URI token that the edge wrote into a playlist, in the ``sg`` parameter,
  bound to one path.

A playback token opens every playlist of its content item, and everything
else only while the viewer is entitled. A URI token opens its one path: a
media segment when the viewer is entitled or the segment starts within the
session's preview, and keys, init segments and playlists for every session,
so a preview plays like the full stream.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace

import jwt
from cachetools import LRUCache

from edge.entitlements import EntitlementCache, EntitlementState
from edge.keyset import KeySet, KeysUnavailable, PublicKey
from edge.origin_link import OriginLink
from edge.policies import Policy, PolicyCache
from edge.revalidating import RevalidatingCache
from edge.upstream import is_playlist
from edge.uri_tokens import (
    SCOPE_KEY,
    SCOPE_PLAYLIST,
    SCOPE_SEGMENT,
    InvalidUriToken,
    UriGrant,
    UriSigner,
)
from shared.problems import (
    CONTENT_WITHDRAWN,
    ORIGIN_UNREACHABLE,
    PREVIEW_ENDED,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MISSING,
    WRONG_CONTENT,
    Problem,
)
from shared.tokens import ISSUER, PLAYBACK_AUDIENCE, TOKEN_PARAM, PlaybackClaims

# Both token formats use base64url and dots only. Anything else is rejected
# before parsing, so no decoder receives percent-encodings or control bytes.
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_\-.]+")
# Verified playback tokens kept, for players that send the token with every
# request (bearer header or path prefix) and for playlist reloads.
VERIFIED_TOKENS = 8192
# The scope of a request opened by a playback token rather than a URI token.
SCOPE_SESSION = "session"


@dataclass(frozen=True)
class Credentials:
    """The tokens one request carries, as the transports delivered them."""

    query: tuple[str, ...] = ()
    bearer: str | None = None
    path: str | None = None
    # The Range header, which a preview's byte-range segment must respect.
    range: str | None = None


@dataclass(frozen=True)
class Access:
    """A granted request: the session and the scope it was granted in."""

    claims: PlaybackClaims
    scope: str
    session_part: str
    # Whether only the grant's byte range may be read: conditions that would
    # turn a range request into a full response (If-Range) must be dropped.
    range_bound: bool = False


class Gate:
    """Verify credentials and decide access, without I/O for known keys.

    ``renewal_seconds`` lets a URI token outlive its session's expiry while
    the viewer stays entitled, so a long film or a paused one plays on; a
    revocation ends it at once. ``max_token_lifetime`` rejects playback
    tokens issued for longer than the edge's entitlement records last.

    With ``policies`` the content's current policy (withdrawn, free, preview
    length, offline mode) overrides what the token recorded. With ``link``
    an entitled viewer is served while the origin is silent only within the
    grace period, or after it for content whose offline mode is ``open``.
    """

    def __init__(
        self,
        keys: KeySet,
        signer: UriSigner,
        entitlements: EntitlementCache,
        *,
        policies: PolicyCache | None = None,
        link: OriginLink | None = None,
        lookups: RevalidatingCache[tuple[str, str], EntitlementState] | None = None,
        leeway_seconds: int = 5,
        max_token_bytes: int = 4096,
        renewal_seconds: float = 0.0,
        max_token_lifetime: float = 3600.0,
    ) -> None:
        self._keys = keys
        self._signer = signer
        self._entitlements = entitlements
        self._policies = policies
        self._link = link
        self._lookups = lookups
        self._leeway = leeway_seconds
        self._max_token_bytes = max_token_bytes
        self._renewal = renewal_seconds
        self._max_lifetime = max_token_lifetime
        # Playback tokens already verified, with the key object that verified
        # them: a hit skips parsing and the Ed25519 check, but only while that
        # same key is still loaded and the token has not expired.
        self._verified: LRUCache[str, tuple[PlaybackClaims, PublicKey]] = LRUCache(
            maxsize=VERIFIED_TOKENS
        )

    async def check(
        self, credentials: Credentials, content_id: str, path: str
    ) -> Access:
        """Decide a request for ``path`` (decoded, absolute) of ``content_id``."""
        if len(credentials.query) > 1:
            raise Problem(TOKEN_INVALID, f"more than one '{TOKEN_PARAM}' parameter")
        policies = self._policies
        policy = await policies.get(content_id) if policies is not None else None
        if policy is not None and policy.withdrawn:
            raise Problem(CONTENT_WITHDRAWN, f"'{content_id}' is no longer available")
        token = credentials.query[0] if credentials.query else None
        if token is not None and token.count(".") == 3:
            self._check_shape(token)
            claims, scope, range_bound = await self._verify_uri_token(
                token, path, credentials.range, policy
            )
            # The verified token carries the session part that the signer
            # would encode again from these claims.
            session_part = token.split(".", 2)[1]
        else:
            session_token = token or credentials.bearer or credentials.path
            if session_token is None:
                raise Problem(
                    TOKEN_MISSING,
                    f"add the '{TOKEN_PARAM}' query parameter or a bearer token",
                )
            self._check_shape(session_token)
            claims = await self._verify_playback_token(session_token)
            scope = self._session_scope(claims, path, policy)
            range_bound = False
            session_part = self._signer.session_part(claims)
        if claims.content_id != content_id:
            raise Problem(WRONG_CONTENT, f"token is not valid for '{content_id}'")
        return Access(claims, scope, session_part, range_bound)

    def _check_shape(self, token: str) -> None:
        if len(token) > self._max_token_bytes:
            raise Problem(TOKEN_INVALID, "token is too long")
        if not _TOKEN_ALPHABET.fullmatch(token):
            raise Problem(TOKEN_INVALID, "token contains characters outside base64url")

    def _session_scope(
        self, claims: PlaybackClaims, path: str, policy: Policy | None
    ) -> str:
        if is_playlist(path):
            return SCOPE_PLAYLIST
        if self._entitled(claims, policy, strict=True):
            return SCOPE_SESSION
        raise Problem(
            PREVIEW_ENDED,
            "a playback token opens segments and keys only for an entitled "
            "viewer; preview sessions use the URIs of the served playlist",
        )

    def _entitled(
        self, claims: PlaybackClaims, policy: Policy | None, *, strict: bool
    ) -> bool:
        """Decide whether the viewer may watch in full, right now.

        With ``strict``, an entitlement that cannot be trusted because the
        origin has been silent past the grace period raises 503 for content
        that fails closed; otherwise it counts as not entitled.
        """
        if policy is not None and policy.free:
            return True
        if not self._entitlements.is_entitled(claims):
            return False
        link = self._link
        if link is None or not link.degraded:
            return True
        if link.within_grace():
            link.count_degraded("grace")
            return True
        offline = policy.offline if policy is not None else "closed"
        if offline == "open":
            link.count_degraded("open")
            return True
        link.count_degraded("closed")
        if not strict:
            return False
        raise Problem(
            ORIGIN_UNREACHABLE,
            "the edge cannot confirm entitlements with the origin; retry later",
            headers={"Retry-After": "30"},
        )

    async def _verify_playback_token(self, token: str) -> PlaybackClaims:
        cached = self._verified.get(token)
        if cached is not None:
            claims, key = cached
            fresh = time.time() < claims.expires_at + self._leeway
            if fresh and self._keys.loaded(claims.key_id) is key:
                return claims
            del self._verified[token]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Problem(TOKEN_INVALID, "playback token is malformed") from None
        if isinstance(kid, str) and self._keys.is_revoked(kid):
            raise Problem(
                TOKEN_EXPIRED, "the key that signed this token was revoked; renew it"
            )
        # The kid is only ever a dictionary key here, never a path or URL.
        try:
            key = await self._keys.get(kid) if isinstance(kid, str) and kid else None
        except KeysUnavailable:
            raise Problem(
                ORIGIN_UNREACHABLE,
                "the signing key is unknown and the origin cannot be reached",
                headers={"Retry-After": "30"},
            ) from None
        if key is None:
            if self._link is not None and self._link.degraded:
                # The key may be new: the origin cannot be asked right now.
                raise Problem(
                    ORIGIN_UNREACHABLE,
                    "the signing key is unknown and the origin cannot be reached",
                    headers={"Retry-After": "30"},
                )
            raise Problem(TOKEN_INVALID, "playback token is signed by an unknown key")
        try:
            payload = await key.decode(
                token,
                audience=PLAYBACK_AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                require=["exp", "iat", "sub", "aud", "iss"],
            )
            claims = replace(PlaybackClaims.from_jwt_claims(payload), key_id=kid)
        except jwt.ExpiredSignatureError:
            raise Problem(TOKEN_EXPIRED, "playback token has expired") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Problem(TOKEN_INVALID, f"playback token is invalid: {exc}") from None
        if claims.expires_at - int(payload["iat"]) > self._max_lifetime:
            raise Problem(
                TOKEN_INVALID,
                f"playback token lives longer than {self._max_lifetime:g} seconds",
            )
        self._verified[token] = (claims, key)
        return claims

    async def _verify_uri_token(
        self, token: str, path: str, range_header: str | None, policy: Policy | None
    ) -> tuple[PlaybackClaims, str, bool]:
        try:
            grant = self._signer.verify(token, path)
        except InvalidUriToken as exc:
            raise Problem(TOKEN_INVALID, str(exc)) from None
        if grant.claims.key_id and self._keys.is_revoked(grant.claims.key_id):
            raise Problem(
                TOKEN_EXPIRED,
                "the key behind this playback session was revoked; start a new one",
            )
        # Only a session past its expiry needs the renewal rules.
        if time.time() > grant.claims.expires_at + self._leeway:
            await self._check_session_expiry(grant.claims, policy)
        range_bound = False
        if grant.scope == SCOPE_SEGMENT:
            range_bound = self._check_segment(grant, range_header, policy)
        elif grant.scope == SCOPE_KEY and grant.byte_range is not None:
            range_bound = self._check_init_range(grant, range_header, policy)
        return grant.claims, grant.scope, range_bound

    def _check_init_range(
        self, grant: UriGrant, range_header: str | None, policy: Policy | None
    ) -> bool:
        """Let a preview read an init segment's byte range, and nothing more."""
        assert grant.byte_range is not None
        if self._entitled(grant.claims, policy, strict=False):
            return False
        if _range_within(range_header, grant.byte_range):
            return True
        raise Problem(
            PREVIEW_ENDED,
            "a preview reads only the byte range its playlist lists for this "
            "init segment; send a Range header inside it",
        )

    async def _check_session_expiry(
        self, claims: PlaybackClaims, policy: Policy | None
    ) -> None:
        overdue = time.time() - (claims.expires_at + self._leeway)
        if overdue <= 0:
            return
        if overdue <= self._renewal and self._lookups is not None:
            # Renewing past the token's lifetime: check with the origin too, at
            # most once per policy_ttl (a minute by default) per viewer and
            # content, since the lookup cache is fresh that long.
            key = (claims.viewer_ref, claims.content_id)
            state = await self._lookups.get(key)
            if state is not None:
                self._entitlements.record(*key, state)
        if overdue <= self._renewal and self._entitled(claims, policy, strict=False):
            return
        raise Problem(TOKEN_EXPIRED, "the playback session has expired")

    def _check_segment(
        self, grant: UriGrant, range_header: str | None, policy: Policy | None
    ) -> bool:
        """Allow a segment or raise; return whether only its range may be read."""
        claims = grant.claims
        preview_seconds = (
            policy.preview_seconds if policy is not None else claims.preview_seconds
        )
        start_ms = grant.start_ms
        if start_ms is not None and start_ms < preview_seconds * 1000:
            # A preview segment needs no entitlement, so the origin's state
            # does not matter, unless it is a byte range read past its end.
            byte_range = grant.byte_range
            if byte_range is None:
                return False
            if _range_within(range_header, byte_range):
                return not self._entitled(claims, policy, strict=False)
            if self._entitled(claims, policy, strict=False):
                return False
            raise Problem(
                PREVIEW_ENDED,
                "a preview reads only the byte range its playlist lists for this "
                "segment; send a Range header inside it",
            )
        if self._entitled(claims, policy, strict=True):
            return False
        raise Problem(
            PREVIEW_ENDED,
            f"the preview covers the first {preview_seconds:g} seconds; "
            "buy the content to keep watching",
        )


_SINGLE_RANGE = re.compile(r"bytes=([0-9]{1,19})-([0-9]{1,19})")


def _range_within(range_header: str | None, byte_range: tuple[int, int]) -> bool:
    """Return whether a single ``bytes=a-b`` range lies inside ``byte_range``."""
    if range_header is None:
        return False
    match = _SINGLE_RANGE.fullmatch(range_header.strip())
    if match is None:
        return False
    first, last = int(match.group(1)), int(match.group(2))
    offset, length = byte_range
    return offset <= first <= last < offset + length
