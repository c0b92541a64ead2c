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


def measure(scale: float = 1.0) -> dict[str, float]:
    """Time each step; ``scale`` shortens the loops (1.0 is the full run)."""
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

    many, few = max(1, round(20_000 * scale)), max(1, round(200 * scale))
    rewrite_time, copy_time = best(rewrite, few), best(copy_lines, many)
    verify_time, hmac_time = best(verify, many), best(bare_hmac, many)
    return {
        "rewrite_media_playlist_us": round(rewrite_time * 1e6, 1),
        "rewrite_vs_line_copy": round(rewrite_time / copy_time, 1),
        "verify_uri_token_us": round(verify_time * 1e6, 2),
        "verify_vs_bare_hmac": round(verify_time / hmac_time, 2),
    }


def main() -> None:
    figures = measure()
    print(
        f"rewrite media playlist  {figures['rewrite_media_playlist_us']:9.1f} us  "
        f"{figures['rewrite_vs_line_copy']:7.1f}x line copy"
    )
    print(
        f"verify URI token        {figures['verify_uri_token_us']:9.1f} us  "
        f"{figures['verify_vs_bare_hmac']:7.1f}x bare HMAC"
    )


if __name__ == "__main__":
    main()
