"""Per (workload, GPU, clock) feature tables with run-to-run statistics, and relative-to-max features."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io import ACTIVITY, DataError

GROUP = ["workload", "gpu", "sm_clock_mhz"]
METRICS = ["time_s", "power_w", "energy_j", "energy_per_image_j"]
CV_FLAG = 0.10


def feature_table(runs: pd.DataFrame, gpu: str | None = None) -> pd.DataFrame:
    """Mean, std, CV and count of each metric per (workload, gpu, clock); groups noisier than 10 % flagged."""
    runs = select_gpu(runs, gpu)
    agg = {}
    for m in METRICS:
        agg.update({f"{m}_mean": (m, "mean"), f"{m}_std": (m, "std"), })
    agg["n_runs"] = ("time_s", "size")
    for col in ("achieved_tflops", "mfu"):
        if col in runs:
            agg[col] = (col, "mean")
    for col in [c for c in ACTIVITY if c in runs]:
        agg[col] = (col, "mean")
    for col in [c for c in runs.columns if c.startswith("app_")] + ["is_default_clock", "synthetic", "backend",
                                                                     "flops_per_image", "idle_power_w"]:
        if col in runs:
            agg[col] = (col, "first")
    table = runs.groupby(GROUP, dropna=False).agg(**agg).reset_index()
    for m in METRICS:
        table[f"{m}_std"] = table[f"{m}_std"].fillna(0.0)
        table[f"{m}_cv"] = table[f"{m}_std"] / table[f"{m}_mean"]
    table["edp_mean"] = table["energy_j_mean"] * table["time_s_mean"]
    table["ed2p_mean"] = table["energy_j_mean"] * table["time_s_mean"] ** 2
    table["noisy"] = (table[["time_s_cv", "power_w_cv", "energy_j_cv"]] > CV_FLAG).any(axis=1)
    table["outlier"] = flag_outliers(table)
    return add_relative(table.sort_values(GROUP, ascending=[True, True, False]).reset_index(drop=True))


def add_relative(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric relative to the same workload's run at its highest locked clock (the reference)."""
    locked = table[~table.get("is_default_clock", False).astype(bool)]
    ref = locked.loc[locked.groupby(["workload", "gpu"])["sm_clock_mhz"].idxmax()]
    ref = ref.set_index(["workload", "gpu"])
    keyed = table.set_index(["workload", "gpu"]).index
    fmax = ref["sm_clock_mhz"].reindex(keyed).values
    table["f_rel"] = table["sm_clock_mhz"].values / fmax
    for m in ("time_s", "power_w", "energy_j"):
        table[f"{m}_rel"] = table[f"{m}_mean"].values / ref[f"{m}_mean"].reindex(keyed).values
    for col in [c for c in ACTIVITY if c in table]:
        table[f"{col}_at_max"] = ref[col].reindex(keyed).values
    table["power_w_at_max"] = ref["power_w_mean"].reindex(keyed).values
    table["time_s_at_max"] = ref["time_s_mean"].reindex(keyed).values
    return table


def flag_outliers(table: pd.DataFrame, window: int = 7, n_sigma: float = 6.0, floor: float = 0.10) -> pd.Series:
    """Rows whose power or time jumps away from the neighbouring clocks by far more than their noise.

    Single-run sweeps (like the reference V100 data) have no repeats, so neighbouring clocks
    are the noise estimate: the log deviation from the rolling median of ``window`` clocks is
    compared with that workload's own scatter (1.4826 x median absolute deviation) and flagged
    beyond ``n_sigma`` of it, and never below ``floor`` (10 %), so quantised timers and genuinely
    noisy workloads keep their rows. An isolated glitch (bfs at 1200 MHz: 57 W between 76 W
    neighbours whose scatter is 0.5 %) is flagged and kept out of fits and the measured optimum.
    """
    flags = pd.Series(False, index=table.index)
    locked = table[~table["is_default_clock"].astype(bool)]
    for _, g in locked.groupby(["workload", "gpu"]):
        if len(g) < window:
            continue
        g = g.sort_values("sm_clock_mhz")
        for col in ("power_w_mean", "time_s_mean"):
            log_x = np.log(g[col].where(g[col] > 0))
            dev = log_x - log_x.rolling(window, center=True, min_periods=3).median()
            scatter = 1.4826 * np.nanmedian(np.abs(dev - np.nanmedian(dev)))
            flags.loc[g.index] |= (dev.abs() > max(n_sigma * scatter, floor)).fillna(False)
    return flags


def select_gpu(runs: pd.DataFrame, gpu: str | None) -> pd.DataFrame:
    gpus = sorted(runs["gpu"].dropna().unique())
    if gpu is not None:
        if gpu not in gpus:
            raise DataError(f"--gpu {gpu}: not in the data, which has {', '.join(gpus)}")
        return runs[runs["gpu"] == gpu]
    if len(gpus) > 1:
        raise DataError(f"the data mixes GPU types ({', '.join(gpus)}); choose one with --gpu")
    return runs


def check_fittable(table: pd.DataFrame, need: int = 3) -> None:
    per = table[~table["is_default_clock"].astype(bool)].groupby("workload")["sm_clock_mhz"].nunique()
    few = per[per < need]
    if len(few) == len(per):
        raise DataError(f"{int(per.max()) if len(per) else 0} locked clock(s) per workload: a model needs at least "
                        f"{need} distinct clocks (run a dvfs sweep or --custom-frequencies with {need}+ values)")


def default_clock_row(table: pd.DataFrame, workload: str) -> pd.Series | None:
    rows = table[(table["workload"] == workload) & table["is_default_clock"].astype(bool)]
    return rows.iloc[0] if len(rows) else None


def finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]
