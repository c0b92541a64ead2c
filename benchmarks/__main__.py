"""Run the benchmarks: every part, or the parts named.

    python -m benchmarks [PART ...] [--quick] [--plots DIR] [--set PART.OPTION=VALUE]

Parts: throughput, request_cost, surge, purchases, propagation, hot_path.
Progress goes to stderr. The last line on stdout is one JSON object with
every figure and ratio (ratios as fractions: 0.05 is 5%) and the parts
that were skipped, with the reason. ``--quick`` shrinks every part to a few seconds, to
check that the scripts run; its figures mean nothing. Plots are PNG files
in ``--plots`` (docs/benchmarks for a full run, none in quick mode unless
given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import hot_path, plots, purchases, request_cost, surge, throughput
from benchmarks import propagation as propagation_part

REPO = Path(__file__).resolve().parent.parent
Progress = Callable[[str], None]


@dataclass
class Part:
    """One benchmark: its options, how to run it, and what it needs."""

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Progress], dict[str, Any]]
    quick: dict[str, Any] = field(default_factory=dict)
    missing: Callable[[], list[str]] = list


def _purchase_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--purchases", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--decline-share", type=float, default=0.2)


def _run_purchases(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    progress(f"{args.purchases} purchases on SQLite, then PostgreSQL")
    return asyncio.run(purchases.main(args))


def _propagation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=240)
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--segment-requests", type=int, default=10_000)


def _run_propagation(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    progress(f"{args.events} grants and revokes pushed to {args.edges} edges")
    return asyncio.run(
        propagation_part.run(args.events, args.edges, args.segment_requests)
    )


def _hot_path_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=1.0)


def _run_hot_path(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    progress("timing the playlist rewriter and the URI token check")
    return hot_path.measure(args.scale)


def _throughput_missing() -> list[str]:
    return throughput.missing_tools()


PARTS: dict[str, Part] = {
    "throughput": Part(
        throughput.add_arguments,
        throughput.measure,
        {"seconds": 1, "rounds": 1, "connections": 4, "servers": ["hypercorn"]},
        _throughput_missing,
    ),
    "request_cost": Part(
        request_cost.add_arguments, request_cost.measure, {"requests": 50}
    ),
    "surge": Part(
        surge.add_arguments,
        surge.measure,
        {"rates": [5.0], "seconds": 1, "watchers": 4},
    ),
    "purchases": Part(
        _purchase_arguments, _run_purchases, {"purchases": 6, "concurrency": 2}
    ),
    "propagation": Part(
        _propagation_arguments,
        _run_propagation,
        {"events": 6, "edges": 2, "segment_requests": 100},
    ),
    "hot_path": Part(_hot_path_arguments, _run_hot_path, {"scale": 0.01}),
}


def _part_arguments(name: str, quick: bool, overrides: list[str]) -> argparse.Namespace:
    part = PARTS[name]
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}")
    part.add_arguments(parser)
    args = parser.parse_args([])
    if quick:
        for option, value in part.quick.items():
            setattr(args, option, value)
    for override in overrides:
        target, _, value = override.partition("=")
        part_name, _, option = target.partition(".")
        if part_name != name:
            continue
        option = option.replace("-", "_")
        if not hasattr(args, option):
            raise SystemExit(f"--set {override}: {name} has no option {option!r}")
        current = getattr(args, option)
        if isinstance(current, list):
            item_type = type(current[0]) if current else str
            setattr(args, option, [item_type(item) for item in value.split(",")])
        else:
            setattr(args, option, type(current)(value))
    return args


def _draw(results: dict[str, Any], directory: Path, progress: Progress) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if "throughput" in results:
        drawn = plots.throughput(results["throughput"], directory / "throughput.png")
        progress(f"drew {drawn}")
    if "surge" in results:
        drawn = plots.latency(results["surge"]["by_rate"], directory / "surge.png")
        progress(f"drew {drawn}")


def _progress(started: float) -> Progress:
    def report(message: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {message}",
              file=sys.stderr, flush=True)  # fmt: skip

    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "parts",
        nargs="*",
        choices=[[], *PARTS],
        metavar="PART",
        help=f"parts to run (default all): {', '.join(PARTS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds per part, to check that the scripts run",
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="directory for the PNG plots"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PART.OPTION=VALUE",
        help="set one option of a part, e.g. throughput.seconds=10",
    )
    return parser


def main() -> None:
    args = _parser().parse_args()
    names = args.parts or list(PARTS)
    progress = _progress(time.monotonic())
    results: dict[str, Any] = {"quick": args.quick}
    skipped: dict[str, str] = {}
    for name in names:
        part = PARTS[name]
        missing = part.missing()
        if missing:
            skipped[name] = f"missing {', '.join(missing)}; run `make bench`"
            progress(f"{name}: skipped, {skipped[name]}")
            continue
        progress(f"{name}: starting")
        part_args = _part_arguments(name, args.quick, args.set)
        results[name] = part.run(part_args, progress)
    plot_directory = args.plots
    if plot_directory is None and not args.quick:
        plot_directory = REPO / "docs" / "benchmarks"
    if plot_directory is not None:
        _draw(results, plot_directory, progress)
    if "surge" in results:
        # The distributions are in the plot; the JSON line keeps the figures.
        for figures in results["surge"]["by_rate"].values():
            del figures["unlock_ms"], figures["revoke_ms"]
    combined = _combined(results)
    if combined:
        results["combined"] = combined
    results["skipped"] = skipped
    results["machine"] = _machine()
    print(json.dumps(results), flush=True)


def _combined(results: dict[str, Any]) -> dict[str, float]:
    """Return the ratios that take figures from two parts of this run.

    ``gate_check_vs_plain_cpu.SERVER`` is the CPU time of the gate's check
    on a segment request (signature and cached entitlement, in process)
    over the server CPU time of one segment request to the plain
    FileResponse app under SERVER.
    """
    check = results.get("request_cost", {}).get("segment_gate_check_us")
    throughput = results.get("throughput", {})
    combined = {}
    for server in throughput.get("servers", []):
        plain = throughput.get(f"segment_cpu_us.plain-{server}")
        if check and plain:
            combined[f"gate_check_vs_plain_cpu.{server}"] = round(check / plain, 4)
    return combined


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "taskset": shutil.which("taskset") is not None,
    }


if __name__ == "__main__":
    main()
