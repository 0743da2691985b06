"""Serve recorded measurements as if a GPU produced them, so sweeps and models run on real numbers.

Two sources:

* the reference V100 DVFS tables (``shared/data/reference/*.csv``, one row per application and
  clock: mean power, run time, DCGM activity), chosen with ``--replay-app NAME``;
* a results directory written by this tool on a real GPU (``runs.csv`` + ``samples/``), e.g.
  the traces under ``tests/data/traces/``.

The launcher does not run the app under replay: for each (clock, run) it asks
``replay_run`` for the recorded run and writes it out in the usual results layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sd_energy_contract import reference
from sd_energy_contract.reference import ACTIVITY_COLUMNS

from ..errors import ClockError, GpuNotFoundError
from .base import GpuBackend, GpuSample


@dataclass
class ReplayedRun:
    duration_s: float
    samples: list[GpuSample]            # mono_s relative to the run start
    activity: dict[str, float] = field(default_factory=dict)
    images: int | None = None
    app_config: dict = field(default_factory=dict)


def is_reference_csv(path: Path) -> bool:
    return path.suffix == ".csv" and reference.is_reference_header(pd.read_csv(path, nrows=0).columns)


def load_reference(path: Path) -> pd.DataFrame:
    """The reference table with project names and units (energy recomputed as P*T, see its README)."""
    df = pd.read_csv(path)
    df = df.drop(columns=[c for c in df.columns if c.startswith(reference.DROPPED_PREFIXES) or c in reference.DROPPED])
    df = df.rename(columns=reference.RENAMES)
    df["energy_j"] = df["avg_power_w"] * df["work_s"]
    return df


class ReplayGpu(GpuBackend):
    name = "replay"
    replays = True

    def __init__(self, source: str | Path, app: str | None = None, index: int = 0, samples_per_run: int = 20):
        super().__init__(index)
        self.source = Path(source)
        if not self.source.exists():
            raise GpuNotFoundError(f"replay source {self.source} does not exist")
        self.samples_per_run = samples_per_run
        self._clock: int | None = None
        if self.source.is_dir():
            self._runs = pd.read_csv(self.source / "runs.csv")
            self._runs = self._runs[self._runs["status"] == "ok"]
            self._runs = self._runs[~self._runs["warmup"].astype(bool)]
            self._gpu_name = str(self._runs["gpu_name"].iloc[0]) if "gpu_name" in self._runs else "recorded GPU"
            self.app = app or "recorded"
            self._table = None
        else:
            table = load_reference(self.source)
            apps = sorted(table["workload"].unique())
            if app not in apps:
                raise GpuNotFoundError(f"--replay-app {app!r} is not in {self.source.name}; it has {', '.join(apps)}")
            self.app = app
            self._table = table[table["workload"] == app].set_index("sm_clock_mhz").sort_index()
            self._gpu_name = "Tesla V100 (reference data)"

    def device_name(self) -> str:
        return f"{self._gpu_name} (replay of {self.source.name})"

    def uuid(self) -> str:
        return f"REPLAY-{self.source.stem}-{self.app}"

    def supported_sm_clocks_mhz(self, mem_clock_mhz: int | None = None) -> list[int]:
        if self._table is not None:
            clocks = self._table.index
        else:
            clocks = self._runs["sm_clock_target_mhz"].dropna()
        return sorted({int(c) for c in clocks}, reverse=True)

    def lock_sm_clock(self, mhz: int, mem_mhz: int | None = None) -> None:
        if mhz not in self.supported_sm_clocks_mhz():
            raise ClockError(f"{mhz} MHz was not recorded in {self.source}")
        self._clock = mhz

    def reset_clocks(self) -> None:
        self._clock = None

    def child_env(self) -> dict[str, str]:
        return {}  # nothing runs: the recorded runs are served

    def sample(self) -> GpuSample:
        return GpuSample(mono_s=self.now(), sm_clock_mhz=self._clock)

    def replay_run(self, run_index: int = 0) -> ReplayedRun:
        clock = self._clock or self.supported_sm_clocks_mhz()[0]
        if self._table is not None:
            row = self._table.loc[clock]
            duration, power = float(row["work_s"]), float(row["avg_power_w"])
            n = self.samples_per_run
            samples = [GpuSample(mono_s=duration * i / (n - 1), power_w=power, sm_clock_mhz=clock,
                                 gpu_util_pct=float(row.get("gpu_utilization", float("nan"))),
                                 extra={v: float(row[v]) for v in ACTIVITY_COLUMNS.values() if v in row})
                       for i in range(n)]
            activity = {v: float(row[v]) for v in ACTIVITY_COLUMNS.values() if v in row}
            return ReplayedRun(duration, samples, activity, None, {"workload": self.app})
        runs = self._runs[self._runs["sm_clock_target_mhz"] == clock].sort_values("run_index")
        rec = runs.iloc[run_index % len(runs)]
        trace_path = self.source / "samples" / f"{rec['run_id']}.csv"
        trace = pd.read_csv(trace_path)
        t0 = trace["mono_s"].iloc[0]
        samples = [GpuSample(mono_s=r.mono_s - t0, power_w=r.power_w,
                             energy_mj=getattr(r, "energy_mj", None), sm_clock_mhz=r.sm_clock_mhz,
                             mem_clock_mhz=getattr(r, "mem_clock_mhz", None),
                             gpu_util_pct=getattr(r, "gpu_util_pct", None))
                   for r in trace.itertuples()]
        app_cfg = {c[4:]: rec[c] for c in runs.columns if c.startswith("app_") and pd.notna(rec[c])}
        images = int(rec["images"]) if pd.notna(rec.get("images")) else None
        return ReplayedRun(float(rec["wall_s"]), samples, {}, images, app_cfg)
