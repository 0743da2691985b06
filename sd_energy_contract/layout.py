"""The results directory: one per sweep, the contract between the launcher and power_modeling.

::

    manifest.json          who/what/where (GPU, backend, clocks, app command, versions, SLURM job)
    runs.csv               one row per (clock, run): RUNS_COLUMNS, the app's config as app_* columns
    samples/<run_id>.csv   the power/clock trace of that run (SAMPLE_COLUMNS, activity, phase)
    apps/<run_id>.json     the app's metrics JSON
    events/<run_id>.jsonl  the app's phase events
    logs/<run_id>.out|err  the app's stdout/stderr (process mode)
    running/<run_id>.json  the app process of a run in progress (pid, start time); gone when it ends

Columns are only ever added at the end, so a reader keys on names and an older directory stays
readable.
"""

from __future__ import annotations

RUNS_COLUMNS = [
    "run_id", "sm_clock_target_mhz", "run_index", "warmup", "status", "exit_code", "start_utc", "wall_s", "work_s",
    "energy_j", "energy_counter_j", "energy_integrated_j", "work_energy_j", "avg_power_w", "max_power_w",
    "idle_power_w", "work_avg_power_w", "images", "energy_per_image_j", "edp_js", "ed2p_js2", "sm_clock_mean_mhz",
    "sm_clock_readback_mhz", "clock_mismatch", "mem_clock_mean_mhz", "gpu_util_mean_pct", "temp_max_c",
    "throttle_reasons", "samples", "backend", "gpu_name", "gpu_type", "gpu_uuid", "workload",
    "phase_energy_json", "flops_per_image", "app_model_variant", "app_weights", "app_scheduler", "app_dtype",
    "app_attention", "app_height", "app_width", "app_steps", "app_batch_size", "app_guidance_scale", "app_device",
    # How the run was produced: process (the app as a child process), in-process (one loaded model,
    # many runs), replay (recorded data); and the per-phase clock policy, where one was set.
    "mode", "phase_clocks",
    # Measurement truth (issue 12): how the clock was set (locked, application, slurm-verified,
    # unlocked), what power_w is (instantaneous, averaged, modelled), where energy_j came from
    # (counter, integrated-instantaneous, integrated-averaged) and whether the work window was long
    # enough for that sensor (ok, low), the counter's measured update period, the GPU temperature at
    # the run's start and how long the launcher waited for it to settle, the SKU, MIG.
    "clock_method", "power_source", "energy_source", "energy_confidence", "energy_update_period_s",
    "temp_start_c", "settle_wait_s", "gpu_sku", "mig",
    # The simulated GPU only: seconds of the run the host was too busy to keep the modelled pace
    # (power_modeling screens runs where this is a noticeable share of work_s).
    "twin_host_bound_s",
]
APP_CONFIG_FIELDS = {"app_" + k: k for k in ("model_variant", "weights", "scheduler", "dtype", "attention", "height",
                                             "width", "steps", "batch_size", "guidance_scale", "device")}
# power_w is the instantaneous reading wherever the GPU has one; power_avg_w the driver's averaged
# reading (H100/H200 nvmlDeviceGetPowerUsage is a 1 s moving average); throttle_mask the clock-event
# reasons bitmask at that sample (OR-ed over the work window into the run's row).
SAMPLE_COLUMNS = ["mono_s", "power_w", "energy_mj", "sm_clock_mhz", "mem_clock_mhz", "gpu_util_pct",
                  "mem_used_mib", "temp_c", "power_avg_w", "throttle_mask"]
RUN_STATUSES = ("ok", "failed", "timeout", "oom", "crashed", "interrupted")
DONE_STATUSES = frozenset({"ok", "failed", "timeout", "oom", "crashed"})  # "interrupted" runs are redone on resume
RUN_MODES = ("process", "in-process", "replay")

MANIFEST = "manifest.json"
RUNS_CSV = "runs.csv"
GUIDED_JSON = "guided.json"
RUN_FILES = {"samples": "csv", "apps": "json", "events": "jsonl"}
LOGS = "logs"
RUNNING = "running"


def run_id(clock_mhz: int | None, run_index: int, warmup: bool) -> str:
    """``f1410_r00``: the clock (``fdefault`` unlocked), ``w`` for a warm-up run, the repeat."""
    clock = f"f{clock_mhz:04d}" if clock_mhz else "fdefault"
    return f"{clock}_{'w' if warmup else 'r'}{run_index:02d}"
