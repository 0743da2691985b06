"""Device-synchronised phase timing and the phase-events file the monitor reads.

Times are CLOCK_MONOTONIC (``time.monotonic``), shared by every process on a host, so the
launcher's power samples and the app's phase boundaries line up without clock exchange.

Every boundary goes through ``PhaseRecorder.mark``, which is also where an in-process launcher
gets control (``on_phase``, see ``sd_energy_contract.workload``): after the device is
synchronised, before a start time is taken and after an end time is taken, so whatever the hook
does (a clock change) is part of neither phase.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from sd_energy_contract import env
from sd_energy_contract.workload import PhaseHook

EVENTS_ENV = env.EVENTS_FILE


def synchronize(device: str) -> None:
    """Wait for queued kernels so a timestamp means the work is done, not merely launched."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


class PhaseRecorder:
    """Accumulates phase durations and appends one JSON line per boundary to the events file."""

    def __init__(self, device: str, events_path: str | Path | None = None, on_phase: PhaseHook | None = None):
        self.device = device
        self.on_phase = on_phase
        self.totals_s: dict[str, float] = defaultdict(float)
        self._events_path = events_path
        self._events = None  # opened at the first event: a request refused by its checks leaves no file

    @classmethod
    def from_env(cls, device: str) -> PhaseRecorder:
        """Process mode: the launcher names the events file in ``SD_ENERGY_EVENTS_FILE``."""
        return cls(device, os.environ.get(EVENTS_ENV) or None)

    def mark(self, event: str, phase: str, **extra) -> float:
        """One boundary: synchronise, hand control to ``on_phase`` outside the phase, timestamp, record."""
        synchronize(self.device)
        if event == "start" and self.on_phase is not None:
            self.on_phase(event, phase)
        now = time.monotonic()
        if self._events_path is not None:
            if self._events is None:
                # Line-buffered append: each event reaches the file as one whole line, in order with
                # the lines an in-process launcher appends to the same file from ``on_phase``.
                self._events = open(self._events_path, "a", buffering=1)  # noqa: SIM115
            self._events.write(json.dumps({"event": event, "phase": phase, "mono_s": now, **extra}) + "\n")
        if event == "end" and self.on_phase is not None:
            self.on_phase(event, phase)
        return now

    def start(self, name: str, **extra) -> float:
        return self.mark("start", name, **extra)

    def end(self, name: str, started: float, **extra) -> float:
        """Close a phase opened at ``started`` (``start``'s return) and add it to the totals."""
        now = self.mark("end", name, **extra)
        self.totals_s[name] += now - started
        return now

    @contextmanager
    def phase(self, name: str, **extra):
        t0 = self.start(name, **extra)
        try:
            yield
        finally:
            self.end(name, t0, **extra)

    def close(self) -> None:
        """Close the events file; a later event opens it again (appending)."""
        if self._events is not None:
            self._events.close()
            self._events = None
