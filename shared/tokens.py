"""Playback tokens: short-lived JWTs that the origin issues and edges verify.

A playback token opens one playback session of one content item. Its claims
name the viewer only by an opaque reference and carry the viewer's
entitlement as the origin saw it at issue time, with the entitlement's
version, so an edge can decide without asking the origin until a newer
entitlement event arrives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    # shared.keys imports cryptography, which edges on Workers do not have.
    from shared.keys import SigningKey

ISSUER = "segmentgate-origin"
# Only asymmetric algorithms are ever accepted for the origin's JWTs
# (playback tokens and event batches); each key carries exactly one.
ALLOWED_ALGORITHMS = ("EdDSA", "ES256")
PLAYBACK_AUDIENCE = "segmentgate-edge"
# Edges reject playback tokens that live longer than this, because their
# entitlement records must outlast every token they may have to override.
MAX_TOKEN_LIFETIME = 3600
# How long past its expiry an edge keeps a session's playlist URIs working
# while the viewer stays entitled, so a long or paused film plays to the end.
SESSION_RENEWAL = 6 * 3600
# The query parameter that carries a playback or URI token on media URLs.
TOKEN_PARAM = "sg"


@dataclass(frozen=True)
class PlaybackClaims:
    """The grant of one playback session.

    ``entitled`` and ``entitlement_version`` record the entitlement when the
    token was issued; ``preview_seconds`` bounds the segments a viewer without
    entitlement may fetch, by segment start time.
    """

    session_id: str
    content_id: str
    viewer_ref: str
    expires_at: int
    entitled: bool
    entitlement_version: int
    preview_seconds: float
    # The kid of the key that signed the playback token, set by the edge that
    # verified it; not a claim of the token itself.
    key_id: str = ""

    def to_jwt_claims(self, issued_at: int) -> dict[str, Any]:
        return {
            "iss": ISSUER,
            "aud": PLAYBACK_AUDIENCE,
            "sub": self.viewer_ref,
            "sid": self.session_id,
            "cid": self.content_id,
            "ent": self.entitled,
            "ev": self.entitlement_version,
            "pvw": self.preview_seconds,
            "iat": issued_at,
            "exp": self.expires_at,
        }

    @classmethod
    def from_jwt_claims(cls, claims: dict[str, Any]) -> PlaybackClaims:
        """Build claims from a verified payload; raise ``ValueError`` if malformed."""
        try:
            result = cls(
                session_id=str(claims["sid"]),
                content_id=str(claims["cid"]),
                viewer_ref=str(claims["sub"]),
                expires_at=int(claims["exp"]),
                entitled=bool(claims["ent"]),
                entitlement_version=int(claims["ev"]),
                preview_seconds=float(claims["pvw"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"playback token claims are malformed: {exc}") from None
        if not isinstance(claims["ent"], bool):
            raise ValueError("playback token claim 'ent' must be a boolean")
        return result


def encode_playback_token(claims: PlaybackClaims, key: SigningKey) -> str:
    """Sign ``claims`` as a compact JWT with ``key``."""
    payload = claims.to_jwt_claims(issued_at=int(time.time()))
    return jwt.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
    )
