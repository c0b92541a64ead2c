"""Measure the edge's per-request work against baselines from the same run.

    python benchmarks/hot_path.py

Prints ratios, not absolute times, so results compare across machines:

* rewriting a 15-segment media playlist against splitting and joining its
  lines unchanged (the least any line-based rewriter must do);
* verifying a segment's URI token against one bare HMAC-SHA256 of the same
  input with the standard library.
"""

from __future__ import annotations

import hashlib
import hmac
import timeit
from pathlib import Path

from edge.rewriter import PlaylistRewriter
from edge.uri_tokens import UriSigner
from shared.tokens import PlaybackClaims

PLAYLIST = (
    Path(__file__).resolve().parent.parent / "media/sample/v360/index.m3u8"
).read_bytes()
SECRET = b"s" * 32
CLAIMS = PlaybackClaims("ps_bench", "sample", "vr_bench", 2_000_000_000, False, 0, 10.0)


def best(statement, number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=7)) / number


def main() -> None:
    signer = UriSigner([SECRET])
    session = signer.session_part(CLAIMS)

    def authorize(uri: str, scope: str) -> str:
        return signer.mint(session, scope, "/sample/v360/" + uri)

    def rewrite() -> bytes:
        return PlaylistRewriter(authorize).rewrite(PLAYLIST)

    def copy_lines() -> bytes:
        return b"\n".join(PLAYLIST.split(b"\n"))

    path = "/sample/v360/seg_007.ts"
    token = signer.mint(session, "s14000", path)
    message = f"{token.rsplit('.', 1)[0]}\n{path}".encode()

    def verify() -> object:
        return signer.verify(token, path)

    def bare_hmac() -> bytes:
        return hmac.new(SECRET, message, hashlib.sha256).digest()

    rewrite_time, copy_time = best(rewrite, 200), best(copy_lines, 20_000)
    verify_time, hmac_time = best(verify, 20_000), best(bare_hmac, 20_000)
    print(
        f"rewrite media playlist  {rewrite_time * 1e6:9.1f} us  "
        f"{rewrite_time / copy_time:7.1f}x line copy"
    )
    print(
        f"verify URI token        {verify_time * 1e6:9.1f} us  "
        f"{verify_time / hmac_time:7.1f}x bare HMAC"
    )


if __name__ == "__main__":
    main()
