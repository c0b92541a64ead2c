"""Request path checks and playlist URI resolution.

Media lives under ``{media_root}/{content_id}/``: the content id is the asset
root, and every path the edge serves or signs must stay under it. Paths are
checked after the server decoded them once; anything that could still climb
out of the asset root, decoded again or read by another file system, is
rejected before any upstream is asked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from urllib.parse import unquote, urljoin, urlsplit

from starlette.types import Scope

from shared.content import CONTENT_ID
from shared.problems import INVALID_PATH, INVALID_REQUEST, Problem

# ``/_sg/<token>/<content_id>/...`` carries a playback token in the path, so
# relative URIs in playlists inherit it. Content ids cannot start with "_".
PATH_TOKEN_PREFIX = "/_sg/"
PATH_TOKEN_SCOPE_KEY = "segmentgate.path_token"
# LL-HLS delivery directives (RFC 8216bis, section 6.2.5.2) that pass to the
# upstream, each with the only values it may take.
_DELIVERY_DIRECTIVES = {
    "_HLS_msn": re.compile(r"[0-9]{1,19}"),
    "_HLS_part": re.compile(r"[0-9]{1,19}"),
    "_HLS_skip": re.compile(r"YES|v2"),
}

# Percent-encodings of '.', '/', '\' and NUL that survive one decoding are
# double encodings, a classic way to smuggle '..' past a single check.
_ENCODED_SPECIAL = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_FORBIDDEN_CHARACTERS = re.compile(r"[\\\x00\r\n]")
# Checked paths kept, since every viewer of a stream requests the same ones.
CHECKED_PATHS = 4096
_HTTP_SCHEMES = frozenset({"http", "https"})


@functools.lru_cache(maxsize=CHECKED_PATHS)
def split_media_path(path: str) -> tuple[str, str]:
    """Check a decoded request path; return its content id and the rest.

    Raise :class:`Problem` ``invalid-path`` for traversal in any form, for
    characters that no media path contains and for a malformed content id.
    Results are cached, but a rejected path raises again on every call.
    """
    if not path.startswith("/"):
        raise Problem(INVALID_PATH, "path must be absolute")
    if _FORBIDDEN_CHARACTERS.search(path):
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


def check_raw_path(raw_path: bytes | None) -> None:
    """Reject a request whose path, as sent, has dot or empty segments.

    Some servers remove dot segments before the application receives the path,
    so ``/a/../b`` would arrive as ``/b``. The edge rejects such requests
    outright rather than serve whatever the normalised path names.
    """
    if raw_path is None:
        return
    if b"%" not in raw_path and b"/." not in raw_path and raw_path[:1] != b".":
        # No segment can be "." or "..", encoded or not.
        return
    decoded = unquote(raw_path.decode("latin-1"), errors="replace")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        raise Problem(INVALID_PATH, "path contains a '.' or '..' segment")


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


def move_path_token(scope: Scope) -> Scope:
    """Return ``scope`` with a ``/_sg/<token>/`` prefix moved out of its path.

    The access log and everything after it then receive the media path
    alone, so the token never reaches logs or problem bodies. A scope
    without the prefix is returned as it is.
    """
    path = scope.get("path", "")
    if not path.startswith(PATH_TOKEN_PREFIX):
        return scope
    token, slash, rest = path[len(PATH_TOKEN_PREFIX) :].partition("/")
    if not token or not slash or rest.startswith(PATH_TOKEN_PREFIX[1:]):
        # Malformed: keep the token out of the path that is logged.
        return {**scope, "path": PATH_TOKEN_PREFIX, "raw_path": b"/_sg/"}
    media_path = "/" + rest
    return {
        **scope,
        "path": media_path,
        "raw_path": media_path.encode("utf-8", "surrogateescape"),
        PATH_TOKEN_SCOPE_KEY: token,
    }


def delivery_directives(query: Mapping[str, str]) -> dict[str, str]:
    """Return the LL-HLS delivery directives of a playlist request, checked.

    Raise :class:`Problem` ``invalid-request`` for a malformed value, so no
    request value other than these reaches the upstream.
    """
    directives: dict[str, str] = {}
    for name, pattern in _DELIVERY_DIRECTIVES.items():
        value = query.get(name)
        if value is None:
            continue
        if not pattern.fullmatch(value):
            raise Problem(INVALID_REQUEST, f"invalid {name} value {value[:40]!r}")
        directives[name] = value
    if "_HLS_part" in directives and "_HLS_msn" not in directives:
        raise Problem(INVALID_REQUEST, "_HLS_part requires _HLS_msn")
    return directives
