"""Streaming rewriter that adds an authorization to every URI of a playlist.

The rewriter works on bytes, line by line, and changes nothing but the
inserted ``sg=`` parameters: line endings (per line), comments, attribute
order, spacing, existing query strings and the final newline all pass
through. URI-bearing positions follow RFC 8216 and draft-pantos-hls-rfc8216bis:

* a media segment line, and the line after ``EXT-X-STREAM-INF``;
* ``URI`` of ``EXT-X-KEY``, ``EXT-X-SESSION-KEY``, ``EXT-X-MAP``,
  ``EXT-X-MEDIA``, ``EXT-X-I-FRAME-STREAM-INF``, ``EXT-X-IMAGE-STREAM-INF``,
  ``EXT-X-SESSION-DATA``, ``EXT-X-PART``, ``EXT-X-PRELOAD-HINT`` and
  ``EXT-X-RENDITION-REPORT``;
* ``SERVER-URI`` of ``EXT-X-CONTENT-STEERING``;
* ``X-ASSET-URI`` and ``X-ASSET-LIST`` of an interstitial ``EXT-X-DATERANGE``.

The rewriter also tracks each segment's start time, so the caller can scope
a segment's authorization to where it sits in the presentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from edge.uri_tokens import (
    SCOPE_KEY,
    SCOPE_PLAYLIST,
    SCOPE_SEGMENT,
    key_scope,
    segment_scope,
)
from shared.tokens import TOKEN_PARAM

INTERSTITIAL_CLASS = "com.apple.hls.interstitial"

# The authorize callback receives a URI as written in the playlist and its
# scope text (see ``edge.uri_tokens``: ``p``, ``k``, or ``s<start_ms>`` with
# an optional byte range). It returns the token to append, or None to leave
# the URI alone (another host, another scheme, or a path outside the content
# item).
Authorize = Callable[[str, str], str | None]

_UTF8_BOM = b"\xef\xbb\xbf"
_MAP_TAGS = frozenset({"EXT-X-MAP", "EXT-X-PRELOAD-HINT"})
_KEY_TAGS = frozenset({"EXT-X-KEY", "EXT-X-SESSION-KEY", "EXT-X-MAP"})
_PLAYLIST_TAGS = frozenset(
    {
        "EXT-X-MEDIA",
        "EXT-X-I-FRAME-STREAM-INF",
        "EXT-X-IMAGE-STREAM-INF",
        "EXT-X-SESSION-DATA",
        "EXT-X-RENDITION-REPORT",
    }
)


class PlaylistTooLarge(ValueError):
    """Raised when a playlist or one of its lines exceeds the size limit."""


class InvalidPlaylist(ValueError):
    """Raised when the input does not start with ``#EXTM3U``."""


@dataclass
class _Attribute:
    name: str
    value_start: int
    value_end: int
    quoted: bool


def _attributes(line: str, start: int) -> Iterator[_Attribute]:
    """Yield the attributes of an attribute list that begins at ``start``."""
    position = start
    length = len(line)
    while position < length:
        equals = line.find("=", position)
        if equals < 0:
            return
        name = line[position:equals].strip()
        if equals + 1 < length and line[equals + 1] == '"':
            closing = line.find('"', equals + 2)
            if closing < 0:
                return
            yield _Attribute(name, equals + 2, closing, True)
            comma = line.find(",", closing)
        else:
            comma = line.find(",", equals)
            end = length if comma < 0 else comma
            yield _Attribute(name, equals + 1, end, False)
        if comma < 0:
            return
        position = comma + 1


def _attribute_value(line: str, start: int, name: str) -> str | None:
    for attribute in _attributes(line, start):
        if attribute.name == name:
            return line[attribute.value_start : attribute.value_end]
    return None


def append_token(uri: str, token: str) -> str:
    """Add ``sg=token`` to the query of ``uri``, before any fragment."""
    hash_at = uri.find("#")
    base, fragment = (uri, "") if hash_at < 0 else (uri[:hash_at], uri[hash_at:])
    if "?" not in base:
        separator = "?"
    elif base.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return f"{base}{separator}{TOKEN_PARAM}={token}{fragment}"


def _split_ending(line: str) -> tuple[str, str]:
    if line.endswith("\r\n"):
        return line[:-2], "\r\n"
    if line.endswith("\n"):
        return line[:-1], "\n"
    return line, ""


def _parse_byte_range(text: str | None) -> tuple[int, int | None] | None:
    """Parse ``<length>[@<offset>]``; return None when it is malformed."""
    if text is None:
        return None
    length_text, _, offset_text = text.strip().partition("@")
    try:
        length = int(length_text)
        offset = int(offset_text) if offset_text else None
    except ValueError:
        return None
    if length < 0 or (offset is not None and offset < 0):
        return None
    return length, offset


def _parse_number(text: str | None, default: float = 0.0) -> float:
    try:
        return float(text.strip()) if text is not None else default
    except ValueError:
        return default


class PlaylistRewriter:
    """Rewrite a playlist fed in chunks of any size.

    ``feed`` returns the rewritten bytes of every line completed so far;
    ``close`` returns the rest. A line longer than ``max_line`` or a playlist
    longer than ``max_size`` raises :class:`PlaylistTooLarge`, so the buffer
    stays bounded whatever the upstream sends.
    """

    def __init__(
        self,
        authorize: Authorize,
        *,
        max_size: int = 16 * 1024 * 1024,
        max_line: int = 64 * 1024,
    ) -> None:
        self._authorize = authorize
        self._max_size = max_size
        self._max_line = max_line
        self._buffer = bytearray()
        self._received = 0
        self._tokens: dict[tuple[str, str], str | None] = {}
        self._segment_start = 0.0
        self._segment_duration = 0.0
        self._part_offset = 0.0
        self._target_duration = 0.0
        self._part_start_ms = 0
        self._variant_next = False
        self._byte_range: tuple[int, int] | None = None
        self._range_ends: dict[str, int] = {}
        self._started = False
        self.inserted = 0

    def feed(self, chunk: bytes) -> bytes:
        self._received += len(chunk)
        if self._received > self._max_size:
            raise PlaylistTooLarge(f"playlist exceeds {self._max_size} bytes")
        self._buffer += chunk
        last_newline = self._buffer.rfind(b"\n")
        if last_newline < 0:
            if len(self._buffer) > self._max_line:
                raise PlaylistTooLarge(f"a line exceeds {self._max_line} bytes")
            return b""
        complete = bytes(self._buffer[: last_newline + 1])
        del self._buffer[: last_newline + 1]
        return self._rewrite(complete)

    def close(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        if not rest and self._started:
            return b""
        return self._rewrite(rest)

    def rewrite(self, playlist: bytes) -> bytes:
        """Rewrite a whole playlist at once."""
        return self.feed(playlist) + self.close()

    def _rewrite(self, data: bytes) -> bytes:
        if not self._started:
            data = self._check_header(data)
        # surrogateescape keeps bytes that are not UTF-8 exactly as they came.
        text = data.decode("utf-8", "surrogateescape")
        # Only LF ends a line; a CR before it stays part of that line's ending.
        parts = text.split("\n")
        lines = [part + "\n" for part in parts[:-1]]
        if parts[-1]:
            lines.append(parts[-1])
        out = "".join(self._rewrite_line(line) for line in lines)
        return out.encode("utf-8", "surrogateescape")

    def _check_header(self, data: bytes) -> bytes:
        """Apply the rule for the start of a playlist to its first line.

        RFC 8216 requires ``#EXTM3U`` as the first line and forbids a byte
        order mark. A UTF-8 BOM is removed, because players fail on it; any
        other first line rejects the whole playlist, because text before
        ``#EXTM3U`` could be read as a URI by one player and not another.
        """
        self._started = True
        if data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM) :]
        if not data.startswith(b"#EXTM3U") or data[7:8] not in (b"", b"\r", b"\n"):
            raise InvalidPlaylist("the playlist does not start with #EXTM3U")
        return data

    def _rewrite_line(self, line: str) -> str:
        content, ending = _split_ending(line)
        if content.startswith("#EXT"):
            return self._rewrite_tag(content) + ending
        if content.startswith("#") or not content.strip():
            return line
        return self._rewrite_uri_line(content) + ending

    def _rewrite_uri_line(self, content: str) -> str:
        # Trailing blanks are not part of the URI; leading ones are kept
        # inside it because a player would send them too.
        uri = content.rstrip(" \t")
        trailing = content[len(uri) :]
        if self._variant_next:
            self._variant_next = False
            token = self._token(uri, SCOPE_PLAYLIST)
        else:
            byte_range = self._resolve_range(uri, self._byte_range)
            start_ms = round(self._segment_start * 1000)
            token = self._token(uri, segment_scope(start_ms, byte_range))
            self._segment_start += self._segment_duration
            self._segment_duration = 0.0
            self._part_offset = 0.0
            self._byte_range = None
        if token is None:
            return content
        return append_token(uri, token) + trailing

    def _rewrite_tag(self, content: str) -> str:
        colon = content.find(":")
        name = content[1:colon] if colon >= 0 else content[1:]
        attributes_at = colon + 1

        if name == "EXTINF":
            duration = content[attributes_at:].split(",", 1)[0]
            self._segment_duration = _parse_number(duration)
        elif name == "EXT-X-TARGETDURATION":
            self._target_duration = _parse_number(content[attributes_at:])
        elif name == "EXT-X-STREAM-INF":
            self._variant_next = True
        elif name == "EXT-X-BYTERANGE":
            self._byte_range = _parse_byte_range(content[attributes_at:])
        elif name == "EXT-X-SKIP":
            skipped = _attribute_value(content, attributes_at, "SKIPPED-SEGMENTS")
            # NOTE: a delta update does not list the skipped durations, so
            # the start times after it assume target-duration segments.
            self._segment_start += _parse_number(skipped) * self._target_duration
        elif colon >= 0:
            return self._rewrite_tag_uris(name, content, attributes_at)
        return content

    def _rewrite_tag_uris(self, name: str, content: str, start: int) -> str:
        targets = self._uri_targets(name, content, start)
        if not targets:
            return content
        pieces: list[str] = []
        position = 0
        for attribute in _attributes(content, start):
            scope = targets.get(attribute.name)
            if scope is None or not attribute.quoted:
                continue
            uri = content[attribute.value_start : attribute.value_end]
            if not uri:
                continue
            if scope == SCOPE_KEY and name in _MAP_TAGS:
                # An init segment cut from a larger file reads only its range.
                map_range = _attribute_value(content, start, "BYTERANGE")
                scope = key_scope(
                    self._resolve_range(uri, _parse_byte_range(map_range))
                )
            elif scope == SCOPE_SEGMENT:
                # A part: its start is known now, its byte range from the tag.
                part_range = _attribute_value(content, start, "BYTERANGE")
                byte_range = self._resolve_range(uri, _parse_byte_range(part_range))
                scope = segment_scope(self._part_start_ms, byte_range)
            token = self._token(uri, scope)
            if token is None:
                continue
            pieces.append(content[position : attribute.value_start])
            pieces.append(append_token(uri, token))
            position = attribute.value_end
        pieces.append(content[position:])
        return "".join(pieces)

    def _uri_targets(self, name: str, content: str, start: int) -> dict[str, str]:
        """Map the URI attribute names of a tag to their scope.

        ``SCOPE_SEGMENT`` stands for a part, whose full scope needs the URI.
        """
        if name in _KEY_TAGS:
            return {"URI": SCOPE_KEY}
        if name in _PLAYLIST_TAGS:
            return {"URI": SCOPE_PLAYLIST}
        if name == "EXT-X-CONTENT-STEERING":
            return {"SERVER-URI": SCOPE_PLAYLIST}
        if name == "EXT-X-DATERANGE":
            if _attribute_value(content, start, "CLASS") != INTERSTITIAL_CLASS:
                return {}
            return {"X-ASSET-URI": SCOPE_PLAYLIST, "X-ASSET-LIST": SCOPE_PLAYLIST}
        if name == "EXT-X-PART":
            self._part_start_ms = round(
                (self._segment_start + self._part_offset) * 1000
            )
            duration = _attribute_value(content, start, "DURATION")
            self._part_offset += _parse_number(duration)
            return {"URI": SCOPE_SEGMENT}
        if name == "EXT-X-PRELOAD-HINT":
            if _attribute_value(content, start, "TYPE") == "MAP":
                return {"URI": SCOPE_KEY}
            self._part_start_ms = round(
                (self._segment_start + self._part_offset) * 1000
            )
            return {"URI": SCOPE_SEGMENT}
        return {}

    def _current_part_start_ms(self) -> int:
        return round((self._segment_start + self._part_offset) * 1000)

    def _resolve_range(
        self, uri: str, byte_range: tuple[int, int | None] | None
    ) -> tuple[int, int] | None:
        """Fill in a missing offset: it continues the URI's previous range."""
        if byte_range is None:
            return None
        length, offset = byte_range
        if offset is None:
            offset = self._range_ends.get(uri, 0)
        self._range_ends[uri] = offset + length
        return offset, length

    def _token(self, uri: str, scope: str) -> str | None:
        # The same URI gets the same token within a response, so shared keys
        # and init segments stay cacheable. A whole segment repeated keeps
        # its first start time. A byte range gets a token of its own, so a
        # preview cannot read past its end with the first range's token.
        kind = scope[:1]
        cache_key = (uri, scope if "r" in scope else kind)
        if cache_key in self._tokens:
            token = self._tokens[cache_key]
        else:
            token = self._authorize(uri, scope)
            self._tokens[cache_key] = token
        if token is not None:
            self.inserted += 1
        return token
