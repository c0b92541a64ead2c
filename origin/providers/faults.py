"""Faults that the sandbox provider injects into its own calls.

A fault applies to one operation (``capture``, ``refund``, ...) and strikes
``times`` times, or on every call when ``times`` is None. Kinds, by where
they strike relative to the provider's own work:

* ``error``: answer 500 before acting (the call had no effect);
* ``timeout``: hang before acting, until the caller gives up;
* ``drop``: act, then lose the response (the call had an effect);
* ``late``: act, then hang until the caller gives up;
* ``block_before`` and ``block_after``: wait at a :class:`Gate` that a test
  opens, before or after acting. A gate that nobody opens blocks forever,
  which lets a test kill a process in the middle of a step.

``SEGMENTGATE_SANDBOX_FAULTS`` sets faults for a whole process as
comma-separated ``operation:kind[:times]``, e.g. ``capture:drop:1``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from origin.providers.base import OPERATIONS, ProviderUnavailable

BEFORE_KINDS = frozenset({"error", "timeout", "block_before"})
AFTER_KINDS = frozenset({"drop", "late", "block_after"})
KINDS = BEFORE_KINDS | AFTER_KINDS


@dataclass
class Gate:
    """A point where a call waits until the test calls :meth:`open`."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def open(self) -> None:
        self.opened.set()


@dataclass
class Fault:
    operation: str
    kind: str
    times: int | None = 1
    gate: Gate = field(default_factory=Gate)


class SandboxFaults:
    """The faults armed for a sandbox provider, consumed as they strike."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, operation: str, kind: str, times: int | None = 1) -> Gate:
        """Arm a fault and return its gate (used by the ``block_*`` kinds)."""
        if operation not in OPERATIONS:
            raise ValueError(
                f"unknown operation {operation!r}; expected one of {OPERATIONS}"
            )
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {sorted(KINDS)}")
        fault = Fault(operation, kind, times)
        self._faults.append(fault)
        return fault.gate

    def clear(self) -> None:
        self._faults.clear()

    @classmethod
    def parse(cls, spec: str) -> SandboxFaults:
        """Build faults from ``operation:kind[:times]`` items, comma-separated."""
        faults = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            operation, _, rest = item.partition(":")
            kind, _, times = rest.partition(":")
            if times and not times.isdigit():
                raise ValueError(f"fault {item!r}: times must be a positive integer")
            faults.add(operation, kind, int(times) if times else None)
        return faults

    def _take(self, operation: str, kinds: frozenset[str]) -> Fault | None:
        for fault in self._faults:
            if fault.operation == operation and fault.kind in kinds:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    async def before(self, operation: str) -> None:
        """Strike a fault armed to hit ``operation`` before the provider acts."""
        fault = self._take(operation, BEFORE_KINDS)
        if fault is None:
            return
        if fault.kind == "error":
            raise ProviderUnavailable(f"sandbox {operation}: 500 internal error")
        await _wait(fault)

    async def after(self, operation: str) -> None:
        """Strike a fault armed to hit ``operation`` after the provider acted."""
        fault = self._take(operation, AFTER_KINDS)
        if fault is None:
            return
        if fault.kind == "drop":
            raise ProviderUnavailable(
                f"sandbox {operation}: connection reset before the response"
            )
        await _wait(fault)


async def _wait(fault: Fault) -> None:
    fault.gate.reached.set()
    if fault.kind in ("timeout", "late"):
        # Hang until the caller's timeout cancels the call.
        await asyncio.Event().wait()
    await fault.gate.opened.wait()
