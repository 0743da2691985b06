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

So energy has a real interior minimum, and a sweep's answer is reproducible. Clock state
lives in a JSON file so it persists across processes, like a GPU's: a launcher killed with
SIGKILL leaves the clock locked, exactly the case the lock record must repair.
Every row it produces says ``backend=simulated``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sd_energy_contract import env
from sd_energy_contract.files import complete_text, write_atomic
from sd_energy_contract.gpus import load_gpu_specs

from ..errors import ClockError, GpuNotFoundError
from .base import GpuBackend, GpuSample

STATE_ENV = env.SIMULATED_STATE
STATE_DIR_ENV = env.SIMULATED_DIR

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


class SimulatedGpu(GpuBackend):
    name = "simulated"
    synthetic = True

    def __init__(self, gpu_type: str = "H100", index: int = 0, state_file: Path | None = None):
        super().__init__(index)
        specs = load_gpu_specs()
        if gpu_type not in specs:
            raise GpuNotFoundError(f"unknown GPU type {gpu_type!r}; known: {', '.join(specs)}")
        self.gpu_type = gpu_type
        self.spec = specs[gpu_type]
        self.model = self.spec["simulated"]
        self.state_file = Path(state_file) if state_file else state_path(gpu_type, index)
        self._energy_mj = 0.0
        self._last_t: float | None = None
        self._last_p: float | None = None
        self._events_path: Path | None = None
        self._events_pos = 0
        self._open: dict[str, int] = {}
        self._running = False
        self._clock_mhz: int | None = None
        self._state_stamp: tuple | None = None

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

    def current_sm_clock_mhz(self) -> int:
        """The clock now. The state file is re-read only when it changed (a new inode or mtime: every
        write replaces it), so a clock another process sets (the launcher switching per phase) is
        seen at once, for the price of one stat() per call."""
        try:
            st = os.stat(self.state_file)
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp != self._state_stamp or self._clock_mhz is None:
            self._clock_mhz = self.locked_sm_clock_mhz() or self.spec["sm_clock_max_mhz"]
            self._state_stamp = stamp
        return self._clock_mhz

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        if mhz not in self.spec["sm_clocks_mhz"]:
            raise ClockError(f"{mhz} MHz is not a supported SM clock of the simulated {self.gpu_type}")
        _write_state(self.state_file, {**_read_state(self.state_file), "sm_clock_locked_mhz": int(mhz)})

    def reset_clocks(self) -> None:
        state = _read_state(self.state_file)
        state.pop("sm_clock_locked_mhz", None)
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
        self._events_path = Path(events_path) if events_path else None
        self._events_pos = 0
        self._open = {}
        self._running = True

    def end_run(self) -> None:
        self._events_path = None
        self._open = {}
        self._running = False

    def _activity(self) -> float:
        if not self._running:
            return 0.0
        if self._events_path is not None and self._events_path.exists():
            with open(self._events_path) as fh:
                fh.seek(self._events_pos)
                chunk = fh.read()
            complete = complete_text(chunk)
            self._events_pos += len(complete)
            for line in complete.splitlines():
                try:  # a line the app did not write whole or right is skipped, never fatal to sampling
                    ev = json.loads(line)
                    phase, kind = ev["phase"], ev["event"]
                except (ValueError, KeyError, TypeError):
                    continue
                if kind not in ("start", "end"):
                    continue
                delta = 1 if kind == "start" else -1
                self._open[phase] = max(0, self._open.get(phase, 0) + delta)
        active = [PHASE_ACTIVITY.get(p, 0.0) for p, n in self._open.items() if n > 0]
        return max(active, default=RUN_BASE_ACTIVITY)

    def power_w(self, sm_clock_mhz: float, activity: float) -> float:
        m = self.model
        x = sm_clock_mhz / self.spec["sm_clock_max_mhz"]
        v = max(m["v_min_frac"], x)
        return m["idle_w"] + activity * (m["mem_w"] + m["core_dynamic_w"] * x * v * v)

    def sample(self) -> GpuSample:
        t = time.monotonic()
        f = self.current_sm_clock_mhz()
        a = self._activity()
        p = self.power_w(f, a)
        if self._last_t is not None:
            self._energy_mj += (p + self._last_p) / 2 * (t - self._last_t) * 1000.0
        self._last_t, self._last_p = t, p
        return GpuSample(mono_s=t, power_w=p, energy_mj=self._energy_mj, sm_clock_mhz=f,
                         mem_clock_mhz=self.spec["memory_clock_mhz"], gpu_util_pct=100.0 * min(1.0, a),
                         mem_used_mib=2048.0 * (a > 0), temp_c=35 + 40 * p / self.spec["tdp_w"])

    def energy_mj(self) -> float:
        return self._energy_mj


class StepDilation:
    """Runs in the app after each denoising step: sleeps so the step lasts as long as at the locked clock."""

    def __init__(self, gpu: SimulatedGpu):
        self.gpu = gpu
        self.f_max = gpu.spec["sm_clock_max_mhz"]
        self.beta = gpu.model["compute_bound_frac"]

    @classmethod
    def from_env(cls) -> StepDilation:
        """The GPU whose state file the launcher named (``<type>-<index>.json``)."""
        path = Path(os.environ[STATE_ENV])
        gpu_type, index = path.stem.rsplit("-", 1)
        return cls(SimulatedGpu(gpu_type.upper(), int(index), state_file=path))

    def __call__(self, step_s: float) -> None:
        extra = step_s * self.beta * (self.f_max / self.gpu.current_sm_clock_mhz() - 1.0)
        if extra > 0:
            time.sleep(extra)
