"""The results directory: one per sweep, the contract between the launcher and power_modeling.

::

    manifest.json          who/what/where (GPU, backend, clocks, app command, versions, SLURM job)
    runs.csv               one row per (clock, run); RUNS_COLUMNS below, app config as app_* columns
    samples/<run_id>.csv   the power/clock trace of that run, each sample labelled with its phase
    apps/<run_id>.json     the app's metrics JSON
    events/<run_id>.jsonl  the app's phase events
    logs/<run_id>.out|err  the app's stdout/stderr

Rows are appended with one ``write`` of a whole line to an ``O_APPEND`` file and fsynced, so
a crash leaves at most one unterminated line, which readers drop. Per-run files are written
to a temporary name and renamed. A run is done when its row is in runs.csv, so resuming
redoes exactly the runs that have no row (or were interrupted).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

RUNS_COLUMNS = [
    "run_id", "sm_clock_target_mhz", "run_index", "warmup", "status", "exit_code", "start_utc", "wall_s", "work_s",
    "energy_j", "energy_counter_j", "energy_integrated_j", "work_energy_j", "avg_power_w", "max_power_w",
    "idle_power_w", "work_avg_power_w", "images", "energy_per_image_j", "edp_js", "ed2p_js2", "sm_clock_mean_mhz",
    "sm_clock_readback_mhz", "clock_mismatch", "mem_clock_mean_mhz", "gpu_util_mean_pct", "temp_max_c",
    "throttle_reasons", "samples", "backend", "gpu_name", "gpu_type", "gpu_uuid", "workload",
    "phase_energy_json", "flops_per_image", "app_model_variant", "app_weights", "app_scheduler", "app_dtype",
    "app_attention", "app_height", "app_width", "app_steps", "app_batch_size", "app_guidance_scale", "app_device",
]
APP_CONFIG_FIELDS = {"app_" + k: k for k in ("model_variant", "weights", "scheduler", "dtype", "attention", "height",
                                             "width", "steps", "batch_size", "guidance_scale", "device")}
DONE_STATUSES = {"ok", "failed", "timeout", "oom", "crashed"}  # "interrupted" runs are redone on resume


def run_id(clock_mhz: int | None, run_index: int, warmup: bool) -> str:
    clock = f"f{clock_mhz:04d}" if clock_mhz else "fdefault"
    return f"{clock}_{'w' if warmup else 'r'}{run_index:02d}"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ResultsDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def runs_csv(self) -> Path:
        return self.path / "runs.csv"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def file(self, kind: str, rid: str) -> Path:
        ext = {"samples": "csv", "apps": "json", "events": "jsonl"}[kind]
        return self.path / kind / f"{rid}.{ext}"

    def log(self, rid: str, stream: str) -> Path:
        return self.path / "logs" / f"{rid}.{stream}"

    def create(self, manifest: dict) -> None:
        for sub in ("samples", "apps", "events", "logs"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.write_manifest(manifest)
        if not self.runs_csv.exists():
            buf = io.StringIO()
            csv.writer(buf).writerow(RUNS_COLUMNS)
            write_atomic(self.runs_csv, buf.getvalue())

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}

    def write_manifest(self, manifest: dict) -> None:
        write_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str))

    def append_row(self, row: dict) -> None:
        unknown = set(row) - set(RUNS_COLUMNS)
        if unknown:
            raise KeyError(f"not runs.csv columns: {sorted(unknown)}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in RUNS_COLUMNS])
        data = buf.getvalue().encode()
        content = self.runs_csv.read_bytes()
        if content and not content.endswith(b"\n"):
            # A crash mid-write left a torn last line: cut it off (one launcher writes a results dir).
            os.truncate(self.runs_csv, content.rfind(b"\n") + 1)
        fd = os.open(self.runs_csv, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_rows(self) -> list[dict]:
        """Complete rows only: an unterminated last line (crash mid-write) is ignored."""
        if not self.runs_csv.exists():
            return []
        text = self.runs_csv.read_text()
        text = text[: text.rfind("\n") + 1]
        rows = list(csv.DictReader(io.StringIO(text)))
        return [r for r in rows if r.get("run_id") and len([v for v in r.values() if v is not None]) == len(RUNS_COLUMNS)]

    def done_run_ids(self) -> set[str]:
        return {r["run_id"] for r in self.read_rows() if r["status"] in DONE_STATUSES}
