"""PNG plots of a benchmark run, drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

# Agg draws PNG files without a display; pyplot must be imported after.
matplotlib.use("Agg")

import matplotlib.pyplot as plt

NGINX_COLOUR, EDGE_COLOUR, PLAIN_COLOUR = "#7f7f7f", "#1f77b4", "#ff7f0e"


def _colour(deployment: str) -> str:
    if deployment.startswith(("plain-", "bare-")):
        return PLAIN_COLOUR
    if deployment in ("nginx-static", "nginx-secure-link"):
        return NGINX_COLOUR
    return EDGE_COLOUR


def throughput(figures: dict[str, Any], path: Path) -> Path:
    """Draw requests per second of every deployment, segments and playlists."""
    kinds = [("segments", "200 KB segments"), ("playlists", "media playlists")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for axis, (kind, title) in zip(axes, kinds, strict=True):
        prefix = f"{kind}_per_second."
        rates = {
            key[len(prefix) :]: value
            for key, value in figures.items()
            if key.startswith(prefix)
        }
        names = sorted(rates, key=rates.__getitem__)
        axis.barh(names, [rates[name] for name in names],
                  color=[_colour(name) for name in names])  # fmt: skip
        axis.set_title(f"{title}, requests/s (one core)")
        axis.set_xscale("log")
        axis.grid(axis="x", alpha=0.3)
        for index, name in enumerate(names):
            axis.annotate(f"{rates[name]:,}", (rates[name], index),
                          xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)  # fmt: skip
    fig.suptitle(
        "nginx (grey), segmentgate edge (blue), no checks: plain and bare (orange)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency(unlock_ms: list[float], revoke_ms: list[float], path: Path) -> Path:
    """Draw the distribution of unlock and revoke latency as empirical CDFs."""
    fig, axis = plt.subplots(figsize=(8, 5))
    for label, values in (("purchase to first unlocked segment", unlock_ms),
                          ("refund to first refused segment", revoke_ms)):  # fmt: skip
        if not values:
            continue
        ordered = sorted(values)
        fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
        axis.step(ordered, fractions, where="post", label=f"{label} (n={len(ordered)})")
    axis.set_xlabel("milliseconds")
    axis.set_ylabel("share of viewers")
    axis.set_xscale("log")
    axis.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Unlock and revoke latency under a purchase surge")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
