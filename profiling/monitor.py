"""Background power sampling and energy accounting over time windows and app phases.

The sampling thread keeps an absolute schedule (tick k at t0 + k*interval), so a slow read
delays one sample instead of shifting every later one. Energy is reported two ways where
the GPU has a counter: the counter's difference and the trapezoid integral of sampled power;
keeping both shows when one of them cannot be trusted.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sd_energy_contract.files import complete_lines
from sd_energy_contract.phases import BATCH, PHASE_PRIORITY, PROCESS, WORK_PHASES

from .backends.base import GpuBackend, GpuSample

MIN_INTERVAL_S = 0.010
__all__ = ["PHASE_PRIORITY", "WORK_PHASES", "PowerMonitor", "EnergyTrace", "PhaseSpan", "read_events",
           "label_samples", "work_window", "measure_idle_power_w"]


class PowerMonitor:
    def __init__(self, backend: GpuBackend, interval_s: float = 0.05):
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"sampling interval {interval_s * 1000:.0f} ms is below the 10 ms minimum")
        self.backend = backend
        self.interval_s = interval_s
        self.samples: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # why the sampling thread stopped early, if it did

    def _loop(self) -> None:
        try:
            self._sample_until_stopped()
        except Exception as exc:  # noqa: BLE001 - kept for the run's row: its samples end here
            self.error = exc

    def _sample_until_stopped(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            self.samples.append(self.backend.sample())
            k += 1
            delay = t0 + k * self.interval_s - time.monotonic()
            if delay < 0:  # fell behind: skip the missed ticks rather than burst
                k += int(-delay / self.interval_s) + 1
                delay = t0 + k * self.interval_s - time.monotonic()
            self._stop.wait(max(0.0, delay))

    def start(self) -> PowerMonitor:
        self.samples = []
        self.error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="power-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[GpuSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.samples.append(self.backend.sample())  # close the window at the stop time
        except Exception as exc:  # noqa: BLE001
            self.error = self.error or exc
        return self.samples

    def __enter__(self) -> PowerMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def measure_idle_power_w(backend: GpuBackend, seconds: float, interval_s: float = 0.05) -> float | None:
    """Mean power with nothing running, for the idle/static share of each run's energy."""
    mon = PowerMonitor(backend, interval_s).start()
    time.sleep(seconds)
    watts = [s.power_w for s in mon.stop() if s.power_w is not None]
    return sum(watts) / len(watts) if watts else None


# --------------------------------------------------------------------------- energy over windows

class EnergyTrace:
    """A run's samples as arrays, for energy over any number of windows in O(log n) each.

    The cumulative trapezoid integral of power is computed once; a window edge inside a sample
    interval adds the exact trapezoid up to the linearly interpolated power there. The counter
    (where the backend has one) is interpolated linearly between readings.
    """

    def __init__(self, samples: list[GpuSample]):
        pw = [(s.mono_s, s.power_w) for s in samples if s.power_w is not None]
        ct = [(s.mono_s, s.energy_mj) for s in samples if s.energy_mj is not None]
        self.t_p = np.array([x for x, _ in pw], dtype=float)
        self.p = np.array([y for _, y in pw], dtype=float)
        self.t_e = np.array([x for x, _ in ct], dtype=float)
        self.e_mj = np.array([y for _, y in ct], dtype=float)
        steps = np.diff(self.t_p) * (self.p[1:] + self.p[:-1]) / 2 if len(self.p) > 1 else np.array([])
        self.cum_j = np.concatenate([[0.0], np.cumsum(steps)])

    def _cum_at(self, x):
        x = np.clip(np.asarray(x, dtype=float), self.t_p[0], self.t_p[-1])
        i = np.clip(np.searchsorted(self.t_p, x, side="right") - 1, 0, len(self.t_p) - 1)
        p_x = np.interp(x, self.t_p, self.p)
        return self.cum_j[i] + (x - self.t_p[i]) * (self.p[i] + p_x) / 2

    def integrated_j(self, t0=None, t1=None):
        if len(self.t_p) < 2:
            return None
        t0 = self.t_p[0] if t0 is None else t0
        t1 = self.t_p[-1] if t1 is None else t1
        return self._cum_at(t1) - self._cum_at(t0)

    def counter_j(self, t0=None, t1=None):
        if len(self.t_e) < 2:
            return None
        t0 = self.t_e[0] if t0 is None else t0
        t1 = self.t_e[-1] if t1 is None else t1
        return (np.interp(t1, self.t_e, self.e_mj) - np.interp(t0, self.t_e, self.e_mj)) / 1000.0

    def window_j(self, t0=None, t1=None):
        """The counter where there is one (hardware-integrated), otherwise integrated power."""
        e = self.counter_j(t0, t1)
        return e if e is not None else self.integrated_j(t0, t1)

    def phase_energy_j(self, spans: list[PhaseSpan]) -> dict[str, float]:
        """Energy per phase name, summed over its spans (nested spans are counted in each level)."""
        out: dict[str, float] = {}
        for phase in {sp.phase for sp in spans}:
            mine = [sp for sp in spans if sp.phase == phase]
            e = self.window_j(np.array([sp.start_s for sp in mine]), np.array([sp.end_s for sp in mine]))
            if e is not None:
                out[phase] = float(np.sum(e))
        return out


def _scalar(v):
    return None if v is None else float(v)


def integrate_power_j(samples: list[GpuSample], t_start: float | None = None, t_end: float | None = None) -> float | None:
    """Trapezoid integral of power over [t_start, t_end] (the whole trace by default)."""
    return _scalar(EnergyTrace(samples).integrated_j(t_start, t_end))


def counter_energy_j(samples: list[GpuSample], t_start: float | None = None, t_end: float | None = None) -> float | None:
    """Energy from the hardware counter's difference over the window (None without a counter)."""
    return _scalar(EnergyTrace(samples).counter_j(t_start, t_end))


def window_energy_j(samples: list[GpuSample], t_start=None, t_end=None) -> float | None:
    return _scalar(EnergyTrace(samples).window_j(t_start, t_end))


# --------------------------------------------------------------------------- phases from the app's events

@dataclass
class PhaseSpan:
    phase: str
    start_s: float
    end_s: float
    step: int | None = None
    batch: int | None = None


def read_events(path: Path) -> list[PhaseSpan]:
    """Pair start/end events into spans; a half-written last line or an unclosed span is dropped."""
    lines = complete_lines(path)
    open_spans: dict[tuple, dict] = {}
    spans = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        key = (ev.get("phase"), ev.get("step"), ev.get("batch"))
        if ev.get("event") == "start":
            open_spans[key] = ev
        elif ev.get("event") == "end" and key in open_spans:
            st = open_spans.pop(key)
            spans.append(PhaseSpan(ev["phase"], st["mono_s"], ev["mono_s"], ev.get("step"), ev.get("batch")))
    return sorted(spans, key=lambda s: s.start_s)


def label_samples(samples: list[GpuSample], spans: list[PhaseSpan]) -> list[str]:
    """The innermost phase open at each sample's time, or 'process' (app running, no phase)."""
    t = np.array([s.mono_s for s in samples], dtype=float)
    rank = np.full(len(t), len(PHASE_PRIORITY))  # lower rank = more specific phase
    for sp in spans:
        if sp.phase in PHASE_PRIORITY:
            lo, hi = np.searchsorted(t, sp.start_s, "left"), np.searchsorted(t, sp.end_s, "right")
            np.minimum(rank[lo:hi], PHASE_PRIORITY.index(sp.phase), out=rank[lo:hi])
    names = [*PHASE_PRIORITY, PROCESS]
    return [names[r] for r in rank]


def work_window(spans: list[PhaseSpan]) -> tuple[float, float] | None:
    """Steady-state generation: from the first measured batch's start to the last one's end (warm-up excluded)."""
    batches = [sp for sp in spans if sp.phase == BATCH]
    if not batches:
        return None
    return min(b.start_s for b in batches), max(b.end_s for b in batches)


def phase_energy_j(samples: list[GpuSample], spans: list[PhaseSpan]) -> dict[str, float]:
    """Energy per phase name from a run's samples (see ``EnergyTrace.phase_energy_j``)."""
    return EnergyTrace(samples).phase_energy_j(spans)
