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
from collections.abc import Callable
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
from .backends.base import SAMPLE_COLUMNS, GpuBackend, GpuSample

__all__ = ["APP_CONFIG_FIELDS", "DONE_STATUSES", "RUNS_COLUMNS", "ResultsDir", "config_hash", "run_id", "write_atomic",
           "DeviceInfo", "build_row", "samples_csv", "short_window_warning", "measurement_manifest"]


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
    gpu_sku: str | None = None   # the exact product (``of``: the device name; the launcher resolves the SKU)
    mig: bool = False            # a MIG instance, measured with the whole GPU's sensors

    @classmethod
    def of(cls, backend: GpuBackend, gpu_type: str | None) -> DeviceInfo:
        return cls(backend.name, backend.device_name(), gpu_type, backend.uuid(), gpu_sku=backend.device_name(),
                   mig=bool(getattr(backend, "mig", False)))


def build_row(*, run_id: str, clock: int | None, index: int, warmup: bool, status: str, exit_code: int | None,
              t_start: float, t_end: float, samples: list[GpuSample], spans: list[mon.PhaseSpan], metrics: dict,
              device: DeviceInfo, workload: str, mode: str, idle_power_w: float | None = None,
              readback_mhz: float | None = None, throttle_reasons: str | Callable[[], str] = "",
              phase_clocks: dict | None = None, sensors: mon.Sensors | None = None,
              measured_period_s: float | None = None, clock_method: str | None = None,
              settle_wait_s: float | None = None) -> dict:
    """The ``runs.csv`` row of one run, from its trace: the same function for every run source.

    ``work_*`` is the steady-state window from the app's phase events (first measured batch start
    to last batch end), so process start, model load and warm-up are out. Its energy comes from the
    source ``sensors`` chooses for a window that long (the counter, or integrated power where the
    window is too short for the counter's steps), and ``energy_j`` (the whole run) from the same
    source, so the two stay comparable; ``energy_source`` names it, ``energy_confidence`` says whether
    the work window was long enough for it, and both raw figures stay in their own columns.
    ``throttle_reasons`` is the throttle masks of the work window's samples OR-ed; where the samples
    carry none, the given string (or the callable's answer: the backend asked after the run).
    ``measured_period_s`` is the counter period measured at the sweep's start (the row's column).
    """
    window = mon.work_window(spans) or (t_start, t_end)
    trace = mon.EnergyTrace(samples, sensors)
    e_counter, e_integrated = _f(trace.counter_j(t_start, t_end)), _f(trace.integrated_j(t_start, t_end))
    work_s = window[1] - window[0]
    work = trace.energy(*window)
    work_energy = work.energy_j
    energy = trace.by_source(work.source, t_start, t_end)
    wall = t_end - t_start
    images = metrics.get("images")
    cfg = metrics.get("config", {})
    in_work = [s for s in samples if window[0] <= s.mono_s <= window[1]] or samples
    clock_mean = _mean_attr(in_work, "sm_clock_mhz")
    powers = [s.power_w for s in samples if s.power_w is not None]
    mask = mon.throttle_mask(in_work)
    if mask is not None:
        throttle = f"0x{mask:x}"
    else:
        throttle = throttle_reasons() if callable(throttle_reasons) else throttle_reasons
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
        "throttle_reasons": throttle, "samples": len(samples), "backend": device.backend,
        "gpu_name": device.gpu_name, "gpu_type": device.gpu_type, "gpu_uuid": device.gpu_uuid, "workload": workload,
        "phase_energy_json": json.dumps(mon.phase_energies(trace, spans)),
        "flops_per_image": metrics.get("flops_per_image"), "mode": mode,
        "phase_clocks": json.dumps(phase_clocks) if phase_clocks else None,
        "clock_method": clock_method if clock is not None else "unlocked",
        "power_source": trace.sensors.power_source, "energy_source": work.source,
        "energy_confidence": work.confidence if work.source else None,
        "energy_update_period_s": _r(measured_period_s, 6),
        "temp_start_c": next((s.temp_c for s in samples if s.temp_c is not None), None),
        "settle_wait_s": _r(settle_wait_s, 3), "gpu_sku": device.gpu_sku or device.gpu_name, "mig": int(device.mig),
    }
    row.update({col: cfg.get(key) for col, key in APP_CONFIG_FIELDS.items()})
    return row


def short_window_warning(row: dict, sensors: mon.Sensors, sampling_interval_s: float) -> str | None:
    """The one-time warning for a run whose work window was too short for the GPU's sensors, with the fix."""
    if row.get("energy_confidence") != mon.LOW or row.get("status") != "ok":
        return None
    need = mon.MIN_PERIODS * max(sensors.counter_period_s or 0.0, sensors.power_update_period_s or 0.0,
                                 sampling_interval_s)
    return (f"warning: run {row['run_id']}'s work window ({row['work_s']} s) is too short for this GPU's sensors "
            f"(energy counter every {_ms(sensors.counter_period_s)}, power every {_ms(sensors.power_update_period_s)}, "
            f"sampled every {_ms(sampling_interval_s)}; at least {need:.2f} s is needed): its energy (energy_source "
            f"{row['energy_source']}) is marked energy_confidence=low. Give every run more work: more images "
            "(--app-params '... --num-images N') and an untimed warm-up before them (--app-params '... --warmup 1'), "
            "so the window holds several seconds of steady generation.")


def measurement_manifest(sensors: mon.Sensors, measured_period_s: float | None,
                         declared_period_s: float | None) -> dict:
    """The manifest's ``measurement`` block: which sensor each energy figure used, and by which rule."""
    short = (f"windows shorter than {mon.MIN_PERIODS} counter updates take "
             + ("the counter, marked low (the power reading is a moving average)" if sensors.power_source == "averaged"
                else f"{sensors.integrated_source} power"))
    return {
        "power_source": sensors.power_source, "power_w": f"{sensors.power_source} power reading",
        "power_avg_w": "the driver's averaged power reading, where it differs from power_w",
        "energy_update_period_s": measured_period_s, "energy_update_period_declared_s": declared_period_s,
        "power_update_period_s": sensors.power_update_period_s,
        "clock_method": "per run, in the rows' clock_method (locked, application, slurm-verified, unlocked)",
        "energy_sources": {
            "energy_counter_j": "counter (None without one)",
            "energy_integrated_j": sensors.integrated_source,
            "energy_j": f"the row's energy_source, chosen on the work window: counter where it has one; {short}",
            "work_energy_j": "the same source as energy_j (the row's energy_source)",
            "phase_energy_json": f"per phase its own source and confidence, by the same rule; {short}",
        },
        "energy_confidence": f"low where the work window spans fewer than {mon.MIN_PERIODS} updates of its sensor "
                             f"or fewer than {mon.MIN_POWER_SAMPLES} power samples",
        "idle_power_w": "measured once before the first run, nothing loaded; recorded for reference, no energy "
                        "figure subtracts it",
    }


def samples_csv(samples: list[GpuSample], labels: list[str]) -> str:
    """A run's samples file: the fixed columns, the backend's extra counters, and each sample's phase."""
    extra = sorted({k for s in samples for k in s.extra})
    lines = [",".join([*SAMPLE_COLUMNS, *extra, "phase"])]
    for s, label in zip(samples, labels, strict=True):
        vals = [s.row().get(c) for c in SAMPLE_COLUMNS + extra]
        lines.append(",".join("" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v)) for v in vals)
                     + f",{label}")
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def _mean_attr(samples: list, attr: str) -> float | None:
    vals = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v) -> float | None:
    return None if v is None else float(v)


def _r(v, nd: int = 4):
    return None if v is None else round(float(v), nd)
