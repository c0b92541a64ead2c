"""segmentgate edge: an ASGI gate in front of HLS media."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.app import create_app
    from edge.settings import EdgeSettings

__all__ = ["EdgeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that the Worker entry (edge.worker) can load
    # outside a request. The app's modules import OpenTelemetry, which draws
    # random numbers at import, and Workers have no entropy outside requests.
    if name == "create_app":
        from edge.app import create_app

        return create_app
    if name == "EdgeSettings":
        from edge.settings import EdgeSettings

        return EdgeSettings
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
