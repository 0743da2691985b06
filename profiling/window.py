"""The window API: measure the energy of any stretch of your own code, and lock the clock around it.

::

    from profiling import EnergyMonitor, locked_clock

    with EnergyMonitor(gpus=[0]) as mon, locked_clock(1410, gpu=0):
        mon.begin_window("denoise")
        pipe(prompt)                          # the code to measure
        m = mon.end_window("denoise")
    print(m.time_s, m.energy_j, m.energy_source, m.avg_power_w, m.per_gpu)

What Zeus users expect (``begin_window``/``end_window`` by name, per-GPU energy, the hardware
counter where there is one) plus what Zeus lacks: a warning when a window is too short for the
sensor behind it, the raw sample trace as a DataFrame, a clock lock that is put back on every way
out (exception, SIGINT/SIGTERM/SIGUSR1/SIGHUP, interpreter exit; a lock record repairs SIGKILL),
and the same code running on a CPU machine against the documented simulated GPU, where every
``Measurement`` says ``synthetic=True``.

How a window is measured: one ``PowerMonitor`` sampling thread per GPU runs from construction to
``close()``. A window is two ``time.monotonic()`` stamps (CLOCK_MONOTONIC, the clock the app's phase
events and the launcher's samples use). ``end_window`` takes one synchronous sample per GPU after
the end stamp, so the end edge always lies between two readings, and computes the energy with
``EnergyTrace`` from the samples around the window: the hardware counter's difference where the
backend has a counter, the trapezoid integral of sampled power otherwise, both interpolated at
the edges. Windows cost nothing while open, so they nest and overlap freely.

The simulated GPU (picked on a CPU machine or with ``SD_ENERGY_FORCE_SIMULATED=1``) draws the power
of its documented model for the phase its current run's events file says is active
(``backend.begin_run(events_path)``) and idle power otherwise; its numbers are a model, not a
measurement, and say so (``synthetic``).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import numbers
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sd_energy_contract.errors import InputError
from sd_energy_contract.gpus import detect_gpu_type, load_gpu_specs
from sd_energy_contract.layout import SAMPLE_COLUMNS

from .backends import BACKENDS, open_backend, open_job_gpu
from .backends.base import GpuBackend, GpuSample
from .clocks import ClockGuard, lock_holder
from .errors import ClockError, GpuError
from .monitor import MIN_INTERVAL_S, EnergyTrace, PowerMonitor

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EnergyMonitor", "Measurement", "ShortWindowWarning", "SparseSamplesWarning", "ClockLock",
           "locked_clock", "SHORT_WINDOW_PERIODS", "SOURCE_COUNTER", "SOURCE_POWER"]

SOURCE_COUNTER = "counter"
SOURCE_POWER = "integrated power"
SOURCE_NONE = "none"  # the GPU reported neither power nor energy in the window: its energy is NaN

# A window shorter than this many sensor resolutions gets a ShortWindowWarning. Why 10: a sensor
# that refreshes every p seconds reports a value up to p old at each edge. Both edges lag the same
# way, so the error of the difference is P * (lag_start - lag_end): at most one period's worth of
# energy, P * p, and about a third of that on average (two uniform lags). Relative to a window of
# T, that is at most p / T: at 10 periods the sensor's timing can still move the result by up to
# 10 % (typically ~3 %); below that it is the sensor's refresh being measured, not the work.
SHORT_WINDOW_PERIODS = 10
# Fewer samples than this share of what the interval promises means the sampling thread stalled
# (a busy interpreter holding the GIL, a slow sensor such as nvidia-smi): the energy is then
# interpolated across gaps the sensor was never asked about.
SPARSE_SAMPLES_FRACTION = 0.5

SyncFn = Callable[[], object]


class ShortWindowWarning(UserWarning):
    """A window lasted fewer than ``SHORT_WINDOW_PERIODS`` resolutions of the sensor that measured it."""


class SparseSamplesWarning(UserWarning):
    """A window got far fewer samples than the sampling interval promises."""


@dataclass(frozen=True)
class Measurement:
    """One window's result. Energy and power are totals over ``gpus``; ``per_gpu`` has each GPU's share.

    ``energy_source`` is ``"counter"`` (the hardware energy counter's difference) or
    ``"integrated power"`` (trapezoid of sampled power) when every GPU used the same source, else
    ``"mixed"`` (see ``per_gpu``). ``per_gpu[i]`` holds ``energy_j``, ``avg_power_w``,
    ``energy_source``, ``samples`` (readings inside the window), both estimates
    ``energy_counter_j``/``energy_integrated_j`` (None where unavailable, so they can be compared),
    ``backend`` and ``synthetic``. ``synthetic`` is True where any number is modelled (the simulated
    GPU). ``warnings`` repeats what was raised through ``warnings.warn`` for this window.
    """

    time_s: float
    energy_j: float
    energy_source: str
    avg_power_w: float
    per_gpu: dict[int, dict[str, Any]]
    gpus: tuple[int, ...]
    synthetic: bool
    warnings: list[str]
    name: str
    start_s: float      # time.monotonic() at the window's start (after sync)
    end_s: float        # time.monotonic() at the window's end (after sync)
    backend: str


# --------------------------------------------------------------------------- serialised sampling

# One lock per backend object: the monitor's thread, end_window's synchronous reading and
# locked_clock's read-back may sample the same GPU object from different threads, and a backend's
# sample() is not guaranteed to be re-entrant (the simulated GPU integrates its counter from the
# previous call's time and power, which two interleaved calls would corrupt).
_SAMPLE_LOCKS: weakref.WeakKeyDictionary[GpuBackend, threading.Lock] = weakref.WeakKeyDictionary()
_SAMPLE_LOCKS_GUARD = threading.Lock()


def _sample_lock(backend: GpuBackend) -> threading.Lock:
    with _SAMPLE_LOCKS_GUARD:
        lock = _SAMPLE_LOCKS.get(backend)
        if lock is None:
            lock = _SAMPLE_LOCKS[backend] = threading.Lock()
        return lock


class _SerialSampler:
    """What ``PowerMonitor`` sees of a backend: ``sample()`` under that backend's lock.

    ``PowerMonitor`` calls nothing but ``sample()``, so this stands in for the backend without a
    second sampler being written.
    """

    def __init__(self, backend: GpuBackend):
        self.backend = backend
        self._lock = _sample_lock(backend)

    def sample(self) -> GpuSample:
        with self._lock:
            return self.backend.sample()


def _mono(s: GpuSample) -> float:
    return s.mono_s


class _Channel:
    """One GPU: its backend, its sampling thread and the synchronous readings taken around windows."""

    def __init__(self, gpu: int, backend: GpuBackend, owned: bool, interval_s: float):
        self.gpu, self.backend, self.owned = gpu, backend, owned
        self.sampler = _SerialSampler(backend)
        self.extra: list[GpuSample] = []   # synchronous readings, sorted by time
        self.extra_lock = threading.Lock()
        # A reading before the thread starts: every window start then has a sample at or before it,
        # even a window begun right after construction, before the thread's first tick.
        first = self.take_sample()
        self.has_counter = first.energy_mj is not None
        self.monitor = PowerMonitor(cast(GpuBackend, self.sampler), interval_s).start()

    def take_sample(self) -> GpuSample:
        s = self.sampler.sample()
        with self.extra_lock:
            bisect.insort(self.extra, s, key=_mono)
        return s

    def samples_around(self, t: float | None = None) -> list[GpuSample]:
        """All readings from the last one at or before ``t`` on (all of them when ``t`` is None), by time.

        Bisecting from ``t`` keeps end_window's cost to the window's own samples, however long the
        monitor has been running.
        """
        thread = self.monitor.samples
        n = len(thread)  # the thread only appends, in time order; this is a consistent prefix
        with self.extra_lock:
            extra = list(self.extra)
        if t is None:
            merged = thread[:n] + extra
        else:
            i = max(0, bisect.bisect_right(thread, t, 0, n, key=_mono) - 1)
            j = max(0, bisect.bisect_right(extra, t, key=_mono) - 1)
            merged = thread[i:n] + extra[j:]
        merged.sort(key=_mono)
        return merged

    def source_period_s(self, counter: bool) -> float | None:
        b = self.backend
        return b.energy_update_period_s if counter else b.power_update_period_s


# --------------------------------------------------------------------------- opening backends

def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _quiet(msg: str) -> None:
    """The simulated GPU's banner is printed once per monitor, not once per GPU."""


def _check_backend_name(name: object) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise InputError("backend", name, f"unknown backend; one of {', '.join(b for b in BACKENDS if b != 'replay')}"
                                          " or an open backend object")
    if name == "replay":
        raise InputError("backend", name, "replays recorded runs; it cannot measure code running now")
    return name


def _check_gpu_type(gpu_type: str | None) -> None:
    if gpu_type is not None:
        known = load_gpu_specs()
        if gpu_type not in known:
            raise InputError("gpu_type", gpu_type, f"unknown GPU type; known: {', '.join(known)}")


def _check_index(option: str, value: object, i: object) -> int:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
        raise InputError(option, value, f"GPU indices are whole numbers, got {i!r}")
    if i < 0:
        raise InputError(option, value, f"GPU index {i} is negative")
    return int(i)


def _open_gpus(option: str, value: object, indices: list[int], name: str,
               gpu_type: str | None) -> dict[int, GpuBackend]:
    """Open one backend per GPU index with one backend kind; close what was opened on failure.

    ``auto`` is resolved once, on GPU 0 (every machine with a GPU has one), and the same kind is
    used for every index: probing each index would turn a missing GPU 5 on an NVML node into a
    silent fallback to the simulated GPU. A GPU the backend cannot open, or does not list as
    visible, is the caller's bad index (``InputError`` naming ``option``) when GPU 0 opens fine.
    """
    opened: dict[int, GpuBackend] = {}
    announce: Callable[[str], None] = _to_stderr
    try:
        if name == "auto":
            probe = open_backend("auto", 0, gpu_type, announce=announce)
            announce, name = _quiet, probe.name
            probe.close()
        for i in indices:
            # Index i is the i-th GPU this process's CUDA sees (torch's cuda:i), mapped through
            # CUDA_VISIBLE_DEVICES to the GPU itself, exactly as the launcher's --gpu-index.
            try:
                opened[i] = open_job_gpu(name, i, gpu_type, announce=announce)[0]
            except InputError as exc:  # phrased for the launcher's --gpu-index; here the index is in `option`
                raise InputError(option, value, f"GPU {i}: " + exc.problem.replace("--gpu-index ", "")) from None
            except GpuError as exc:
                if i == 0 or not _opens(name, gpu_type):
                    raise  # the backend itself is unavailable: its own message says what to do
                raise InputError(option, value, f"GPU {i} cannot be opened through {name}: {exc}") from None
            announce = _quiet
    except BaseException:
        for backend in opened.values():
            backend.close()
        raise
    return opened


def _opens(name: str, gpu_type: str | None) -> bool:
    """Whether GPU 0 opens through ``name``: tells a bad index from a missing driver or library."""
    try:
        open_backend(name, 0, gpu_type, announce=_quiet).close()
    except GpuError:
        return False
    return True


def _resolve_gpus(option: str, gpus: object, backend: object, gpu_type: str | None,
                  default: list[int]) -> tuple[dict[int, GpuBackend], set[int]]:
    """(index -> backend, indices whose backend we opened and must close) from the caller's arguments."""
    _check_gpu_type(gpu_type)
    given: list[GpuBackend] | None = None
    if isinstance(backend, GpuBackend):
        given = [backend]
    elif isinstance(backend, Sequence) and not isinstance(backend, str):
        if not backend or not all(isinstance(b, GpuBackend) for b in backend):
            raise InputError("backend", backend, "give a backend name, an open backend, or a list of open backends")
        given = list(backend)
    if gpus is None:
        indices = [b.index for b in given] if given else list(default)
    else:
        seq = [gpus] if isinstance(gpus, numbers.Integral) else gpus
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise InputError(option, gpus, "give a list of GPU indices, e.g. [0]")
        if not seq:
            raise InputError(option, gpus, "no GPU given; e.g. [0]")
        indices = [_check_index(option, gpus, i) for i in seq]
        if len(set(indices)) != len(indices):
            raise InputError(option, gpus, "a GPU is listed twice")
    for b in given or []:
        if b.replays:
            raise InputError("backend", b.name, "replays recorded runs; it cannot measure code running now")
    if given is not None:
        by_index = {b.index: b for b in given}
        if len(by_index) != len(given) or sorted(by_index) != sorted(indices):
            raise InputError(option, gpus, f"does not match the backends given (GPUs {sorted(by_index)})")
        for i, b in by_index.items():
            if i not in b.visible_devices():
                raise InputError(option, gpus, f"GPU {i} is not visible through {b.name}")
        return {i: by_index[i] for i in indices}, set()
    opened = _open_gpus(option, gpus if gpus is not None else indices, indices, _check_backend_name(backend),
                        gpu_type)
    return opened, set(opened)


# --------------------------------------------------------------------------- the monitor

class EnergyMonitor:
    """Energy of named windows of your code, on one or more GPUs, from one sampling thread per GPU.

    ``gpus``: GPU indices (default ``[0]``, or the indices of the backends given). ``backend``:
    ``"auto"`` (NVML, then nvidia-smi, then the simulated GPU on a CPU machine), a backend name,
    or an already open backend object (or a list of them), which the monitor uses but does not
    close, so the same GPU object can be shared with ``locked_clock``. ``gpu_type``: the simulated
    GPU's type (default H100). ``sampling_interval_s``: how often each thread reads the sensors
    (10 ms minimum: faster only measures the sampling). ``sync``: the default for ``begin_window``
    and ``end_window``'s ``sync``.

    Sampling starts here and stops at ``close()`` (or the end of a ``with`` block). Every argument
    is checked here, once, so a long run does not fail at its first window. The trace is kept
    until ``close()`` (tens of bytes per reading: about 2 MB per GPU-hour at 50 ms) because
    ``samples_frame`` returns all of it.
    """

    def __init__(self, gpus: Sequence[int] | int | None = None, backend: str | GpuBackend | Sequence[GpuBackend] = "auto",
                 gpu_type: str | None = None, sampling_interval_s: float = 0.05, sync: SyncFn | None = None):
        if (isinstance(sampling_interval_s, bool) or not isinstance(sampling_interval_s, numbers.Real)
                or not math.isfinite(sampling_interval_s)):
            raise InputError("sampling_interval_s", sampling_interval_s, "give a number of seconds, e.g. 0.05")
        if sampling_interval_s < MIN_INTERVAL_S:
            raise InputError("sampling_interval_s", sampling_interval_s,
                             f"below the {MIN_INTERVAL_S * 1000:.0f} ms minimum: faster sampling measures the "
                             "sampling thread, not the GPU")
        if sync is not None and not callable(sync):
            raise InputError("sync", sync, "give a callable, e.g. torch.cuda.synchronize")
        backends, owned = _resolve_gpus("gpus", gpus, backend, gpu_type, default=[0])
        self.interval_s = float(sampling_interval_s)
        self.sync = sync
        self.gpus: tuple[int, ...] = tuple(backends)
        self.backends: dict[int, GpuBackend] = backends
        self._lock = threading.Lock()
        self._open: dict[str, float] = {}
        self._spans: list[tuple[str, float, float]] = []
        self._closed = False
        self._channels: dict[int, _Channel] = {}
        try:
            for i, b in backends.items():
                self._channels[i] = _Channel(i, b, i in owned, self.interval_s)
        except BaseException:
            self._closed = True
            for ch in self._channels.values():
                ch.monitor.stop()
            for i in owned:
                backends[i].close()
            raise
        # A monitor dropped without close() must not leave its threads sampling until the process
        # ends: the threads hold the channels, not the monitor, so it can be collected and stop them.
        self._finalizer = weakref.finalize(self, _shutdown, list(self._channels.values()))

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Stop the sampling threads and close the backends this monitor opened (idempotent)."""
        self._closed = True
        self._finalizer()  # runs _shutdown once, however often close() is called

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def synthetic(self) -> bool:
        return any(b.synthetic for b in self.backends.values())

    def resolution_s(self, gpu: int) -> float:
        """The time resolution of GPU ``gpu``'s energy: the coarser of its sensor's refresh and the sampling.

        The sensor is the energy counter where the GPU has one, else power. An unknown refresh
        period counts as the sampling interval; a known one finer than the interval does not help,
        since a window's start is interpolated between two samples an interval apart.
        """
        ch = self._channels[gpu]
        return max(ch.source_period_s(ch.has_counter) or 0.0, self.interval_s)

    @property
    def min_window_s(self) -> float:
        """The shortest window that gets no ShortWindowWarning (see ``SHORT_WINDOW_PERIODS``)."""
        return SHORT_WINDOW_PERIODS * max(self.resolution_s(i) for i in self.gpus)

    # ---------------------------------------------------------------- windows
    def _check_open(self, name: str) -> None:
        if self._closed:
            raise RuntimeError(f"window {name!r}: this EnergyMonitor is closed")

    def begin_window(self, name: str, sync: SyncFn | None = None) -> None:
        """Open the window ``name``; several may be open at once (nested or overlapping).

        ``sync`` (or the monitor's ``sync``) is called before the start is stamped. GPU work is
        asynchronous: a CUDA call returns when the kernel is queued, not when it has run, so
        without ``torch.cuda.synchronize`` the stamps mark when Python got there, and the energy
        of work still queued lands in the wrong window (or in none). Synchronising first makes the
        stamps bound the GPU's work.
        """
        if not isinstance(name, str) or not name:
            raise InputError("window", name, "a window name is a non-empty string")
        self._check_open(name)
        with self._lock:
            if name in self._open:
                raise InputError("window", name, "is already open; end it first or use another name")
        (sync or self.sync or _no_sync)()
        t0 = time.monotonic()
        with self._lock:
            if name in self._open:  # opened by another thread during sync
                raise InputError("window", name, "is already open; end it first or use another name")
            self._open[name] = t0

    def end_window(self, name: str, sync: SyncFn | None = None) -> Measurement:
        """Close the window ``name`` and return its ``Measurement`` (``sync`` as in ``begin_window``).

        Warns (``ShortWindowWarning``) when the window is shorter than ``min_window_s`` and
        (``SparseSamplesWarning``) when the sampling thread fell far behind; both are also listed
        in the result's ``warnings``.
        """
        self._check_open(name)
        with self._lock:
            if name not in self._open:
                open_now = ", ".join(repr(n) for n in self._open) or "none"
                raise InputError("window", name, f"is not open (open windows: {open_now})")
        (sync or self.sync or _no_sync)()
        t1 = time.monotonic()
        with self._lock:
            t0 = self._open.pop(name, None)
            if t0 is None:  # ended by another thread during sync
                raise InputError("window", name, "is not open (ended by another thread)")
            self._spans.append((name, t0, t1))
        for ch in self._channels.values():
            ch.take_sample()  # the end edge lies between two readings, as PowerMonitor.stop ensures
        return self._measure(name, t0, t1)

    def _measure(self, name: str, t0: float, t1: float) -> Measurement:
        time_s = t1 - t0
        per_gpu: dict[int, dict[str, Any]] = {}
        notes: list[str] = []
        coarsest: tuple[float, int, str, float | None] | None = None  # (resolution, gpu, source, period)
        for i, ch in self._channels.items():
            samples = ch.samples_around(t0)
            trace = EnergyTrace(samples)
            counter = _float(trace.counter_j(t0, t1))
            integrated = _float(trace.integrated_j(t0, t1))
            if counter is not None:
                energy, source = counter, SOURCE_COUNTER
            elif integrated is not None:
                energy, source = integrated, SOURCE_POWER
            else:
                energy, source = math.nan, SOURCE_NONE
                notes.append(f"GPU {i} ({ch.backend.name}) reported neither power nor energy in window {name!r}")
            inside = sum(1 for s in samples if t0 <= s.mono_s <= t1)
            per_gpu[i] = {"energy_j": energy, "avg_power_w": energy / time_s if time_s > 0 else math.nan,
                          "energy_source": source, "samples": inside, "energy_counter_j": counter,
                          "energy_integrated_j": integrated, "backend": ch.backend.name,
                          "synthetic": ch.backend.synthetic}
            if source != SOURCE_NONE:
                period = ch.source_period_s(source == SOURCE_COUNTER)
                res = max(period or 0.0, self.interval_s)
                if coarsest is None or res > coarsest[0]:
                    coarsest = (res, i, source, period)
            expected = time_s / self.interval_s
            if expected >= 4 and inside < SPARSE_SAMPLES_FRACTION * expected:
                msg = (f"window {name!r}: GPU {i} gave {inside} samples in {time_s:.3f} s where about "
                       f"{expected:.0f} were due at {self.interval_s * 1000:.0f} ms: the sampling thread stalled "
                       "(busy interpreter or slow sensor), so the energy is interpolated across the gaps")
                notes.append(msg)
                warnings.warn(msg, SparseSamplesWarning, stacklevel=3)
        if coarsest is not None and time_s < SHORT_WINDOW_PERIODS * coarsest[0]:
            res, gpu, source, period = coarsest
            sensor = "energy counter" if source == SOURCE_COUNTER else "power reading"
            what = (f"its {sensor} refreshes every {period * 1000:.0f} ms" if period and period >= self.interval_s
                    else f"it is sampled every {self.interval_s * 1000:.0f} ms")
            msg = (f"window {name!r} lasted {time_s * 1000:.1f} ms, under {SHORT_WINDOW_PERIODS} x the "
                   f"{res * 1000:.0f} ms resolution of GPU {gpu} ({self._channels[gpu].backend.name}: {what}); "
                   f"the sensor's timing may move its energy by up to {min(1.0, res / max(time_s, 1e-9)):.0%}. "
                   f"Measure at least {SHORT_WINDOW_PERIODS * res:.2f} s, e.g. repeat the work inside one window "
                   "and divide")
            notes.insert(0, msg)
            warnings.warn(msg, ShortWindowWarning, stacklevel=3)
        energy = math.fsum(d["energy_j"] for d in per_gpu.values())
        sources = {d["energy_source"] for d in per_gpu.values()}
        names = sorted({ch.backend.name for ch in self._channels.values()})
        return Measurement(time_s=time_s, energy_j=energy, energy_source=sources.pop() if len(sources) == 1 else "mixed",
                           avg_power_w=energy / time_s if time_s > 0 else math.nan, per_gpu=per_gpu, gpus=self.gpus,
                           synthetic=self.synthetic, warnings=notes, name=name, start_s=t0, end_s=t1,
                           backend="+".join(names))

    # ---------------------------------------------------------------- the trace
    def samples_frame(self, window: str | None = None) -> pd.DataFrame:
        """The readings so far as a DataFrame: ``SAMPLE_COLUMNS``, ``gpu``, ``windows``, any extra fields.

        ``windows`` is the tuple of window names (ended or still open) whose span holds the
        reading, in order of their start. With ``window``, only the readings inside a window of
        that name (every occurrence of it). Rows are sorted by GPU, then time.
        """
        import pandas as pd

        with self._lock:
            spans = list(self._spans) + [(n, t0, math.inf) for n, t0 in self._open.items()]
        if window is not None and window not in {n for n, _, _ in spans}:
            known = ", ".join(sorted({repr(n) for n, _, _ in spans})) or "none yet"
            raise InputError("window", window, f"no window of that name (windows: {known})")
        spans.sort(key=lambda sp: sp[1])
        rows: list[dict[str, Any]] = []
        for i, ch in self._channels.items():
            samples = ch.samples_around(None)
            t = [s.mono_s for s in samples]
            labels: list[list[str]] = [[] for _ in samples]
            for n, t0, t1 in spans:
                for k in range(bisect.bisect_left(t, t0), bisect.bisect_right(t, t1)):
                    labels[k].append(n)
            for s, names in zip(samples, labels, strict=True):
                if window is None or window in names:
                    rows.append({**s.row(), "gpu": i, "windows": tuple(names)})
        extras = sorted({k for r in rows for k in r} - {*SAMPLE_COLUMNS, "gpu", "windows"})
        return pd.DataFrame(rows, columns=[*SAMPLE_COLUMNS, "gpu", "windows", *extras])


def _shutdown(channels: list[_Channel]) -> None:
    for ch in channels:
        ch.monitor.stop()
    for ch in channels:
        if ch.owned:
            ch.backend.close()


def _no_sync() -> None:
    """No device synchronisation: right for CPU code and for work that is already complete."""


def _float(v: object) -> float | None:
    return None if v is None else float(cast(float, v))


# --------------------------------------------------------------------------- locked clocks

@dataclass(frozen=True)
class ClockLock:
    """What ``locked_clock`` yields: the clock asked for and the clock the GPU reported right after."""

    gpu: int
    mhz: int
    readback_mhz: float | None  # None where the backend cannot read the SM clock
    mem_mhz: int | None
    backend: str
    synthetic: bool


def _nearest(supported: list[int], mhz: float) -> str:
    near = sorted(sorted(supported, key=lambda c: (abs(c - mhz), c))[:2])
    return ", ".join(str(c) for c in near) + f" MHz (supported {min(supported)}-{max(supported)})"


def _check_clock(backend: GpuBackend, mhz: object, mem_mhz: object) -> tuple[int, int | None]:
    if isinstance(mhz, bool) or not isinstance(mhz, numbers.Real) or not float(mhz).is_integer():
        raise InputError("mhz", mhz, "give the SM clock as a whole number of MHz, e.g. 1410")
    mem: int | None = None
    if mem_mhz is not None:
        if isinstance(mem_mhz, bool) or not isinstance(mem_mhz, numbers.Real) or not float(mem_mhz).is_integer():
            raise InputError("mem_mhz", mem_mhz, "give the memory clock as a whole number of MHz")
        mem = int(mem_mhz)
        mems = backend.supported_mem_clocks_mhz()
        if mems and mem not in mems:
            raise InputError("mem_mhz", mem_mhz, f"not a supported memory clock; supported: {', '.join(map(str, mems))}")
    supported = backend.supported_sm_clocks_mhz(mem)
    if int(mhz) not in supported:
        raise InputError("mhz", mhz, f"not a supported SM clock; nearest: {_nearest(supported, float(mhz))}")
    return int(mhz), mem


def _refuse_if_held(backend: GpuBackend) -> None:
    """Refuse a GPU whose clock a live process (this one included) holds through a lock record.

    ``ClockGuard`` resets to the default clock on the way out, so locking a GPU that a running sweep
    or an enclosing ``locked_clock`` has locked would reset their clock when this block ends. A
    record left by a dead process is stale and is simply taken over (and reset at the end).
    """
    rec = lock_holder(backend)
    if rec is not None:
        pid = int(rec["pid"])
        who = "this process (a locked_clock or sweep already open)" if pid == os.getpid() else f"pid {pid}"
        raise ClockError(f"GPU {backend.index} ({backend.uuid()}) is already locked at {rec.get('sm_clock_mhz')} MHz "
                         f"by {who}; locking it here would reset that clock when this block ends "
                         f"(lock record {rec['path']})")


def _read_sm_clock(backend: GpuBackend) -> float | None:
    with _sample_lock(backend):
        return backend.sample().sm_clock_mhz


@contextlib.contextmanager
def locked_clock(mhz: int, gpu: int | None = None, backend: str | GpuBackend = "auto", gpu_type: str | None = None,
                 mem_mhz: int | None = None) -> Iterator[ClockLock]:
    """Lock GPU ``gpu``'s SM clock at ``mhz`` (and memory at ``mem_mhz``) inside a ``with`` block.

    Uses ``ClockGuard``: a lock record is written before locking and removed only after the reset,
    and the clocks are reset on every way out: normal end, exception, SIGINT/SIGTERM/SIGUSR1/SIGHUP
    (raised as ``profiling.clocks.Interrupted`` after the handlers are installed, in the main
    thread), interpreter exit; after SIGKILL the next launch's stale-record check resets them.
    Leaving resets to the default clock, not to an earlier lock, so a GPU already locked by a live
    process (an enclosing ``locked_clock``, a sweep) is refused with ``ClockError``.

    ``mhz`` must be one of ``backend.supported_sm_clocks_mhz()`` (``InputError`` naming ``mhz``,
    with the nearest supported clocks, otherwise): a GPU silently rounds an unsupported request,
    and a sweep point that is not the clock it claims is worse than an error. The yielded
    ``ClockLock`` has ``readback_mhz``, the SM clock read right after locking: an idle GPU may
    report less than its lock, a lock that did not apply shows here first.

    ``backend`` is a name (``"auto"`` as for ``EnergyMonitor``) or an open backend object, shared
    with an ``EnergyMonitor`` (then ``gpu`` defaults to its index and is not closed here). On the
    simulated GPU the clock state lives in a file, so separate objects of one GPU see one clock.
    """
    if isinstance(backend, GpuBackend):
        if gpu is not None and gpu != backend.index:
            raise InputError("gpu", gpu, f"the backend given is GPU {backend.index}")
        backends, owned = _resolve_gpus("gpu", None, backend, gpu_type, default=[backend.index])
    else:
        backends, owned = _resolve_gpus("gpu", 0 if gpu is None else gpu, backend, gpu_type, default=[0])
    (index, gb), = backends.items()
    try:
        sm, mem = _check_clock(gb, mhz, mem_mhz)
        _refuse_if_held(gb)
        record_type = gpu_type or getattr(gb, "gpu_type", None) or detect_gpu_type(gb.device_name())
        with ClockGuard(gb, record_type) as guard:
            guard.lock(sm, mem)
            yield ClockLock(gpu=index, mhz=sm, readback_mhz=_read_sm_clock(gb), mem_mhz=mem, backend=gb.name,
                            synthetic=gb.synthetic)
    finally:
        if owned:
            gb.close()
