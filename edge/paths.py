"""Request path checks and playlist URI resolution.

Media lives under ``{media_root}/{content_id}/``: the content id is the asset
root, and every path the edge serves or signs must stay under it. Paths are
checked after the server decoded them once; anything that could still climb
out of the asset root, decoded again or read by another file system, is
rejected before any upstream is asked.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urljoin, urlsplit

from shared.content import CONTENT_ID
from shared.problems import INVALID_PATH, Problem

# Percent-encodings of '.', '/', '\' and NUL that survive one decoding are
# double encodings, a classic way to smuggle '..' past a single check.
_ENCODED_SPECIAL = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_FORBIDDEN_CHARACTERS = frozenset("\\\x00\r\n")
_HTTP_SCHEMES = frozenset({"http", "https"})


def split_media_path(path: str) -> tuple[str, str]:
    """Check a decoded request path; return its content id and the rest.

    Raise :class:`Problem` ``invalid-path`` for traversal in any form, for
    characters that no media path contains and for a malformed content id.
    """
    if not path.startswith("/"):
        raise Problem(INVALID_PATH, "path must be absolute")
    if any(character in _FORBIDDEN_CHARACTERS for character in path):
        raise Problem(INVALID_PATH, "path contains a backslash or control character")
    if "\ufffd" in path:
        raise Problem(INVALID_PATH, "path is not valid UTF-8")
    if _ENCODED_SPECIAL.search(path):
        raise Problem(INVALID_PATH, "path contains a double-encoded character")
    segments = path[1:].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise Problem(INVALID_PATH, "path contains an empty, '.' or '..' segment")
    if len(segments) < 2 or not CONTENT_ID.fullmatch(segments[0]):
        raise Problem(INVALID_PATH, "path must be /{content_id}/{file}")
    return segments[0], "/".join(segments[1:])


def resolve_uri(uri: str, playlist_url: str, gated_hosts: frozenset[str]) -> str | None:
    """Resolve a playlist URI to the decoded path the player will request.

    Return None when the URI is not ours to authorize: another scheme
    (``skd://``, ``data:``), a host outside ``gated_hosts``, or a URI that
    cannot be parsed.
    """
    try:
        parts = urlsplit(uri)
        if parts.scheme and parts.scheme.lower() not in _HTTP_SCHEMES:
            return None
        if parts.netloc and parts.netloc.lower() not in gated_hosts:
            return None
        resolved = urlsplit(urljoin(playlist_url, uri))
    except ValueError:
        return None
    return unquote(resolved.path, errors="replace")
