"""Power and run-time models over the SM clock, with the scikit-learn estimator API.

All three predict power (W) and run time (s) of a workload at a clock. They differ in what
they need to know about the workload:

* ``FGCSModel``: the published baseline form, refit: ``ln P`` linear in FP activity, DRAM
  activity and ``ln f``; run time relative to the max-clock run, ``ln(T/T_max)`` linear in
  ``ln(f/f_max)`` and its products with the activities. Needs one run at the max clock.
* ``PhysicalModel``: one workload, a few probe clocks: ``T = a + b/f`` (a fixed part plus a
  compute-bound part that scales with 1/f), ``P = c + d f + e f^3`` (static plus dynamic power
  rising super-linearly, as V rises with f). Non-negative coefficients; bootstrap uncertainty.
* ``CrossWorkloadModel``: learned across workloads: gradient boosting plus nearest workloads on
  what the max-clock run tells (activity counters where the data has them, power relative to the
  GPU's TDP, log run time) and ``f/f_max``, predicting ``P/P_max`` and ``T/T_max``, so a new
  workload needs only its max-clock run. ``model_store`` saves and loads it safely and ships two
  trained on the reference data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits

from .features import tdp_per_row, usable_mask
from .io import ACTIVITY, DataError


def _require(table: pd.DataFrame, cols: list[str], model: str) -> None:
    missing = [c for c in cols if c not in table or table[c].isna().all()]
    if missing:
        raise DataError(f"{model} needs column(s) {', '.join(missing)} (activity counters from a DCGM or reference source)")


class FGCSModel(BaseEstimator):
    """The FGCS-2023 form (log-linear in activity and log clock), refit on the data given to ``fit``."""

    def __init__(self, fp_col: str = "fp_active_at_max", dram_col: str = "dram_active_at_max"):
        self.fp_col = fp_col
        self.dram_col = dram_col

    def _x_power(self, t):
        return np.c_[np.ones(len(t)), t[self.fp_col], t[self.dram_col], np.log(t["sm_clock_mhz"])]

    def _x_time(self, t):
        lf = np.log(t["f_rel"].values)
        return np.c_[lf, lf * t[self.fp_col].values, lf * t[self.dram_col].values]

    def fit(self, table: pd.DataFrame, y=None) -> FGCSModel:
        _require(table, [self.fp_col, self.dram_col], "FGCSModel")
        self.coef_power_ = np.linalg.lstsq(self._x_power(table), np.log(table["power_w_mean"]), rcond=None)[0]
        self.coef_time_ = np.linalg.lstsq(self._x_time(table), np.log(table["time_s_rel"]), rcond=None)[0]
        return self

    def predict_power(self, table: pd.DataFrame) -> np.ndarray:
        return np.exp(self._x_power(table) @ self.coef_power_)

    def predict_time(self, table: pd.DataFrame) -> np.ndarray:
        return table["time_s_at_max"].values * np.exp(self._x_time(table) @ self.coef_time_)


class PhysicalModel(BaseEstimator):
    """One workload from a few clocks: T = a + b/f, P = c + d f + e f^3 (coefficients >= 0)."""

    def __init__(self, n_bootstrap: int = 200, random_state: int = 0):
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state

    @staticmethod
    def _basis(f_ghz: np.ndarray):
        return np.c_[np.ones_like(f_ghz), 1.0 / f_ghz], np.c_[np.ones_like(f_ghz), f_ghz, f_ghz**3]

    @classmethod
    def _solve(cls, f_ghz, t, p):
        bt, bp = cls._basis(f_ghz)
        return nnls(bt, t)[0], nnls(bp, p)[0]

    def fit(self, clocks_mhz, time_s, power_w) -> PhysicalModel:
        f = np.asarray(clocks_mhz, dtype=float) / 1000.0
        t, p = np.asarray(time_s, dtype=float), np.asarray(power_w, dtype=float)
        if len(np.unique(f)) < 3:
            raise DataError(f"PhysicalModel needs at least 3 distinct clocks, got {len(np.unique(f))}")
        self.coef_time_, self.coef_power_ = self._solve(f, t, p)
        rng = np.random.default_rng(self.random_state)
        boots = []
        for _ in range(self.n_bootstrap):
            idx = rng.integers(0, len(f), len(f))
            if len(np.unique(f[idx])) >= 3:
                boots.append(np.r_[self._solve(f[idx], t[idx], p[idx])])
        self.bootstrap_coefs_ = np.array(boots) if boots else np.empty((0, 5))
        self.fmin_mhz_, self.fmax_mhz_ = float(f.min() * 1000), float(f.max() * 1000)
        return self

    def predict(self, clocks_mhz) -> tuple[np.ndarray, np.ndarray]:
        bt, bp = self._basis(np.asarray(clocks_mhz, dtype=float) / 1000.0)
        return bt @ self.coef_time_, bp @ self.coef_power_

    def predict_interval(self, clocks_mhz, q=(0.05, 0.95)) -> dict[str, np.ndarray]:
        """Bootstrap percentile band of time, power and energy at each clock."""
        bt, bp = self._basis(np.asarray(clocks_mhz, dtype=float) / 1000.0)
        if not len(self.bootstrap_coefs_):
            t, p = self.predict(clocks_mhz)
            return {"time_s": np.c_[t, t], "power_w": np.c_[p, p], "energy_j": np.c_[t * p, t * p]}
        ts = self.bootstrap_coefs_[:, :2] @ bt.T
        ps = self.bootstrap_coefs_[:, 2:] @ bp.T
        return {k: np.quantile(v, q, axis=0).T for k, v in (("time_s", ts), ("power_w", ps), ("energy_j", ts * ps))}


def fit_physical(rows: pd.DataFrame, n_bootstrap: int = 0) -> PhysicalModel | None:
    """``PhysicalModel`` on one workload's per-clock means, or None with fewer than 3 distinct clocks.

    ``n_bootstrap`` defaults to none: each resample is a refit, and only ``predict_interval``
    reads them; the coefficients come from the full data either way.
    """
    if rows["sm_clock_mhz"].nunique() < 3:
        return None
    return PhysicalModel(n_bootstrap=n_bootstrap).fit(rows["sm_clock_mhz"], rows["time_s_mean"], rows["power_w_mean"])


def physical_fits(table: pd.DataFrame, n_bootstrap: int = 0) -> Iterator[tuple[str, pd.DataFrame, PhysicalModel]]:
    """(workload, its usable rows, its ``PhysicalModel``) for each workload with 3+ usable clocks.

    The one definition of what the per-workload model is fitted on (``usable`` rows with a run,
    in the table's order), shared by ``fit``/``predict`` on the command line and the report.
    """
    rows = usable(table)
    if "n_runs" in rows:  # a clock whose every run was screened out has no mean to fit
        rows = rows[rows["n_runs"] > 0]
    for wl, g in rows.groupby("workload"):
        model = fit_physical(g, n_bootstrap)
        if model is not None:
            yield str(wl), g, model


def physical_fit_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-workload physical fits: (coefficients and in-sample MAPE per workload, predictions per clock).

    The first has the coefficients (``time_a_s``, ``time_b_s_ghz``, ``power_c_w``,
    ``power_d_w_per_ghz``, ``power_e_w_per_ghz3``) and ``time_mape``, ``power_mape``,
    ``energy_mape`` (fractions, as ``leave_one_workload_out`` reports them; energy against the
    measured ``energy_j_mean``); the second the measured and predicted values at each fitted clock.
    """
    rows, preds = [], []
    for wl, g, m in physical_fits(table):
        t, p = m.predict(g["sm_clock_mhz"])
        e = g["energy_j_mean"].to_numpy(float)
        rows.append({"workload": wl, "time_a_s": m.coef_time_[0], "time_b_s_ghz": m.coef_time_[1],
                     "power_c_w": m.coef_power_[0], "power_d_w_per_ghz": m.coef_power_[1],
                     "power_e_w_per_ghz3": m.coef_power_[2], "time_mape": mape(t, g["time_s_mean"]),
                     "power_mape": mape(p, g["power_w_mean"]), "energy_mape": mape(t * p, e)})
        preds.append(pd.DataFrame({"workload": wl, "sm_clock_mhz": g["sm_clock_mhz"].to_numpy(float),
                                   "energy_j_mean": e, "time_s_pred": t, "power_w_pred": p, "energy_j_pred": t * p}))
    return pd.DataFrame(rows), (pd.concat(preds, ignore_index=True) if preds else pd.DataFrame())


POWER_TDP = "power_tdp_at_max"


def activity_columns(table: pd.DataFrame) -> list[str]:
    """The max-clock activity-counter features (``<counter>_at_max``) that ``table`` has for every row.

    Use it to choose ``CrossWorkloadModel(use_activity=...)``: NVML-only measurements (the Stable
    Diffusion runs) have none, DCGM and the reference data have them.
    """
    cols = [f"{c}_at_max" for c in ACTIVITY]
    return [c for c in cols if c in table and table[c].notna().all()]


def power_relative_to_tdp(table: pd.DataFrame, lookup_gpu: bool = False) -> pd.Series | None:
    """Max-clock power / the GPU type's TDP per row, or None when some row cannot have it.

    Taken from column ``power_tdp_at_max`` where ``features.add_relative`` provides it, else
    ``power_w_at_max / tdp_w``, else (``lookup_gpu``) the TDP of the row's ``gpu`` type in
    configs/gpus.yaml. A fraction of TDP is comparable across GPU types where watts are not: a
    workload at 200 W is nearly flat out on a 250 W V100 and light on a 700 W H200.
    """
    out = pd.Series(np.nan, index=table.index, dtype=float)
    if POWER_TDP in table:
        out = pd.to_numeric(table[POWER_TDP], errors="coerce").astype(float)
    if "power_w_at_max" in table:
        if "tdp_w" in table:
            out = out.fillna(table["power_w_at_max"] / pd.to_numeric(table["tdp_w"], errors="coerce"))
        if lookup_gpu and "gpu" in table and out.isna().any():
            out = out.fillna(table["power_w_at_max"] / tdp_per_row(table["gpu"]))
    return out if len(out) and out.notna().all() else None


_LABELS = {"f_rel": "f/f_max", POWER_TDP: "power at max / TDP", "power_w_at_max": "power at max (W)",
           "log_time_s_at_max": "run time at max (s)"}


class CrossWorkloadModel(BaseEstimator):
    """Across workloads: P/P_max and T/T_max from what one run at the max clock tells, and f/f_max.

    Two parts, blended in log space with weight ``neighbor_weight`` on the second:

    * the mean of two boosted models (classic, and histogram-based with the physics as monotone
      constraints: power rises and time falls with the clock);
    * the curves of the ``n_neighbors`` training workloads nearest in (standardised) feature
      space, weighted by inverse distance: a new workload scales like the ones that use the GPU
      the way it does.

    Features of a workload (all from its max-clock run):

    * activity counters (``<counter>_at_max``, DCGM or the reference data) with ``use_activity``;
      off for NVML-only measurements such as the Stable Diffusion runs, which have none;
    * max-clock power relative to the GPU's TDP (``power_tdp_at_max``, or ``power_w_at_max /
      tdp_w``) when the training table has it, so the model can transfer between GPU types;
      absolute ``power_w_at_max`` otherwise (``power_feature_`` says which);
    * with ``use_time_at_max`` the log of the max-clock run time (a 2 s kernel and a 2 min
      training loop differ by scale, not by seconds); turn it off where workloads' run times are
      not comparable (different batch sizes or iteration counts).

    On the reference data (leave-one-application-out) the blend cuts power MAPE 5.0 -> 4.7 % and
    time MAPE 3.5 -> 3.2 % against the boosted models alone; the run-time feature takes time MAPE
    to 2.2 % (docs/BENCHMARKS.md says how much of that the data's shared SPEC timings explain).

    ``n_threads`` caps the BLAS/OpenMP thread pools during ``fit`` and prediction (None: library
    defaults). The data are small (~2800 rows): with default pools on a 2-core machine the
    histogram booster's OpenMP threads oversubscribe the cores and leave-one-workload-out over the
    24 reference apps took 224-303 s instead of 41-77 s with one thread. ``n_estimators=100,
    learning_rate=0.1`` (was 300 and 0.05) cuts it to ~19 s at the same LOWO accuracy (power
    MAPE 4.28 vs 4.22 %, time 2.59 vs 2.57 %). Guided EDP regret moves more with
    ``random_state`` than with the stage count: one app (NAMD) lands anywhere from <5 % to 26 % regret
    depending on the seed; over seeds 0-4 the mean regret is 1.03-2.40 % (average 1.47 %) with
    100 stages and 1.72-2.24 % (2.00 %) with 300 (benchmarks/bench_cross_model.py).

    The fitted model records what it was trained on (``workloads_``, ``trained_gpus_``,
    ``feature_ranges_``) so ``extrapolation`` can say where a prediction leaves that ground.
    """

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, n_neighbors: int = 3,
                 neighbor_weight: float = 0.5, use_time_at_max: bool = True, use_activity: bool = True,
                 n_threads: int | None = 1, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.n_neighbors = n_neighbors
        self.neighbor_weight = neighbor_weight
        self.use_time_at_max = use_time_at_max
        self.use_activity = use_activity
        self.n_threads = n_threads
        self.random_state = random_state

    def _threads(self):
        return threadpool_limits(limits=self.n_threads) if self.n_threads is not None else nullcontext()

    def _features(self, table: pd.DataFrame, fitting: bool = False) -> pd.DataFrame:
        """The feature matrix (columns ``feature_names_``); DataError naming what ``table`` lacks."""
        missing = [c for c in ("f_rel", "power_w_at_max", "time_s_at_max") if c not in table or table[c].isna().any()]
        acts = [c for c in self.activity_names_ if c not in table or table[c].isna().any()]
        if acts:
            raise DataError(f"CrossWorkloadModel was trained with activity counters and the data lacks (or has NaN "
                            f"for) {', '.join(acts)}; use a model fitted with use_activity=False")
        if missing:
            raise DataError(f"CrossWorkloadModel needs column(s) {', '.join(missing)}")
        X = pd.DataFrame({"f_rel": table["f_rel"].to_numpy(float)}, index=table.index)
        for c in self.activity_names_:
            X[c] = table[c].to_numpy(float)
        if self.power_feature_ == POWER_TDP:
            rel = power_relative_to_tdp(table, lookup_gpu=not fitting)
            if rel is None:
                raise DataError("CrossWorkloadModel was trained on power relative to TDP and the data has no "
                                f"{POWER_TDP}, no tdp_w and no gpu type known to configs/gpus.yaml for some rows")
            X[POWER_TDP] = rel.to_numpy(float)
        else:
            X["power_w_at_max"] = table["power_w_at_max"].to_numpy(float)
        if self.use_time_at_max:
            X["log_time_s_at_max"] = np.log(table["time_s_at_max"].to_numpy(float))
        return X[self.feature_names_]

    def fit(self, table: pd.DataFrame, y=None) -> CrossWorkloadModel:
        """Fit on locked-clock rows of many workloads (``usable(feature_table)``); ``y`` is unused."""
        need = ["workload", "f_rel", "power_w_rel", "time_s_rel", "power_w_at_max", "time_s_at_max"]
        missing = [c for c in need if c not in table or table[c].isna().any()]
        if missing:
            raise DataError(f"CrossWorkloadModel needs column(s) {', '.join(missing)} without NaN "
                            "(rows of features.feature_table)")
        if self.use_activity:
            # A counter that never varied in training (sm_active reads 0 for every reference app)
            # cannot inform a prediction; demanding it from new data would refuse tables for nothing.
            acts = [c for c in activity_columns(table) if table[c].nunique() > 1]
            if not acts:
                raise DataError("CrossWorkloadModel(use_activity=True): the training data has no activity counters "
                                "(DCGM or reference); fit with use_activity=False")
        else:
            acts = []
        self.activity_names_ = acts
        self.power_feature_ = POWER_TDP if power_relative_to_tdp(table) is not None else "power_w_at_max"
        self.feature_names_ = (["f_rel", *acts, self.power_feature_]
                               + (["log_time_s_at_max"] if self.use_time_at_max else []))
        X = self._features(table, fitting=True)
        workloads = table["workload"].astype(str).to_numpy()
        self.workloads_ = sorted(set(workloads))
        self.trained_gpus_ = sorted(str(g) for g in table["gpu"].dropna().unique()) if "gpu" in table else []
        self.feature_ranges_ = {c: [float(X[c].min()), float(X[c].max())] for c in self.feature_names_}
        # Imported here: sklearn.ensemble costs every CLI call ~0.6 s, and only fitting needs it.
        from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor

        self.models_ = {}
        with self._threads():
            for target, sign in (("power_w_rel", 1), ("time_s_rel", -1)):
                y_log = np.log(table[target].to_numpy(float))
                gbr = GradientBoostingRegressor(n_estimators=self.n_estimators, max_depth=3,
                                                learning_rate=self.learning_rate, subsample=0.8,
                                                random_state=self.random_state).fit(X, y_log)
                hgb = HistGradientBoostingRegressor(max_iter=self.n_estimators, learning_rate=self.learning_rate,
                                                    max_depth=4, min_samples_leaf=10, random_state=self.random_state,
                                                    monotonic_cst=[sign] + [0] * (X.shape[1] - 1)).fit(X, y_log)
                self.models_[target] = (gbr, hgb)
        # Neighbour part: one standardised feature vector and one (f_rel, log P/P_max, log T/T_max)
        # curve per training workload, as plain arrays (what model_store can save safely).
        per_wl = X.iloc[:, 1:].groupby(workloads).first().loc[self.workloads_]
        self.feature_mean_ = per_wl.mean().to_numpy(float)
        std = per_wl.std().to_numpy(float)
        self.feature_std_ = np.where((std > 0) & np.isfinite(std), std, 1.0)
        self.workload_z_ = (per_wl.to_numpy(float) - self.feature_mean_) / self.feature_std_
        self.curves_ = {}
        for wl, g in table.assign(workload=workloads).groupby("workload"):
            g = g.sort_values("f_rel")
            self.curves_[wl] = np.c_[g["f_rel"].to_numpy(float), np.log(g["power_w_rel"].to_numpy(float)),
                                     np.log(g["time_s_rel"].to_numpy(float))]
        return self

    def _neighbor_log_rel(self, X: pd.DataFrame, target: str) -> np.ndarray:
        """Inverse-distance mean of the nearest training workloads' log curves at each row's f/f_max."""
        col = {"power_w_rel": 1, "time_s_rel": 2}[target]
        z = (X.iloc[:, 1:].to_numpy(float) - self.feature_mean_) / self.feature_std_
        d = np.nansum((self.workload_z_[None, :, :] - z[:, None, :]) ** 2, axis=2)  # rows x workloads
        near = np.argsort(d, axis=1)[:, : self.n_neighbors]
        f_rel = X["f_rel"].to_numpy(float)
        curves = np.stack([np.interp(f_rel, self.curves_[wl][:, 0], self.curves_[wl][:, col])
                           for wl in self.workloads_], axis=1)  # rows x workloads
        w = 1.0 / (np.take_along_axis(d, near, axis=1) + 1e-3)
        return np.sum(np.take_along_axis(curves, near, axis=1) * w, axis=1) / w.sum(axis=1)

    def _predict_rel(self, table: pd.DataFrame, target: str) -> np.ndarray:
        X = self._features(table)
        with self._threads():
            boosted = np.mean([m.predict(X) for m in self.models_[target]], axis=0)
        if self.neighbor_weight <= 0:
            return np.exp(boosted)
        return np.exp((1 - self.neighbor_weight) * boosted + self.neighbor_weight * self._neighbor_log_rel(X, target))

    def predict_power(self, table: pd.DataFrame) -> np.ndarray:
        """Power (W) at each row's clock: ``power_w_at_max`` times the predicted P/P_max."""
        return table["power_w_at_max"].to_numpy(float) * self._predict_rel(table, "power_w_rel")

    def predict_time(self, table: pd.DataFrame) -> np.ndarray:
        """Run time (s) at each row's clock: ``time_s_at_max`` times the predicted T/T_max."""
        return table["time_s_at_max"].to_numpy(float) * self._predict_rel(table, "time_s_rel")

    def extrapolation(self, table: pd.DataFrame) -> list[str]:
        """Human-readable notes on where ``table`` leaves the ground the model was trained on.

        One note per feature whose values in ``table`` fall below or above the training range
        (with the workloads concerned), and one per GPU type not in the training data. Empty when
        every row is inside: the predictions are then interpolations among measured workloads;
        otherwise trees hold their edge value flat and the error is unknown. Raises ``DataError``,
        as the predictions do, when ``table`` lacks a feature the model needs.
        """
        notes = []
        if "gpu" in table and self.trained_gpus_:
            for g in sorted(str(g) for g in table["gpu"].dropna().unique() if str(g) not in self.trained_gpus_):
                notes.append(f"GPU {g} not in training data ({', '.join(self.trained_gpus_)})")
        X = self._features(table)
        if X.empty:
            return notes
        wl = table["workload"].astype(str).to_numpy() if "workload" in table else None
        for c in self.feature_names_:
            lo, hi = self.feature_ranges_[c]
            v = X[c].to_numpy(float)
            shown = (lambda x: float(np.exp(x))) if c == "log_time_s_at_max" else float
            tol = 1e-9 * max(abs(lo), abs(hi), 1.0)  # float noise at the edges is not extrapolation
            for side, out, edge in (("below", v < lo - tol, v.min()), ("above", v > hi + tol, v.max())):
                if not out.any():
                    continue
                who = ""
                if wl is not None:
                    names = sorted(set(wl[out]))
                    who = f" ({', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''})"
                notes.append(f"{_LABELS.get(c, c)} {_fmt(shown(edge))} {side} the trained "
                             f"{_fmt(shown(lo))}-{_fmt(shown(hi))}{who}")
        return notes


def _fmt(x: float) -> str:
    """0.37, 1.00, 0.004, 21, 119, 2500: two decimals for fractions, three digits for seconds and watts."""
    if x != 0 and abs(x) < 0.01:
        return f"{x:.2g}"
    if abs(x) < 10:
        return f"{x:.2f}"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """Locked-clock rows that passed screening (``features.usable_mask``): what models fit and are scored on."""
    keep = usable_mask(table)
    if "outlier" in table:  # tables built by hand (tests, notebooks) may carry only this flag
        keep &= ~table["outlier"].fillna(False).astype(bool)
    return table[keep]


def mape(pred, true) -> float:
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(pred - true) / np.abs(true)))


def rmse(pred, true) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(true, float)) ** 2)))


def r2(pred, true) -> float:
    true = np.asarray(true, float)
    ss = np.sum((true - true.mean()) ** 2)
    return float(1 - np.sum((np.asarray(pred, float) - true) ** 2) / ss) if ss else float("nan")


MAX_FOLDS = 50  # beyond this many workloads, the held-out folds are groups of workloads


def fit_held_out(locked: pd.DataFrame, make_model, workload: str, fitted: dict | None = None,
                 held_out: Sequence[str] | None = None):
    """The model fitted on every workload except ``workload`` (and the rest of its ``held_out`` group),
    cached in ``fitted`` under each workload it held out."""
    if fitted is not None and workload in fitted:
        return fitted[workload]
    group = list(held_out) if held_out is not None else [workload]
    model = make_model().fit(locked[~locked["workload"].isin(group)])
    if fitted is not None:
        fitted.update(dict.fromkeys(group, model))
    return model


def fold_groups(names: Sequence[str], max_folds: int | None = MAX_FOLDS) -> dict[str, list[str]]:
    """Each workload's held-out group: itself alone up to ``max_folds`` workloads; beyond, ``max_folds``
    groups dealt round-robin over the sorted names, so the number of fits stops growing with the campaign.

    Leave-one-out over W workloads fits W models on ~all the data each, so its cost grows like W²
    (10 000 workloads: 10 000 fits of a million rows). Each workload is still predicted by a model
    that never saw it; it only shares the fold with every ``max_folds``-th other workload.
    """
    if max_folds is None or len(names) <= max_folds:
        return {n: [n] for n in names}
    groups = [list(names[k::max_folds]) for k in range(max_folds)]
    return {n: g for g in groups for n in g}


def held_out_folds(table: pd.DataFrame, make_model: Callable[[], Any], fitted: dict | None = None,
                   progress: Callable[[int, int, str], None] | None = None, max_folds: int | None = MAX_FOLDS,
                   ) -> Iterator[tuple[str, pd.DataFrame, Any]]:
    """(workload, its usable rows, the model fitted without it), workload by workload.

    The one fold loop of leave-one-workload-out, which both the model scores
    (``leave_one_workload_out``) and the guided-search regret (``selection.evaluate_guided``) run,
    so both see the same folds and, through ``fitted``, can share the fitted models. Beyond
    ``max_folds`` workloads a fold holds out a group of them (``fold_groups``).
    ``progress(done, total, workload)`` is called before each fold.
    """
    locked = usable(table)
    parts = {wl: rows for wl, rows in locked.groupby("workload", sort=True)}  # one split, not a scan per fold
    names = sorted(parts)
    groups = fold_groups(names, max_folds)
    for i, wl in enumerate(names):
        if progress is not None:
            progress(i, len(names), wl)
        yield wl, parts[wl], fit_held_out(locked, make_model, wl, fitted, groups[wl])


def leave_one_workload_out(table: pd.DataFrame, make_model, fitted: dict | None = None,
                           progress=None, max_folds: int | None = MAX_FOLDS) -> pd.DataFrame:
    """Fit on all workloads but one, predict the held-out one at every clock; one row per workload.

    ``fitted``: a dict to reuse/keep the per-fold models (``evaluate_guided`` needs the same ones).
    ``progress(done, total, workload)`` is called before each fold. Beyond ``max_folds`` workloads
    each fold holds out a group of workloads (``fold_groups``; None: always one).
    """
    rows = []
    for wl, test, model in held_out_folds(table, make_model, fitted, progress, max_folds):
        p, t = model.predict_power(test), model.predict_time(test)
        e_true = test["power_w_mean"].values * test["time_s_mean"].values
        row = {"workload": wl, "n_clocks": len(test)}
        for name, pred, true in (("power", p, test["power_w_mean"]), ("time", t, test["time_s_mean"]),
                                 ("energy", p * t, e_true)):
            row.update({f"{name}_mape": mape(pred, true), f"{name}_rmse": rmse(pred, true), f"{name}_r2": r2(pred, true)})
        rows.append(row)
    return pd.DataFrame(rows)
