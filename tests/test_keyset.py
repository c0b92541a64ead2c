from __future__ import annotations

import asyncio

import pytest

from edge.keyset import KeySet, PublicKeyFactory, PyJwtKey
from edge.webcrypto import WebCryptoKey
from shared.keys import SigningKey


async def test_unknown_kids_cost_one_fetch_per_interval() -> None:
    key = SigningKey.generate("EdDSA")
    fetches = 0

    async def fetch() -> dict[str, object]:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.01)
        return {"keys": [key.jwk]}

    keys = KeySet(fetch, refresh_interval=60)
    results = await asyncio.gather(*(keys.get(f"made-up-{i}") for i in range(200)))
    assert results == [None] * 200
    assert fetches == 1
    # A known kid needs no fetch at all.
    assert (await keys.get(key.kid)) is not None
    assert fetches == 1


# The server edge's keys and those of the edge on Workers, whose WebCrypto
# verification itself runs in tests/test_workerd_smoke.py.
@pytest.mark.parametrize("public_key", [PyJwtKey, WebCryptoKey])
async def test_key_set_skips_unusable_entries(public_key: PublicKeyFactory) -> None:
    good = SigningKey.generate("ES256")
    ed25519 = SigningKey.generate("EdDSA")

    async def fetch() -> dict[str, object]:
        return {
            "keys": [
                {**good.jwk, "alg": "HS256"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": "broken",
                    "kid": "bad",
                    "alg": "EdDSA",
                },
                {**ed25519.jwk, "kid": "mismatch", "alg": "ES256"},
                {**good.jwk, "kid": "no-y", "y": None},
                good.jwk,
            ]
        }

    keys = KeySet(fetch, public_key=public_key)
    await keys.refresh()
    assert len(keys) == 1
    assert (await keys.get(good.kid)) is not None
    assert (await keys.get("hmac")) is None
