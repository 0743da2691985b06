"""Device-synchronised phase timing and the phase-events file the monitor reads.

Times are CLOCK_MONOTONIC (``time.monotonic``), shared by every process on a host, so the
launcher's power samples and the app's phase boundaries line up without clock exchange.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from sd_energy_contract import env

EVENTS_ENV = env.EVENTS_FILE


def synchronize(device: str) -> None:
    """Wait for queued kernels so a timestamp means the work is done, not merely launched."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


class PhaseRecorder:
    """Accumulates phase durations and appends one JSON line per boundary to the events file."""

    def __init__(self, device: str, events_path: str | None = None):
        self.device = device
        self.totals_s: dict[str, float] = defaultdict(float)
        self._events = open(events_path, "a", buffering=1) if events_path else None  # noqa: SIM115

    @classmethod
    def from_env(cls, device: str) -> PhaseRecorder:
        return cls(device, os.environ.get(EVENTS_ENV) or None)

    def mark(self, event: str, phase: str, **extra) -> float:
        synchronize(self.device)
        now = time.monotonic()
        if self._events is not None:
            self._events.write(json.dumps({"event": event, "phase": phase, "mono_s": now, **extra}) + "\n")
        return now

    @contextmanager
    def phase(self, name: str, **extra):
        t0 = self.mark("start", name, **extra)
        try:
            yield
        finally:
            self.totals_s[name] += self.mark("end", name, **extra) - t0

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
