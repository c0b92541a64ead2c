"""segmentgate edge: an ASGI gate in front of HLS media."""

from edge.app import create_app
from edge.settings import EdgeSettings

__all__ = ["EdgeSettings", "create_app"]
