"""Content ids, which both services use as one path segment."""

from __future__ import annotations

import re

# A content id names the asset root, ``{media_root}/{content_id}/``.
CONTENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
