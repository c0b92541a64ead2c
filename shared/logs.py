"""JSON log lines with redaction, for both services.

Each record becomes one JSON object on one line with the stable keys
``ts``, ``level``, ``logger``, ``message``, ``trace_id`` and ``span_id``,
then the record's ``extra`` fields. Before a line is written, every string
in it passes through :class:`Redactor`, which removes:

* JWTs (playback tokens, event batches), URI tokens, ``sg=`` query values
  and ``/_sg/<token>/`` path prefixes;
* bearer credentials, webhook secrets and webhook signatures;
* card numbers (13 to 19 digits that pass the Luhn check);
* the exact values of secrets registered with :meth:`Redactor.add_secrets`
  (admin tokens, the edge token, URI secrets);
* viewer ids and viewer references, which are replaced by a hash prefix
  so that lines about one viewer can still be matched.

``extra`` fields whose name contains a credential word are replaced whole.

The libraries in ``LIBRARY_LOGGERS`` stay at ``WARNING`` whatever the level:
their debug and info lines carry SQL parameters and raw headers, whose
values (a viewer reference, a token hash) no pattern here can recognise.
SQLAlchemy logs every statement with its parameters at ``INFO``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from shared.tracing import current_ids

__all__ = [
    "LEVEL_VARIABLE",
    "LIBRARY_LOGGERS",
    "JsonFormatter",
    "Redactor",
    "configure_logging",
    "hash_identifier",
    "redactor",
]

LEVEL_VARIABLE = "SEGMENTGATE_LOG_LEVEL"
LIBRARY_LOGGERS = (
    "aiosqlite",
    "asyncpg",
    "hpack",
    "httpcore",
    "nats",
    "sqlalchemy",
)
REDACTED = "[redacted]"
# Names of extra fields whose whole value is a credential.
_SECRET_FIELDS = ("token", "secret", "authorization", "signature", "password", "card")
_VIEWER_FIELDS = ("viewer_id", "viewer_ref")
# Attributes that every LogRecord has: everything else came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*"), "[jwt]"),
    (re.compile(r"\b1\.[\w-]{8,}\.[\w-]+\.[\w-]{16,}"), "[uri-token]"),
    (re.compile(r"([?&;]sg=)[^&\s\"'<>]+"), r"\1" + REDACTED),
    (re.compile(r"/_sg/[^/\s\"']+"), "/_sg/" + REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+"), r"\1" + REDACTED),
    (re.compile(r"whsec_[\w+/=-]+"), "whsec_" + REDACTED),
    (re.compile(r"\bvt_[\w-]+"), "vt_" + REDACTED),
    # Stripe's "v1=<hex>" and Standard Webhooks' "v1,<base64>" signatures.
    (re.compile(r"\bv1=[0-9a-f]{32,}"), "v1=" + REDACTED),
    (re.compile(r"\bv1,[A-Za-z0-9+/=]{20,}"), "v1," + REDACTED),
]
_VIEWER_ID = re.compile(r"\bvwr_[0-9a-f]{8,}")
# The edge reads entitlements from /v1/edge/entitlements/<viewer_ref>/<content>.
_ENTITLEMENT_PATH = re.compile(r"(/v1/edge/entitlements/)([^/\s\"']+)")
_CARD_CANDIDATE = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])")


def hash_identifier(value: str) -> str:
    """Return a stable, one-way stand-in for a viewer identifier."""
    return "h:" + hashlib.sha256(value.encode()).hexdigest()[:12]


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return "[card]" if _luhn_valid(digits) else match.group()


class Redactor:
    """Remove credentials, card numbers and viewer identifiers from text."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add_secrets(self, values: Iterable[str]) -> None:
        """Redact these exact values wherever they appear.

        Values under 8 characters would match ordinary words, so they are
        not added.
        """
        with self._lock:
            self._secrets |= {value for value in values if len(value) >= 8}

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        value = _VIEWER_ID.sub(lambda match: hash_identifier(match.group()), value)
        value = _ENTITLEMENT_PATH.sub(
            lambda match: match.group(1) + hash_identifier(match.group(2)), value
        )
        return _CARD_CANDIDATE.sub(_mask_card, value)

    def field(self, name: str, value: Any) -> Any:
        """Redact one ``extra`` field, by its name first and then its content."""
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_FIELDS):
            return REDACTED
        if lowered in _VIEWER_FIELDS and isinstance(value, str) and value:
            return hash_identifier(value)
        return self.value(value)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {str(key): self.field(str(key), item) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


# One redactor per process: both services of a demo register their secrets.
redactor = Redactor()


class JsonFormatter(logging.Formatter):
    """Format a record as one redacted JSON object."""

    def __init__(self, redaction: Redactor = redactor) -> None:
        super().__init__()
        self.redaction = redaction

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_ids()
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redaction.text(record.getMessage()),
            "trace_id": getattr(record, "trace_id", "") or trace_id,
            "span_id": span_id,
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = self.redaction.field(name, value)
        if record.exc_info:
            entry["exception"] = self.redaction.text(
                self.formatException(record.exc_info)
            )
        return json.dumps(entry, default=str, ensure_ascii=False)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str | None = None) -> logging.Handler:
    """Send every log record to standard error as a redacted JSON line.

    ``level`` defaults to ``SEGMENTGATE_LOG_LEVEL``, else ``INFO``. Calling
    it again replaces the handler that the previous call installed.
    """
    name = (level or os.environ.get(LEVEL_VARIABLE) or "INFO").upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError(f"{LEVEL_VARIABLE} must be a logging level; got {name!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(name)
    for library in LIBRARY_LOGGERS:
        logging.getLogger(library).setLevel(max(logging.WARNING, root.level))
    return handler
