"""A documented model of a real GPU type, so the whole pipeline runs and means something with no GPU.

What is real: the GPU type's supported clock list, memory clock, TDP and idle power
(``configs/gpus.yaml``). What is modelled:

* Power: ``P = idle_w + a * (mem_w + core_dynamic_w * x * v(x)^2)`` with ``x = f / f_max`` and
  ``v(x) = max(v_min_frac, x)``: dynamic power ~ C V^2 f, the voltage following the clock down
  to a floor and staying there. ``a`` is the activity of the app's current phase, read from
  its phase-events file (a denoising step keeps the GPU busier than loading a model).
* Time: the app stretches each denoising step by ``compute_bound_frac * (1/x - 1)`` of its
  measured duration (``StepDilation``), so the compute-bound part scales with 1/f and the
  rest does not, and the monitor sees the run take as long as it would at that clock.
* Sensors: what the twin *reports* is what a real sensor of that type would (``SensorModel``,
  driven by the architecture's ``sensors:`` entry in ``configs/gpus.yaml``): on an H100 the
  instantaneous reading sees only the first 25 ms of every 100 ms, ``power_avg_w`` is the 1 s
  moving average that ``nvmlDeviceGetPowerUsage`` returns, and the energy counter advances in
  100 ms steps. The true energy is integrated exactly beside them (``true_energy_mj``), so tests
  and ``benchmarks/bench_sensor_error.py`` can measure the error each artefact causes.
  ``SD_ENERGY_SIMULATED_SENSORS=ideal`` switches the artefacts off (readings are the model's).
* Privileges: ``SD_ENERGY_SIMULATED_USER=nonroot`` is a user without root, refused locked clocks,
  and application clocks too unless the simulated admin ran the equivalent of
  ``nvidia-smi -acp 0`` (``set_api_restriction(False)``, kept in the state file).

So energy has a real interior minimum, and a sweep's answer is reproducible. Clock state
lives in a JSON file so it persists across processes, like a GPU's: a launcher killed with
SIGKILL leaves the clock locked, exactly the case the lock record must repair.
Every row it produces says ``backend=simulated``.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sd_energy_contract import env
from sd_energy_contract.errors import InputError
from sd_energy_contract.files import complete_text, write_atomic
from sd_energy_contract.gpus import load_gpu_specs, sensor_model

from ..errors import ClockError, GpuNotFoundError, GpuPermissionError
from .base import GpuBackend, GpuSample

STATE_ENV = env.SIMULATED_STATE
STATE_DIR_ENV = env.SIMULATED_DIR
SENSOR_MODES = ("real", "ideal")   # SD_ENERGY_SIMULATED_SENSORS
USERS = ("root", "nonroot")        # SD_ENERGY_SIMULATED_USER
# Clock-event reasons the twin reports (the NVML bit values of nvmlClocksEventReason*).
REASON_GPU_IDLE, REASON_APPLICATIONS_CLOCKS, REASON_SW_POWER_CAP = 0x1, 0x2, 0x4

# Activity of each app phase (fraction of full-load dynamic power).
PHASE_ACTIVITY = {"denoise_step": 1.0, "text_encode": 0.55, "vae_decode": 0.8, "batch": 0.5, "warmup": 0.5,
                  "load": 0.12, "save": 0.05}
RUN_BASE_ACTIVITY = 0.05  # a process holding a CUDA context


def state_path(gpu_type: str, index: int) -> Path:
    root = Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".cache" / "sd-energy" / "simulated")
    return root / f"{gpu_type.lower()}-{index}.json"


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict) -> None:
    write_atomic(path, json.dumps(state))


def sensor_mode() -> str:
    """``SD_ENERGY_SIMULATED_SENSORS``: ``real`` (default: the artefacts of the real sensors) or ``ideal``."""
    raw = os.environ.get(env.SIMULATED_SENSORS) or "real"
    if raw not in SENSOR_MODES:
        raise InputError(env.SIMULATED_SENSORS, raw, f"expected one of {', '.join(SENSOR_MODES)}")
    return raw


def simulated_user() -> str:
    """``SD_ENERGY_SIMULATED_USER``: ``root`` (default) or ``nonroot``; read at each clock call, like a uid."""
    raw = os.environ.get(env.SIMULATED_USER) or "root"
    if raw not in USERS:
        raise InputError(env.SIMULATED_USER, raw, f"expected one of {', '.join(USERS)}")
    return raw


class SensorModel:
    """What a GPU's sensors report about its true power, with the artefacts of real NVIDIA sensors.

    The true power is piecewise constant: ``set_power(t, w)`` says the GPU draws ``w`` watts from
    ``t`` on, and the true energy E(t) follows exactly. The readings derive from E as the real
    sensors do (the architecture's ``sensors:`` entry of ``configs/gpus.yaml``; a missing setting
    means no artefact):

    * ``power_instant_w`` (``NVML_FI_DEV_POWER_INSTANT``): power is measured over the first
      ``power_sampled_fraction`` of each ``power_update_period_s`` period T, [kT, kT + fT),
      published when that slice ends and held until the next one; work in the rest of a period is
      never seen (Yang et al., SC'24: about 25 % of the time on A100/H100).
    * ``power_usage_w`` (``nvmlDeviceGetPowerUsage``): the mean of those readings over the last
      ``power_avg_window_s`` where ``power_usage_reading`` is ``averaged`` (H100/H200: 1 s), else
      the instantaneous reading.
    * ``energy_mj`` (``nvmlDeviceGetTotalEnergyConsumption``): the true energy as of the last
      multiple of ``energy_counter_period_s``, so it advances in steps.

    ``ideal=True`` switches every artefact off (the readings are the true power and a continuous
    counter), for tests that check the power model's numbers exactly. Times are on whatever clock
    the caller uses (the monotonic clock, or a test's or benchmark's virtual one); sensor periods
    are aligned to its multiples, like a free-running sensor. Nothing reported can change later: a
    ``set_power`` earlier than the latest time already read takes effect at that time, so the
    counter stays monotonic. History older than the longest window any reading needs is dropped.
    """

    def __init__(self, settings: dict, t0: float, watts: float, energy0_mj: float = 0.0, ideal: bool = False):
        self.ideal = ideal
        self.period_s = float(settings.get("power_update_period_s") or 0.0)
        self.fraction = min(1.0, float(settings.get("power_sampled_fraction") or 1.0))
        self.counter_period_s = float(settings.get("energy_counter_period_s") or 0.0)
        averaged = settings.get("power_usage_reading") == "averaged"
        self.avg_window_s = float(settings.get("power_avg_window_s") or 0.0) if averaged else 0.0
        self.instant_field = bool(settings.get("instant_power_field", True))
        self._t, self._e_mj, self._p_w = [t0], [energy0_mj], [float(watts)]
        self._t0 = self._latest = t0
        self._horizon_s = self.avg_window_s + 3 * self.period_s + self.counter_period_s + 1.0
        self._slices: dict[int, float] = {}  # published readings; final, since history before _latest is

    # the true signal
    def set_power(self, t: float, watts: float) -> None:
        t = max(t, self._latest)
        self._latest = t
        watts = float(watts)
        if watts == self._p_w[-1]:
            return
        if t == self._t[-1]:
            self._p_w[-1] = watts
            return
        self._e_mj.append(self._energy_at(t))
        self._t.append(t)
        self._p_w.append(watts)
        cut = bisect.bisect_right(self._t, t - self._horizon_s) - 1  # the last break before the horizon stays
        if cut > 0:
            del self._t[:cut], self._e_mj[:cut], self._p_w[:cut]

    def _index(self, t: float) -> int:
        return max(0, bisect.bisect_right(self._t, t) - 1)  # before the first break: its power, extended back

    def _energy_at(self, t: float) -> float:
        i = self._index(t)
        return self._e_mj[i] + self._p_w[i] * (t - self._t[i]) * 1000.0

    def _seen(self, t: float) -> None:
        self._latest = max(self._latest, t)

    def true_power_w(self, t: float) -> float:
        return self._p_w[self._index(t)]

    def true_energy_mj(self, t: float) -> float:
        self._seen(t)
        return self._energy_at(t)

    # what the sensors report
    def _slice_w(self, k: int) -> float:
        """Mean true power over the sampled slice of period ``k`` (published, so cached)."""
        value = self._slices.get(k)
        if value is None:
            a = k * self.period_s
            width = self.fraction * self.period_s
            value = self._slices[k] = (self._energy_at(a + width) - self._energy_at(a)) / (width * 1000.0)
            if len(self._slices) > 64:  # keep the recent ones: readings only go forward
                for old in sorted(self._slices)[:32]:
                    del self._slices[old]
        return value

    def _last_slice(self, t: float) -> int:
        # 1e-9: a time that is a multiple of the period in exact arithmetic is one in floating point too
        return math.floor((t - self.fraction * self.period_s) / self.period_s + 1e-9)

    def power_instant_w(self, t: float) -> float:
        self._seen(t)
        if self.ideal or not self.period_s:
            return self.true_power_w(t)
        return self._slice_w(self._last_slice(t))

    def power_usage_w(self, t: float) -> float:
        self._seen(t)
        if self.ideal:
            return self.true_power_w(t)
        w = self.avg_window_s
        if not w:
            return self.power_instant_w(t)
        if not self.period_s:
            return (self._energy_at(t) - self._energy_at(t - w)) / (w * 1000.0)
        last, n = self._last_slice(t), max(1, round(w / self.period_s))
        return sum(self._slice_w(last - j) for j in range(n)) / n

    def energy_mj(self, t: float) -> float:
        self._seen(t)
        if self.ideal or not self.counter_period_s:
            return self._energy_at(t)
        step = math.floor(t / self.counter_period_s + 1e-9) * self.counter_period_s
        return self._energy_at(max(step, self._t0))


class SimulatedGpu(GpuBackend):
    name = "simulated"
    synthetic = True

    def __init__(self, gpu_type: str = "H100", index: int = 0, state_file: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, sensors: str | None = None):
        """``clock``: the time source (a test's or benchmark's virtual clock drives the sensors without
        sleeping). ``sensors``: ``real`` or ``ideal``; default ``SD_ENERGY_SIMULATED_SENSORS``."""
        super().__init__(index)
        specs = load_gpu_specs()
        if gpu_type not in specs:
            raise GpuNotFoundError(f"unknown GPU type {gpu_type!r}; known: {', '.join(specs)}")
        self.gpu_type = gpu_type
        self.spec = specs[gpu_type]
        self.model = self.spec["simulated"]
        self.state_file = Path(state_file) if state_file else state_path(gpu_type, index)
        self._clock = clock
        self._events_path: Path | None = None
        self._events_pos = 0
        self._pending: list[tuple[float, int, str, int]] = []  # phase events not yet reached: (mono_s, seq, phase, +-1)
        self._seq = 0
        self._open: dict[str, int] = {}
        self._running = False
        self._state_cache: dict | None = None
        self._state_stamp: tuple | None = None
        self._lock = threading.RLock()  # the monitor thread samples while the main thread locks clocks
        self.sensor_settings = sensor_model(gpu_type)
        ideal = (sensors or sensor_mode()) == "ideal"
        self.sensor = SensorModel(self.sensor_settings, self._clock(), self._true_power(), ideal=ideal)
        if ideal:
            self.power_source = "modelled"
        else:
            self.power_source = ("instantaneous" if self.sensor.instant_field
                                 or self.sensor_settings.get("power_usage_reading") != "averaged" else "averaged")
            self.power_update_period_s = self.sensor.period_s or None
            self.energy_update_period_s = self.sensor.counter_period_s or None

    # identity
    def device_name(self) -> str:
        return f"{self.spec['name']} (simulated)"

    def uuid(self) -> str:
        return f"SIM-{self.gpu_type}-{self.index}"

    def driver_version(self) -> str:
        return "simulated"

    # clocks
    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        return list(self.spec["sm_clocks_mhz"])

    def supported_mem_clocks_mhz(self) -> list[int]:
        return [self.spec["memory_clock_mhz"]]

    def locked_sm_clock_mhz(self) -> int | None:
        return _read_state(self.state_file).get("sm_clock_locked_mhz")

    def application_sm_clock_mhz(self) -> int | None:
        """The application clock a non-root user set (``nvidia-smi -ac``), if any."""
        return _read_state(self.state_file).get("sm_clock_app_mhz")

    def _state(self) -> dict:
        """The state file, re-read only when it changed (a new inode or mtime: every write replaces
        it), so a clock another process sets (the launcher switching per phase) is seen at once, for
        the price of one stat() per call."""
        try:
            st = os.stat(self.state_file)
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._state_stamp or self._state_cache is None:
            self._state_cache = _read_state(self.state_file)
            self._state_stamp = stamp
        return self._state_cache

    def current_sm_clock_mhz(self) -> int:
        """The clock now: a locked clock wins over an application one, else the maximum."""
        state = self._state()
        return state.get("sm_clock_locked_mhz") or state.get("sm_clock_app_mhz") or self.spec["sm_clock_max_mhz"]

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        """Root locks the clock. A non-root user gets application clocks where the admin allowed them
        (``clock_method`` says which took effect), else the permission error real NVML gives."""
        if simulated_user() == "nonroot":
            if not _read_state(self.state_file).get("app_clocks_unrestricted"):
                raise GpuPermissionError(f"lock SM clock at {mhz} MHz on the simulated {self.gpu_type} as a non-root "
                                         "user (locked and application clocks both refused)")
            self._set_clock(mhz, "sm_clock_app_mhz", "application")
        else:
            self._set_clock(mhz, "sm_clock_locked_mhz", "locked")

    def set_application_clocks(self, mhz: int, mem_mhz: int | None = None) -> None:
        """Application clocks only (``--clock-control application``): root, or anyone after ``-acp 0``."""
        if simulated_user() == "nonroot" and not _read_state(self.state_file).get("app_clocks_unrestricted"):
            raise GpuPermissionError(f"set application clocks {mhz} MHz on the simulated {self.gpu_type} as a "
                                     "non-root user (the admin has not run `nvidia-smi -acp 0`)")
        self._set_clock(mhz, "sm_clock_app_mhz", "application")

    def _set_clock(self, mhz: int, key: str, method: str) -> None:
        if mhz not in self.spec["sm_clocks_mhz"]:
            raise ClockError(f"{mhz} MHz is not a supported SM clock of the simulated {self.gpu_type}")
        with self._lock:
            self._advance(self._clock())  # the power so far was drawn at the old clock
            _write_state(self.state_file, {**_read_state(self.state_file), key: int(mhz)})
            self.clock_method = method
            self._advance(self._clock())

    def reset_clocks(self) -> None:
        """Root resets both kinds of clock; a non-root user only application clocks the admin let them set."""
        keys = ("sm_clock_app_mhz",) if simulated_user() == "nonroot" else ("sm_clock_locked_mhz", "sm_clock_app_mhz")
        with self._lock:
            self._advance(self._clock())
            state = _read_state(self.state_file)
            if any(k in state for k in keys):
                _write_state(self.state_file, {k: v for k, v in state.items() if k not in keys})
            self._advance(self._clock())

    def set_api_restriction(self, restricted: bool) -> None:
        """The simulated admin's ``nvidia-smi -acp 0`` (``restricted=False``: users may set application
        clocks) or ``-acp 1``; root only, like ``nvmlDeviceSetAPIRestriction``. Kept in the state file."""
        if simulated_user() == "nonroot":
            raise GpuPermissionError(f"change the application-clock permission of the simulated {self.gpu_type}")
        state = _read_state(self.state_file)
        state["app_clocks_unrestricted"] = not restricted
        _write_state(self.state_file, state)

    def visible_devices(self) -> list[int]:
        """``SD_ENERGY_SIMULATED_GPUS`` simulated GPUs (default 1), like a node's visible GPUs."""
        raw = os.environ.get(env.SIMULATED_GPUS, "1")
        return list(range(int(raw))) if raw.isdigit() and int(raw) > 0 else [0]

    def child_env(self) -> dict[str, str]:
        """The app finds this GPU's clock through its state file (``StepDilation.from_env``)."""
        return {env.SIMULATED_STATE: str(self.state_file)}

    # activity from the app's phase events
    def begin_run(self, events_path: Path | None) -> None:
        with self._lock:
            self._advance(self._clock())
            self._events_path = Path(events_path) if events_path else None
            self._events_pos = 0
            self._pending = []
            self._open = {}
            self._running = True
            self._advance(self._clock())

    def end_run(self) -> None:
        with self._lock:
            self._advance(self._clock())
            self._events_path = None
            self._pending = []
            self._open = {}
            self._running = False
            self._advance(self._clock())

    def _read_events(self) -> None:
        """Queue the phase events the app appended since the last read (each applies at its own time)."""
        if self._events_path is None or not self._events_path.exists():
            return
        with open(self._events_path) as fh:
            fh.seek(self._events_pos)
            chunk = fh.read()
        complete = complete_text(chunk)
        self._events_pos += len(complete)
        for line in complete.splitlines():
            try:  # a line the app did not write whole or right is skipped, never fatal to sampling
                ev = json.loads(line)
                phase, kind, at = ev["phase"], ev["event"], float(ev["mono_s"])
            except (ValueError, KeyError, TypeError):
                continue
            if kind in ("start", "end"):
                self._seq += 1
                heapq.heappush(self._pending, (at, self._seq, phase, 1 if kind == "start" else -1))

    def _activity(self) -> float:
        if not self._running:
            return 0.0
        active = [PHASE_ACTIVITY.get(p, 0.0) for p, n in self._open.items() if n > 0]
        return max(active, default=RUN_BASE_ACTIVITY)

    def _true_power(self) -> float:
        return self.power_w(self.current_sm_clock_mhz(), self._activity())

    def _advance(self, t: float) -> int:
        """Bring the true power up to ``t``: every phase event up to ``t`` at its own time (so a 40 ms
        phase between two samples still draws its energy), then the clock as it is now (returned)."""
        with self._lock:
            f = self.current_sm_clock_mhz()
            if self._running:
                self._read_events()
            while self._pending and self._pending[0][0] <= t:
                at, _, phase, delta = heapq.heappop(self._pending)
                self._open[phase] = max(0, self._open.get(phase, 0) + delta)
                self.sensor.set_power(at, self.power_w(f, self._activity()))
            self.sensor.set_power(t, self.power_w(f, self._activity()))
            return f

    def power_w(self, sm_clock_mhz: float, activity: float) -> float:
        """The model's true power at this clock and activity (what an ideal sensor would read)."""
        m = self.model
        x = sm_clock_mhz / self.spec["sm_clock_max_mhz"]
        v = max(m["v_min_frac"], x)
        return m["idle_w"] + activity * (m["mem_w"] + m["core_dynamic_w"] * x * v * v)

    def _throttle_mask(self, f: float, a: float, true_w: float) -> int:
        """Modelled reasons: idle, the applications-clocks setting holding the clock down, the power cap."""
        mask = REASON_GPU_IDLE if a == 0.0 else 0
        if (self._state_cache or {}).get("sm_clock_app_mhz") and f < self.spec["sm_clock_max_mhz"]:
            mask |= REASON_APPLICATIONS_CLOCKS
        if true_w >= self.spec["tdp_w"]:
            mask |= REASON_SW_POWER_CAP
        return mask

    def sample(self) -> GpuSample:
        with self._lock:
            t = self._clock()
            f = self._advance(t)
            a, s = self._activity(), self.sensor
            true_w, usage_w = s.true_power_w(t), s.power_usage_w(t)
            return GpuSample(mono_s=t, power_w=s.power_instant_w(t) if s.instant_field else usage_w,
                             power_avg_w=usage_w, energy_mj=s.energy_mj(t), sm_clock_mhz=f,
                             mem_clock_mhz=self.spec["memory_clock_mhz"], gpu_util_pct=100.0 * min(1.0, a),
                             mem_used_mib=2048.0 * (a > 0), temp_c=35 + 40 * true_w / self.spec["tdp_w"],
                             throttle_mask=self._throttle_mask(f, a, true_w))

    def energy_mj(self) -> float:
        """The energy counter as the sensor reports it (in steps, unless the sensors are ideal)."""
        with self._lock:
            t = self._clock()
            self._advance(t)
            return self.sensor.energy_mj(t)

    def true_energy_mj(self) -> float:
        """The model's exact energy so far (mJ), which no real GPU reports: what tests and benchmarks
        measure the sensors' error against."""
        with self._lock:
            t = self._clock()
            self._advance(t)
            return self.sensor.true_energy_mj(t)

    def throttle_reasons(self) -> str:
        with self._lock:
            t = self._clock()
            f = self._advance(t)
            return f"0x{self._throttle_mask(f, self._activity(), self.sensor.true_power_w(t)):x}"

    # Host-bound time of the current run: the app's StepDilation writes it into the state file when
    # the host could not keep the modelled pace; the launcher reads it at the run's end.
    HOST_BOUND_KEY = "host_bound_s"

    def record_host_bound_s(self, seconds: float) -> None:
        state = _read_state(self.state_file)
        state[self.HOST_BOUND_KEY] = round(seconds, 6)
        _write_state(self.state_file, state)

    def take_host_bound_s(self) -> float:
        """The run's unpaid host-bound time (s), cleared so the next run starts from zero."""
        state = _read_state(self.state_file)
        if self.HOST_BOUND_KEY not in state:
            return 0.0
        seconds = float(state.pop(self.HOST_BOUND_KEY))
        _write_state(self.state_file, state)
        return seconds


class StepDilation:
    """The simulated GPU's clock for denoising steps: each step lasts ``ref_s * stretch(f)``, whatever the host.

    A step's time on the twin is the modelled time of that work at the locked clock:
    ``ref_s * (beta * f_max / f + 1 - beta)`` (the compute-bound share ``beta`` scales with 1/f).
    ``ref_s`` is the step's time at the maximum clock. It is calibrated once per workload
    (``signature``: model, size, batch, scheduler, ...) as ``SAFETY`` times the fastest of the first
    ``CALIBRATION_STEPS`` steps the host computed (the fastest is the least disturbed by other load),
    and kept in the GPU's state file, so every later run of that workload, in any process, paces its
    steps to the same modelled times. The app sleeps out the rest of each step.

    Pacing is cumulative: a step the host could not finish in its modelled time leaves a debt that
    the next steps' sleeps pay back, so a burst of host load moves no run's time as long as the run
    has slack left. Debt still unpaid is the run's host-bound time: the launcher's simulated GPU
    reads it back at the run's end (``SimulatedGpu.host_bound_s``), the row records it and
    power_modeling screens such runs, since their time says something about the host, not the clock.

    Before, a step lasted its measured host time stretched by the clock, so on a loaded host a run
    at 795 MHz could be faster than one at 990 MHz and the demo's recommendation moved with the load.
    """

    SAFETY = 2.0
    CALIBRATION_STEPS = 3
    STATE_KEY = "step_ref_s"

    def __init__(self, gpu: SimulatedGpu, signature: str = "default"):
        self.gpu = gpu
        self.signature = signature
        self.f_max = gpu.spec["sm_clock_max_mhz"]
        self.beta = gpu.model["compute_bound_frac"]
        self.ref_s: float | None = _read_state(gpu.state_file).get(self.STATE_KEY, {}).get(signature)
        self._calibration: list[float] = []
        self.debt_s = 0.0  # host time beyond the modelled time, not yet paid back

    @classmethod
    def from_env(cls, signature: str = "default") -> StepDilation:
        """The GPU whose state file the launcher named (``<type>-<index>.json``)."""
        path = Path(os.environ[STATE_ENV])
        gpu_type, index = path.stem.rsplit("-", 1)
        return cls(SimulatedGpu(gpu_type.upper(), int(index), state_file=path), signature)

    def stretch(self, mhz: float) -> float:
        """Step time at ``mhz`` over step time at the maximum clock."""
        return self.beta * self.f_max / mhz + 1.0 - self.beta

    def _reference_s(self, step_s: float) -> tuple[float, bool]:
        """(the step time at the maximum clock, whether it is calibrated yet)."""
        if self.ref_s is not None:
            return self.ref_s, True
        self._calibration.append(step_s)
        ref = self.SAFETY * min(self._calibration)
        if len(self._calibration) >= self.CALIBRATION_STEPS:
            state = _read_state(self.gpu.state_file)
            # First writer wins: a run that calibrated in parallel must not move another run's pace.
            self.ref_s = state.setdefault(self.STATE_KEY, {}).setdefault(self.signature, ref)
            _write_state(self.gpu.state_file, state)
        return ref, False

    def __call__(self, step_s: float) -> None:
        """``step_s``: how long the host took for this step's work, before any pacing."""
        ref, calibrated = self._reference_s(step_s)
        slack = ref * self.stretch(self.gpu.current_sm_clock_mhz()) - step_s
        if not calibrated:  # the first steps (a cold start among them) set the pace; they owe nothing
            time.sleep(max(0.0, slack))
            return
        before = self.debt_s
        paid = min(max(slack, 0.0), self.debt_s)
        self.debt_s = max(0.0, self.debt_s - slack)
        if slack - paid > 0:
            time.sleep(slack - paid)
        if self.debt_s != before:
            self.gpu.record_host_bound_s(self.debt_s)
            if before == 0.0:
                print(f"simulated GPU: the host took {step_s * 1000:.0f} ms for a step modelled at "
                      f"{(step_s + slack) * 1000:.0f} ms; later steps catch up where they can", file=sys.stderr)
