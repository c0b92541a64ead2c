"""Bearer authentication of admins and viewers.

Viewer tokens are random and stored only as SHA-256 hashes, so a copy of
the store does not let anyone act as a viewer.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from origin.store import viewers
from shared import problems
from shared.problems import Problem

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="segmentgate"'}


@dataclass(frozen=True)
class Viewer:
    viewer_id: str
    viewer_ref: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(request: Request) -> str:
    """Return the bearer token of ``request``; raise 401 if there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            problems.UNAUTHORIZED,
            "send 'Authorization: Bearer <token>'",
            headers=_CHALLENGE,
        )
    return token.strip()


# "status" reads the status page and nothing else.
ADMIN_SCOPES = ("catalog", "keys", "events", "risk", "status")


def parse_admin_tokens(root_token: str, scoped: str) -> dict[str, frozenset[str]]:
    """Map admin tokens to their scopes; ``root_token`` has every scope."""
    tokens = {root_token: frozenset(ADMIN_SCOPES)}
    for item in scoped.split(","):
        if not item.strip():
            continue
        scope, _, token = item.strip().partition(":")
        if scope not in ADMIN_SCOPES or not token:
            raise ValueError(
                f"admin token entry must be 'scope:token', scope one of "
                f"{', '.join(ADMIN_SCOPES)}; got scope {scope!r}"
            )
        tokens[token] = tokens.get(token, frozenset()) | {scope}
    return tokens


def require_scope(
    request: Request, tokens: dict[str, frozenset[str]], scope: str
) -> str:
    """Check the bearer token for ``scope``; return an actor name for audit.

    The actor names the token by a hash prefix, never by the token itself.
    """
    token = bearer_token(request)
    for candidate, scopes in tokens.items():
        if hmac.compare_digest(token.encode(), candidate.encode()):
            if scope not in scopes:
                raise Problem(
                    problems.FORBIDDEN, f"this admin token lacks the '{scope}' scope"
                )
            kind = (
                "root" if len(scopes) == len(ADMIN_SCOPES) else "+".join(sorted(scopes))
            )
            return f"{kind}:{hash_token(token)[:12]}"
    raise Problem(problems.FORBIDDEN, "the admin token is not valid")


def require_admin(request: Request, admin_token: str) -> None:
    token = bearer_token(request)
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise Problem(problems.FORBIDDEN, "the admin token is not valid")


async def require_viewer(request: Request, engine: AsyncEngine) -> Viewer:
    token_hash = hash_token(bearer_token(request))
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(viewers.c.viewer_id, viewers.c.viewer_ref).where(
                    viewers.c.token_hash == token_hash
                )
            )
        ).first()
    if row is None:
        raise Problem(
            problems.UNAUTHORIZED, "the viewer token is not valid", headers=_CHALLENGE
        )
    return Viewer(row.viewer_id, row.viewer_ref)
