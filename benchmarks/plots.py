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


def latency(by_rate: dict[str, dict[str, Any]], path: Path) -> Path:
    """Draw unlock and revoke latency of each surge rate as empirical CDFs."""
    fig, axis = plt.subplots(figsize=(9, 5.5))
    for rate, figures in by_rate.items():
        for label, key, style in (("unlock", "unlock_ms", "-"),
                                  ("revoke", "revoke_ms", "--")):  # fmt: skip
            values = sorted(figures[key])
            if not values:
                continue
            shares = [(index + 1) / len(values) for index in range(len(values))]
            axis.step(values, shares, style, where="post",
                      label=f"{label} at {rate}/s (n={len(values)})")  # fmt: skip
    axis.set_xlabel("milliseconds from purchase (or refund) request")
    axis.set_ylabel("share of buyers")
    axis.set_xscale("log")
    axis.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    axis.axvline(500, color="red", linestyle=":", linewidth=1)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title("Purchase to first unlocked segment, refund to first refusal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
