"""The gate keeps verified playback tokens, but never past a revoke or expiry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from edge.entitlements import EntitlementCache
from edge.gate import Credentials, Gate
from edge.keyset import KeySet
from edge.uri_tokens import UriSigner
from shared.keys import SigningKey
from shared.problems import Problem
from shared.tokens import PlaybackClaims, encode_playback_token

PLAYLIST = "/film/index.m3u8"


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
async def keys(signing_key: SigningKey) -> KeySet:
    async def fetch() -> dict[str, Any]:
        return {"keys": [signing_key.jwk]}

    key_set = KeySet(fetch)
    await key_set.refresh()
    return key_set


@pytest.fixture
def gate(keys: KeySet) -> Gate:
    return Gate(
        keys, UriSigner([b"s" * 32]), EntitlementCache(7200, 100), leeway_seconds=0
    )


def _token(key: SigningKey, lifetime: int = 600) -> str:
    claims = PlaybackClaims(
        "ps_cache", "film", "vr_cache", int(time.time()) + lifetime, False, 0, 10.0
    )
    return encode_playback_token(claims, key)


async def _check(gate: Gate, token: str) -> str:
    access = await gate.check(Credentials(bearer=token), "film", PLAYLIST)
    return access.claims.session_id


async def test_cached_token_still_opens(gate: Gate, signing_key: SigningKey) -> None:
    token = _token(signing_key)
    assert await _check(gate, token) == "ps_cache"
    assert await _check(gate, token) == "ps_cache"


async def test_revoked_key_ends_cached_token(
    gate: Gate, keys: KeySet, signing_key: SigningKey
) -> None:
    token = _token(signing_key)
    await _check(gate, token)
    keys.remove(signing_key.kid)
    with pytest.raises(Problem) as raised:
        await _check(gate, token)
    assert raised.value.problem_type.slug == "token-expired"


async def test_expired_token_not_served_from_cache(
    gate: Gate, signing_key: SigningKey
) -> None:
    token = _token(signing_key, lifetime=2)
    await _check(gate, token)
    time.sleep(3.1)
    with pytest.raises(Problem) as raised:
        await _check(gate, token)
    assert raised.value.problem_type.slug == "token-expired"


async def test_tampered_token_not_matched(gate: Gate, signing_key: SigningKey) -> None:
    token = _token(signing_key)
    await _check(gate, token)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    with pytest.raises(Problem) as raised:
        await _check(gate, f"{header}.{payload}.{flipped}")
    assert raised.value.problem_type.slug == "token-invalid"
