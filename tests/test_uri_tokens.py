from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import Signer

from edge.uri_tokens import InvalidUriToken, UriSigner
from shared.tokens import PlaybackClaims

CLAIMS = PlaybackClaims("ps_1", "sample", "vr_1", 2_000_000_000, False, 3, 10.0)
OLD, NEW = b"o" * 32, b"n" * 32


def test_round_trip_keeps_claims_scope_and_start() -> None:
    signer = UriSigner([NEW])
    token = signer.mint(signer.session_part(CLAIMS), "s4000", "/sample/v180/seg_002.ts")
    grant = signer.verify(token, "/sample/v180/seg_002.ts")
    assert grant.claims == CLAIMS
    assert (grant.scope, grant.start_ms) == ("s", 4000)


def test_token_is_bound_to_its_path() -> None:
    signer = UriSigner([NEW])
    token = signer.mint(signer.session_part(CLAIMS), "k", "/sample/keys/v360.key")
    with pytest.raises(InvalidUriToken):
        signer.verify(token, "/sample/keys/other.key")


def test_secrets_rotate_by_appending() -> None:
    old = UriSigner([OLD])
    token = old.mint(old.session_part(CLAIMS), "p", "/sample/master.m3u8")
    rotated = UriSigner([OLD, NEW])
    assert rotated.verify(token, "/sample/master.m3u8").claims == CLAIMS
    fresh = rotated.mint(rotated.session_part(CLAIMS), "p", "/sample/master.m3u8")
    with pytest.raises(InvalidUriToken):
        old.verify(fresh, "/sample/master.m3u8")
    with pytest.raises(InvalidUriToken):
        UriSigner([NEW]).verify(token, "/sample/master.m3u8")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "1",
        "1.a.p",
        "2.a.p.b",
        "1.a.zz.b",
        "1..p.",
        "1.a.s-5.b",
        "1.a.s.b",
        "1.a.p.b.c",
    ],
)
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidUriToken):
        UriSigner([NEW]).verify(token, "/sample/master.m3u8")


def test_forged_session_with_valid_signature_elsewhere_fails() -> None:
    signer = UriSigner([NEW])
    token = signer.mint(signer.session_part(CLAIMS), "s0", "/sample/v180/seg_000.ts")
    entitled = PlaybackClaims("ps_1", "sample", "vr_1", 2_000_000_000, True, 3, 10.0)
    version, _, scope, signature = token.split(".")
    forged = f"{version}.{signer.session_part(entitled)}.{scope}.{signature}"
    with pytest.raises(InvalidUriToken):
        signer.verify(forged, "/sample/v180/seg_000.ts")


@given(
    session_id=st.text(min_size=1, max_size=40),
    start=st.integers(min_value=0, max_value=10**9),
)
def test_tokens_need_no_escaping_in_playlists(session_id: str, start: int) -> None:
    signer = UriSigner([NEW])
    claims = PlaybackClaims(session_id, "sample", "vr", 1, False, 0, 0.0)
    token = signer.mint(signer.session_part(claims), f"s{start}", "/sample/a.ts")
    assert re.fullmatch(r"[A-Za-z0-9_\-.]+", token)


def test_only_the_canonical_signature_verifies() -> None:
    signer = UriSigner([NEW])
    token = signer.mint(signer.session_part(CLAIMS), "p", "/sample/master.m3u8")
    head, signature = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The last of 43 characters carries 4 bits; the 2 low bits are unused.
    index = alphabet.index(signature[-1])
    twin = alphabet[index ^ 1]
    with pytest.raises(InvalidUriToken):
        signer.verify(f"{head}.{signature[:-1]}{twin}", "/sample/master.m3u8")
    assert signer.verify(token, "/sample/master.m3u8").claims == CLAIMS


def test_signature_unchanged_by_key_caching() -> None:
    # Edges of one fleet may run different versions during a rollout: tokens
    # must keep itsdangerous's HMAC-derived signature for every secret.
    secrets = [b"o" * 32, b"n" * 32]
    signer = UriSigner(secrets)
    claims = PlaybackClaims("ps_key", "film", "vr_key", 2_000_000_000, False, 0, 10.0)
    signed = f"1.{signer.session_part(claims)}.s0"
    path = "/film/seg_000.ts"
    for count in range(1, len(secrets) + 1):
        reference = Signer(
            secrets[:count],
            salt="segmentgate.uri-token",
            sep=".",
            key_derivation="hmac",
            digest_method=hashlib.sha256,
        )
        signature = reference.get_signature(signed + "\n" + path).decode()
        token = f"{signed}.{signature}"
        assert signer.verify(token, path).start_ms == 0
    assert signer.mint(signer.session_part(claims), "s0", path) == token
