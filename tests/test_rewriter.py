"""The playlist rewriter on real playlists from public player projects.

Each case in ``cases/playlists`` comes with the correct output, written with
the placeholder ``tok=TOKEN``; here the placeholder becomes ``sg=TOKEN``.
Three checks per case: the number of inserted tokens, byte preservation
(the only differences are the insertions) and equality with the expected
output.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.paths import resolve_uri
from edge.rewriter import (
    InvalidPlaylist,
    PlaylistRewriter,
    PlaylistTooLarge,
    append_token,
)
from edge.uri_tokens import SCOPE_KEY, SCOPE_PLAYLIST

CASES = Path(__file__).parent / "cases" / "playlists"
DEFAULT_URL = "https://media.example.com/media/playlist.m3u8"

# name: (inserted tokens, playlist URL, gated hosts besides the URL's own)
CASE_TABLE: dict[str, tuple[int, str, frozenset[str]]] = {
    "globo-relative-key-dotdot": (
        6,
        "https://media.example.com/a/b/c/playlist.m3u8",
        frozenset(),
    ),
    "globo-llhls-delta-skip": (
        35,
        "https://example.com/2M/waitForMSN.php",
        frozenset(),
    ),
    "globo-akamai-query-slash": (
        3,
        "https://media.example.com/live/testvideo.m3u8",
        frozenset(),
    ),
    "globo-content-steering": (
        5,
        "https://media.example.com/content/videos/video12/master.m3u8",
        frozenset(),
    ),
    "globo-iframe-byterange": (3, DEFAULT_URL, frozenset()),
    "globo-map-key-uri-first": (6, DEFAULT_URL, frozenset()),
    "globo-iptv-token-collision": (
        1,
        "http://str00.iptv.domain/list.m3u8",
        frozenset(),
    ),
    "globo-elemental-scte-asset": (11, DEFAULT_URL, frozenset()),
    "globo-live-window-pdt-discontinuity": (8, DEFAULT_URL, frozenset()),
    "hlsjs-media-paren-rootrel-comment": (5, DEFAULT_URL, frozenset()),
    "hlsjs-unicode-space-uri": (2, DEFAULT_URL, frozenset()),
    "hlsjs-delta-skip-tab-hash": (19, DEFAULT_URL, frozenset()),
    "hlsjs-clear-enc-clear": (12, DEFAULT_URL, frozenset()),
    "videojs-define-queryparam": (
        2,
        "https://media.example.com/v/master.m3u8?token=abc",
        frozenset(),
    ),
    "grafov-multidrm-skd-data-uris": (10, DEFAULT_URL, frozenset()),
    "grafov-master-alt-video": (13, DEFAULT_URL, frozenset()),
    "shaka-aes256-per-segment-keys": (12, DEFAULT_URL, frozenset()),
    "streamrr-mux-llhls-signed": (
        5,
        "https://stream.mux.com/S9Kl4/rendition.m3u8",
        frozenset(),
    ),
    "openhome-mixed-crlf": (3, DEFAULT_URL, frozenset({"priv.example.com"})),
}


def placeholder_authorizer(url: str, extra_hosts: frozenset[str]):
    host = re.match(r"https?://([^/]+)", url)
    assert host
    gated = extra_hosts | {host.group(1)}

    def authorize(uri: str, scope: str) -> str | None:
        return "TOKEN" if resolve_uri(uri, url, gated) is not None else None

    return authorize


def rewrite_case(name: str) -> tuple[bytes, bytes, PlaylistRewriter]:
    _, url, extra = CASE_TABLE[name]
    source = (CASES / f"{name}.m3u8").read_bytes()
    rewriter = PlaylistRewriter(placeholder_authorizer(url, extra))
    return source, rewriter.rewrite(source), rewriter


def test_every_case_file_is_in_the_table() -> None:
    assert {path.stem for path in CASES.glob("*.m3u8")} == set(CASE_TABLE)


@pytest.mark.parametrize("name", sorted(CASE_TABLE))
def test_case_token_count(name: str) -> None:
    _, output, rewriter = rewrite_case(name)
    assert rewriter.inserted == CASE_TABLE[name][0]
    assert output.count(b"sg=TOKEN") == CASE_TABLE[name][0]


@pytest.mark.parametrize("name", sorted(CASE_TABLE))
def test_case_changes_nothing_but_insertions(name: str) -> None:
    source, output, _ = rewrite_case(name)
    matcher = difflib.SequenceMatcher(None, source, output, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert tag == "insert", (tag, source[i1:i2], output[j1:j2])
        assert re.fullmatch(rb"[?&]?sg=TOKEN", output[j1:j2]), output[j1:j2]


@pytest.mark.parametrize("name", sorted(CASE_TABLE))
def test_case_matches_expected_output(name: str) -> None:
    _, output, _ = rewrite_case(name)
    expected = (CASES / "expected" / f"{name}.m3u8").read_bytes()
    assert output == expected.replace(b"tok=TOKEN", b"sg=TOKEN")


def test_third_party_cdn_listed_as_gated_gets_tokens() -> None:
    url = "https://stream.mux.com/S9Kl4/rendition.m3u8"
    source = (CASES / "streamrr-mux-llhls-signed.m3u8").read_bytes()
    chunk_hosts = set(re.findall(rb"https://(chunk-[^/]+)/", source))
    assert chunk_hosts
    gated = frozenset(host.decode() for host in chunk_hosts)
    rewriter = PlaylistRewriter(placeholder_authorizer(url, gated))
    output = rewriter.rewrite(source)
    assert rewriter.inserted == 23
    assert b"==&zone=0&sg=TOKEN" in output


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CASE_TABLE)),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
)
def test_any_chunking_gives_the_same_output(name: str, cuts: list[int]) -> None:
    _, url, extra = CASE_TABLE[name]
    source = (CASES / f"{name}.m3u8").read_bytes()
    whole = PlaylistRewriter(placeholder_authorizer(url, extra)).rewrite(source)
    rewriter = PlaylistRewriter(placeholder_authorizer(url, extra))
    bounds = sorted({cut % (len(source) + 1) for cut in cuts})
    pieces, previous = [], 0
    for bound in [*bounds, len(source)]:
        pieces.append(rewriter.feed(source[previous:bound]))
        previous = bound
    pieces.append(rewriter.close())
    assert b"".join(pieces) == whole


def test_scopes_and_segment_start_times() -> None:
    seen: list[tuple[str, str]] = []

    def authorize(uri: str, scope: str) -> str:
        seen.append((uri, scope))
        return "T"

    playlist = (
        b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n"
        b'#EXT-X-KEY:METHOD=AES-128,URI="k.key"\n#EXT-X-MAP:URI="init.mp4"\n'
        b"#EXTINF:4.0,\na.m4s\n#EXTINF:3.5,\nb.m4s\n"
        b'#EXT-X-PART:DURATION=1.0,URI="c.0.m4s"\n#EXT-X-PART:DURATION=1.0,URI="c.1.m4s"\n'
        b'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="c.2.m4s"\n'
    )
    PlaylistRewriter(authorize).rewrite(playlist)
    assert seen == [
        ("k.key", SCOPE_KEY),
        ("init.mp4", SCOPE_KEY),
        ("a.m4s", "s0"),
        ("b.m4s", "s4000"),
        ("c.0.m4s", "s7500"),
        ("c.1.m4s", "s8500"),
        ("c.2.m4s", "s9500"),
    ]
    seen.clear()
    PlaylistRewriter(authorize).rewrite(
        b'#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="x",URI="a.m3u8"\n'
        b"#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n"
    )
    assert seen == [("a.m3u8", SCOPE_PLAYLIST), ("v.m3u8", SCOPE_PLAYLIST)]


def test_byte_ranges_get_scopes_of_their_own() -> None:
    seen: list[tuple[str, str]] = []

    def authorize(uri: str, scope: str) -> str:
        seen.append((uri, scope))
        return scope

    playlist = (
        b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n"
        b"#EXTINF:2,\n#EXT-X-BYTERANGE:100@0\nall.ts\n"
        b"#EXTINF:2,\n#EXT-X-BYTERANGE:50\nall.ts\n"
        b"#EXT-X-BYTERANGE:70@400\n#EXTINF:2,\nall.ts\n"
        b"#EXTINF:2,\nwhole.ts\n#EXTINF:2,\nwhole.ts\n"
        b'#EXT-X-PART:DURATION=1,URI="p.ts",BYTERANGE="10@5"\n'
    )
    output = PlaylistRewriter(authorize).rewrite(playlist)
    assert seen == [
        ("all.ts", "s0r0-100"),
        ("all.ts", "s2000r100-50"),
        ("all.ts", "s4000r400-70"),
        ("whole.ts", "s6000"),
        ("p.ts", "s10000r5-10"),
    ]
    # A whole segment repeated keeps the token of its first listing.
    assert output.count(b"whole.ts?sg=s6000\n") == 2


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("a.ts", "a.ts?sg=T"),
        ("a.ts?x=1", "a.ts?x=1&sg=T"),
        ("a.ts?x=1&", "a.ts?x=1&sg=T"),
        ("a.ts?", "a.ts?sg=T"),
        ("a.ts#t=1", "a.ts?sg=T#t=1"),
        ("a.ts?x=%2B==#f", "a.ts?x=%2B==&sg=T#f"),
    ],
)
def test_append_token(uri: str, expected: str) -> None:
    assert append_token(uri, "T") == expected


def test_size_limits_bound_the_buffer() -> None:
    rewriter = PlaylistRewriter(lambda *_: "T", max_size=1000, max_line=100)
    with pytest.raises(PlaylistTooLarge):
        rewriter.feed(b"#" * 101)
    rewriter = PlaylistRewriter(lambda *_: "T", max_size=1000, max_line=100)
    rewriter.feed(b"#EXTM3U\n")
    with pytest.raises(PlaylistTooLarge):
        for _ in range(20):
            rewriter.feed(b"#EXTINF:2,\na.ts\n" * 5)


def test_malformed_input_passes_through() -> None:
    source = (
        b'#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="unterminated\n'
        b"#EXTINF:abc,\nx.ts\n\xff\xfe\n"
    )
    output = PlaylistRewriter(lambda *_: "T").rewrite(source)
    assert output == source.replace(b"x.ts\n", b"x.ts?sg=T\n").replace(
        b"\xff\xfe\n", b"\xff\xfe?sg=T\n"
    )


# Generated playlists: any mix of URI-bearing and other lines, any endings.

_uri = st.one_of(
    st.sampled_from(
        ["a.ts", "../k.key", "/root/x.m4s", "v/i.m3u8?x=1", "s.ts?x=1&", "f.ts#t=2",
         "https://media.example.com/a.ts", "https://cdn.other.example/b.ts",
         "skd://asset", "data:text/plain;base64,QQ==", "t\u3000a.ts", "%20a.ts"]
    ),
    st.from_regex(r"[A-Za-z0-9_./~-]{1,12}(\?[A-Za-z0-9=&%+]{0,8})?", fullmatch=True),
)  # fmt: skip
_ending = st.sampled_from(["\n", "\r\n"])


_PLAYLIST_URL = "https://media.example.com/c/p.m3u8"
_GATED = frozenset({"media.example.com"})
_TOKEN = "QQTOKENQQ"


def _signed(uri: str) -> str:
    """The URI as the rewriter must write it: with a token when it is ours."""
    gated = resolve_uri(uri, _PLAYLIST_URL, _GATED) is not None
    return append_token(uri, _TOKEN) if gated else uri


@st.composite
def _line(draw: st.DrawFn) -> tuple[str, str]:
    """Return one generated line and what the rewriter must make of it."""
    uri = draw(_uri)
    kind = draw(st.integers(0, 9))
    if kind == 0:
        line = f"#EXTINF:{draw(st.floats(0, 10, allow_nan=False)):.3f},"
        return line, line
    if kind == 1:
        uri = uri if not uri.startswith("#") else "x" + uri
        return uri, _signed(uri)
    templates = {
        2: '#EXT-X-KEY:METHOD=AES-128,URI="{}",IV=0x01',
        3: '#EXT-X-MAP:URI="{}"',
        4: '#EXT-X-PART:DURATION=1.0,URI="{}"',
        5: "#EXT-X-STREAM-INF:BANDWIDTH=1\n{}",
        6: '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="n",URI="{}"',
    }
    if kind in templates:
        return templates[kind].format(uri), templates[kind].format(_signed(uri))
    if kind == 7:
        line = draw(st.sampled_from(["", "   ", "# comment " + uri, "#EXT-X-ENDLIST"]))
        return line, line
    if kind == 8:
        line = f'#EXT-X-DEFINE:NAME="v",VALUE="{uri}"'
        return line, line
    line = f'#EXT-X-DATERANGE:ID="i",CLASS="other",X-ASSET-URI="{uri}"'
    return line, line


@st.composite
def _playlist(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """Return a generated playlist and its correct rewriting."""
    lines = draw(st.lists(_line(), max_size=25))
    source = expected = "#EXTM3U"
    for line, signed in lines:
        ending = draw(_ending)
        source += ending + line
        expected += ending + signed
    if draw(st.booleans()):
        ending = draw(_ending)
        source += ending
        expected += ending
    return source.encode(), expected.encode()


def _gated_authorizer(uri: str, scope: str) -> str | None:
    return _TOKEN if resolve_uri(uri, _PLAYLIST_URL, _GATED) else None


@settings(max_examples=200, deadline=None)
@given(case=_playlist(), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_generated_playlists_only_gain_tokens(
    case: tuple[bytes, bytes], cuts: list[int]
) -> None:
    playlist, expected = case
    whole = PlaylistRewriter(_gated_authorizer).rewrite(playlist)
    assert whole == expected

    rewriter = PlaylistRewriter(_gated_authorizer)
    bounds = sorted({cut % (len(playlist) + 1) for cut in cuts})
    pieces, previous = [], 0
    for bound in [*bounds, len(playlist)]:
        pieces.append(rewriter.feed(playlist[previous:bound]))
        previous = bound
    pieces.append(rewriter.close())
    assert b"".join(pieces) == whole


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (b"\xef\xbb\xbf#EXTM3U\na.ts\n", b"#EXTM3U\na.ts?sg=T\n"),
        (b"#EXTM3U\r\na.ts", b"#EXTM3U\r\na.ts?sg=T"),
        (b"#EXTM3U", b"#EXTM3U"),
    ],
)
def test_header_rule_accepts(source: bytes, expected: bytes) -> None:
    assert PlaylistRewriter(lambda *_: "T").rewrite(source) == expected


@pytest.mark.parametrize(
    "source", [b"", b"a.ts\n#EXTM3U\n", b" #EXTM3U\n", b"#EXTM3Ux\n", b"<html>\n"]
)
def test_header_rule_rejects(source: bytes) -> None:
    with pytest.raises(InvalidPlaylist):
        PlaylistRewriter(lambda *_: "T").rewrite(source)
