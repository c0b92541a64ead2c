"""The decision on every media request: who is asking, and may they have it.

Two kinds of credential arrive in the ``sg`` query parameter:

* a playback token (a JWT from the origin), which opens playlists only;
* a URI token that the edge wrote into a playlist, bound to one path.

A media segment is served when the viewer is entitled, or when it starts
within the session's preview. Keys, init segments and playlists are served
to every valid session, so a preview plays like the full stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from edge.entitlements import EntitlementCache
from edge.keyset import KeySet
from edge.rewriter import TOKEN_PARAM
from edge.upstream import is_playlist
from edge.uri_tokens import (
    SCOPE_PLAYLIST,
    SCOPE_SEGMENT,
    InvalidUriToken,
    UriSigner,
)
from shared.problems import (
    PREVIEW_ENDED,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_MISSING,
    WRONG_CONTENT,
    Problem,
)
from shared.tokens import ISSUER, PLAYBACK_AUDIENCE, PlaybackClaims


@dataclass(frozen=True)
class Access:
    """A granted request: the session and the scope it was granted in."""

    claims: PlaybackClaims
    scope: str
    session_part: str


class Gate:
    """Verify credentials and decide access, without I/O for known keys."""

    def __init__(
        self,
        keys: KeySet,
        signer: UriSigner,
        entitlements: EntitlementCache,
        *,
        leeway_seconds: int = 5,
        max_token_bytes: int = 4096,
    ) -> None:
        self._keys = keys
        self._signer = signer
        self._entitlements = entitlements
        self._leeway = leeway_seconds
        self._max_token_bytes = max_token_bytes

    async def check(self, tokens: list[str], content_id: str, path: str) -> Access:
        """Decide a request for ``path`` (decoded, absolute) of ``content_id``."""
        if not tokens:
            raise Problem(TOKEN_MISSING, f"add the '{TOKEN_PARAM}' query parameter")
        if len(tokens) > 1:
            raise Problem(TOKEN_INVALID, f"more than one '{TOKEN_PARAM}' parameter")
        token = tokens[0]
        if len(token) > self._max_token_bytes:
            raise Problem(TOKEN_INVALID, "token is too long")

        if token.count(".") == 2:
            claims = await self._verify_playback_token(token)
            scope = SCOPE_PLAYLIST
            if not is_playlist(path):
                raise Problem(TOKEN_INVALID, "a playback token opens playlists only")
        else:
            claims, scope = self._verify_uri_token(token, path)
        if claims.content_id != content_id:
            raise Problem(WRONG_CONTENT, f"token is not valid for '{content_id}'")
        return Access(claims, scope, self._signer.session_part(claims))

    async def _verify_playback_token(self, token: str) -> PlaybackClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Problem(TOKEN_INVALID, "playback token is malformed") from None
        key = await self._keys.get(kid) if isinstance(kid, str) and kid else None
        if key is None:
            raise Problem(TOKEN_INVALID, "playback token is signed by an unknown key")
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=PLAYBACK_AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
            return PlaybackClaims.from_jwt_claims(payload)
        except jwt.ExpiredSignatureError:
            raise Problem(TOKEN_EXPIRED, "playback token has expired") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Problem(TOKEN_INVALID, f"playback token is invalid: {exc}") from None

    def _verify_uri_token(self, token: str, path: str) -> tuple[PlaybackClaims, str]:
        try:
            grant = self._signer.verify(token, path)
        except InvalidUriToken as exc:
            raise Problem(TOKEN_INVALID, str(exc)) from None
        if time.time() > grant.claims.expires_at + self._leeway:
            raise Problem(TOKEN_EXPIRED, "the playback session has expired")
        if grant.scope == SCOPE_SEGMENT and grant.start_ms is not None:
            self._check_segment(grant.claims, grant.start_ms)
        return grant.claims, grant.scope

    def _check_segment(self, claims: PlaybackClaims, start_ms: int) -> None:
        if self._entitlements.is_entitled(claims):
            return
        if start_ms < claims.preview_seconds * 1000:
            return
        raise Problem(
            PREVIEW_ENDED,
            f"the preview covers the first {claims.preview_seconds:g} seconds; "
            "buy the content to keep watching",
        )
