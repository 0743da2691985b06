"""Per (workload, GPU, clock) feature tables with run-to-run statistics, and relative-to-max features.

Real DVFS sweeps carry artefacts that must never become a recommendation, so rows are screened
twice before any statistic is taken:

* per run (``flag_runs``): marked warm-up runs, runs whose clock lock did not take effect
  (``clock_mismatch``), a cold first run of a job many times slower than its warm repeats, and a
  single repeat far off its clock's other repeats;
* per clock (``flag_clocks``): a clock far off the trend of its neighbouring clocks (a sensor
  glitch, a lock that silently did not apply, a clock whose every repeat was slow), and a power
  reading stuck at one value over several clocks.

Every excluded run or clock keeps its row with the reason in ``excluded``, so reports can say how
many rows were left out and why.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from sd_energy_contract.gpus import gpu_tdp_w

from .io import ACTIVITY, DataError

GROUP = ["workload", "gpu", "sm_clock_mhz"]
# A default-clock run reports the clock it ran at, which may equal a locked clock: it never pools with it.
KEY = [*GROUP, "is_default_clock"]
METRICS = ["time_s", "power_w", "energy_j", "energy_per_image_j", "edp", "ed2p"]
CV_FLAG = 0.10

COLD_START_FACTOR = 1.3   # a first run this much slower than its warm repeats is a cold start
REPEAT_SIGMAS = 6.0       # a repeat this many pooled robust sigmas off its clock's median is bad...
REPEAT_FLOOR = 0.10       # ...and at least this far off (log), so a quiet workload keeps its 3 % wobble
HOST_BOUND_SHARE = 0.02   # a simulated run more than this share host-bound measures the host, not the clock
# d log x / d log f: run time T = a + b/f falls at most like 1/f; power P = c + d f + e f^3 rises at most like f^3.
PHYSICAL_SLOPES = {"power_w_mean": (0.0, 3.0), "time_s_mean": (-1.0, 0.0)}


def feature_table(runs: pd.DataFrame, gpu: str | None = None) -> pd.DataFrame:
    """Mean, std, CV and count of each metric per (workload, gpu, clock) over the runs that passed screening.

    Columns ``n_runs`` (kept), ``n_excluded_runs`` and ``excluded_runs`` ("cold start:1; clock
    mismatch:2") describe the run screening; ``excluded`` is the clock-level verdict ("" = usable).
    """
    runs = select_gpu(runs, gpu)
    if "is_default_clock" not in runs:
        runs = runs.assign(is_default_clock=False)
    runs = runs.assign(is_default_clock=runs["is_default_clock"].fillna(False).astype(bool))
    default = runs["is_default_clock"]
    if default.any():  # unlocked runs report the clock each ran at; they are one group, at its median clock
        clock = runs.loc[default, "sm_clock_mhz"].groupby([runs["workload"], runs["gpu"]]).transform("median")
        runs = runs.assign(sm_clock_mhz=runs["sm_clock_mhz"].where(~default, clock.round()))
    runs = runs.assign(excluded=flag_runs(runs), edp=runs["energy_j"] * runs["time_s"],
                       ed2p=runs["energy_j"] * runs["time_s"] ** 2)
    kept = runs[runs["excluded"] == ""]
    agg = {}
    for m in METRICS:
        agg.update({f"{m}_mean": (m, "mean"), f"{m}_std": (m, "std")})
    agg["n_runs"] = ("time_s", "size")
    for col in ("achieved_tflops", "mfu", *[c for c in ACTIVITY if c in runs]):
        if col in runs:
            agg[col] = (col, "mean")
    for col in [c for c in runs.columns if c.startswith("app_")] + ["synthetic", "backend", "flops_per_image",
                                                                     "idle_power_w"]:
        if col in runs:
            agg[col] = (col, "first")
    table = kept.groupby(KEY, dropna=False).agg(**agg).reset_index()
    table = table.merge(_exclusion_counts(runs), on=KEY, how="outer")
    table["n_runs"] = table["n_runs"].fillna(0).astype(int)
    for m in METRICS:
        table[f"{m}_std"] = table[f"{m}_std"].where(table["n_runs"] > 1)
        table[f"{m}_cv"] = table[f"{m}_std"] / table[f"{m}_mean"]
    table["noisy"] = (table[["time_s_cv", "power_w_cv", "energy_j_cv"]] > CV_FLAG).any(axis=1)
    table["excluded"] = np.where(table["n_runs"] == 0, "no valid run", "")
    clock_reason, table["time_s_scatter"] = flag_clocks(table)
    table["excluded"] = table["excluded"].where(table["excluded"] != "", clock_reason)
    table["outlier"] = table["excluded"] == "outlier"
    return add_relative(table.sort_values(GROUP, ascending=[True, True, False]).reset_index(drop=True))


def _exclusion_counts(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs[runs["excluded"] != ""]
    if out.empty:
        return pd.DataFrame(columns=[*KEY, "n_excluded_runs", "excluded_runs"]).astype({"is_default_clock": bool})
    counts = out.groupby([*KEY, "excluded"], dropna=False).size().rename("n").reset_index()
    counts["text"] = counts["excluded"] + ":" + counts["n"].astype(str)
    return counts.groupby(KEY, dropna=False).agg(n_excluded_runs=("n", "sum"),
                                                   excluded_runs=("text", "; ".join)).reset_index()


def usable_mask(table: pd.DataFrame) -> pd.Series:
    """Locked-clock rows that passed screening: what references, choices and fits may use."""
    keep = ~table["is_default_clock"].astype(bool)
    if "excluded" in table:
        keep &= table["excluded"].fillna("") == ""
    return keep


def add_relative(table: pd.DataFrame) -> pd.DataFrame:
    """Each metric relative to the same workload's run at its highest usable locked clock (the reference).

    ``power_tdp_at_max`` (power at the reference over the GPU type's TDP) lets a model trained on
    one GPU type speak to another: 200 W is a lot on a V100 and little on an H100.
    """
    ok = table[usable_mask(table)]
    keyed = table.set_index(["workload", "gpu"]).index
    if ok.empty:
        ref = pd.DataFrame(columns=table.columns).set_index(["workload", "gpu"])
    else:
        ref = ok.loc[ok.groupby(["workload", "gpu"])["sm_clock_mhz"].idxmax()].set_index(["workload", "gpu"])
    fmax = ref["sm_clock_mhz"].reindex(keyed).values
    table["f_rel"] = table["sm_clock_mhz"].values / fmax
    for m in ("time_s", "power_w", "energy_j"):
        table[f"{m}_rel"] = table[f"{m}_mean"].values / ref[f"{m}_mean"].reindex(keyed).values
    for col in [c for c in ACTIVITY if c in table]:
        table[f"{col}_at_max"] = ref[col].reindex(keyed).values
    table["power_w_at_max"] = ref["power_w_mean"].reindex(keyed).values
    table["time_s_at_max"] = ref["time_s_mean"].reindex(keyed).values
    table["tdp_w"] = tdp_per_row(table["gpu"])
    table["power_tdp_at_max"] = table["power_w_at_max"] / table["tdp_w"]
    return table


def tdp_per_row(gpus: pd.Series) -> pd.Series:
    """``gpu_tdp_w`` of each row's GPU type (NaN where unknown), looked up once per type."""
    tdp = {g: gpu_tdp_w(str(g)) for g in gpus.dropna().unique()}
    return pd.to_numeric(gpus.map(tdp), errors="coerce")


# --------------------------------------------------------------------------- run screening

def flag_runs(runs: pd.DataFrame) -> pd.Series:
    """Why each run is left out of the statistics ("" = kept).

    * ``warmup``: marked as warm-up by the launcher (or a ``warmup`` column of a reference CSV);
    * ``clock mismatch``: the SM clock during the work was not the target (the lock did not apply);
    * ``host-bound (simulated GPU)``: the host was too busy for the simulated GPU to keep its modelled
      pace for more than 2 % of the work window (``twin_host_bound_s``), so the time is the host's;
    * ``phase-clock policy``: the clock followed the app's phases (``--phase-clocks``), so the run is
      no measurement of one clock; ``phase_policy.compare_phase_policies`` judges it;
    * ``cold start``: the first measured run of a job, more than 1.3x slower than the median of the
      other runs at its clock (model load, autotuning and caches land on it, and on the reference clock);
    * ``bad repeat``: with 3+ runs at a clock, a run whose time or power is off the clock's median by
      more than 6 pooled robust sigmas of that workload and at least 10 %.
    """
    reason = pd.Series("", index=runs.index, dtype=object)
    if "warmup" in runs:
        reason[runs["warmup"].fillna(False).astype(bool)] = "warmup"
    if "clock_mismatch" in runs:
        reason[(reason == "") & runs["clock_mismatch"].fillna(False).astype(bool)] = "clock mismatch"
    if "host_bound_s" in runs:  # the simulated GPU's pace was not kept: the time is the host's, not the clock's
        share = runs["host_bound_s"].fillna(0) / runs["time_s"].where(runs["time_s"] > 0)
        reason[(reason == "") & (share > HOST_BOUND_SHARE).fillna(False)] = "host-bound (simulated GPU)"
    if "phase_policy" in runs:  # measured under a per-phase policy: compared apart (power_modeling.phase_policy)
        reason[(reason == "") & (runs["phase_policy"].fillna("") != "")] = "phase-clock policy"
    live = runs[reason == ""]
    if live.empty:
        return reason
    # Cold start: the first run of each (source, workload) against the other runs at its clock.
    order = live["sequence"] if "sequence" in live else pd.Series(np.arange(len(live)), index=live.index)
    job = _group_codes(live, ["source", "workload"] if "source" in live else ["workload"], dropna=True)
    first = order.groupby(job).transform("min") == order
    clock = _group_codes(live, KEY, dropna=False)  # the keys factorised once, not once per statistic
    warm_median = live["time_s"].where(~first).groupby(clock).transform("median")
    cold = first & (live["time_s"] > COLD_START_FACTOR * warm_median).fillna(False)
    reason[cold[cold].index] = "cold start"
    # Bad repeat among 3+ remaining runs: robust to one bad value per clock.
    rest = live[~cold]
    key = clock[rest.index]
    n = rest["time_s"].groupby(key).transform("size")
    workload = _group_codes(rest, ["workload"], dropna=True)
    bad = pd.Series(False, index=rest.index)
    for col in ("time_s", "power_w"):
        x = np.log(rest[col].where(rest[col] > 0))
        dev = x - x.groupby(key).transform("median")
        sigma = 1.4826 * dev.abs().groupby(key).transform("median")
        pooled = sigma.where(n >= 3).groupby(workload).transform("median")
        bad |= (n >= 3) & (dev.abs() > np.maximum(REPEAT_SIGMAS * pooled.fillna(0), REPEAT_FLOOR))
    reason[bad[bad].index] = "bad repeat"
    return reason


def _group_codes(frame: pd.DataFrame, cols: list[str], dropna: bool) -> pd.Series:
    """One integer per group of ``cols`` (NaN for a row with a missing key when ``dropna``, which then
    belongs to no group, as in ``groupby``): grouping by it is grouping by the columns, factorised once."""
    code = frame.groupby(cols, sort=False, dropna=dropna, observed=True).ngroup()
    return code.where(code >= 0) if dropna else code


# --------------------------------------------------------------------------- clock screening

def flag_clocks(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Clock-level exclusions ("stuck power", then "outlier" among the rest) and, per workload, the
    robust scatter of log run time around the trend of neighbouring clocks: the noise a single-run
    sweep shows, used to judge "faster than the reference" (NaN with fewer than 5 clocks)."""
    reason = pd.Series("", index=table.index, dtype=object)
    reason[flag_stuck_power(table)] = "stuck power"
    outlier, scatter = _outliers_and_scatter(table.assign(excluded=reason.where(reason != "", table["excluded"])))
    reason[(reason == "") & outlier] = "outlier"
    return reason, scatter


def flag_stuck_power(table: pd.DataFrame, min_clocks: int = 3) -> pd.Series:
    """Clocks whose mean power is exactly the same as at 2+ other clocks of the workload.

    Real power moves with the clock (static plus ~f*V^2); one value repeated to the last digit over
    several clocks is a sensor that stopped updating, and integrating it gives a false energy curve.
    """
    flags = pd.Series(False, index=table.index)
    ok = table[~table["is_default_clock"].astype(bool) & (table["n_runs"] > 0)]
    if ok.empty:
        return flags
    rounded = ok["power_w_mean"].round(6)
    counts = rounded.groupby([ok["workload"], ok["gpu"], rounded]).transform("size")
    flags.loc[ok.index] = counts >= min_clocks
    return flags


def flag_outliers(table: pd.DataFrame, n_sigma: float = 6.0, floor: float = 0.10) -> pd.Series:
    """Clocks whose power or time is far off the trend of their nearest clocks.

    Each clock is compared (in log power and log time vs log clock) with what its nearest *other*
    clocks predict (``_loo_residuals``), against the workload's own scatter of interpolation
    residuals (1.4826 x MAD) times ``n_sigma``, never below ``floor`` (10 %).
    Local lines, unlike a median of neighbours, follow the curve, so the 8-10 clocks of a coarse
    sweep are not flagged for being on a slope; leaving the clock out makes the rule see an isolated
    glitch (bfs at 1200 MHz: 57 W between 76 W neighbours), a lock that did not apply (a low clock
    reading like the max), a clock whose every repeat was slow, and a cold reference run. Clocks are
    flagged one per pass, the worst first, and stop serving as neighbours, so one glitch cannot
    drag the clock next to it out with it.
    """
    return _outliers_and_scatter(table, n_sigma, floor)[0]


def _outliers_and_scatter(table: pd.DataFrame, n_sigma: float = 6.0,
                          floor: float = 0.10) -> tuple[pd.Series, pd.Series]:
    """``flag_outliers``' flags and the per-workload time scatter, for every workload at once.

    The workloads' usable clocks are laid out as rows of one padded (workload x clock) array, so
    each pass of the rule is a few array operations over all of them; a workload stops taking
    part once its worst clock is within the band (or after ``len // 3`` passes, as before).
    """
    flags = pd.Series(False, index=table.index)
    ok = table[~table["is_default_clock"].astype(bool) & (table["n_runs"] > 0)]
    if "excluded" in table:
        ok = ok[table.loc[ok.index, "excluded"].fillna("") == ""]
    ok = ok.sort_values(["workload", "gpu", "sm_clock_mhz"], kind="stable")
    code = ok.groupby(["workload", "gpu"], sort=False).ngroup().to_numpy()  # -1: no GPU type, never judged
    sizes = np.bincount(code[code >= 0]) if (code >= 0).any() else np.zeros(0, int)
    keep = (code >= 0) & (sizes[np.maximum(code, 0)] >= 5 if len(sizes) else False)  # fewer: no trend to judge
    scatter_of = pd.Series(dtype=float)
    if keep.any():
        rows_w, r = np.unique(code[keep], return_inverse=True)
        c = ok.groupby(["workload", "gpu"], sort=False).cumcount().to_numpy()[keep]
        n = sizes[rows_w]
        shape = (len(rows_w), int(n.max()))
        valid = np.zeros(shape, bool)
        valid[r, c] = True
        lf = np.full(shape, np.nan)
        lf[r, c] = np.log(ok["sm_clock_mhz"].to_numpy(float)[keep])
        ys = {}
        for col in PHYSICAL_SLOPES:
            v = ok[col].to_numpy(float)[keep]
            y = np.full(shape, np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                y[r, c] = np.log(np.where(v > 0, v, np.nan))
            ys[col] = y
        bad, scatter = _flag_passes(lf, ys, valid, n, n_sigma, floor)
        flags.loc[ok.index[keep]] = bad[r, c]
        first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        named = ok.iloc[np.flatnonzero(keep)[first]]
        scatter_of = pd.Series(scatter, index=pd.MultiIndex.from_frame(named[["workload", "gpu"]]))
    keys = pd.MultiIndex.from_frame(table[["workload", "gpu"]])
    time_scatter = pd.Series(scatter_of.reindex(keys).to_numpy() if len(scatter_of) else np.nan, index=table.index,
                             dtype=float)
    return flags, time_scatter


def _flag_passes(lf: np.ndarray, ys: dict[str, np.ndarray], valid: np.ndarray, n: np.ndarray, n_sigma: float,
                 floor: float) -> tuple[np.ndarray, np.ndarray]:
    """One clock per pass per workload row, the worst first; returns (flags, the last pass's time scatter)."""
    bad = np.zeros(valid.shape, bool)
    scatter_time = np.full(len(n), np.nan)
    live = np.arange(len(n))
    for p in range(int((n // 3).max())):
        live = live[p < n[live] // 3]  # a workload of n clocks has n // 3 passes
        if not len(live):
            break
        usable = valid[live] & ~bad[live]
        excess = np.zeros(usable.shape)
        for col, y in ys.items():
            resid, noise, interior = _loo_residuals(lf[live], y[live], usable, PHYSICAL_SLOPES[col])
            inner = usable & interior  # as in one workload's arrays: its usable interior clocks, NaN or not
            count = inner.sum(axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a workload whose interior is all NaN
                vals = np.where(inner, noise, np.nan)
                med = np.nanmedian(vals, axis=1, keepdims=True)
                scatter = np.where(count >= 3, 1.4826 * np.nanmedian(np.abs(vals - med), axis=1), 0.0)
            # max(n_sigma * scatter, floor) as Python's max does it: a NaN scatter stays NaN
            denom = np.where(np.isnan(scatter), np.nan, np.maximum(n_sigma * scatter, floor))
            excess = np.maximum(excess, np.nan_to_num(np.abs(resid)) / denom[:, None])
            if col == "time_s_mean":
                scatter_time[live] = scatter
        excess[~usable] = 0  # bad clocks, and the padding beyond a workload's own clocks
        worst = np.argmax(excess, axis=1)
        value = excess[np.arange(len(live)), worst]
        hit = ~(value <= 1)
        bad[live[hit], worst[hit]] = True
        live = live[hit]
    return bad, scatter_time


def _loo_residuals(x: np.ndarray, y: np.ndarray, usable: np.ndarray,
                   slopes: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sorted clock's log deviation from what its usable neighbours allow, row by row.

    ``x``, ``y`` and ``usable`` are (workloads x clocks), each row one workload's clocks in rising
    order (padding is never usable). Returns (residual, noise residual, interior). Inside the range, three local predictions are
    made from the nearest usable clocks: the interpolation between the nearest on each side, and
    the lines through the two nearest on the left and on the right, extrapolated; the residual is
    the smallest of the three deviations, so one bad neighbour (a glitch next door, the cold max
    clock) cannot make a good clock look bad, while a clock that disagrees with every neighbour
    does. The interpolation residual alone measures the noise. At either end no line is
    extrapolated: the nearest usable clock and the physical range of log-log slopes (``slopes``:
    time falls at most like 1/f, power rises at most like f^3) bound where the end may lie, and the
    residual is the distance outside that band. A coarse sweep's steep low end is then no outlier,
    while a cold max-clock run (slower than the next clock) or a low clock reading like the max
    (faster, hotter) still is.
    """
    rows, width = usable.shape
    at = np.broadcast_to(np.arange(width), usable.shape)
    last_le = np.maximum.accumulate(np.where(usable, at, -1), axis=1)             # last usable index <= i
    first_ge = np.minimum.accumulate(np.where(usable, at, width)[:, ::-1], axis=1)[:, ::-1]  # first >= i
    before = np.c_[np.full(rows, -1), last_le[:, :-1]]                            # last usable < i
    after = np.c_[first_ge[:, 1:], np.full(rows, width)]                          # first usable > i
    after = np.where(after >= width, -1, after)

    def hop(j: np.ndarray, table: np.ndarray) -> np.ndarray:
        """``table`` at index ``j`` per row, -1 where ``j`` is -1 (no such neighbour)."""
        return np.where(j >= 0, np.take_along_axis(table, np.maximum(j, 0), axis=1), -1)

    l1, r1 = before, after
    l2, r2 = hop(l1, before), hop(r1, after)

    def take(v: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.take_along_axis(v, np.maximum(j, 0), axis=1)

    def line(a, b):
        ok = (a >= 0) & (b >= 0)
        xa, ya = take(x, a), take(y, a)
        with np.errstate(divide="ignore", invalid="ignore"):
            k = (take(y, b) - ya) / (take(x, b) - xa)
            return np.where(ok, ya + k * (x - xa), np.nan)

    interior = (l1 >= 0) & (r1 >= 0)
    interp = line(l1, r1)
    preds = np.stack([interp, line(l2, l1), line(r1, r2)], axis=2)
    dev = y[:, :, None] - preds
    best = np.argmin(np.where(np.isnan(dev), np.inf, np.abs(dev)), axis=2)
    resid = np.where(interior, np.take_along_axis(dev, best[:, :, None], axis=2)[:, :, 0], np.nan)
    noise = np.where(interior, y - interp, np.nan)
    nearest = np.where(l1 >= 0, l1, r1)                                             # the one neighbour an end has
    ends = ~interior & (nearest >= 0)
    with np.errstate(invalid="ignore"):
        d = x - take(x, nearest)
        y0 = take(y, nearest)
        lo = y0 + np.minimum(slopes[0] * d, slopes[1] * d)
        hi = y0 + np.maximum(slopes[0] * d, slopes[1] * d)
        end_resid = np.where(y > hi, y - hi, np.where(y < lo, y - lo, 0.0))
    resid = np.where(ends, end_resid, resid)
    return resid, noise, interior


# --------------------------------------------------------------------------- helpers

def select_gpu(runs: pd.DataFrame, gpu: str | None) -> pd.DataFrame:
    """The runs of one GPU type; several types without a choice is an error that lists them."""
    gpus = sorted(runs["gpu"].dropna().astype(str).unique())
    if gpu is not None:
        if gpu not in gpus:
            raise DataError(f"--gpu {gpu}: not in the data, which has {', '.join(gpus)}")
        return runs[runs["gpu"] == gpu]
    if len(gpus) > 1:
        raise DataError(f"the data mixes GPU types ({', '.join(gpus)}); choose one with --gpu")
    return runs


def check_fittable(table: pd.DataFrame, need: int = 3) -> None:
    per = table[usable_mask(table)].groupby("workload")["sm_clock_mhz"].nunique()
    few = per[per < need]
    if len(few) == len(per):
        raise DataError(f"{int(per.max()) if len(per) else 0} locked clock(s) per workload: a model needs at least "
                        f"{need} distinct clocks (run a dvfs sweep or --custom-frequencies with {need}+ values)")


def default_clock_row(table: pd.DataFrame, workload: str) -> pd.Series | None:
    rows = table[(table["workload"] == workload) & table["is_default_clock"].astype(bool) & (table["n_runs"] > 0)]
    return rows.iloc[0] if len(rows) else None
