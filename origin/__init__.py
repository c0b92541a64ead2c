"""segmentgate origin: catalog, purchases, playback tokens and events."""

from origin.app import create_app
from origin.settings import OriginSettings

__all__ = ["OriginSettings", "create_app"]
