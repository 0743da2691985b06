"""Every setting of a sweep in one frozen object, checked once, before anything is created.

The field names are the launcher's option names (``--num-runs`` -> ``num_runs``), so the command
line, a ``--config`` YAML file and Python code (``SweepConfig(num_runs=1, ...)``) describe a
sweep the same way, and ``check()`` gives every one of them the same one-line errors. Nothing
here opens a GPU: what depends on the GPU (supported clocks) is checked where it is opened.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from sd_energy_contract.errors import InputError
from sd_energy_contract.gpus import load_gpu_specs
from sd_energy_contract.phases import CLOCKED_PHASES

from .backends import BACKENDS
from .clocks import CLOCK_CONTROLS
from .monitor import MIN_INTERVAL_S
from .planning import CLOCK_ORDERS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_APP = str(REPO_ROOT / "app" / "StableDiffusionViaHF.py")
MODES = ("baseline", "dvfs", "custom", "guided")
OBJECTIVES = ("energy", "edp", "ed2p")
DEFAULT_WORKLOAD = "stable-diffusion"  # the in-process workload registered by app (sd_energy.workloads)
DEFAULT_SETTLE_TIMEOUT_S = 300.0       # --settle-temp without --settle-timeout waits at most this long per run


@dataclass(frozen=True)
class SweepConfig:
    profiling_tool: str = "auto"
    gpu_type: str | None = None
    gpu_index: int | None = None
    all_gpus: bool = False
    profiling_mode: str = "dvfs"
    custom_frequencies: str | None = None
    min_frequency: int | None = None
    max_frequency: int | None = None
    frequency_step: int | None = None
    memory_frequency: int | None = None
    num_runs: int = 3
    warmup_runs: int = 0
    sleep_interval: float = 1.0          # s between runs
    sampling_interval: float = 50.0      # ms
    idle_seconds: float = 2.0
    app_name: str = "StableDiffusion"
    app_executable: str = DEFAULT_APP
    app_params: str = ""
    in_process: bool = False
    phase_clocks: str | None = None
    timeout: float = 3600.0
    output_dir: str | None = None
    resume: bool = False
    dry_run: bool = False
    reset_clocks: bool = False
    wait_for_gpu: float = 0.0            # s to wait for another sweep to release the GPU
    guided_probes: int = 5
    guided_min_probes: int = 4
    guided_model: str | None = None
    objective: str = "edp"
    max_slowdown: float = 0.05
    clock_slice: str | None = None
    replay_source: str | None = None
    replay_app: str | None = None
    clock_order: str = "descending"      # descending, ascending, random, interleaved (see planning.SweepPlan)
    clock_order_seed: int | None = None  # random order: its seed (None: drawn, recorded in the manifest)
    settle_temp: float | None = None     # °C: before each run wait until the GPU is at most this (or stable)
    settle_timeout: float | None = None  # s: the longest such wait (default DEFAULT_SETTLE_TIMEOUT_S)
    clock_control: str = "lock"          # lock, application, slurm (profiling.clocks.ClockGuard)
    allow_mig_whole_gpu: bool = False    # measure a GPU in MIG mode whole (rows say mig=1)

    # ---- derived values
    @property
    def guided(self) -> bool:
        return self.profiling_mode == "guided"

    @property
    def replays(self) -> bool:
        return self.profiling_tool == "replay"

    @property
    def run_mode(self) -> str:
        """The rows' ``mode``: how each run is produced."""
        return "replay" if self.replays else "in-process" if self.in_process else "process"

    @property
    def sampling_interval_s(self) -> float:
        return self.sampling_interval / 1000.0

    @property
    def slowdown_cap(self) -> float | None:
        return None if self.max_slowdown < 0 else float(self.max_slowdown)

    @property
    def min_probes(self) -> int:
        return min(self.guided_min_probes, self.guided_probes)

    def app_args(self) -> list[str]:
        """``--app-params`` split with shell rules (no shell ever runs them)."""
        try:
            return shlex.split(self.app_params or "")
        except ValueError as exc:
            raise InputError("--app-params", self.app_params, f"cannot be split with shell rules: {exc}") from None

    def app_command(self) -> list[str]:
        """The app's argument list in process mode; a .py file runs with this Python."""
        if self.app_executable.endswith(".py"):
            return [sys.executable, self.app_executable, *self.app_args()]
        return [self.app_executable, *self.app_args()]

    def phase_clock_policy(self) -> dict[str, int]:
        """``denoise=1755,vae_decode=1005`` -> {"denoise_step": 1755, "vae_decode": 1005} (phase names
        as in the events file); {} when no policy was given."""
        if not self.phase_clocks:
            return {}
        policy: dict[str, int] = {}
        for item in self.phase_clocks.replace(" ", "").split(","):
            if not item:
                continue
            name, sep, value = item.partition("=")
            if not sep or name not in CLOCKED_PHASES:
                raise InputError("--phase-clocks", self.phase_clocks,
                                 f"expected PHASE=MHZ pairs with PHASE in {', '.join(CLOCKED_PHASES)}")
            if not value.isdigit() or int(value) <= 0:
                raise InputError("--phase-clocks", self.phase_clocks, f"{name}: {value!r} is not a clock in MHz")
            policy[CLOCKED_PHASES[name]] = int(value)
        if not policy:
            raise InputError("--phase-clocks", self.phase_clocks, "no PHASE=MHZ pair in it")
        return policy

    # ---- the one check
    def check(self) -> SweepConfig:
        """Every problem that needs no GPU, as a one-line InputError naming the option; returns self."""
        self._check_types()
        if self.profiling_tool not in BACKENDS:
            raise InputError("--profiling-tool", self.profiling_tool, f"one of {', '.join(BACKENDS)}")
        if self.objective not in OBJECTIVES:
            raise InputError("--objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        specs = load_gpu_specs()
        if self.gpu_type is not None and self.gpu_type not in specs:
            raise InputError("--gpu-type", self.gpu_type, f"unknown GPU type; known: {', '.join(specs)}")
        _number("--sampling-interval", self.sampling_interval, low=MIN_INTERVAL_S * 1000, what="below the 10 ms minimum")
        _number("--timeout", self.timeout, low=0, strict=True, what="must be positive")
        _number("--idle-seconds", self.idle_seconds, low=0, what="must be >= 0")
        _number("--sleep-interval", self.sleep_interval, low=0, what="must be >= 0")
        _number("--wait-for-gpu", self.wait_for_gpu, low=0, what="must be >= 0 seconds")
        if not isinstance(self.max_slowdown, (int, float)) or math.isnan(self.max_slowdown):
            raise InputError("--max-slowdown", self.max_slowdown, "must be a number (negative: no limit)")
        if self.num_runs < 1:
            raise InputError("--num-runs", self.num_runs, "must be at least 1")
        if self.warmup_runs < 0:
            raise InputError("--warmup-runs", self.warmup_runs, "must be >= 0")
        if self.gpu_index is not None and self.gpu_index < 0:
            raise InputError("--gpu-index", self.gpu_index, "must be >= 0")
        if self.frequency_step is not None and self.frequency_step <= 0:
            raise InputError("--frequency-step", self.frequency_step, "must be a positive number of MHz")
        for opt, value in (("--min-frequency", self.min_frequency), ("--max-frequency", self.max_frequency),
                           ("--memory-frequency", self.memory_frequency)):
            if value is not None and value <= 0:
                raise InputError(opt, value, "must be a positive number of MHz")
        if self.profiling_mode not in MODES:
            raise InputError("--profiling-mode", self.profiling_mode, f"one of {', '.join(MODES)}")
        self._check_order_and_settle()
        self._check_clock_control()
        if self.guided:
            self._check_guided()
        self._check_run_source()
        return self

    def _check_types(self) -> None:
        """Python callers and config files can pass anything: "abc" or 2.5 runs, True as a clock. The
        command line converts already; here every field must have its declared type."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = _KINDS.get(str(f.type).replace(" ", ""))
            if kind is None or (value is None and "None" in str(f.type)):
                continue
            ok = (isinstance(value, bool) if kind is bool else
                  isinstance(value, int) and not isinstance(value, bool) if kind is int else
                  isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                  isinstance(value, str))
            if not ok:
                option = "--" + f.name.replace("_", "-")
                raise InputError(option, value, f"must be {_KIND_NAMES[kind]}")

    def _check_order_and_settle(self) -> None:
        if self.clock_order not in CLOCK_ORDERS:
            raise InputError("--clock-order", self.clock_order, f"one of {', '.join(CLOCK_ORDERS)}")
        if self.clock_order_seed is not None and self.clock_order != "random":
            raise InputError("--clock-order-seed", self.clock_order_seed, "only with --clock-order random")
        if self.guided and self.clock_order != "descending":
            raise InputError("--clock-order", self.clock_order, "not with --profiling-mode guided: its probes are "
                             "measured one clock at a time, in the order the search chooses")
        if self.settle_temp is not None:
            _number("--settle-temp", self.settle_temp, low=0, strict=True, what="must be a temperature above 0 °C")
        if self.settle_timeout is not None:
            _number("--settle-timeout", self.settle_timeout, low=0, strict=True, what="must be positive (seconds)")
            if self.settle_temp is None:
                raise InputError("--settle-timeout", self.settle_timeout, "needs --settle-temp (the temperature "
                                 "to wait for before each run)")

    def _check_clock_control(self) -> None:
        """``slurm``: the site sets one clock per job step, so nothing may move it during a launch."""
        if self.clock_control not in CLOCK_CONTROLS:
            raise InputError("--clock-control", self.clock_control, f"one of {', '.join(CLOCK_CONTROLS)}")
        if self.clock_control != "slurm":
            return
        if self.guided:
            raise InputError("--clock-control", "slurm", "not with --profiling-mode guided: its probes pick clocks "
                             "during the launch, and SLURM sets one clock per job step")
        if self.phase_clocks is not None:
            raise InputError("--clock-control", "slurm", "not with --phase-clocks: SLURM sets the clock, the launcher "
                             "cannot switch it per phase")
        if self.memory_frequency is not None:
            raise InputError("--clock-control", "slurm", "not with --memory-frequency: give the memory clock to "
                             "--gpu-freq instead (e.g. --gpu-freq=1410,memory=2619)")

    def _check_guided(self) -> None:
        if self.guided_probes < 2:
            raise InputError("--guided-probes", self.guided_probes, "must be at least 2 (the max clock and one more)")
        if self.guided_min_probes < 1:
            raise InputError("--guided-min-probes", self.guided_min_probes, "must be at least 1")
        if not math.isfinite(self.max_slowdown):
            raise InputError("--max-slowdown", self.max_slowdown, "must be a number (negative: no limit)")
        if self.objective not in OBJECTIVES:
            raise InputError("--objective", self.objective, f"one of {', '.join(OBJECTIVES)}")
        if self.clock_slice:
            raise InputError("--clock-slice", self.clock_slice, "not with --profiling-mode guided: its probes are "
                             "chosen one after the other, from what the earlier ones measured")

    def _check_run_source(self) -> None:
        if self.phase_clocks is not None:
            self.phase_clock_policy()
            if not self.in_process:
                raise InputError("--phase-clocks", self.phase_clocks, "needs --in-process: the clock follows the "
                                 "app's phases from inside its process")
        if self.in_process:
            if self.replays:
                raise InputError("--in-process", True, "not with --profiling-tool replay (nothing runs)")
            if self.app_executable != DEFAULT_APP:
                raise InputError("--app-executable", self.app_executable, "not with --in-process, which runs the "
                                 f"registered '{DEFAULT_WORKLOAD}' workload in this process; for any other program "
                                 "use process mode, or profiling.sweep(fn, ...) from Python")
            self.app_args()
            return
        if self.reset_clocks or self.replays:
            return
        exe = Path(self.app_executable)
        if not exe.exists():
            raise InputError("--app-executable", self.app_executable, "no such file")
        if exe.suffix != ".py" and not os.access(exe, os.X_OK):
            raise InputError("--app-executable", self.app_executable, "not executable (chmod +x, or give a .py file)")
        self.app_args()  # fails early on unbalanced quotes


_KINDS = {"str": str, "str|None": str, "int": int, "int|None": int, "float": float, "float|None": float, "bool": bool}
_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false"}


def _number(option: str, value: float, low: float, what: str, strict: bool = False) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(option, value, "must be a finite number")
    if value < low or (strict and value <= low):
        raise InputError(option, value, what)


def option_names() -> list[str]:
    """The settings a sweep has: what ``--config`` files and the SLURM experiment files may set."""
    return [f.name for f in fields(SweepConfig)]
