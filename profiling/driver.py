"""The sweep driver: for each clock x run, lock the clock (and read it back), measure one run from
its source, build the row from the trace, write it and the per-run files. Clocks are restored on
every exit path (``profiling.clocks``); starting the same sweep again continues it (only runs
without a final row are done).

``execute(config)`` is the whole launcher behind ``launch.sh`` (which only parses the command line
into a ``SweepConfig``); ``sweep(fn, clocks=...)`` is the same driver for a Python function.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from sd_energy_contract.errors import InputError
from sd_energy_contract.gpus import GpuIdentity, identify_gpu
from sd_energy_contract.layout import RUNNING
from sd_energy_contract.workload import Workload

from . import monitor as mon
from .backends import Selection, job_gpu_positions, open_job_gpu
from .backends.base import GpuBackend
from .clocks import ClockGuard, Interrupted, check_clock_control, restore_stale
from .config import DEFAULT_SETTLE_TIMEOUT_S, DEFAULT_WORKLOAD, REPO_ROOT, SweepConfig
from .errors import GpuError, GpuPermissionError
from .guided_mode import describe_guided_plan, make_planner, run_guided
from .ownership import Held, describe, gpu_holder, gpu_lock, results_lock
from .planning import RunSpec, SweepPlan, select_clocks, slice_clocks
from .results import (
    DeviceInfo,
    ResultsDir,
    build_row,
    config_hash,
    measurement_manifest,
    samples_csv,
    short_window_warning,
    write_atomic,
)
from .run_sources import (
    AppProcess,
    CallableWorkload,
    InProcess,
    PhaseClocks,
    Replay,
    RunFiles,
    RunSource,
    end_leftovers,
    load_workload,
)

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURMD_NODENAME",
              "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS", "SLURM_RESTART_COUNT", "SLURM_JOB_GPUS",
              "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SD_ENERGY_SBATCH_OPTIONS")
Log = Callable[..., None]  # log(message, err=False): click.echo's signature; err=True for what goes to stderr


def _print(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


class Sweep:
    """Runs plans on one GPU into one results directory, with one clock guard and one run source."""

    def __init__(self, cfg: SweepConfig, backend: GpuBackend, guard: ClockGuard, source: RunSource,
                 results: ResultsDir, device: DeviceInfo, workload: str, log: Log = _print,
                 measured_period_s: float | None = None):
        self.cfg, self.backend, self.guard, self.source = cfg, backend, guard, source
        self.results, self.device, self.workload, self.log = results, device, workload, log
        self.idle_power_w: float | None = None
        self._prepared = False
        # The energy counter's update period as measured at the start (None: no counter, or not measured).
        self.measured_period_s = measured_period_s
        self.sensors = mon.Sensors.of(backend, device.gpu_type, measured_period_s)
        self.settle = (mon.TemperatureSettle(cfg.settle_temp, cfg.settle_timeout or DEFAULT_SETTLE_TIMEOUT_S)
                       if cfg.settle_temp is not None else None)
        self._warned_short = False

    def run(self, plan: SweepPlan) -> int:
        """The plan's runs that have no final row yet; returns how many were not ok."""
        done = self.results.done_run_ids()
        todo = [r for r in plan.runs if r.run_id not in done]
        if len(todo) < len(plan.runs):  # of this plan: a guided probe's directory holds other clocks' runs
            self.log(f"resuming: {len(plan.runs) - len(todo)} of {len(plan.runs)} runs already done")
        if not todo:
            return 0
        self._prepare()
        failures, current, readback = 0, "unset", None
        for n, spec in enumerate(todo):
            if spec.clock != current:
                if spec.clock is None:
                    self.guard.restore()
                else:
                    self.guard.lock(spec.clock, self.cfg.memory_frequency)
                readback = self.backend.sample().sm_clock_mhz if spec.clock else None  # read back after setting
                current = spec.clock
            row = self.run_one(spec, readback)
            failures += row["status"] != "ok"
            self.log(f"[{n + 1}/{len(todo)}] {spec.run_id} {row['status']:<8} {row['wall_s']:>8.2f} s "
                     f"{_fmt(row['energy_j'], 'J')} {_fmt(row['work_avg_power_w'], 'W')} "
                     f"{_fmt(row['energy_per_image_j'], 'J/img')}" + (" CLOCK MISMATCH" if row["clock_mismatch"] else ""))
            if n + 1 < len(todo) and self.cfg.sleep_interval > 0 and self.source.measured:
                time.sleep(self.cfg.sleep_interval)
        return failures

    def _prepare(self) -> None:
        """Once per launch, before the first run: idle power (nothing loaded yet), then the source."""
        if self._prepared:
            return
        self._prepared = True
        if self.source.measured and self.cfg.idle_seconds > 0:
            self.idle_power_w = mon.measure_idle_power_w(self.backend, self.cfg.idle_seconds)
            if self.idle_power_w is not None:
                self.log(f"idle power: {self.idle_power_w:.1f} W (recorded in each row; no energy figure subtracts it)")
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepare()

    def run_one(self, spec: RunSpec, readback: float | None = None) -> dict:
        """Measure one run, write its row and files; an interrupted run is written, then re-raised."""
        res, rid = self.results, spec.run_id
        files = RunFiles(res.file("events", rid), res.file("apps", rid), res.log(rid, "out"), res.log(rid, "err"))
        for path in (files.events, files.metrics):
            path.unlink(missing_ok=True)  # a redone run never mixes with its earlier try
        settled = self.settle.wait(self.backend) if self.settle is not None and self.source.measured else None
        if settled is not None and settled.reason == "timeout":
            self.log(f"{rid}: GPU at {settled.temp_c} °C after waiting {settled.wait_s:.0f} s for "
                     f"--settle-temp {self.cfg.settle_temp:g}; running anyway (the row records it)", err=True)
        if self.source.measured:
            monitor = mon.PowerMonitor(self.backend, self.cfg.sampling_interval_s).start()
            self.backend.begin_run(files.events)
            try:
                outcome = self.source.run(spec, files)
            finally:
                self.backend.end_run()
                samples = monitor.stop()
            take_host_bound = getattr(self.backend, "take_host_bound_s", None)  # the simulated GPU only
            host_bound_s = take_host_bound() if take_host_bound is not None else None
            if monitor.error is not None and outcome.status == "ok":
                # A run whose power was not sampled to the end is no measurement: failed, with the reason.
                outcome.status = "failed"
                with open(files.err, "a") as err:
                    err.write(f"power monitor stopped: {type(monitor.error).__name__}: {monitor.error}\n")
        else:
            outcome = self.source.run(spec, files)
            samples = outcome.samples or []
            host_bound_s = None
        spans = mon.read_events(files.events)
        row = build_row(run_id=rid, clock=spec.clock, index=spec.index, warmup=spec.warmup, status=outcome.status,
                        exit_code=outcome.exit_code, t_start=outcome.t_start, t_end=outcome.t_end, samples=samples,
                        spans=spans, metrics=_read_json(files.metrics), device=self.device, workload=self.workload,
                        mode=self.source.mode, idle_power_w=self.idle_power_w, readback_mhz=readback,
                        throttle_reasons=self.backend.throttle_reasons if self.source.measured else "",
                        phase_clocks=outcome.phase_clocks, sensors=self.sensors,
                        measured_period_s=self.measured_period_s, clock_method=self.backend.clock_method,
                        settle_wait_s=settled.wait_s if settled is not None else None)
        warning = None if self._warned_short else short_window_warning(row, self.sensors, self.cfg.sampling_interval_s)
        if warning is not None and not spec.warmup and self.source.measured:  # a replay cannot be given more work
            self._warned_short = True
            self.log(warning, err=True)
        row["twin_host_bound_s"] = host_bound_s
        write_atomic(res.file("samples", rid), samples_csv(samples, mon.label_samples(samples, spans)))
        res.append_row(row)
        if outcome.stopped_by is not None:
            raise outcome.stopped_by
        return row


# --------------------------------------------------------------------------- the launcher

def execute(cfg: SweepConfig, log: Log = _print) -> int:
    """Everything ``launch.sh`` does once the command line is parsed; returns the exit code."""
    cfg.check()
    if cfg.all_gpus:
        return _all_gpus(cfg, log)
    restore_stale(log=log)  # GPUs a killed launcher left locked, found by UUID
    backend, selection = _open(cfg, log)
    try:
        return _run(cfg, backend, log, selection=selection)
    except GpuPermissionError as exc:
        # Found at the first clock change (clocks are restored by then): one line naming what the admin
        # can do, exit 2, as for any setting this user cannot have.
        raise InputError("--clock-control", cfg.clock_control, str(exc)) from None
    finally:
        backend.close()


def _open(cfg: SweepConfig, log: Log) -> tuple[GpuBackend, Selection | None]:
    """The GPU this job was given (``--gpu-index`` among what it sees), resolved to its UUID."""
    try:
        return open_job_gpu(cfg.profiling_tool, cfg.gpu_index, cfg.gpu_type,
                            allow_mig_whole_gpu=cfg.allow_mig_whole_gpu, replay_source=cfg.replay_source,
                            replay_app=cfg.replay_app, announce=log)
    except GpuError as exc:
        raise InputError("--profiling-tool", cfg.profiling_tool, str(exc)) from None


def _run(cfg: SweepConfig, backend: GpuBackend, log: Log, workload_obj=None, selection: Selection | None = None) -> int:
    if cfg.reset_clocks:
        holder = None if backend.replays else gpu_holder(backend.uuid())
        if holder is not None:
            raise InputError("--reset-clocks", backend.uuid(), f"a live sweep holds this GPU ({describe(holder)}); "
                             "its clocks are restored when it ends")
        backend.reset_clocks()
        log(f"clocks reset on {backend.device_name()} ({backend.name}, index {backend.index})")
        return 0
    identity = _identity(cfg, backend)
    gpu_type = identity.family
    log(f"GPU {backend.uuid()}: {identity.note}" + (f"; chosen as {selection.how}" if selection else "")
        + "".join(f"; {note}" for note in (selection.notes if selection else ())))
    try:
        supported = backend.supported_sm_clocks_mhz(cfg.memory_frequency)
    except GpuError as exc:
        raise InputError("--memory-frequency" if cfg.memory_frequency else "--profiling-tool",
                         cfg.memory_frequency or backend.name, str(exc)) from None
    clocks = select_clocks(cfg.profiling_mode, supported, cfg.custom_frequencies, cfg.min_frequency,
                           cfg.max_frequency, cfg.frequency_step)
    clocks = slice_clocks(clocks, cfg.clock_slice)
    check_clock_control(cfg.clock_control, clocks)
    policy = cfg.phase_clock_policy()
    for phase, mhz in policy.items():
        if mhz not in supported:
            raise InputError("--phase-clocks", cfg.phase_clocks, f"{phase}: {mhz} MHz is not a supported SM clock")
    plan = SweepPlan(clocks, cfg.num_runs, cfg.warmup_runs, cfg.clock_order, cfg.clock_order_seed)
    command = _describe_app(cfg, backend, workload_obj)
    # Guided mode: "clocks" are the candidates. The planner's settings stay out of the hash on purpose:
    # rows measured at a clock are the same measurements whatever planner asked for them, so a rerun
    # with another --guided-probes or --guided-model reuses them instead of being refused.
    sweep_def = {"app": command, "mode": cfg.profiling_mode, "clocks": clocks, "num_runs": cfg.num_runs,
                 "warmup_runs": cfg.warmup_runs, "backend": backend.name, "gpu_uuid": backend.uuid(),
                 "memory_frequency": cfg.memory_frequency, "replay": [cfg.replay_source, cfg.replay_app]}
    if cfg.in_process:  # added only when set, so the hash of every earlier process-mode sweep is unchanged
        sweep_def["run_mode"] = "in-process"
    if policy:
        sweep_def["phase_clocks"] = policy
    chash = config_hash(sweep_def)
    out_dir = _output_dir(cfg, gpu_type or "gpu", chash)
    planner = make_planner(cfg, clocks, gpu_type) if cfg.guided else None  # a bad --guided-model stops us here
    if cfg.dry_run:
        for line in describe_plan(cfg, plan, backend, gpu_type, command, out_dir):
            log(line)
        return 0
    _check_writable(out_dir, cfg.output_dir)
    with contextlib.ExitStack() as owned:
        _own(owned, cfg, backend, out_dir, log)
        return _run_owned(cfg, backend, log, workload_obj, gpu_type, clocks, policy, plan, command, sweep_def, chash,
                          out_dir, planner, identity=identity, selection=selection)


def _own(owned: contextlib.ExitStack, cfg: SweepConfig, backend: GpuBackend, out_dir: Path, log: Log) -> None:
    """One writer per results directory, one sweep per GPU, held until the launch ends (see ``ownership``)."""
    info = {"output_dir": str(out_dir.resolve()), "gpu_uuid": backend.uuid()}
    try:
        owned.callback(results_lock(out_dir, info).acquire().release)
    except Held as exc:
        raise InputError("--output-dir", out_dir, f"another launcher is writing to it ({describe(exc.holder)})") from None
    if backend.replays:
        return  # nothing runs on a GPU
    try:
        owned.callback(gpu_lock(backend.uuid(), info).acquire(cfg.wait_for_gpu, on_wait=log).release)
    except Held as exc:
        wait = (f"waited {cfg.wait_for_gpu:g} s" if cfg.wait_for_gpu else "wait for it with --wait-for-gpu SECONDS")
        raise InputError("--gpu-index", backend.index, f"GPU {backend.uuid()} is in use by another sweep "
                         f"({describe(exc.holder)}); {wait}, or choose another GPU") from None


def _run_owned(cfg, backend, log, workload_obj, gpu_type, clocks, policy, plan, command, sweep_def, chash, out_dir,
               planner, identity: GpuIdentity | None = None, selection: Selection | None = None) -> int:
    results = ResultsDir(out_dir)
    old = results.manifest()
    if old and old.get("config_hash") != chash:
        raise InputError("--output-dir", out_dir, f"holds a different sweep (config {old.get('config_hash')} vs "
                         f"{chash}); choose another directory")
    manifest = _manifest(cfg, backend, gpu_type, clocks, command, sweep_def, chash, old)
    manifest.update(_gpu_manifest(cfg, identity, selection))
    results.create(manifest)
    log(f"results: {out_dir}")
    for line in end_leftovers(results.path):
        log(line, err=True)
    device = replace(DeviceInfo.of(backend, gpu_type), gpu_sku=(identity.sku if identity else None) or backend.device_name(),
                     mig=bool(selection and selection.mig_mode))
    # Measured once per launch, before anything runs: what decides which sensor a short window may use.
    period = None if backend.replays else mon.measure_counter_period_s(backend)
    sensors = mon.Sensors.of(backend, gpu_type, period)
    manifest["measurement"] = {**measurement_manifest(sensors, period, backend.energy_update_period_s),
                               "clock_order": plan.order, "clock_order_seed": plan.seed,
                               "settle_temp_c": cfg.settle_temp, "settle_timeout_s": cfg.settle_timeout}
    results.write_manifest(manifest)
    workload = cfg.app_name if not backend.replays else (cfg.replay_app or cfg.app_name)
    try:
        app_env = selection.app_env(backend.child_env()) if selection else backend.child_env()
        with ClockGuard(backend, gpu_type, cfg.clock_control) as guard, \
                _child_environment(app_env if cfg.in_process else None):
            source = _source(cfg, backend, guard, policy, workload_obj, results, app_env)
            try:
                sweep = Sweep(cfg, backend, guard, source, results, device, workload, log, measured_period_s=period)
                if planner is not None:
                    return run_guided(cfg, planner, sweep, manifest, log)
                failures = sweep.run(plan)
            finally:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
    except Interrupted as exc:
        log(f"interrupted ({exc}); clocks restored; run the same command again to finish the sweep", err=True)
        return 128 + exc.signum
    manifest["end_utc"] = datetime.now(timezone.utc).isoformat()
    results.write_manifest(manifest)
    log(f"done: {len(plan.runs)} runs, {failures} not ok; results in {out_dir}")
    if not any(r["status"] == "ok" for r in results.read_rows()):  # a SLURM job whose every run failed
        log(f"no run succeeded: see {out_dir / 'logs'}", err=True)   # must not look like a success
        return 1
    return 0


def _identity(cfg: SweepConfig, backend: GpuBackend) -> GpuIdentity:
    """The GPU family the rows are labelled with (``gpu_type``) and its SKU (``gpu_sku``). A type given
    for a real GPU must be what the GPU is: ``GPU_TYPE=A100 sbatch ...`` landing on an H100 node must
    not write H100 numbers labelled A100 (``identify_gpu`` refuses it)."""
    return identify_gpu(backend.device_name(), cfg.gpu_type, measured=not backend.synthetic and not backend.replays,
                        detected=getattr(backend, "gpu_type", None))


def _gpu_manifest(cfg: SweepConfig, identity: GpuIdentity | None, selection: Selection | None) -> dict:
    """Which physical GPU was measured (UUID, PCI bus id, how ``--gpu-index`` was mapped), which SKU its
    specs came from, and how clocks were set."""
    out: dict = {"clock_control": cfg.clock_control}
    if identity is not None:
        out.update(gpu_sku=identity.sku, gpu_sku_note=identity.note)
    if selection is not None:
        out["gpu_selection"] = selection.manifest()
    return out


def _source(cfg: SweepConfig, backend: GpuBackend, guard: ClockGuard, policy: dict, workload_obj,
            results: ResultsDir, app_env: dict[str, str]) -> RunSource:
    if backend.replays:
        return Replay(backend)
    if not cfg.in_process:
        return AppProcess(cfg.app_command(), cfg.timeout, app_env, running_dir=results.path / RUNNING)
    phase_clocks = PhaseClocks(guard, backend, policy) if policy else None
    return InProcess(lambda: workload_obj or load_workload(DEFAULT_WORKLOAD, cfg.app_args()), phase_clocks)


@contextlib.contextmanager
def _child_environment(wanted: dict[str, str] | None):
    """In-process runs: this process is the app, so the GPU's environment (CUDA_VISIBLE_DEVICES, the
    simulated GPU's state file) is set here, before the workload initialises its device, and put
    back afterwards so a Python caller's environment is as it was."""
    if wanted is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _describe_app(cfg: SweepConfig, backend: GpuBackend, workload_obj) -> list[str]:
    """What runs, as recorded in the manifest and the config hash."""
    if backend.replays:
        return []
    if workload_obj is not None:
        return [f"python:{workload_obj.name}"]
    if cfg.in_process:
        return [f"in-process:{DEFAULT_WORKLOAD}", *cfg.app_args()]
    return cfg.app_command()


def _manifest(cfg: SweepConfig, backend: GpuBackend, gpu_type, clocks, command, sweep_def, chash, old) -> dict:
    manifest = {
        **old, "gpu_name": backend.device_name(), "gpu_uuid": backend.uuid(), "driver": backend.driver_version(),
        "backend": backend.name, "synthetic": backend.synthetic, "gpu_type": gpu_type, "gpu_index": backend.index,
        "mode": cfg.profiling_mode, "run_mode": cfg.run_mode, "clocks_mhz": clocks, "num_runs": cfg.num_runs,
        "warmup_runs": cfg.warmup_runs, "sampling_interval_ms": cfg.sampling_interval, "app_name": cfg.app_name,
        "app_command": command, "versions": _versions(), "git_commit": _git_commit(), "config_hash": chash,
        "sweep": sweep_def, "host": socket.gethostname(),
        "start_utc": old.get("start_utc") or datetime.now(timezone.utc).isoformat(), "end_utc": None,
        "slurm": slurm_info(),
        "launches": [*old.get("launches", []), {"start_utc": datetime.now(timezone.utc).isoformat(),
                                                "argv": sys.argv[1:], "slurm_job": os.environ.get("SLURM_JOB_ID")}],
    }
    if cfg.phase_clocks:
        manifest["phase_clocks"] = cfg.phase_clock_policy()
    if backend.replays:
        manifest["replay"] = {"source": cfg.replay_source, "app": cfg.replay_app}
    if cfg.guided:
        manifest["guided"] = {"planner": "guided", "model": cfg.guided_model or "shipped", "objective": cfg.objective,
                              "max_probes": cfg.guided_probes, "min_probes": cfg.min_probes,
                              "max_slowdown": cfg.slowdown_cap}
    return manifest


# --------------------------------------------------------------------------- every visible GPU

def _all_gpus(cfg: SweepConfig, log: Log) -> int:
    """One sweep per GPU this job can see, in parallel, each in its own process and directory.

    Each child is a fresh interpreter (spawn) running ``execute`` on the same settings with its own
    GPU index, so signals, clock guards and lock records work exactly as for a single sweep. A
    signal to the parent is passed on, and the parent waits for every child to restore its clocks.
    """
    if cfg.replays:
        indices = [cfg.gpu_index or 0]
    else:
        try:
            indices = job_gpu_positions(cfg.profiling_tool, cfg.gpu_type)
        except GpuError as exc:
            raise InputError("--profiling-tool", cfg.profiling_tool, str(exc)) from None
    # Resolved here: a relative --output-dir means the caller's directory, whatever the children's is.
    base = (Path(cfg.output_dir) if cfg.output_dir else Path("results") / f"{cfg.app_name}_allgpus_{_stamp()}").resolve()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(replace(cfg, all_gpus=False, gpu_index=i, output_dir=str(base / f"gpu{i}")),),
                         name=f"sweep-gpu{i}") for i in indices]
    log(f"--all-gpus: {len(procs)} GPU(s) visible ({', '.join(map(str, indices))}); results under {base}")

    def forward(signum, frame):
        for p in procs:
            if p.pid and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)}
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return max((p.exitcode if p.exitcode is not None and p.exitcode >= 0 else 128 - p.exitcode) for p in procs)


def _child(cfg: SweepConfig) -> None:
    try:
        rc = execute(cfg, log=lambda m, err=False: _print(f"[gpu{cfg.gpu_index}] {m}", err))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 2
    sys.exit(rc)


# --------------------------------------------------------------------------- the Python API

def sweep(work: Callable[[], object] | Workload, clocks: Sequence[int] | None = None, runs: int = 3, *,
          output_dir: str | Path, warmup_runs: int = 0, backend: str = "auto", gpu: int = 0,
          gpu_type: str | None = None, sampling_interval_ms: float = 50.0, idle_seconds: float = 0.0,
          sleep_s: float = 0.0, phase_clocks: str | None = None, name: str | None = None,
          log: Log = _print) -> ResultsDir:
    """Sweep GPU clocks over Python code, in this process, into a results directory.

    ``work`` is a function (each call is one run and its work window; it may return a dict of
    metrics such as ``{"images": 4}``) or a ``Workload`` object (``sd_energy_contract.workload``:
    loaded once, then ``run(ctx)`` per run, recording its own phases; only then can
    ``phase_clocks`` follow them). Each clock x run holds the GPU at that clock, restored on every
    way out. ``clocks`` None: every supported clock. The directory has the launcher's layout and
    rows (``mode`` = in-process), so ``power_modeling`` reads it like any other sweep::

        from profiling import sweep
        res = sweep(lambda: pipe(prompt), clocks=[1980, 1410, 1005], runs=3, output_dir="results/mine")
    """
    if isinstance(work, Workload):
        workload_obj = work
    elif callable(work):
        workload_obj = CallableWorkload(work, name or getattr(work, "__name__", "function"))
    else:
        raise InputError("work", work, "must be a function or a Workload (load/run/close)")
    if not isinstance(runs, int) or runs < 1:
        raise InputError("runs", runs, "must be an integer >= 1")
    if clocks is not None and not clocks:
        raise InputError("clocks", clocks, "names no clock (None: every supported clock)")
    cfg = SweepConfig(profiling_tool=backend, gpu_index=gpu, gpu_type=gpu_type, in_process=True,
                      profiling_mode="custom" if clocks else "dvfs",
                      custom_frequencies=",".join(str(int(c)) for c in clocks) if clocks else None,
                      num_runs=runs, warmup_runs=warmup_runs, sampling_interval=sampling_interval_ms,
                      idle_seconds=idle_seconds, sleep_interval=sleep_s, phase_clocks=phase_clocks,
                      app_name=name or workload_obj.name, output_dir=str(output_dir)).check()
    gpu_backend, selection = _open(cfg, log)
    try:
        rc = _run(cfg, gpu_backend, log, workload_obj=workload_obj, selection=selection)
    finally:
        gpu_backend.close()
    if rc not in (0, 1):  # 1: every run failed; the rows say why, and the caller reads them
        raise RuntimeError(f"sweep stopped with exit code {rc}; the rows so far are in {output_dir}")
    return ResultsDir(output_dir)


# --------------------------------------------------------------------------- where, what, who

def describe_plan(cfg: SweepConfig, plan: SweepPlan, backend: GpuBackend, gpu_type, command, out_dir) -> list[str]:
    """What ``--dry-run`` prints: the GPU, the clocks, the runs, the app, an estimate of the time."""
    lines = [f"GPU: {backend.device_name()} [{gpu_type}] via {backend.name}, index {backend.index}"]
    app = f"app: {shlex.join(command) if command else '(replayed)'}" + (" [in-process]" if cfg.in_process else "")
    if cfg.guided:
        return [*lines, *describe_guided_plan(cfg, plan.clocks), app, f"output: {out_dir}"]
    lines += [f"mode: {cfg.profiling_mode}; clocks ({len(plan.clocks)}): "
              + ", ".join("default" if c is None else str(c) for c in plan.clocks),
              f"runs: {len(plan.runs)} ({cfg.num_runs} per clock + {cfg.warmup_runs} warm-up), order {plan.order}"
              + (f" (seed {plan.seed})" if plan.seed is not None else ""), app]
    if cfg.phase_clocks:
        lines.append(f"phase clocks: {cfg.phase_clock_policy()} (other phases at the run's clock)")
    walls = [float(r["wall_s"]) for r in ResultsDir(out_dir).read_rows() if r["status"] == "ok"]
    if walls:
        est = len(plan.runs) * (sum(walls) / len(walls) + cfg.sleep_interval)
        lines.append(f"estimated time: {est / 60:.1f} min (from {len(walls)} runs already recorded)")
    else:
        lines.append(f"estimated time: {len(plan.runs)} x (run time + {cfg.sleep_interval} s cool-down); "
                     f"at most {len(plan.runs) * (cfg.timeout + cfg.sleep_interval) / 3600:.1f} h by --timeout")
    return [*lines, f"output: {out_dir}"]


def _output_dir(cfg: SweepConfig, gpu_type: str, chash: str) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    root = Path.cwd() / "results"
    if cfg.resume:
        others = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for cand in others:
            if _read_json(cand).get("config_hash") == chash:
                return cand.parent
        newest = f"; the newest, {others[0].parent.name}, is another sweep (other options)" if others else ""
        raise InputError("--resume", True, f"no results directory under {root} holds this same sweep "
                         f"(config {chash}){newest}; run without --resume to start it")
    return root / f"{cfg.app_name}_{gpu_type}_{cfg.profiling_mode}_{_stamp()}"


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


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _fmt(v, unit: str) -> str:
    return f"{v:10.2f} {unit}" if v is not None else f"{'-':>10} {unit}"
