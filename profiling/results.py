"""The results directory as files on disk: create it, append rows, read them back, resume.

Its layout and columns are the contract in ``sd_energy_contract.layout``; this module owns the
reading and writing. Rows are appended with one ``write`` of a whole line to an ``O_APPEND``
file and fsynced, so a crash leaves at most one unterminated line, which readers drop. Per-run
files are written to a temporary name and renamed. A run is done when its row is in runs.csv,
so resuming redoes exactly the runs that have no row (or were interrupted).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sd_energy_contract import reference
from sd_energy_contract.files import append_line, complete_text, write_atomic
from sd_energy_contract.layout import (
    APP_CONFIG_FIELDS,
    DONE_STATUSES,
    LOGS,
    MANIFEST,
    RUN_FILES,
    RUNS_COLUMNS,
    RUNS_CSV,
    run_id,
)

from . import monitor as mon
from .backends.base import SAMPLE_COLUMNS, GpuSample

__all__ = ["APP_CONFIG_FIELDS", "DONE_STATUSES", "RUNS_COLUMNS", "ResultsDir", "config_hash", "run_id", "write_atomic",
           "DeviceInfo", "build_row", "samples_csv"]


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultsDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def runs_csv(self) -> Path:
        return self.path / RUNS_CSV

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def file(self, kind: str, rid: str) -> Path:
        return self.path / kind / f"{rid}.{RUN_FILES[kind]}"

    def log(self, rid: str, stream: str) -> Path:
        return self.path / LOGS / f"{rid}.{stream}"

    def create(self, manifest: dict) -> None:
        for sub in (*RUN_FILES, LOGS):
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
        csv.writer(buf, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in self._header()])
        append_line(self.runs_csv, buf.getvalue())

    def _header(self) -> list[str]:
        """The file's own columns: a directory begun by an older version keeps its header (a prefix of
        today's columns, which are only ever added at the end), and its rows stay aligned with it."""
        with open(self.runs_csv, newline="") as fh:
            return next(csv.reader(fh), None) or RUNS_COLUMNS

    def read_rows(self) -> list[dict]:
        """Complete rows only: an unterminated last line (crash mid-write) is ignored."""
        if not self.runs_csv.exists():
            return []
        reader = csv.DictReader(io.StringIO(complete_text(self.runs_csv.read_text())))
        width = len(reader.fieldnames or [])
        return [r for r in reader if r.get("run_id") and sum(v is not None for v in r.values()) == width
                and None not in r]

    def done_run_ids(self) -> set[str]:
        return {r["run_id"] for r in self.read_rows() if r["status"] in DONE_STATUSES}


# --------------------------------------------------------------------------- one run's row

@dataclass(frozen=True)
class DeviceInfo:
    """What every row says about the GPU it was measured on."""

    backend: str
    gpu_name: str
    gpu_type: str | None
    gpu_uuid: str


def build_row(*, run_id: str, clock: int | None, index: int, warmup: bool, status: str, exit_code: int | None,
              t_start: float, t_end: float, samples: list[GpuSample], spans: list[mon.PhaseSpan], metrics: dict,
              device: DeviceInfo, workload: str, mode: str, idle_power_w: float | None = None,
              readback_mhz: float | None = None, throttle_reasons: str = "",
              phase_clocks: dict | None = None) -> dict:
    """The ``runs.csv`` row of one run, from its trace: the same function for every run source.

    Energy over the whole run is the counter's difference where the GPU has one, else integrated
    power (both kept); ``work_*`` is the steady-state window from the app's phase events (first
    measured batch start to last batch end), so process start, model load and warm-up are out.
    """
    window = mon.work_window(spans) or (t_start, t_end)
    trace = mon.EnergyTrace(samples)
    e_counter, e_integrated = _f(trace.counter_j(t_start, t_end)), _f(trace.integrated_j(t_start, t_end))
    energy = e_counter if e_counter is not None else e_integrated
    work_s = window[1] - window[0]
    work_energy = _f(trace.window_j(*window))
    wall = t_end - t_start
    images = metrics.get("images")
    cfg = metrics.get("config", {})
    in_work = [s for s in samples if window[0] <= s.mono_s <= window[1]] or samples
    clock_mean = _mean_attr(in_work, "sm_clock_mhz")
    powers = [s.power_w for s in samples if s.power_w is not None]
    row = {
        "run_id": run_id, "sm_clock_target_mhz": clock, "run_index": index, "warmup": int(warmup), "status": status,
        "exit_code": exit_code, "start_utc": datetime.now(timezone.utc).isoformat(), "wall_s": _r(wall),
        "work_s": _r(work_s), "energy_j": _r(energy), "energy_counter_j": _r(e_counter),
        "energy_integrated_j": _r(e_integrated), "work_energy_j": _r(work_energy),
        "avg_power_w": _r(energy / wall if energy is not None and wall > 0 else None),
        "max_power_w": _r(max(powers) if powers else None), "idle_power_w": _r(idle_power_w),
        "work_avg_power_w": _r(work_energy / work_s if work_energy is not None and work_s > 0 else None),
        "images": images,
        "energy_per_image_j": _r(work_energy / images if images and work_energy is not None else None),
        "edp_js": _r(work_energy * work_s if work_energy is not None else None),
        "ed2p_js2": _r(work_energy * work_s**2 if work_energy is not None else None),
        "sm_clock_mean_mhz": _r(clock_mean), "sm_clock_readback_mhz": _r(readback_mhz),
        # Judged on the clock during the work: a GPU may idle below its lock right after setting it.
        # A per-phase clock policy moves the clock on purpose, so there the target is the run's base clock only.
        "clock_mismatch": int(not phase_clocks and reference.clock_mismatch(clock or 0, clock_mean)),
        "mem_clock_mean_mhz": _r(_mean_attr(in_work, "mem_clock_mhz")),
        "gpu_util_mean_pct": _r(_mean_attr(in_work, "gpu_util_pct")),
        "temp_max_c": _r(max((s.temp_c for s in samples if s.temp_c is not None), default=None)),
        "throttle_reasons": throttle_reasons, "samples": len(samples), "backend": device.backend,
        "gpu_name": device.gpu_name, "gpu_type": device.gpu_type, "gpu_uuid": device.gpu_uuid, "workload": workload,
        "phase_energy_json": json.dumps({k: round(v, 4) for k, v in trace.phase_energy_j(spans).items()}),
        "flops_per_image": metrics.get("flops_per_image"), "mode": mode,
        "phase_clocks": json.dumps(phase_clocks) if phase_clocks else None,
    }
    row.update({col: cfg.get(key) for col, key in APP_CONFIG_FIELDS.items()})
    return row


def samples_csv(samples: list[GpuSample], labels: list[str]) -> str:
    """A run's samples file: the fixed columns, the backend's extra counters, and each sample's phase."""
    extra = sorted({k for s in samples for k in s.extra})
    lines = [",".join([*SAMPLE_COLUMNS, *extra, "phase"])]
    for s, label in zip(samples, labels, strict=True):
        vals = [s.row().get(c) for c in SAMPLE_COLUMNS + extra]
        lines.append(",".join("" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v)) for v in vals)
                     + f",{label}")
    return "\n".join(lines) + "\n"


def _mean_attr(samples: list, attr: str) -> float | None:
    vals = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v) -> float | None:
    return None if v is None else float(v)


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)
