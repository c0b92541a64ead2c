"""segmentgate: paid HLS video behind an edge that checks every request."""

__version__ = "0.1.0"
