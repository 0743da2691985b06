"""Background power sampling and energy accounting over time windows and app phases.

The sampling thread keeps an absolute schedule (tick k at t0 + k*interval), so a slow read
delays one sample instead of shifting every later one. Energy is reported two ways where
the GPU has a counter: the counter's difference and the trapezoid integral of sampled power;
keeping both shows when one of them cannot be trusted.

Which of the two a figure uses depends on the window (``Sensors.choose``): the counter advances
in steps (about every 100 ms on Volta to Hopper), so over a window shorter than a few steps its
difference measures the step timing, not the work; there the integral of instantaneous power is
used instead, and a window too short for every sensor is marked low-confidence. Per-step energies
are never taken from the counter: the denoising steps are one phase (its total and per-step mean).
"""

from __future__ import annotations

import functools
import json
import operator
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sd_energy_contract.files import complete_lines
from sd_energy_contract.gpus import sensor_model
from sd_energy_contract.phases import (
    BATCH,
    CONTAINER_PHASES,
    DENOISE_STEP,
    LEAF_PHASES,
    PHASE_PRIORITY,
    PROCESS,
    TEXT_ENCODE,
    VAE_DECODE,
    WORK_PHASES,
)

from .backends.base import GpuBackend, GpuSample

MIN_INTERVAL_S = 0.010
__all__ = ["PHASE_PRIORITY", "WORK_PHASES", "PowerMonitor", "EnergyTrace", "PhaseSpan", "read_events",
           "label_samples", "work_window", "measure_idle_power_w", "Sensors", "WindowEnergy", "phase_energies",
           "measure_counter_period_s", "TemperatureSettle", "throttle_mask"]

# A window's energy is trusted ("ok") when it spans at least this many updates of the sensor it comes
# from: each edge can be off by up to one update, so the error is at most about 2/MIN_PERIODS.
MIN_PERIODS = 5
MIN_POWER_SAMPLES = 5   # and, when integrated, holds at least this many power samples
COUNTER = "counter"
INTEGRATED_INSTANT = "integrated-instantaneous"
INTEGRATED_AVERAGED = "integrated-averaged"
OK, LOW = "ok", "low"


class PowerMonitor:
    def __init__(self, backend: GpuBackend, interval_s: float = 0.05):
        if interval_s < MIN_INTERVAL_S:
            raise ValueError(f"sampling interval {interval_s * 1000:.0f} ms is below the 10 ms minimum")
        self.backend = backend
        self.interval_s = interval_s
        # Streaming backends (nvidia-smi -lms, dcgmi dmon -d) produce readings at their own rate: ask for
        # this one, or a 10 ms sampler would read the same 50/100 ms reading five or ten times.
        set_interval = getattr(backend, "set_sampling_interval", None)
        if set_interval is not None:
            set_interval(interval_s)
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


def measure_counter_period_s(backend: GpuBackend, max_s: float = 1.0, intervals: int = 3, poll_s: float = 0.002,
                             clock=time.monotonic, sleep=time.sleep) -> float | None:
    """The energy counter's update period, measured: poll it until it has advanced ``intervals + 1``
    times (or ``max_s`` passed) and take the median time between advances. None without a counter.

    The declared period (``backend.energy_update_period_s``) is what a datasheet says; what decides
    whether a window is too short for the counter is what this GPU and driver do. A counter that did
    not advance twice within ``max_s`` gives ``max_s``: at least that coarse.
    """
    first = backend.energy_mj()
    if first is None:
        return None
    last, edges = first, []
    deadline = clock() + max_s
    while len(edges) <= intervals and clock() < deadline:
        sleep(poll_s)
        value = backend.energy_mj()
        if value is not None and value != last:
            edges.append(clock())
            last = value
    if len(edges) < 2:
        return float(max_s)
    return float(statistics.median(b - a for a, b in zip(edges, edges[1:], strict=False)))


@dataclass(frozen=True)
class Settled:
    wait_s: float
    temp_c: float | None
    reason: str   # "target", "stable", "timeout" or "no sensor"


class TemperatureSettle:
    """Before a run, wait until the GPU is at or below ``target_c``, or has stopped cooling (within
    ``stable_c`` over ``stable_s``), for at most ``timeout_s``.

    Without it a sweep's first clocks run on a cool GPU and its last on a hot one, and the slope of
    energy against the clock is partly a heating curve (leakage power grows with temperature).
    ``clock`` and ``sleep`` are class attributes so a test can run the wait on injected time.
    """

    clock = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    def __init__(self, target_c: float, timeout_s: float, stable_c: float = 1.0, stable_s: float = 5.0,
                 poll_s: float = 0.5):
        self.target_c, self.timeout_s = target_c, timeout_s
        self.stable_c, self.stable_s, self.poll_s = stable_c, stable_s, poll_s

    def wait(self, backend: GpuBackend) -> Settled:
        t0 = self.clock()
        seen: list[tuple[float, float]] = []
        while True:
            now = self.clock()
            temp = backend.sample().temp_c
            if temp is None:
                return Settled(now - t0, None, "no sensor")
            if temp <= self.target_c:
                return Settled(now - t0, temp, "target")
            seen.append((now, temp))
            recent = [c for t, c in seen if t >= now - self.stable_s]
            if now - seen[0][0] >= self.stable_s and max(recent) - min(recent) <= self.stable_c:
                return Settled(now - t0, temp, "stable")
            if now - t0 >= self.timeout_s:
                return Settled(now - t0, temp, "timeout")
            self.sleep(self.poll_s)


def throttle_mask(samples: list[GpuSample]) -> int | None:
    """The throttle (clock-event) reasons seen in any of these samples, OR-ed; None where no sample had a mask.
    A mask read back from a samples file may be a float (or NaN where it was empty)."""
    masks = [int(m) for m in (s.throttle_mask for s in samples) if m is not None and m == m]
    return functools.reduce(operator.or_, masks, 0) if masks else None


# --------------------------------------------------------------------------- energy over windows

@dataclass(frozen=True)
class Sensors:
    """What decides which figure a window's energy comes from and whether it can be trusted.

    ``counter_period_s``: the energy counter's update period (measured at the sweep's start, else
    declared by the backend; None: continuous or unknown, and the counter is used at any length).
    ``power_source``: what ``GpuSample.power_w`` is, "instantaneous", "averaged" (a moving average
    over ``power_avg_window_s``, e.g. H100 ``nvmlDeviceGetPowerUsage`` over 1 s) or "modelled" (the
    simulated GPU's model: instantaneous by construction).
    """

    power_source: str = "averaged"
    counter_period_s: float | None = None
    power_update_period_s: float | None = None
    power_avg_window_s: float | None = None

    @classmethod
    def of(cls, backend: GpuBackend, gpu_type: str | None = None,
           counter_period_s: float | None = None) -> Sensors:
        """The backend's declared sensors, with the counter period measured where one was."""
        avg = sensor_model(gpu_type).get("power_avg_window_s") if gpu_type else None
        declared = getattr(backend, "energy_update_period_s", None)
        return cls(power_source=getattr(backend, "power_source", GpuBackend.power_source),
                   counter_period_s=counter_period_s if counter_period_s is not None else declared,
                   power_update_period_s=getattr(backend, "power_update_period_s", None),
                   power_avg_window_s=avg)

    @property
    def integrated_source(self) -> str:
        return INTEGRATED_AVERAGED if self.power_source == "averaged" else INTEGRATED_INSTANT

    def choose(self, shortest_s: float, total_s: float, power_samples: int, has_counter: bool) -> tuple[str, str]:
        """(source, confidence) for windows whose shortest span is ``shortest_s`` and whose spans add
        up to ``total_s`` holding ``power_samples`` power readings.

        The counter where every span covers MIN_PERIODS of its updates. Otherwise integrated power,
        trusted when it holds MIN_POWER_SAMPLES readings over MIN_PERIODS of the power sensor's
        resolution (many short spans, such as denoising steps, add up: the sampling averages out).
        A moving-average reading cannot resolve a short window at all (it smears one second), so
        where power is averaged a short window keeps the counter, both marked low.
        """
        if has_counter and shortest_s >= MIN_PERIODS * (self.counter_period_s or 0.0):
            return COUNTER, OK
        if self.power_source == "averaged" and has_counter:
            return COUNTER, LOW
        if self.power_source == "averaged":
            resolution = self.power_avg_window_s or self.power_update_period_s or 0.0
        else:
            resolution = self.power_update_period_s or 0.0
        enough = power_samples >= MIN_POWER_SAMPLES and total_s >= MIN_PERIODS * resolution
        return self.integrated_source, OK if enough else LOW


@dataclass(frozen=True)
class WindowEnergy:
    """The energy of one window (or the sum over several spans), with where it came from."""

    energy_j: float | None
    source: str | None
    confidence: str
    duration_s: float
    spans: int

    def as_json(self) -> dict:
        return {"energy_j": None if self.energy_j is None else round(self.energy_j, 4),
                "duration_s": round(self.duration_s, 4), "spans": self.spans, "source": self.source,
                "confidence": self.confidence}


class EnergyTrace:
    """A run's samples as arrays, for energy over any number of windows in O(log n) each.

    The cumulative trapezoid integral of power is computed once; a window edge inside a sample
    interval adds the exact trapezoid up to the linearly interpolated power there. The counter
    (where the backend has one) is interpolated linearly between readings. ``sensors`` decides
    which of the two a window's energy is (``energy``); without it the counter is always preferred.
    """

    def __init__(self, samples: list[GpuSample], sensors: Sensors | None = None):
        self.sensors = sensors or Sensors()
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

    def by_source(self, source: str | None, t0, t1) -> float | None:
        """The energy over [t0, t1] (arrays: summed) from the named source, None where it has no data."""
        e = self.counter_j(t0, t1) if source == COUNTER else self.integrated_j(t0, t1) if source else None
        return None if e is None else float(np.sum(e))

    def energy(self, starts, ends) -> WindowEnergy:
        """The energy of a window, or summed over spans, from the source ``sensors`` chooses for them."""
        starts, ends = np.atleast_1d(np.asarray(starts, dtype=float)), np.atleast_1d(np.asarray(ends, dtype=float))
        durations = np.maximum(ends - starts, 0.0)
        inside = int(np.sum(np.searchsorted(self.t_p, ends, "right") - np.searchsorted(self.t_p, starts, "left")))
        has_counter = len(self.t_e) >= 2
        source, confidence = self.sensors.choose(float(durations.min()), float(durations.sum()), inside, has_counter)
        energy = self.by_source(source, starts, ends)
        if energy is None:  # the chosen sensor has no readings here: the other one, if any, marked low
            other = self.sensors.integrated_source if source == COUNTER else COUNTER
            energy = self.by_source(other, starts, ends)
            source, confidence = (other, LOW) if energy is not None else (None, LOW)
        return WindowEnergy(energy, source, confidence, float(durations.sum()), len(starts))

    def window_j(self, t0=None, t1=None):
        """The window's energy from the source ``sensors`` chooses (the counter, when there is no
        sensor information); ``t0``/``t1`` default to the trace's ends; arrays of edges are summed."""
        times = np.concatenate([self.t_p, self.t_e])
        if not len(times):
            return None
        t0 = times.min() if t0 is None else t0
        t1 = times.max() if t1 is None else t1
        return self.energy(t0, t1).energy_j

    def phase_energy_j(self, spans: list[PhaseSpan]) -> dict[str, float]:
        """Energy per phase name, summed over its spans (nested spans are counted in each level)."""
        out: dict[str, float] = {}
        for phase in {sp.phase for sp in spans}:
            mine = [sp for sp in spans if sp.phase == phase]
            e = self.window_j(np.array([sp.start_s for sp in mine]), np.array([sp.end_s for sp in mine]))
            if e is not None:
                out[phase] = float(np.sum(e))
        return out


# The phases nothing else runs inside: no span is ever folded into them, so they need no nesting check.
_INNERMOST = frozenset({TEXT_ENCODE, DENOISE_STEP, VAE_DECODE})


def phase_energies(trace: EnergyTrace, spans: list[PhaseSpan]) -> dict[str, dict]:
    """A run's ``phase_energy_json``: per phase its energy, duration, span count, source and confidence.

    The phases without ``contains`` are disjoint, so their energies add up without counting a
    joule twice; a container (``batch``) says which of them it ``contains``. Spans inside another
    leaf phase are that phase's: warm-up generates a batch of its own (text_encode, denoising steps,
    decode), and those count as ``warmup``, not as the measured work's phases. ``denoise_step`` is
    the whole denoising phase (every step of the run) plus ``steps`` and ``per_step_mean_j``: a
    single step is shorter than the counter's update period, so no per-step energy is reported.
    """
    if not spans:
        return {}
    starts = np.array([sp.start_s for sp in spans], dtype=float)
    ends = np.array([sp.end_s for sp in spans], dtype=float)
    phases = np.array([sp.phase for sp in spans], dtype=object)
    folded = np.zeros(len(spans), dtype=bool)
    contains: dict[str, set[str]] = {}
    holders = [i for i, sp in enumerate(spans) if sp.phase not in _INNERMOST]
    for i in holders:
        inner = (starts >= starts[i]) & (ends <= ends[i]) & (phases != phases[i])
        if not inner.any():
            continue
        if spans[i].phase in CONTAINER_PHASES or spans[i].phase not in LEAF_PHASES:
            contains.setdefault(spans[i].phase, set()).update(phases[inner])
        else:
            folded |= inner
    out: dict[str, dict] = {}
    known = {p: k for k, p in enumerate(LEAF_PHASES)}
    names = sorted({sp.phase for sp in spans}, key=lambda p: (p in contains, known.get(p, len(known)), p))
    for phase in names:
        mine = (phases == phase) & ~folded
        if not mine.any():
            continue
        w = trace.energy(starts[mine], ends[mine])
        if w.energy_j is None:
            continue
        entry = w.as_json()
        if phase == DENOISE_STEP:
            entry.update(steps=w.spans, per_step_mean_j=round(w.energy_j / w.spans, 6))
        if phase in contains:
            entry["contains"] = sorted(contains[phase] - set(contains))
        out[phase] = entry
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
