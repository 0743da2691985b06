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

from .backends.base import GpuBackend, GpuSample

MIN_INTERVAL_S = 0.010

# Which phase a sample belongs to when several are open: the innermost, most specific one.
PHASE_PRIORITY = ["denoise_step", "text_encode", "vae_decode", "save", "warmup", "batch", "load"]


class PowerMonitor:
    def __init__(self, backend: GpuBackend, interval_s: float = 0.05):
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"sampling interval {interval_s * 1000:.0f} ms is below the 10 ms minimum")
        self.backend = backend
        self.interval_s = interval_s
        self.samples: list[GpuSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
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
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="power-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[GpuSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self.backend.sample())  # close the window at the stop time
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

def _interp(samples: list[GpuSample], attr: str, t: float) -> float | None:
    pts = [(s.mono_s, getattr(s, attr)) for s in samples if getattr(s, attr) is not None]
    if not pts:
        return None
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return pts[-1][1]


def integrate_power_j(samples: list[GpuSample], t_start: float | None = None, t_end: float | None = None) -> float | None:
    """Trapezoid integral of power over [t_start, t_end] (the whole trace by default)."""
    pts = [(s.mono_s, s.power_w) for s in samples if s.power_w is not None]
    if len(pts) < 2:
        return None
    t_start = pts[0][0] if t_start is None else t_start
    t_end = pts[-1][0] if t_end is None else t_end
    inner = [(t, p) for t, p in pts if t_start < t < t_end]
    edges = [(t_start, _interp(samples, "power_w", t_start)), *inner, (t_end, _interp(samples, "power_w", t_end))]
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(edges, edges[1:], strict=False))


def counter_energy_j(samples: list[GpuSample], t_start: float | None = None, t_end: float | None = None) -> float | None:
    """Energy from the hardware counter's difference over the window (None without a counter)."""
    pts = [s for s in samples if s.energy_mj is not None]
    if len(pts) < 2:
        return None
    t_start = pts[0].mono_s if t_start is None else t_start
    t_end = pts[-1].mono_s if t_end is None else t_end
    e0, e1 = _interp(pts, "energy_mj", t_start), _interp(pts, "energy_mj", t_end)
    return (e1 - e0) / 1000.0


def window_energy_j(samples: list[GpuSample], t_start=None, t_end=None) -> float | None:
    """The counter where there is one (exact, hardware-integrated), otherwise integrated power."""
    e = counter_energy_j(samples, t_start, t_end)
    return e if e is not None else integrate_power_j(samples, t_start, t_end)


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
    if not Path(path).exists():
        return []
    text = Path(path).read_text()
    lines = text[: text.rfind("\n") + 1].splitlines()
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
    labels = []
    for s in samples:
        open_phases = {sp.phase for sp in spans if sp.start_s <= s.mono_s <= sp.end_s}
        labels.append(next((p for p in PHASE_PRIORITY if p in open_phases), "process"))
    return labels


def work_window(spans: list[PhaseSpan]) -> tuple[float, float] | None:
    """Steady-state generation: from the first measured batch's start to the last one's end (warm-up excluded)."""
    batches = [sp for sp in spans if sp.phase == "batch"]
    if not batches:
        return None
    return min(b.start_s for b in batches), max(b.end_s for b in batches)


def phase_energy_j(samples: list[GpuSample], spans: list[PhaseSpan]) -> dict[str, float]:
    """Energy per phase name, summed over its spans (nested spans are counted in each level)."""
    out: dict[str, float] = {}
    for sp in spans:
        e = window_energy_j(samples, sp.start_s, sp.end_s)
        if e is not None:
            out[sp.phase] = out.get(sp.phase, 0.0) + e
    return out
