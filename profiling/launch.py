"""The sweep driver behind ``sample-collection-scripts/launch.sh`` (``python -m profiling.launch``).

For each clock x run: lock the clock (and read it back) -> start the monitor -> run the app as
a subprocess (argument list, never a shell) -> stop the monitor -> write the row and the
per-run files. Clocks are restored on every exit path (see ``profiling.clocks``). Starting
the same command again continues the sweep: only runs without a row are done.

Guided mode (``--profiling-mode guided``) measures only the clocks a planner asks for, one at a
time: the max clock first, then wherever the cross-workload model (corrected by the probes so
far) predicts the best objective, until the planner stops. The planner lives in
``power_modeling`` and is found through the ``sd_energy.clock_planners`` entry point
(``profiling.planning``): this layer never imports the layers above it. Each probe is an ordinary
one-clock sweep, so rows, per-run files, clock restoring and resume work as in any other mode.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click

from sd_energy_contract.errors import InputError

from . import monitor as mon
from .backends import BACKENDS, detect_gpu_type, load_gpu_specs, open_backend
from .backends.base import SAMPLE_COLUMNS, GpuBackend
from .cli_support import config_option, run_cli
from .clocks import ClockGuard, Interrupted, restore_stale
from .errors import GpuError
from .planning import PlannerError, load_planner
from .results import APP_CONFIG_FIELDS, ResultsDir, config_hash, run_id, write_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("baseline", "dvfs", "custom", "guided")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURMD_NODENAME",
              "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS", "SLURM_RESTART_COUNT", "SLURM_JOB_GPUS",
              "CUDA_VISIBLE_DEVICES", "SD_ENERGY_SBATCH_OPTIONS")


@dataclass
class SweepPlan:
    clocks: list[int | None]            # None = default (unlocked) clock
    num_runs: int
    warmup_runs: int
    runs: list[tuple[int | None, int, bool]] = field(default_factory=list)

    def __post_init__(self):
        # Highest clock first: the reference run for slowdowns comes first, and a sweep cut short has it.
        for c in self.clocks:
            self.runs += [(c, i, True) for i in range(self.warmup_runs)]
            self.runs += [(c, i, False) for i in range(self.num_runs)]


def nearest(clocks: list[int], target: int, n: int = 3) -> list[int]:
    return sorted(sorted(clocks, key=lambda c: abs(c - target))[:n], reverse=True)


def select_clocks(mode: str, supported: list[int], custom: str | None, fmin: int | None, fmax: int | None,
                  step: int | None) -> list[int | None]:
    """The clock list of a sweep, validated against what the GPU supports.

    In guided mode these are the candidates the planner may choose from (a dvfs sweep's clocks);
    which of them are measured is decided one probe at a time (``_run_guided``).
    """
    if mode == "baseline":
        return [None]
    if mode == "guided":
        return select_clocks("dvfs", supported, None, fmin, fmax, step)
    hi, lo = supported[0], supported[-1]
    if mode == "custom":
        if not custom:
            raise InputError("--custom-frequencies", None, "required with --profiling-mode custom (e.g. 1410,1200,990)")
        try:
            wanted = [int(x) for x in custom.replace(" ", "").split(",") if x]
        except ValueError:
            raise InputError("--custom-frequencies", custom, "must be comma-separated MHz integers") from None
        for f in wanted:
            if f not in supported:
                raise InputError("--custom-frequencies", f, f"not a supported SM clock; nearest supported: "
                                f"{', '.join(map(str, nearest(supported, f)))} (range {lo}-{hi} MHz)")
        return sorted(set(wanted), reverse=True)
    fmax = hi if fmax is None else fmax
    fmin = lo if fmin is None else fmin
    for opt, val in (("--max-frequency", fmax), ("--min-frequency", fmin)):
        if not lo <= val <= hi:
            raise InputError(opt, val, f"outside the GPU's supported SM clocks {lo}-{hi} MHz")
    if fmin > fmax:
        raise InputError("--min-frequency", fmin, f"is above --max-frequency {fmax}")
    in_range = [c for c in supported if fmin <= c <= fmax]
    if not step:
        return in_range
    if step <= 0:
        raise InputError("--frequency-step", step, "must be a positive number of MHz")
    picked, target = [], in_range[0]
    while target >= fmin:
        best = min(in_range, key=lambda c: abs(c - target))
        if best not in picked:
            picked.append(best)
        target -= step
    return sorted(picked, reverse=True)


def slice_clocks(clocks: list, spec: str | None) -> list:
    """``K/N``: the K-th of N contiguous, near-equal slices (the union of all K is the whole list)."""
    if not spec:
        return clocks
    try:
        k, n = (int(x) for x in spec.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise InputError("--clock-slice", spec, "must be K/N with 0 <= K < N, e.g. 0/4") from None
    if n > len(clocks):
        raise InputError("--clock-slice", spec, f"more slices than clocks ({len(clocks)})")
    base, extra = divmod(len(clocks), n)
    start = k * base + min(k, extra)
    return clocks[start:start + base + (k < extra)]


def gpu_index_from_env() -> int | None:
    """The GPU SLURM (or the user) gave this job, as an NVML index: never GPU 0 by assumption."""
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit():
            return int(value)
    return None


def app_command(executable: str, params: str) -> list[str]:
    try:
        args = shlex.split(params or "")
    except ValueError as exc:
        raise InputError("--app-params", params, f"cannot be split with shell rules: {exc}") from None
    if executable.endswith(".py"):
        return [sys.executable, executable, *args]
    return [executable, *args]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "nvidia-ml-py", "pandas", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


class Sweep:
    """One sweep on one GPU into one results directory."""

    def __init__(self, backend: GpuBackend, gpu_type: str | None, results: ResultsDir, plan: SweepPlan,
                 command: list[str], workload: str, opts: dict, log=click.echo):
        self.backend = backend
        self.gpu_type = gpu_type
        self.results = results
        self.plan = plan
        self.command = command
        self.workload = workload
        self.opts = opts
        self.log = log
        self.idle_power_w: float | None = None

    # ---- one run
    def _env(self, rid: str, clock: int | None) -> dict:
        env = dict(os.environ)
        env.update({"SD_ENERGY_EVENTS_FILE": str(self.results.file("events", rid)),
                    "SD_ENERGY_METRICS_FILE": str(self.results.file("apps", rid)),
                    "SD_ENERGY_RUN_ID": rid, "SD_ENERGY_SM_CLOCK_MHZ": str(clock or "")})
        state = getattr(self.backend, "state_file", None)
        if state is not None:
            env["SD_ENERGY_SIMULATED_STATE"] = str(state)
        if self.backend.name in ("nvml", "smi", "dcgm") and "CUDA_VISIBLE_DEVICES" not in os.environ:
            env.update({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.backend.index)})
        return env

    def _run_app(self, rid: str, clock: int | None) -> tuple[str, int | None, float, float, list]:
        """Run the app under the monitor; returns (status, exit code, t_start, t_end, samples)."""
        res = self.results
        for kind in ("events", "apps"):
            res.file(kind, rid).unlink(missing_ok=True)  # a redone run never mixes with its earlier try
        monitor = mon.PowerMonitor(self.backend, self.opts["sampling_interval"] / 1000.0)
        with open(res.log(rid, "out"), "w") as out, open(res.log(rid, "err"), "w") as err:
            monitor.start()
            self.backend.begin_run(res.file("events", rid))
            t_start = time.monotonic()
            status, code, stopped_by, proc = "ok", None, None, None
            try:
                proc = subprocess.Popen(self.command, stdout=out, stderr=err, env=self._env(rid, clock),
                                        start_new_session=True)
                code = proc.wait(timeout=self.opts["timeout"])
            except OSError as exc:  # the program could not start: a failed run, the sweep goes on
                status = "failed"
                err.write(f"cannot start {self.command[0]}: {exc}\n")
            except subprocess.TimeoutExpired:
                status = "timeout"
                _kill_group(proc)
            except Interrupted as exc:
                status, stopped_by = "interrupted", exc
                _kill_group(proc)
            finally:
                t_end = time.monotonic()
                self.backend.end_run()
                samples = monitor.stop()
        if stopped_by is not None:
            self._write_run(rid, clock, status, proc.returncode if proc else None, t_start, t_end, samples)
            raise stopped_by
        if status == "ok" and code not in (0, None):
            text = res.log(rid, "err").read_text(errors="replace")[-20000:]
            if "OutOfMemoryError" in text or "out of memory" in text.lower():
                status = "oom"
            elif code < 0:
                status = "crashed"
            else:
                status = "failed"
        return status, code, t_start, t_end, samples

    def _replay(self, rid: str, clock: int | None, index: int) -> tuple[str, int, float, float, list]:
        rec = self.backend.replay_run(index)
        t0 = time.monotonic()
        samples = [type(s)(**{**s.__dict__, "mono_s": t0 + s.mono_s}) for s in rec.samples]
        metrics = {"config": rec.app_config, "images": rec.images, "activity": rec.activity, "replayed": True}
        write_atomic(self.results.file("apps", rid), json.dumps(metrics))
        return "ok", 0, t0, t0 + rec.duration_s, samples

    # ---- row
    def _write_run(self, rid, clock, status, code, t_start, t_end, samples, warmup=False, index=0, readback=None):
        res = self.results
        spans = mon.read_events(res.file("events", rid))
        labels = mon.label_samples(samples, spans)
        window = mon.work_window(spans) or (t_start, t_end)
        trace = mon.EnergyTrace(samples)
        e_counter, e_integrated = _f(trace.counter_j(t_start, t_end)), _f(trace.integrated_j(t_start, t_end))
        energy = e_counter if e_counter is not None else e_integrated
        work_s = window[1] - window[0]
        work_energy = _f(trace.window_j(*window))
        wall = t_end - t_start
        metrics = _read_json(res.file("apps", rid))
        images = metrics.get("images")
        cfg = metrics.get("config", {})
        in_work = [s for s in samples if window[0] <= s.mono_s <= window[1]] or samples
        mean = _mean_attr
        clock_mean = mean(in_work, "sm_clock_mhz")
        powers = [s.power_w for s in samples if s.power_w is not None]
        row = {
            "run_id": rid, "sm_clock_target_mhz": clock, "run_index": index, "warmup": int(warmup), "status": status,
            "exit_code": code, "start_utc": datetime.now(timezone.utc).isoformat(), "wall_s": _r(wall),
            "work_s": _r(work_s), "energy_j": _r(energy), "energy_counter_j": _r(e_counter),
            "energy_integrated_j": _r(e_integrated), "work_energy_j": _r(work_energy),
            "avg_power_w": _r(energy / wall if energy is not None and wall > 0 else None),
            "max_power_w": _r(max(powers) if powers else None), "idle_power_w": _r(self.idle_power_w),
            "work_avg_power_w": _r(work_energy / work_s if work_energy is not None and work_s > 0 else None),
            "images": images,
            "energy_per_image_j": _r(work_energy / images if images and work_energy is not None else None),
            "edp_js": _r(work_energy * work_s if work_energy is not None else None),
            "ed2p_js2": _r(work_energy * work_s**2 if work_energy is not None else None),
            "sm_clock_mean_mhz": _r(clock_mean), "sm_clock_readback_mhz": _r(readback),
            # Judged on the clock during the work: a GPU may idle below its lock right after setting it.
            "clock_mismatch": int(bool(clock and clock_mean and abs(clock_mean - clock) > max(15, 0.01 * clock))),
            "mem_clock_mean_mhz": _r(mean(in_work, "mem_clock_mhz")),
            "gpu_util_mean_pct": _r(mean(in_work, "gpu_util_pct")),
            "temp_max_c": _r(max((s.temp_c for s in samples if s.temp_c is not None), default=None)),
            "throttle_reasons": self.backend.throttle_reasons() if not self.backend.replays else "",
            "samples": len(samples), "backend": self.backend.name, "gpu_name": self.backend.device_name(),
            "gpu_type": self.gpu_type, "gpu_uuid": self.backend.uuid(), "workload": self.workload,
            "phase_energy_json": json.dumps({k: round(v, 4) for k, v in trace.phase_energy_j(spans).items()}),
            "flops_per_image": metrics.get("flops_per_image"),
        }
        row.update({col: cfg.get(key) for col, key in APP_CONFIG_FIELDS.items()})
        self._write_samples(rid, samples, labels)
        res.append_row(row)
        return row

    def _write_samples(self, rid: str, samples: list, labels: list[str]) -> None:
        extra = sorted({k for s in samples for k in s.extra})
        lines = [",".join([*SAMPLE_COLUMNS, *extra, "phase"])]
        for s, label in zip(samples, labels, strict=True):
            vals = [s.row().get(c) for c in SAMPLE_COLUMNS + extra]
            lines.append(",".join("" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v)) for v in vals)
                         + f",{label}")
        write_atomic(self.results.file("samples", rid), "\n".join(lines) + "\n")

    # ---- the sweep
    def run(self) -> int:
        done = self.results.done_run_ids()
        todo = [r for r in self.plan.runs if run_id(r[0], r[1], r[2]) not in done]
        if len(todo) < len(self.plan.runs):  # of this plan: a guided probe's directory holds other clocks' runs
            self.log(f"resuming: {len(self.plan.runs) - len(todo)} of {len(self.plan.runs)} runs already done")
        # Once per launch: guided mode runs one Sweep per probe and hands the first one's idle power on.
        if todo and self.idle_power_w is None and not self.backend.replays and self.opts["idle_seconds"] > 0:
            self.idle_power_w = mon.measure_idle_power_w(self.backend, self.opts["idle_seconds"])
            if self.idle_power_w is not None:
                self.log(f"idle power: {self.idle_power_w:.1f} W")
        failures = 0
        with ClockGuard(self.backend, self.gpu_type) as guard:
            current, readback = "unset", None
            for n, (clock, index, warmup) in enumerate(todo):
                rid = run_id(clock, index, warmup)
                if clock != current:
                    if clock is None:
                        guard.restore()
                    else:
                        guard.lock(clock, self.opts.get("memory_frequency"))
                    readback = self.backend.sample().sm_clock_mhz if clock else None  # read back after setting
                    current = clock
                if self.backend.replays:
                    status, code, t0, t1, samples = self._replay(rid, clock, index)
                else:
                    status, code, t0, t1, samples = self._run_app(rid, clock)
                row = self._write_run(rid, clock, status, code, t0, t1, samples, warmup, index, readback)
                failures += status != "ok"
                self.log(f"[{n + 1}/{len(todo)}] {rid} {status:<8} {row['wall_s']:>8.2f} s "
                         f"{_fmt(row['energy_j'], 'J')} {_fmt(row['work_avg_power_w'], 'W')} "
                         f"{_fmt(row['energy_per_image_j'], 'J/img')}" + (" CLOCK MISMATCH" if row["clock_mismatch"] else ""))
                if n + 1 < len(todo) and self.opts["sleep_interval"] > 0 and not self.backend.replays:
                    time.sleep(self.opts["sleep_interval"])
        return failures


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _mean_attr(samples: list, attr: str) -> float | None:
    vals = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v) -> float | None:
    return None if v is None else float(v)


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


def _fmt(v, unit: str) -> str:
    return f"{v:10.2f} {unit}" if v is not None else f"{'-':>10} {unit}"


# --------------------------------------------------------------------------- command line

@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@config_option
@click.option("--gpu-type", default=None, help="V100, A100, H100, H200 (default: detected from the GPU name).")
@click.option("--gpu-index", type=int, default=None, help="NVML index (default: the GPU SLURM/CUDA_VISIBLE_DEVICES gave).")
@click.option("--all-gpus", is_flag=True, help="One sweep per visible GPU, in parallel, each in its own directory.")
@click.option("--profiling-tool", default="auto", type=click.Choice(BACKENDS), show_default=True)
@click.option("--profiling-mode", default="dvfs", type=click.Choice(MODES), show_default=True)
@click.option("--custom-frequencies", default=None, help="Comma-separated SM clocks (MHz) for --profiling-mode custom.")
@click.option("--min-frequency", type=int, default=None, help="Lowest SM clock of a dvfs sweep (MHz).")
@click.option("--max-frequency", type=int, default=None, help="Highest SM clock of a dvfs sweep (MHz).")
@click.option("--frequency-step", type=int, default=None, help="MHz between swept clocks (default: every supported).")
@click.option("--memory-frequency", type=int, default=None, help="Also lock the memory clock (MHz).")
@click.option("--num-runs", type=int, default=3, show_default=True)
@click.option("--warmup-runs", type=int, default=0, show_default=True, help="Unmeasured runs before each clock's runs.")
@click.option("--sleep-interval", type=float, default=1.0, show_default=True, help="Cool-down between runs (s).")
@click.option("--sampling-interval", type=float, default=50.0, show_default=True, help="Power sampling period (ms, >= 10).")
@click.option("--idle-seconds", type=float, default=2.0, show_default=True, help="Idle power measured before the sweep (s).")
@click.option("--app-name", default="StableDiffusion", show_default=True)
@click.option("--app-executable", default=str(REPO_ROOT / "app" / "StableDiffusionViaHF.py"), show_default=False,
              help="Any program; a .py file runs with this Python. Default: the diffusion app.")
@click.option("--app-params", default="", help="Arguments for the app, split with shell rules (no shell runs).")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Per-run limit (s).")
@click.option("--output-dir", default=None, help="Default: results/<app>_<gpu>_<mode>_<time>.")
@click.option("--resume", is_flag=True, help="Continue the newest results directory of this same sweep.")
@click.option("--dry-run", is_flag=True, help="Print the plan (clocks, runs, estimated time) and exit.")
@click.option("--reset-clocks", is_flag=True, help="Reset clocks (and any left locked by a killed sweep), then exit.")
@click.option("--guided-probes", type=int, default=5, show_default=True,
              help="guided mode: most clocks measured, the max clock included (>= 2); fewer when the model "
                   "predicts no further gain.")
@click.option("--guided-min-probes", type=int, default=4, show_default=True,
              help="guided mode: clocks measured before the search may stop early (1 to --guided-probes).")
@click.option("--guided-model", default=None, metavar="FILE",
              help="guided mode: a CrossWorkloadModel file (power_modeling.model_store.save_model). Default: the "
                   "shipped model trained on 24 reference V100 apps (with activity counters when the run has them).")
@click.option("--objective", default="edp", type=click.Choice(["energy", "edp", "ed2p"]), show_default=True,
              help="guided mode: what the chosen clock minimises.")
@click.option("--max-slowdown", type=float, default=0.05, show_default=True,
              help="guided mode: allowed slowdown vs the max clock (negative: none).")
@click.option("--clock-slice", default=None, help="K/N: run only the K-th of N contiguous slices of the clock list "
              "(one SLURM array task each; K from 0).")
@click.option("--replay-source", default=None, help="replay: reference CSV or a results directory.")
@click.option("--replay-app", default=None, help="replay: application name in a reference CSV.")
def cli(**o):
    """Sweep GPU clocks while running an app; write power, energy and time per clock and run."""
    _check_options(o)
    gpu_index = o["gpu_index"] if o["gpu_index"] is not None else (gpu_index_from_env() or 0)
    if o["all_gpus"]:
        return _all_gpus(o)

    def reopen(rec):
        return open_backend(rec["backend"], rec["gpu_index"], rec.get("gpu_type"), announce=lambda m: None)

    restore_stale(reopen, log=click.echo)
    try:
        backend = open_backend(o["profiling_tool"], gpu_index, o["gpu_type"], o["replay_source"], o["replay_app"],
                               announce=click.echo)
    except GpuError as exc:
        raise InputError("--profiling-tool", o["profiling_tool"], str(exc)) from None
    try:
        return _run(o, backend)
    finally:
        backend.close()


def _check_options(o: dict) -> None:
    specs = load_gpu_specs()
    if o["gpu_type"] is not None and o["gpu_type"] not in specs:
        raise InputError("--gpu-type", o["gpu_type"], f"unknown GPU type; known: {', '.join(specs)}")
    if o["sampling_interval"] < mon.MIN_INTERVAL_S * 1000:
        raise InputError("--sampling-interval", o["sampling_interval"], "below the 10 ms minimum")
    for opt in ("num_runs",):
        if o[opt] < 1:
            raise InputError("--num-runs", o[opt], "must be at least 1")
    if o["warmup_runs"] < 0:
        raise InputError("--warmup-runs", o["warmup_runs"], "must be >= 0")
    if o["timeout"] <= 0:
        raise InputError("--timeout", o["timeout"], "must be positive")
    if o["profiling_mode"] == "guided":
        if o["guided_probes"] < 2:
            raise InputError("--guided-probes", o["guided_probes"], "must be at least 2 (the max clock and one more)")
        if o["guided_min_probes"] < 1:
            raise InputError("--guided-min-probes", o["guided_min_probes"], "must be at least 1")
        if not math.isfinite(o["max_slowdown"]):
            raise InputError("--max-slowdown", o["max_slowdown"], "must be a number (negative: no limit)")
        if o["clock_slice"]:
            raise InputError("--clock-slice", o["clock_slice"], "not with --profiling-mode guided: its probes are "
                            "chosen one after the other, from what the earlier ones measured")
    if o["reset_clocks"] or o["profiling_tool"] == "replay":
        return
    exe = Path(o["app_executable"])
    if not exe.exists():
        raise InputError("--app-executable", o["app_executable"], "no such file")
    if exe.suffix != ".py" and not os.access(exe, os.X_OK):
        raise InputError("--app-executable", o["app_executable"], "not executable (chmod +x, or give a .py file)")
    app_command(o["app_executable"], o["app_params"])  # fails early on unbalanced quotes


def _check_writable(out_dir: Path, option_value: str | None) -> None:
    """Create the results directory and prove it writable; called only once every other check passed,
    so a refused command (a bad --guided-model, say) leaves nothing behind."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InputError("--output-dir", option_value or out_dir, f"not writable ({exc.strerror})") from None


def _all_gpus(o: dict) -> int:
    backend = open_backend(o["profiling_tool"], 0, o["gpu_type"], announce=lambda m: None)
    try:
        count = _device_count(backend)
    finally:
        backend.close()
    base = o["output_dir"] or str(REPO_ROOT / "results" / f"{o['app_name']}_allgpus_{_stamp()}")
    procs = []
    for i in range(count):
        args = [sys.executable, "-m", "profiling.launch", *_argv_without("--all-gpus", "--output-dir", "--gpu-index"),
                "--gpu-index", str(i), "--output-dir", f"{base}/gpu{i}"]
        procs.append(subprocess.Popen(args, cwd=REPO_ROOT))
    return max(p.wait() for p in procs)


def _device_count(backend: GpuBackend) -> int:
    nv = getattr(backend, "nv", None)
    return nv.nvmlDeviceGetCount() if nv else 1


def _argv_without(*flags: str) -> list[str]:
    out, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags:
            skip = "=" not in a and name != "--all-gpus"
            continue
        out.append(a)
    return out


def slurm_info() -> dict:
    """SLURM variables, plus what the scheduler granted (``scontrol show job``): command-line sbatch
    options override the script's #SBATCH lines, so only the scheduler knows what was used."""
    info: dict = {k: os.environ[k] for k in SLURM_VARS if k in os.environ}
    job = os.environ.get("SLURM_JOB_ID")
    if job and shutil.which("scontrol"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=10)
            info["granted"] = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    return info


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _run(o: dict, backend: GpuBackend) -> int:
    if o["reset_clocks"]:
        backend.reset_clocks()
        click.echo(f"clocks reset on {backend.device_name()} ({backend.name}, index {backend.index})")
        return 0
    gpu_type = o["gpu_type"] or getattr(backend, "gpu_type", None) or detect_gpu_type(backend.device_name())
    try:
        supported = backend.supported_sm_clocks_mhz(o["memory_frequency"])
    except GpuError as exc:
        raise InputError("--memory-frequency" if o["memory_frequency"] else "--profiling-tool",
                        o["memory_frequency"] or backend.name, str(exc)) from None
    guided = o["profiling_mode"] == "guided"
    clocks = select_clocks(o["profiling_mode"], supported, o["custom_frequencies"], o["min_frequency"],
                           o["max_frequency"], o["frequency_step"])
    clocks = slice_clocks(clocks, o["clock_slice"])
    plan = SweepPlan(clocks, o["num_runs"], o["warmup_runs"])
    command = [] if backend.replays else app_command(o["app_executable"], o["app_params"])
    # Guided mode: "clocks" are the candidates. The planner's settings stay out of the hash on purpose:
    # rows measured at a clock are the same measurements whatever planner asked for them, so a rerun
    # with another --guided-probes or --guided-model reuses them instead of being refused.
    sweep_def = {"app": command, "mode": o["profiling_mode"], "clocks": clocks, "num_runs": o["num_runs"],
                 "warmup_runs": o["warmup_runs"], "backend": backend.name, "gpu_uuid": backend.uuid(),
                 "memory_frequency": o["memory_frequency"], "replay": [o["replay_source"], o["replay_app"]]}
    chash = config_hash(sweep_def)
    out_dir = _output_dir(o, gpu_type or "gpu", chash)
    planner = _make_planner(o, clocks, gpu_type) if guided else None  # a bad --guided-model stops us here
    if o["dry_run"]:
        if guided:
            _print_guided_plan(clocks, backend, gpu_type, command, out_dir, o)
        else:
            _print_plan(plan, backend, gpu_type, command, out_dir, o)
        return 0
    _check_writable(out_dir, o["output_dir"])
    results = ResultsDir(out_dir)
    old = results.manifest()
    if old and old.get("config_hash") != chash:
        raise InputError("--output-dir", out_dir, f"holds a different sweep (config {old.get('config_hash')} vs "
                        f"{chash}); choose another directory")
    manifest = {
        **old, "gpu_name": backend.device_name(), "gpu_uuid": backend.uuid(), "driver": backend.driver_version(),
        "backend": backend.name, "synthetic": backend.synthetic, "gpu_type": gpu_type, "gpu_index": backend.index,
        "mode": o["profiling_mode"], "clocks_mhz": clocks, "num_runs": o["num_runs"], "warmup_runs": o["warmup_runs"],
        "sampling_interval_ms": o["sampling_interval"], "app_name": o["app_name"], "app_command": command,
        "versions": _versions(), "git_commit": _git_commit(), "config_hash": chash, "sweep": sweep_def,
        "host": socket.gethostname(), "start_utc": old.get("start_utc") or datetime.now(timezone.utc).isoformat(),
        "end_utc": None, "slurm": slurm_info(),
        "launches": [*old.get("launches", []), {"start_utc": datetime.now(timezone.utc).isoformat(),
                                                "argv": sys.argv[1:], "slurm_job": os.environ.get("SLURM_JOB_ID")}],
    }
    if backend.replays:
        manifest["replay"] = {"source": o["replay_source"], "app": o["replay_app"]}
    if guided:
        manifest["guided"] = {"planner": "guided", "model": o["guided_model"] or "shipped",
                              "objective": o["objective"], "max_probes": o["guided_probes"],
                              "min_probes": min(o["guided_min_probes"], o["guided_probes"]),
                              "max_slowdown": _slowdown(o)}
    results.create(manifest)
    click.echo(f"results: {out_dir}")
    workload = o["app_name"] if not backend.replays else (o["replay_app"] or o["app_name"])
    if guided:
        return _run_guided(o, planner, backend, gpu_type, results, command, workload, manifest)
    sweep = Sweep(backend, gpu_type, results, plan, command, workload, o)
    try:
        failures = sweep.run()
    except Interrupted as exc:
        click.echo(f"interrupted ({exc}); clocks restored; run the same command again to finish the sweep", err=True)
        return 128 + exc.signum
    manifest["end_utc"] = datetime.now(timezone.utc).isoformat()
    results.write_manifest(manifest)
    click.echo(f"done: {len(plan.runs)} runs, {failures} not ok; results in {out_dir}")
    return 0


# --------------------------------------------------------------------------- guided mode

# The planner's keyword arguments and the options they come from, for one-line errors.
PLANNER_OPTIONS = {"model_path": "--guided-model", "max_probes": "--guided-probes", "objective": "--objective",
                   "min_probes": "--guided-min-probes",
                   "max_slowdown": "--max-slowdown", "gpu_type": "--gpu-type", "clocks": "--min-frequency"}


def _slowdown(o: dict) -> float | None:
    return None if o["max_slowdown"] < 0 else float(o["max_slowdown"])


def _planner_error(exc: PlannerError) -> InputError:
    """A planner's complaint as the launcher's one-line error, naming the option the value came from."""
    option = PLANNER_OPTIONS.get(exc.param or "", "--profiling-mode")
    text = str(exc)
    if exc.param == "model_path" and exc.value is None:
        return InputError(option, "(default: the shipped model)", text)
    if exc.param is None:
        return InputError(option, "guided", text)
    value = exc.value
    if value is not None and text.startswith(f"{value}: "):  # load_model's messages start with the path
        text = text[len(f"{value}: "):]
    return InputError(option, value, text)


def _make_planner(o: dict, clocks: list, gpu_type: str | None):
    """The guided planner over the candidate clocks; every problem with its settings is a one-line error."""
    try:
        return load_planner("guided", clocks=[c for c in clocks if c is not None], model_path=o["guided_model"],
                            objective=o["objective"], max_probes=o["guided_probes"], max_slowdown=_slowdown(o),
                            stop_gain=0.0, gpu_type=gpu_type, min_probes=min(o["guided_min_probes"], o["guided_probes"]))
    except PlannerError as exc:
        raise _planner_error(exc) from None


def _probe_runs(results: ResultsDir, clock: int, num_runs: int) -> list[dict]:
    """The rows of ``clock``'s measured runs that count: ok, not warm-up, the lock applied.

    The last row of a run id wins (a run interrupted and redone on resume has two).
    """
    latest = {r["run_id"]: r for r in results.read_rows()}
    rows = [latest.get(run_id(clock, i, False)) for i in range(num_runs)]
    return [r for r in rows if r and r["status"] == "ok" and r["clock_mismatch"] == "0"
            and _finite(r["work_s"]) and _finite(r["work_energy_j"])]


def _finite(text: str | None) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _run_activity(results: ResultsDir, rid: str, names: set[str]) -> dict[str, float]:
    """A run's activity counters: what the replayed run recorded (apps JSON ``activity``), else the
    mean over the run's work-phase samples of each counter column that has values (DCGM)."""
    act = _read_json(results.file("apps", rid)).get("activity")
    if isinstance(act, dict) and act:
        return {k: float(v) for k, v in act.items() if k in names and _finite(v)}
    path = results.file("samples", rid)
    try:
        with open(path, newline="") as fh:
            samples = list(csv.DictReader(fh))
    except OSError:
        return {}
    work = [s for s in samples if s.get("phase") in mon.WORK_PHASES] or samples
    out = {}
    for name in names & set(samples[0] if samples else {}):
        vals = [float(s[name]) for s in work if _finite(s.get(name))]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def _probe_features(results: ResultsDir, rows: list[dict]) -> dict[str, float]:
    """Each activity counter averaged over the probe's usable runs (those that have it)."""
    from .backends.replay import ACTIVITY_COLUMNS

    names = set(ACTIVITY_COLUMNS.values())
    per_run = [_run_activity(results, r["run_id"], names) for r in rows]
    keys = sorted({k for a in per_run for k in a})
    return {k: sum(a[k] for a in per_run if k in a) / sum(k in a for a in per_run) for k in keys}


def _run_guided(o: dict, planner, backend: GpuBackend, gpu_type: str | None, results: ResultsDir,
                command: list[str], workload: str, manifest: dict) -> int:
    """Measure the clocks the planner asks for, one probe (a one-clock sweep) at a time, until it stops.

    Each probe is read back from runs.csv, not from memory, so a resumed launch feeds the planner
    exactly what the first one measured and takes the same path up to where it was stopped.
    """
    failures, runs, idle, n = 0, 0, None, 0
    try:
        while (f := planner.next_clock()) is not None:
            clock = int(round(f))
            n += 1
            click.echo(f"guided: probe {n}: {clock} MHz")
            sweep = Sweep(backend, gpu_type, results, SweepPlan([clock], o["num_runs"], o["warmup_runs"]), command,
                          workload, o)
            sweep.idle_power_w = idle
            before = len(results.done_run_ids())
            failures += sweep.run()
            idle, runs = sweep.idle_power_w, runs + len(sweep.plan.runs)
            rows = _probe_runs(results, clock, o["num_runs"])
            if not rows:
                click.echo(f"guided: no usable run at {clock} MHz (failed, or the clock did not lock)", err=True)
            planner.observe(float(clock), [float(r["work_s"]) for r in rows],
                            [float(r["work_energy_j"]) for r in rows], _probe_features(results, rows))
            if len(results.done_run_ids()) > before and o["sleep_interval"] > 0 and not backend.replays:
                time.sleep(o["sleep_interval"])  # the cool-down between runs, also between probes
    except Interrupted as exc:
        click.echo(f"interrupted ({exc}); clocks restored; run the same command again to finish the search", err=True)
        return 128 + exc.signum
    except PlannerError as exc:
        raise _planner_error(exc) from None
    result = planner.result()
    write_atomic(results.path / "guided.json", json.dumps(result, indent=2))
    manifest["end_utc"] = datetime.now(timezone.utc).isoformat()
    manifest["guided"] = {**manifest.get("guided", {}), "clock_mhz": result.get("clock_mhz"),
                          "probes_mhz": result.get("probes_mhz"), "stop_reason": result.get("stop_reason")}
    results.write_manifest(manifest)
    for line in guided_summary(result):
        click.echo(line)
    click.echo(f"done: {runs} runs, {failures} not ok; results in {results.path}")
    return 0 if result.get("clock_mhz") is not None else 1


def _pct(value, lo, hi) -> str:
    if value is None:
        return "unknown"
    if lo is None or hi is None:
        return f"{value:.1f} % (interval unknown)"
    return f"{value:.1f} % [{lo:.1f}, {hi:.1f}]"


def guided_summary(r: dict) -> list[str]:
    """A few lines a reader can act on: the clock, what it saves (with its interval), how it was found."""
    probes = r.get("probes_mhz") or []
    model = (r.get("model") or {}).get("source") or "?"
    if (r.get("model") or {}).get("path"):
        model = f"{model} {r['model']['path']}"
    if r.get("clock_mhz") is None:
        return [f"guided: no clock chosen: {r.get('stop_reason') or 'no probe measured'}"]
    name = {"energy": "energy", "edp": "EDP", "ed2p": "ED2P"}.get(r.get("objective"), r.get("objective"))
    cap = "" if r.get("max_slowdown") is None else f" at <= {100 * r['max_slowdown']:.0f} % slowdown"
    if r.get("verdict") == "no significant saving":
        first = (f"guided: keep {r['clock_mhz']:.0f} MHz (the max clock): no significant {name} saving{cap} (the "
                 f"best probe, {r.get('best_probe_mhz', float('nan')):.0f} MHz, is within the run-to-run noise)")
    elif r["clock_mhz"] == r.get("reference_clock_mhz"):
        first = f"guided: keep {r['clock_mhz']:.0f} MHz (the max clock): no measured clock had a lower {name}{cap}"
    else:
        first = (f"guided: use {r['clock_mhz']:.0f} MHz for minimum {name}{cap} (vs {r['reference_clock_mhz']:.0f} "
                 f"MHz): energy saved "
                 f"{_pct(r.get('energy_saved_pct'), r.get('energy_saved_lo_pct'), r.get('energy_saved_hi_pct'))}, "
                 f"slowdown {_pct(r.get('slowdown_pct'), r.get('slowdown_lo_pct'), r.get('slowdown_hi_pct'))}")
    lines = [first, f"guided: {len(probes)} clocks measured ({', '.join(f'{p:.0f}' for p in probes)} MHz); "
                    f"stopped: {r.get('stop_reason') or '-'}; model: {model}"]
    if r.get("verdict") == "uncertainty unknown":
        lines.append("guided: one run per clock: the uncertainty is unknown (--num-runs 3 gives intervals)")
    for problem in r.get("data_problems") or []:
        lines.append(f"guided: data problem: {problem}")
    for clock, reasons in (r.get("screened_runs") or {}).items():
        lines.append(f"guided: left out at {clock} MHz: {', '.join(reasons)}")
    if r.get("extrapolation"):
        lines.append(f"guided: the model extrapolates here: {'; '.join(r['extrapolation'])}")
    return lines


def _print_guided_plan(clocks: list, backend, gpu_type, command, out_dir, o) -> None:
    k = o["guided_probes"]
    per_clock = o["num_runs"] + o["warmup_runs"]
    click.echo(f"GPU: {backend.device_name()} [{gpu_type}] via {backend.name}, index {backend.index}")
    click.echo(f"mode: guided; candidate clocks ({len(clocks)}): {clocks[0]}-{clocks[-1]} MHz; probes are chosen "
               f"adaptively, one at a time: first the max clock ({clocks[0]} MHz), then where the model predicts "
               f"the best {o['objective']}; at most {k} clocks, fewer when no further gain is predicted")
    click.echo(f"model: {o['guided_model'] or 'shipped (with activity counters when the first probe has them)'}")
    click.echo(f"runs: at most {k * per_clock} ({o['num_runs']} per clock + {o['warmup_runs']} warm-up)")
    click.echo(f"app: {shlex.join(command) if command else '(replayed)'}")
    click.echo(f"output: {out_dir}")


def _output_dir(o: dict, gpu_type: str, chash: str) -> Path:
    if o["output_dir"]:
        return Path(o["output_dir"])
    root = Path.cwd() / "results"
    if o["resume"]:
        for cand in sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            if _read_json(cand).get("config_hash") == chash:
                return cand.parent
    return root / f"{o['app_name']}_{gpu_type}_{o['profiling_mode']}_{_stamp()}"


def _print_plan(plan: SweepPlan, backend, gpu_type, command, out_dir, o) -> None:
    click.echo(f"GPU: {backend.device_name()} [{gpu_type}] via {backend.name}, index {backend.index}")
    click.echo(f"mode: {o['profiling_mode']}; clocks ({len(plan.clocks)}): "
               + ", ".join("default" if c is None else str(c) for c in plan.clocks))
    click.echo(f"runs: {len(plan.runs)} ({o['num_runs']} per clock + {o['warmup_runs']} warm-up)")
    click.echo(f"app: {shlex.join(command) if command else '(replayed)'}")
    done = ResultsDir(out_dir).read_rows()
    walls = [float(r["wall_s"]) for r in done if r["status"] == "ok"]
    if walls:
        est = len(plan.runs) * (sum(walls) / len(walls) + o["sleep_interval"])
        click.echo(f"estimated time: {est / 60:.1f} min (from {len(walls)} runs already recorded)")
    else:
        click.echo(f"estimated time: {len(plan.runs)} x (run time + {o['sleep_interval']} s cool-down); "
                   f"at most {len(plan.runs) * (o['timeout'] + o['sleep_interval']) / 3600:.1f} h by --timeout")
    click.echo(f"output: {out_dir}")


def main(args: list[str] | None = None) -> int:
    return run_cli(cli, args, prog_name="launch.sh")


if __name__ == "__main__":
    sys.exit(main())
