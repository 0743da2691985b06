"""The node check to run before a campaign: ``./launch.sh --validate`` (``python -m profiling.validate``).

On the GPU this job was given it reports what a sweep's numbers rest on, each as a check with
PASS / WARN / FAIL and the number behind it (INFO for plain facts, SKIP for what could not run):

* identity: driver, name and type/SKU, UUID, what the app is given (``CUDA_VISIBLE_DEVICES``) and,
  where torch with CUDA is installed, the UUID CUDA itself sees under it; MIG mode;
* idle power and its stability (mean, std over ``--idle-seconds``);
* under a fixed load (``--load-seconds``): the power source (instantaneous or averaged) and how
  often power changes, the energy counter and its MEASURED update period (median time between
  changes while polling every 5 ms), and the counter's energy against integrated power;
* clock control: the SM clock locked at three supported clocks (max, middle, lowest), read back
  under load, by which method (``backend.clock_method``), then restored (``ClockGuard``: restored
  on every way out, SIGKILL repaired by the next launch);
* a short sweep at those three clocks through ``profiling.sweep``: the diffusion app's ``random``
  SD1.5 where torch with CUDA is present, or tiny weights on the simulated GPU on a CPU machine.

The load: on the simulated GPU, phase events its activity model follows (a denoising step, full
activity); on a real GPU, an fp16 matmul loop in a child Python started with the app's environment
(``backend.child_env()``), so it runs on exactly the GPU measured and reports the UUID CUDA gave it.
It is a child process because ``profiling`` never imports torch (``.importlinter``).

Output (``--output-dir``): a results directory (``runs.csv``, ``samples/``, ``events/``) holding the
load window and one run per locked clock, which ``--profiling-tool replay --replay-source DIR`` can
serve; ``sweep/``, the sweep's own results directory; ``validate.json`` (every check and number) and
``VALIDATE.md`` (one page). Exit code 0 when every check passed or warned, 1 when one failed, 2 for
bad options. On a machine without a GPU the checks run against the simulated GPU, and every output
says so.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import click

from sd_energy_contract.errors import InputError
from sd_energy_contract.files import append_line, write_atomic
from sd_energy_contract.gpus import GpuIdentity, identify_gpu, load_gpu_specs
from sd_energy_contract.layout import RUNS_COLUMNS, RUNS_CSV, run_id
from sd_energy_contract.phases import BATCH, DENOISE_STEP

from . import monitor as mon
from .backends import BACKENDS, open_job_gpu
from .backends.base import GpuBackend, GpuSample
from .cli_support import run_cli
from .clocks import ClockGuard, Interrupted, clock_step_mhz, restore_stale
from .errors import GpuError
from .ownership import Held, describe, gpu_lock, results_lock
from .results import DeviceInfo, ResultsDir, build_row, config_hash, samples_csv

SCHEMA = "sd-energy.validate/1"
PASS, WARN, FAIL, INFO, SKIP = "PASS", "WARN", "FAIL", "INFO", "SKIP"
TOOLS = tuple(b for b in BACKENDS if b != "replay")
VALIDATE_JSON, VALIDATE_MD, SWEEP_DIR = "validate.json", "VALIDATE.md", "sweep"
WORKLOAD_NAME = "validate-load"
COUNTER_POLL_S = 0.005       # the counter/power update periods are measured to this resolution
SAMPLE_S = 0.02              # sampling of the idle and clock windows
STREAM_S = 0.01              # a streaming backend's interval during the checks (nvidia-smi -lms, dcgmi dmon -d)
IDLE_CV_OK = 0.05
COUNTER_DIFF_OK, COUNTER_DIFF_WARN = 0.05, 0.20
# The sweep's app arguments: random SD1.5 on a real GPU; tiny weights on the simulated one (CPU).
GPU_APP_ARGS = ["--model-variant", "sd-v1.5", "--weights", "random", "--steps", "20", "--num-images", "4",
                "--batch-size", "2", "--no-save-images"]
SIM_APP_ARGS = ["--model-variant", "sd-v1.5", "--weights", "tiny", "--height", "128", "--width", "128", "--steps",
                "6", "--num-images", "1", "--batch-size", "1", "--no-save-images"]
Log = Callable[..., None]


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


# --------------------------------------------------------------------------- settings and results

@dataclass(frozen=True)
class Options:
    """The command line as one checked object (durations in seconds, so a test can make them tiny)."""

    gpu_index: int | None = None
    profiling_tool: str = "auto"
    gpu_type: str | None = None
    output_dir: str | None = None
    skip_sweep: bool = False
    idle_seconds: float = 3.0
    load_seconds: float = 5.0
    clock_seconds: float = 3.0
    sweep_runs: int = 2

    def check(self) -> Options:
        if self.profiling_tool not in TOOLS:
            raise InputError("--profiling-tool", self.profiling_tool, f"one of {', '.join(TOOLS)}")
        if self.gpu_index is not None and self.gpu_index < 0:
            raise InputError("--gpu-index", self.gpu_index, "must be >= 0")
        specs = load_gpu_specs()
        if self.gpu_type is not None and self.gpu_type not in specs:
            raise InputError("--gpu-type", self.gpu_type, f"unknown GPU type; known: {', '.join(specs)}")
        for option, value in (("--idle-seconds", self.idle_seconds), ("--load-seconds", self.load_seconds),
                              ("--clock-seconds", self.clock_seconds)):
            if not value > 0.05:
                raise InputError(option, value, "must be more than 0.05 seconds")
        if self.sweep_runs < 1:
            raise InputError("--sweep-runs", self.sweep_runs, "must be at least 1")
        if self.output_dir:
            out = Path(self.output_dir)
            if (out / RUNS_CSV).exists() or (out / VALIDATE_JSON).exists():
                raise InputError("--output-dir", self.output_dir, "already holds results (runs.csv or validate.json); "
                                 "give a new directory, so one check is never mixed with another")
            if out.exists() and not out.is_dir():
                raise InputError("--output-dir", self.output_dir, "exists and is not a directory")
        return self


@dataclass
class Check:
    name: str
    status: str
    value: float | int | str | None
    unit: str = ""
    detail: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "-"
        if isinstance(self.value, float):
            return f"{self.value:.4g}{' ' + self.unit if self.unit else ''}"
        return f"{self.value}{' ' + self.unit if self.unit else ''}"


@dataclass
class Report:
    gpu: dict
    synthetic: bool
    backend: str
    results_dir: str
    checks: list[Check] = field(default_factory=list)
    clock_locks: list[dict] = field(default_factory=list)
    sweep: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def add(self, check: Check, log: Log) -> Check:
        self.checks.append(check)
        log(f"{check.status:<4}  {check.name:<22} {check.shown():<24} {check.detail}")
        return check

    @property
    def exit_code(self) -> int:
        return 1 if any(c.status == FAIL for c in self.checks) else 0


# --------------------------------------------------------------------------- measuring helpers

def poll(backend: GpuBackend, seconds: float, interval_s: float) -> list[GpuSample]:
    """Samples every ``interval_s`` for ``seconds`` on an absolute schedule (a slow read delays one sample)."""
    out: list[GpuSample] = []
    t0 = time.monotonic()
    k = 0
    while True:
        out.append(backend.sample())
        k += 1
        now = time.monotonic()
        if now - t0 >= seconds:
            return out
        time.sleep(max(0.0, t0 + k * interval_s - now))


def change_times(samples: list[GpuSample], attr: str) -> list[float]:
    """When ``attr`` took a new value (the first sample showing it)."""
    changes = []
    last = None
    for s in samples:
        v = getattr(s, attr)
        if v is None:
            continue
        if last is not None and v != last:
            changes.append(s.mono_s)
        last = v
    return changes


def update_period_s(samples: list[GpuSample], attr: str) -> tuple[float | None, int]:
    """(median time between changes of ``attr``, number of changes) over samples polled much faster than
    the sensor updates. None with fewer than two changes: no interval was seen whole."""
    changes = change_times(samples, attr)
    gaps = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    return (statistics.median(gaps) if gaps else None), len(changes)


def pick_clocks(supported: list[int]) -> list[int]:
    """Max, middle and lowest supported SM clocks (fewer where the GPU lists fewer)."""
    ordered = sorted(set(supported), reverse=True)
    return sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]}, reverse=True)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def _or_mask(samples: list[GpuSample]) -> int | None:
    masks = [s.throttle_mask for s in samples if getattr(s, "throttle_mask", None) is not None]
    out = 0
    for m in masks:
        out |= int(m)
    return out if masks else None


def _uuid_key(uuid: str) -> str:
    low = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if low.startswith(prefix):
            return low[len(prefix):]
    return low


# --------------------------------------------------------------------------- load

# Runs in a child Python (``python -c LOAD_SCRIPT [load]``) with the app's environment: reports what
# CUDA sees, and with ``load`` keeps the GPU busy with fp16 matmuls until it is terminated.
LOAD_SCRIPT = r"""
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"torch": None, "cuda": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    sys.exit(0)
info = {"torch": torch.__version__, "cuda": bool(torch.cuda.is_available())}
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(name=p.name, uuid=str(getattr(p, "uuid", "")), count=torch.cuda.device_count())
print(json.dumps(info), flush=True)
if sys.argv[1:] != ["load"] or not info["cuda"]:
    sys.exit(0)
a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
print(json.dumps({"busy": True}), flush=True)
while True:
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
"""


def probe_cuda(app_env: dict[str, str], timeout_s: float = 180.0) -> dict:
    """What a child Python with the app's environment sees: torch version, CUDA, device name and UUID."""
    if importlib.util.find_spec("torch") is None:
        return {"torch": None, "cuda": False, "error": "torch is not installed in this Python"}
    try:
        out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, **app_env})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"torch": None, "cuda": False, "error": f"the CUDA probe failed: {exc}"}
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), "")
    try:
        return json.loads(line)
    except ValueError:
        return {"torch": None, "cuda": False, "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}


class Load:
    """Keeps the GPU busy inside ``with load.running(events_path)`` and writes that run's phase events
    (one ``batch`` and one ``denoise_step`` span), so its row has a work window.

    ``kind``: ``simulated`` (the twin's activity model follows the events), ``process`` (the matmul
    child), ``none`` (a real GPU without torch+CUDA: the window is idle and the report says so).
    """

    def __init__(self, backend: GpuBackend, kind: str, app_env: dict[str, str]):
        self.backend, self.kind, self.app_env = backend, kind, app_env

    @property
    def description(self) -> str:
        return {"simulated": "the simulated GPU's activity model at a denoising step (full activity)",
                "process": "an fp16 4096x4096 matmul loop in a child Python on CUDA_VISIBLE_DEVICES="
                           + self.app_env.get("CUDA_VISIBLE_DEVICES", "?"),
                "none": "none (no torch with CUDA here): the GPU was idle"}[self.kind]

    @contextlib.contextmanager
    def running(self, events: Path) -> Iterator[None]:
        events.parent.mkdir(parents=True, exist_ok=True)
        self.backend.begin_run(events)
        child = self._start_child() if self.kind == "process" else None
        try:
            self._event(events, "start")
            yield
            self._event(events, "end")
        finally:
            if child is not None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            self.backend.end_run()

    def _start_child(self) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, "load"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                 env={**os.environ, **self.app_env})
        assert child.stdout is not None
        for line in child.stdout:  # the probe line, then "busy" once the matmuls run
            if '"busy"' in line:
                return child
        child.wait()
        raise GpuError(f"the load process ended before the GPU was busy (exit {child.returncode})")

    @staticmethod
    def _event(path: Path, kind: str) -> None:
        t = time.monotonic()
        spans = [(BATCH, {"batch": 0}), (DENOISE_STEP, {"batch": 0, "step": 0})]
        for phase, keys in spans if kind == "start" else reversed(spans):
            append_line(path, json.dumps({"event": kind, "phase": phase, "mono_s": t, **keys}), fsync=False)


# --------------------------------------------------------------------------- the check

class Validator:
    """Runs the checks on one open backend into one results directory."""

    def __init__(self, backend: GpuBackend, opts: Options, out: Path, identity: GpuIdentity, log: Log,
                 selection=None):
        self.backend, self.opts, self.out, self.log = backend, opts, out, log
        self.identity, self.gpu_type = identity, identity.family
        self.selection = selection  # profiling.backends.visibility.Selection: which GPU and how it was chosen
        # --gpu-index for the sweep: the position among the job's GPUs, which is not the backend's index
        # when CUDA_VISIBLE_DEVICES names node GPUs
        self.position = selection.position if selection is not None else backend.index
        env = backend.child_env()
        self.app_env = selection.app_env(env) if selection is not None else env
        self.mig: str | None = None
        self.results = ResultsDir(out)
        self.device = replace(DeviceInfo.of(backend, self.gpu_type), gpu_sku=identity.sku or backend.device_name(),
                              mig=bool(selection is not None and (selection.mig_mode or selection.mig_device)))
        self.cuda: dict = {}
        self.idle_w: float | None = None
        self.counter_period_s: float | None = None
        self.locked: list[int] = []
        self.lock_failed: str | None = None
        self.method: str | None = None
        self.supported: list[int] = []

    # ---------------------------------------------------------------- identity
    def identify(self, report: Report) -> None:
        b, log = self.backend, self.log
        report.add(Check("driver", INFO, b.driver_version() or "unknown"), log)
        ident = self.identity
        known = ident.sku is not None or self.gpu_type in load_gpu_specs()
        detail = f"type {self.gpu_type or 'unknown'}, SKU {ident.sku or 'unknown'} ({ident.note})"
        if not known:
            detail += "; sweeps need --gpu-type or a new configs/gpus.yaml entry (clocks, TDP)"
        report.add(Check("gpu", INFO if known else WARN, b.device_name(),
                         detail=detail + (" -- SIMULATED, numbers are a model" if b.synthetic else "")), log)
        report.add(Check("uuid", INFO, b.uuid(), detail=f"index {b.index} through {b.name}"), log)
        self._mapping(report)
        self._mig(report)

    def _mapping(self, report: Report) -> None:
        b = self.backend
        given = self.app_env.get("CUDA_VISIBLE_DEVICES")
        job = ", ".join(f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
                        if k in os.environ) or "no CUDA_VISIBLE_DEVICES/SLURM GPU variables"
        if self.selection is not None:
            job += f"; chosen: {self.selection.how}"
        if b.synthetic:
            report.add(Check("cuda mapping", INFO, given or "state file", detail=f"simulated GPU: the app finds it "
                             f"through SD_ENERGY_SIMULATED_STATE; job: {job}"), self.log)
            return
        self.cuda = probe_cuda(self.app_env)
        if not self.cuda.get("cuda"):
            why = self.cuda.get("error") or "torch sees no CUDA device"
            report.add(Check("cuda mapping", WARN, given, detail=f"the app gets CUDA_VISIBLE_DEVICES={given}; not "
                             f"confirmed from CUDA's side ({why}); job: {job}"), self.log)
            return
        seen = str(self.cuda.get("uuid") or "")
        same = bool(seen) and _uuid_key(seen) == _uuid_key(b.uuid())
        report.add(Check("cuda mapping", PASS if same else FAIL, given, detail=(
            f"CUDA under CUDA_VISIBLE_DEVICES={given} sees {self.cuda.get('name')} {seen}"
            + ("" if same else f", NOT the measured GPU {b.uuid()}: the app would run on another GPU")
            + f"; job: {job}")), self.log)

    def _mig(self, report: Report) -> None:
        b, sel = self.backend, self.selection
        if sel is not None:
            self.mig = sel.mig
            if sel.mig_mode or sel.mig_device:
                report.add(Check("mig", WARN, "enabled", detail="MIG is on: power, energy and clocks are whole-GPU, so "
                                 "every energy includes the other instances' work (rows say mig=whole-gpu); measure "
                                 "with MIG off" + (f"; the app runs on {sel.mig_device}" if sel.mig_device else "")),
                           self.log)
            else:
                report.add(Check("mig", PASS, "off"), self.log)
            return
        mode = None
        fn = getattr(b, "mig_mode", None)
        if callable(fn):
            with contextlib.suppress(GpuError):
                mode = fn()
        if mode is None and getattr(b, "mig", None) is True:  # a backend that knows only that it is a MIG GPU
            mode = "Enabled"
        if b.uuid().upper().startswith("MIG-"):
            mode = "Enabled (a MIG instance)"
        self.mig = None if mode is None else ("whole-gpu" if str(mode).lower().startswith("enabled") else "off")
        if mode is None:
            report.add(Check("mig", INFO, "unknown", detail=f"{b.name} does not report the MIG mode"), self.log)
        elif str(mode).lower().startswith("enabled"):
            report.add(Check("mig", WARN, str(mode), detail="power and energy sensors are whole-GPU: energies include "
                             "the other instances' work; measure a whole GPU with MIG off"), self.log)
        else:
            report.add(Check("mig", PASS, str(mode)), self.log)

    # ---------------------------------------------------------------- idle and load
    def idle(self, report: Report) -> None:
        samples = poll(self.backend, self.opts.idle_seconds, SAMPLE_S)
        mean, std = _mean_std([s.power_w for s in samples if s.power_w is not None])
        self.idle_w = mean
        if mean is None:
            report.add(Check("idle power", FAIL, None, "W", f"no power reading in {len(samples)} samples"), self.log)
            return
        cv = std / mean if mean > 0 else float("inf")
        report.add(Check("idle power", PASS if cv <= IDLE_CV_OK else WARN, round(mean, 2), "W",
                         f"std {std:.2f} W ({cv:.1%}) over {self.opts.idle_seconds:g} s, {len(samples)} samples"
                         + ("" if cv <= IDLE_CV_OK else f"; above {IDLE_CV_OK:.0%}: another process on the GPU, or not "
                            "settled after earlier work? Unsteady idle power is noise in every run's energy")),
                   self.log)

    def load_window(self, report: Report, load: Load) -> None:
        """The fixed load at the default clocks: power source, counter period, counter vs integrated."""
        rid = run_id(None, 0, False)
        events = self.results.file("events", rid)
        with load.running(events):
            t0 = time.monotonic()
            samples = poll(self.backend, self.opts.load_seconds, COUNTER_POLL_S)
            t1 = time.monotonic()
        powers = [s.power_w for s in samples if s.power_w is not None]
        mean_p = statistics.fmean(powers) if powers else None
        rise = (f"{mean_p:.1f} W vs idle {self.idle_w:.1f} W" if mean_p is not None and self.idle_w is not None
                else "no power reading")
        busy = mean_p is not None and self.idle_w is not None and mean_p > 1.1 * self.idle_w
        report.add(Check("load", PASS if busy else WARN, None if mean_p is None else round(mean_p, 2), "W",
                         f"{load.description}; {rise}" + ("" if busy else ": the load did not raise power by 10 %")),
                   self.log)
        self._power_source(report, samples)
        self._counter(report, samples, t0, t1)
        self._write_run(rid, None, samples, t0, t1, events, readback=None)

    def _power_source(self, report: Report, samples: list[GpuSample]) -> None:
        source = getattr(self.backend, "power_source", "averaged")
        period, _ = update_period_s(samples, "power_w")
        has_avg = any(getattr(s, "power_avg_w", None) is not None for s in samples)
        seen = f"power changes every {period * 1000:.0f} ms" if period else "power did not change while polled"
        extra = f"; {seen}; averaged reading {'also recorded' if has_avg else 'not available'}"
        if source == "averaged":
            report.add(Check("power source", WARN, source, detail="power_w is the driver's moving average (1 s on "
                             "H100/H200): integrated power smears short phases; a driver with the instantaneous field "
                             "(NVML_FI_DEV_POWER_INSTANT, power.draw.instant, DCGM 157) avoids it" + extra), self.log)
        else:
            report.add(Check("power source", PASS, source, detail=("simulated model" if source == "modelled" else
                             "instantaneous readings are integrated") + extra), self.log)

    def _counter(self, report: Report, samples: list[GpuSample], t0: float, t1: float) -> None:
        counter = [s.energy_mj for s in samples if s.energy_mj is not None]
        if not counter:
            report.add(Check("energy counter", WARN, None, "s", f"{self.backend.name} has no energy counter: every "
                             "energy is integrated power (NVML on Volta or newer has one)"), self.log)
            report.add(Check("counter vs integrated", SKIP, None, "%", "no counter to compare"), self.log)
            return
        period, changes = update_period_s(samples, "energy_mj")
        declared = getattr(self.backend, "energy_update_period_s", None)
        if counter[-1] <= counter[0]:
            report.add(Check("energy counter", FAIL, None, "s", f"the counter did not advance in "
                             f"{self.opts.load_seconds:g} s of load ({counter[0]:.0f} mJ)"), self.log)
        elif period is None:
            report.add(Check("energy counter", WARN, None, "s", f"{changes} change(s) in {self.opts.load_seconds:g} s: "
                             "too few to measure the update period; give --load-seconds more"), self.log)
        else:
            self.counter_period_s = period
            steps = [b - a for a, b in zip(counter, counter[1:], strict=False) if b != a]
            continuous = period <= 2 * COUNTER_POLL_S
            slow = declared is not None and period > 1.5 * declared
            detail = ("changes at (nearly) every poll: continuous at this resolution" if continuous else
                      f"median of {changes - 1} intervals between changes, polled every {COUNTER_POLL_S * 1000:.0f} ms; "
                      f"median step {statistics.median(steps):.0f} mJ")
            detail += f"; the backend assumes {declared:g} s" if declared else ""
            detail += (f"; windows shorter than {10 * period:.2f} s should use integrated power" if not continuous
                       else "")
            report.add(Check("energy counter", WARN if slow else PASS, round(period, 4), "s",
                             detail + ("; slower than assumed: short-window warnings come too late" if slow else "")),
                       self.log)
        # Compared in steady load (the first fifth of the window left out for the ramp), between two of
        # the counter's own steps: a stepped counter read at arbitrary edges is off by up to one step's
        # energy at each, which over a short window would be the difference measured.
        settled = t0 + 0.2 * (t1 - t0)
        edges = [t for t in change_times(samples, "energy_mj") if t >= settled]
        a, b = (edges[0], edges[-1]) if len(edges) >= 2 else (settled, t1)
        trace = mon.EnergyTrace(samples)
        e_c, e_i = trace.counter_j(a, b), trace.integrated_j(a, b)
        if e_c is None or e_i is None or e_c <= 0:
            report.add(Check("counter vs integrated", SKIP, None, "%", "too few readings to compare"), self.log)
            return
        diff = (float(e_i) - float(e_c)) / float(e_c)
        status = PASS if abs(diff) <= COUNTER_DIFF_OK else WARN if abs(diff) <= COUNTER_DIFF_WARN else FAIL
        between = "between two counter steps" if len(edges) >= 2 else "(the counter stepped less than twice)"
        report.add(Check("counter vs integrated", status, round(100 * diff, 2) or 0.0, "%",
                         f"over {b - a:.2f} s of steady load {between}: counter {float(e_c):.1f} J, integrated power "
                         f"{float(e_i):.1f} J"
                         + ("" if status == PASS else "; they should agree within "
                            f"{COUNTER_DIFF_OK:.0%}: an averaged or partly sampled power reading, or a counter of "
                            "another device")), self.log)

    # ---------------------------------------------------------------- clocks
    def clocks(self, report: Report, load: Load) -> None:
        b = self.backend
        try:
            self.supported = b.supported_sm_clocks_mhz()
            clocks = pick_clocks(self.supported)
        except GpuError as exc:
            self.lock_failed = f"no supported clock list: {exc}"
            report.add(Check("clock lock", FAIL, None, detail=self.lock_failed), self.log)
            return
        rows = []
        with ClockGuard(b, self.gpu_type) as guard:
            for mhz in clocks:
                try:
                    guard.lock(mhz)
                except GpuError as exc:
                    self.lock_failed = f"locking {mhz} MHz failed: {str(exc).splitlines()[0]}"
                    break
                self.method = getattr(guard, "method", None) or getattr(b, "clock_method", "locked")
                rows.append(self._clock_run(mhz, load))
            guard.restore()
            after = b.sample().sm_clock_mhz
            record_gone = not guard.record.exists()
        report.clock_locks = rows
        method = self.method
        if self.lock_failed:
            report.add(Check("clock lock", FAIL, None, detail=self.lock_failed), self.log)
        else:
            above = [r for r in rows if r["readback_mhz"] is not None
                     and r["readback_mhz"] > r["target_mhz"] + r["tolerance_mhz"]]
            below = [r for r in rows if r["readback_mhz"] is None
                     or r["readback_mhz"] < r["target_mhz"] - r["tolerance_mhz"]]
            shown = ", ".join(f"{r['target_mhz']}->{_mhz(r['readback_mhz'])}" for r in rows)
            status = FAIL if above else WARN if below else PASS
            why = (" ABOVE the lock: it did not apply" if above else
                   " below the lock: throttling (reasons in validate.json) or an idle GPU" if below else "")
            report.add(Check("clock lock", status, method, detail=f"target->read back under load (MHz): {shown}{why}"),
                       self.log)
            self.locked = [r["target_mhz"] for r in rows]
        report.add(Check("clock restore", PASS if record_gone else FAIL, None if after is None else round(after),
                         "MHz", "reset_clocks called, lock record removed; SM clock right after" if record_gone
                         else f"lock record {guard.record} left behind"), self.log)

    def _clock_run(self, mhz: int, load: Load) -> dict:
        rid = run_id(mhz, 0, False)
        events = self.results.file("events", rid)
        with load.running(events):
            t0 = time.monotonic()
            samples = poll(self.backend, self.opts.clock_seconds, SAMPLE_S)
            t1 = time.monotonic()
        settled = [s.sm_clock_mhz for s in samples[len(samples) // 2:] if s.sm_clock_mhz is not None]
        readback = statistics.median(settled) if settled else None
        self._write_run(rid, mhz, samples, t0, t1, events, readback)
        mask = _or_mask(samples)
        powers = [s.power_w for s in samples if s.power_w is not None]
        return {"target_mhz": mhz, "readback_mhz": readback, "method": self.method,
                "tolerance_mhz": clock_step_mhz(self.supported, mhz),
                "power_w": round(statistics.fmean(powers), 2) if powers else None,
                "throttle_mask": None if mask is None else f"0x{mask:x}", "samples": len(samples)}

    # ---------------------------------------------------------------- the replayable results directory
    def _write_run(self, rid: str, clock: int | None, samples: list[GpuSample], t0: float, t1: float, events: Path,
                   readback: float | None) -> None:
        spans = mon.read_events(events)
        period = self.counter_period_s
        row = build_row(run_id=rid, clock=clock, index=0, warmup=False, status="ok", exit_code=0, t_start=t0, t_end=t1,
                        samples=samples, spans=spans, metrics={}, device=self.device, workload=WORKLOAD_NAME,
                        mode="in-process", idle_power_w=self.idle_w, readback_mhz=readback,
                        throttle_reasons=self.backend.throttle_reasons,
                        sensors=mon.Sensors.of(self.backend, self.gpu_type, counter_period_s=period),
                        measured_period_s=period, clock_method=self.method if clock else None)
        ours = {"power_source": getattr(self.backend, "power_source", None), "energy_update_period_s": period,
                "temp_start_c": samples[0].temp_c if samples else None}
        for key, value in ours.items():
            if key in RUNS_COLUMNS and row.get(key) is None:
                row[key] = value
        self.results.append_row({k: v for k, v in row.items() if k in RUNS_COLUMNS})
        write_atomic(self.results.file("samples", rid), samples_csv(samples, mon.label_samples(samples, spans)))


def _mhz(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


# --------------------------------------------------------------------------- the sweep

def run_sweep(report: Report, v: Validator, opts: Options, work: object | None, log: Log) -> None:
    """A short sweep at the locked clocks through ``profiling.sweep`` (its own results directory)."""
    b = v.backend
    if opts.skip_sweep:
        report.add(Check("sweep", SKIP, None, detail="--skip-sweep"), log)
        return
    if v.lock_failed or not v.locked:
        report.add(Check("sweep", SKIP, None, detail="the clocks cannot be locked on this GPU (see clock lock)"), log)
        return
    if work is None:
        if importlib.util.find_spec("torch") is None:
            report.add(Check("sweep", SKIP, None, detail="torch is not installed: the diffusion app cannot run"), log)
            return
        if not b.synthetic and not v.cuda.get("cuda"):
            report.add(Check("sweep", SKIP, None, detail="no torch with CUDA in this Python: the SD1.5 sweep needs it"),
                       log)
            return
        from .config import DEFAULT_WORKLOAD
        from .run_sources import load_workload

        args = SIM_APP_ARGS if b.synthetic else GPU_APP_ARGS
        try:
            work = load_workload(DEFAULT_WORKLOAD, args)
        except InputError as exc:
            report.add(Check("sweep", SKIP, None, detail=f"the diffusion workload is not available: {exc}"), log)
            return
        what = ("tiny-weights SD1.5 on the SIMULATED GPU" if b.synthetic else "random-weights SD1.5") + \
            f" ({' '.join(args)})"
    else:
        what = getattr(work, "name", None) or getattr(work, "__name__", "a function")
    from .driver import sweep

    out = v.out / SWEEP_DIR
    log(f"sweep: {what} at {', '.join(map(str, v.locked))} MHz, {opts.sweep_runs} run(s) each -> {out}")
    try:
        res = sweep(work, clocks=v.locked, runs=opts.sweep_runs, output_dir=out, warmup_runs=0 if b.synthetic else 1,
                    backend=b.name, gpu=v.position, gpu_type=opts.gpu_type or getattr(b, "gpu_type", None),
                    idle_seconds=0.0, name="validate-sweep", log=log)
    except (RuntimeError, InputError, GpuError) as exc:
        report.add(Check("sweep", FAIL, None, detail=f"{type(exc).__name__}: {exc}"), log)
        return
    rows = [r for r in res.read_rows() if r.get("warmup") in ("0", 0)]
    per_clock = {}
    for mhz in v.locked:
        mine = [r for r in rows if _num(r.get("sm_clock_target_mhz")) == mhz]
        per_clock[mhz] = {k: _avg(mine, k) for k in ("work_s", "work_avg_power_w", "energy_per_image_j", "work_energy_j")}
        per_clock[mhz]["runs_ok"] = sum(r["status"] == "ok" for r in mine)
    report.sweep = {"what": what, "dir": str(out), "clocks": per_clock, "runs": len(rows)}
    bad = [r["run_id"] for r in rows if r["status"] != "ok"]
    mismatch = [r["run_id"] for r in rows if r.get("clock_mismatch") in ("1", 1)]
    p_hi, p_lo = per_clock[v.locked[0]]["work_avg_power_w"], per_clock[v.locked[-1]]["work_avg_power_w"]
    flat = len(v.locked) > 1 and p_hi is not None and p_lo is not None and p_lo >= p_hi
    status = FAIL if bad or not rows else WARN if mismatch or flat else PASS
    detail = "; ".join(f"{mhz} MHz: {_fmt(c['work_s'], 's')}, {_fmt(c['work_avg_power_w'], 'W')}, "
                       f"{_fmt(c['energy_per_image_j'], 'J/img')}" for mhz, c in per_clock.items())
    detail += (f"; not ok: {', '.join(bad)}" if bad else "") + (f"; clock mismatch: {', '.join(mismatch)}" if mismatch
                                                                 else "")
    detail += "; power at the lowest clock is not below the highest" if flat else ""
    report.add(Check("sweep", status, f"{len(rows) - len(bad)}/{len(rows)} ok", detail=detail), log)


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _avg(rows: list[dict], key: str) -> float | None:
    vals = [x for r in rows if (x := _num(r.get(key))) is not None]
    return round(statistics.fmean(vals), 4) if vals else None


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}") + (f" {unit}" if unit else "")


# --------------------------------------------------------------------------- the whole command

def validate(opts: Options, backend: GpuBackend | None = None, work: object | None = None, log: Log = _print) -> Report:
    """Run every check and write the results directory, ``validate.json`` and ``VALIDATE.md``.

    ``backend``: an open backend to check (the caller keeps it open); default: opened from the
    options like the launcher does (stale clock locks repaired first). ``work``: what the sweep
    runs (a function or a ``Workload``); default: the diffusion app. Raises ``InputError`` for
    bad options; ``profiling.clocks.Interrupted`` on a signal (clocks are restored first).
    """
    opts.check()
    selection = None
    with contextlib.ExitStack() as ours:
        if backend is None:
            restore_stale(log=log)  # GPUs a killed launcher left locked, found by UUID
            backend, selection = _open(opts, log)
            ours.callback(backend.close)
        identity = identify_gpu(backend.device_name(), opts.gpu_type, measured=not backend.synthetic,
                                detected=getattr(backend, "gpu_type", None))
        name = identity.sku or identity.family or "gpu"
        out = Path(opts.output_dir) if opts.output_dir else \
            Path.cwd() / "results" / f"validate_{name}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        # The backend we opened is closed before the sweep (which opens its own): a sampler stream of
        # ours must not run beside the sweep's and load the host it measures.
        return _validate_owned(opts, backend, identity, out, work, log, selection, release=ours.close)


def _open(opts: Options, log: Log):
    """The GPU this job was given, as the launcher resolves it (``--gpu-index`` among what the job's CUDA
    sees, by UUID). A GPU in MIG mode is opened whole, so the check can report it instead of refusing."""
    try:
        return open_job_gpu(opts.profiling_tool, opts.gpu_index, opts.gpu_type, allow_mig_whole_gpu=True, announce=log)
    except GpuError as exc:
        raise InputError("--profiling-tool", opts.profiling_tool, str(exc)) from None


def _validate_owned(opts: Options, backend: GpuBackend, identity: GpuIdentity, out: Path, work, log: Log,
                    selection=None, release: Callable[[], object] = lambda: None) -> Report:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("--output-dir", opts.output_dir or out, f"cannot create it ({exc.strerror})") from None
    info = {"output_dir": str(out.resolve()), "gpu_uuid": backend.uuid(), "command": "validate"}
    with contextlib.ExitStack() as held:
        try:
            held.callback(results_lock(out, info).acquire().release)
        except Held as exc:
            raise InputError("--output-dir", out, f"another launcher is writing to it ({describe(exc.holder)})") from None
        gpu = gpu_lock(backend.uuid(), info)
        try:
            gpu.acquire()
        except Held as exc:
            raise InputError("--gpu-index", backend.index, f"GPU {backend.uuid()} is in use by a sweep "
                             f"({describe(exc.holder)}); validate it when that ends") from None
        try:
            report, v = _checks(opts, backend, identity, out, log, selection)
        finally:
            gpu.release()  # the sweep takes the GPU itself
        release()
        run_sweep(report, v, opts, work, log)
        write_report(report, out)
    log(f"{'FAILED' if report.exit_code else 'passed'}: {sum(c.status == FAIL for c in report.checks)} failed, "
        f"{sum(c.status == WARN for c in report.checks)} warned; {out / VALIDATE_MD}")
    return report


def _checks(opts: Options, backend: GpuBackend, identity: GpuIdentity, out: Path, log: Log,
            selection=None) -> tuple[Report, Validator]:
    v = Validator(backend, opts, out, identity, log, selection)
    gpu_type = identity.family
    env_keys = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
    report = Report(gpu={"name": backend.device_name(), "type": gpu_type, "sku": identity.sku, "uuid": backend.uuid(),
                         "index": backend.index,
                         "driver": backend.driver_version()},
                    synthetic=backend.synthetic, backend=backend.name, results_dir=str(out),
                    environment={k: os.environ[k] for k in env_keys if k in os.environ},
                    settings={k: x for k, x in asdict(opts).items() if k != "output_dir"})
    if backend.synthetic:
        log("*** SIMULATED GPU: no NVIDIA GPU is checked here; every number below is the model's ***")
    clocks_preview = []
    with contextlib.suppress(GpuError):
        clocks_preview = pick_clocks(backend.supported_sm_clocks_mhz())
    v.results.create({
        "gpu_name": backend.device_name(), "gpu_uuid": backend.uuid(), "driver": backend.driver_version(),
        "backend": backend.name, "synthetic": backend.synthetic, "gpu_type": gpu_type, "gpu_sku": identity.sku,
        "gpu_sku_note": identity.note, "gpu_index": backend.index,
        "mode": "validate", "run_mode": "in-process", "clocks_mhz": clocks_preview, "num_runs": 1, "warmup_runs": 0,
        "sampling_interval_ms": SAMPLE_S * 1000, "app_name": WORKLOAD_NAME, "app_command": [], "host": socket.gethostname(),
        "config_hash": config_hash({"validate": asdict(opts), "gpu_uuid": backend.uuid()}),
        "start_utc": datetime.now(timezone.utc).isoformat(), "end_utc": None, "validate": True})
    v.identify(report)
    stream = getattr(backend, "set_sampling_interval", None)
    if stream is not None:  # nvidia-smi / dcgmi streams: as fast as the polls below, so they see the sensor's steps
        stream(STREAM_S)
    kind = "simulated" if backend.synthetic else "process" if v.cuda.get("cuda") else "none"
    load = Load(backend, kind, v.app_env)
    v.idle(report)
    v.load_window(report, load)
    v.clocks(report, load)
    report.gpu["mig"] = v.mig
    if selection is not None:
        report.gpu["selection"] = selection.manifest()
    manifest = v.results.manifest()
    v.results.write_manifest({**manifest, "end_utc": datetime.now(timezone.utc).isoformat(),
                              "clocks_mhz": v.locked or clocks_preview})
    return report, v


# --------------------------------------------------------------------------- the report files

def write_report(report: Report, out: Path) -> None:
    data = {"schema": SCHEMA, "created_utc": datetime.now(timezone.utc).isoformat(), "host": socket.gethostname(),
            "synthetic": report.synthetic, "backend": report.backend, "gpu": report.gpu,
            "environment": report.environment, "settings": report.settings,
            "checks": [asdict(c) for c in report.checks], "clock_locks": report.clock_locks, "sweep": report.sweep,
            "results_dir": report.results_dir, "exit_code": report.exit_code}
    write_atomic(out / VALIDATE_JSON, json.dumps(data, indent=2, default=str))
    write_atomic(out / VALIDATE_MD, render_markdown(report, out))


def render_markdown(report: Report, out: Path) -> str:
    g = report.gpu
    counts = {s: sum(c.status == s for c in report.checks) for s in (PASS, WARN, FAIL)}
    lines = [f"# Node check: {g['name']}", ""]
    if report.synthetic:
        lines += ["> **SIMULATED GPU.** No NVIDIA GPU was checked: this machine has none (or the simulated backend "
                  "was asked for). Every number below comes from the model in `configs/gpus.yaml`; run this again "
                  "on the GPU node.", ""]
    lines += [f"{'**FAILED**' if report.exit_code else '**Passed**'}: {counts[PASS]} passed, {counts[WARN]} warned, "
              f"{counts[FAIL]} failed. Host `{socket.gethostname()}`, backend `{report.backend}`, GPU index "
              f"{g['index']}, type {g.get('type') or 'unknown'}, UUID `{g['uuid']}`, driver {g.get('driver')}.", "",
              "| check | status | value | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {c.name} | {c.status} | {c.shown()} | {c.detail.replace('|', '/')} |" for c in report.checks]
    if report.clock_locks:
        lines += ["", "Clock locks (under load): " + "; ".join(
            f"{r['target_mhz']} MHz read back {_mhz(r['readback_mhz'])} MHz, {_fmt(r['power_w'], 'W')}"
            + (f", throttle {r['throttle_mask']}" if r.get("throttle_mask") not in (None, "0x0") else "")
            for r in report.clock_locks) + "."]
    if report.sweep:
        lines += ["", f"Sweep: {report.sweep['what']}.", "", "| clock (MHz) | runs ok | work (s) | power (W) | J/image |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {mhz} | {c['runs_ok']} | {_fmt(c['work_s'], '')} | {_fmt(c['work_avg_power_w'], '')} | "
                  f"{_fmt(c['energy_per_image_j'], '')} |" for mhz, c in report.sweep["clocks"].items()]
    lines += ["", f"Files: this directory is a results directory (the load window and one run per locked clock); "
              f"replay it with `./launch.sh --profiling-tool replay --replay-source {out} --profiling-mode dvfs`."
              + (f" The sweep is in `{SWEEP_DIR}/` (`python -m power_modeling report {out / SWEEP_DIR}`)."
                 if report.sweep else "") + f" Every number: `{VALIDATE_JSON}`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--gpu-index", type=int, default=None, help="Which of the GPUs this job sees, as for the launcher: the "
              "N-th entry of CUDA_VISIBLE_DEVICES when set, else NVML index N (default 0).")
@click.option("--profiling-tool", default="auto", type=click.Choice(TOOLS), show_default=True)
@click.option("--gpu-type", default=None, help="The simulated GPU's type where there is no GPU (default H100); on a "
              "real GPU it must match the GPU.")
@click.option("--output-dir", default=None, help="A new directory (default: results/validate_<gpu>_<time>).")
@click.option("--skip-sweep", is_flag=True, help="Leave out the short diffusion sweep at three clocks.")
@click.option("--idle-seconds", type=float, default=3.0, show_default=True, help="Idle power window.")
@click.option("--load-seconds", type=float, default=5.0, show_default=True,
              help="Load window for the counter's update period and counter vs integrated energy.")
@click.option("--clock-seconds", type=float, default=3.0, show_default=True, help="Load per locked clock.")
@click.option("--sweep-runs", type=int, default=2, show_default=True, help="Sweep runs per clock.")
def cli(**o) -> int:
    """Check this node's GPU before a campaign: identity, sensors, clock control, a short sweep."""
    try:
        return validate(Options(**o), log=click.echo).exit_code
    except Interrupted as exc:
        click.echo(f"interrupted ({exc}); clocks restored", err=True)
        return 128 + exc.signum


def main(args: list[str] | None = None) -> int:
    return run_cli(cli, args, prog_name="launch.sh --validate")


__all__ = ["Check", "Options", "Report", "main", "pick_clocks", "poll", "update_period_s", "validate"]

if __name__ == "__main__":
    sys.exit(main())
