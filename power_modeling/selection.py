"""Choosing the clock: minimum energy, EDP or ED²P within a slowdown budget, and only where it shows.

``choose_clock`` picks from measured clocks that passed screening (``features``: no outlier, stuck
sensor, lock that did not apply, cold start or bad repeat becomes the recommendation or the
reference). Savings carry a 95 % interval from the repeats (``ratio_interval``); the slowdown cap
is applied to the interval's upper end; a clock "faster" than the reference beyond the noise is a
data problem, never a saving; and when no clock beats the reference beyond its uncertainty the
answer is the reference clock with "no significant saving". Savings are stated against the max
locked clock and, where measured, the default (unlocked) clock.

``GuidedSearch`` needs only a few probe clocks: the max clock, then one at a time at the optimum
of the cross-workload prediction corrected by the probes so far. The launcher's guided mode and
``evaluate_guided`` (its replay on fully swept data, with the regret) run this same object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import special
from threadpoolctl import threadpool_limits

from .errors import DataError
from .features import flag_runs
from .objectives import OBJECTIVES, objective_value

SCORE_COLUMN = {"energy": "energy_j_mean", "edp": "edp_mean", "ed2p": "ed2p_mean"}
CONFIDENCE = 0.95
FASTER_FLOOR = 0.01    # a lower clock this much faster than the reference (and beyond its interval) is a data problem
SINGLE_RUN_SIGMAS = 3  # ...or, with one run per clock, this many sigmas of the neighbouring-clock scatter


def pooled_rel_var(cv, n) -> tuple[float, int]:
    """Run-to-run relative variance pooled over clocks (weights n - 1), and its degrees of freedom.

    DVFS changes the level of time and power, not much their run-to-run scatter, so the clocks of
    one workload share one noise estimate: two runs at a clock then give a usable interval, where a
    per-clock t with one degree of freedom (t = 12.7) would say nothing.
    """
    cv, n = np.asarray(cv, float), np.asarray(n, float)
    ok = (n >= 2) & np.isfinite(cv)
    df = int((n[ok] - 1).sum())
    return (float(((n[ok] - 1) * cv[ok] ** 2).sum() / df) if df else float("nan")), df


@lru_cache(maxsize=1024)
def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``, which is this ufunc): a campaign asks for the same few
    degrees of freedom thousands of times, and ``scipy.stats`` costs 0.8 s to import on its own."""
    return float(special.stdtrit(df, q))


def ratio_interval(mean_a, n_a, mean_b, n_b, rel_var: float, df: int, level: float = CONFIDENCE):
    """``mean_a / mean_b`` with a t-interval on its log (delta method, pooled relative variance).

    Returns (ratio, lo, hi), floats or arrays like the inputs. The interval is NaN where either side
    has fewer than two runs: a clock measured once says nothing about its own noise.
    """
    if all(isinstance(v, _SCALARS) for v in (mean_a, n_a, mean_b, n_b)):
        return _scalar_ratio_interval(mean_a, n_a, mean_b, n_b, rel_var, df, level)
    mean_a, n_a, mean_b, n_b = (np.asarray(v, float) for v in (mean_a, n_a, mean_b, n_b))
    ratio = mean_a / mean_b
    known = (np.minimum(n_a, n_b) >= 2) & (df >= 1) & np.isfinite(rel_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = t_quantile(0.5 + level / 2, max(df, 1)) * np.sqrt(rel_var * (1 / n_a + 1 / n_b))
    lo = np.where(known, ratio * np.exp(-half), np.nan)
    hi = np.where(known, ratio * np.exp(half), np.nan)
    if ratio.ndim == 0:
        return float(ratio), float(lo), float(hi)
    return ratio, lo, hi


_SCALARS = (int, float, np.integer, np.floating)


def _scalar_ratio_interval(mean_a, n_a, mean_b, n_b, rel_var: float, df: int,
                           level: float) -> tuple[float, float, float]:
    """``ratio_interval`` of one pair, without the array machinery (a campaign asks ~15 per workload);
    the same float64 operations, so the same bits."""
    ratio = np.float64(mean_a) / np.float64(mean_b)
    n_a, n_b = np.float64(n_a), np.float64(n_b)
    if not (min(n_a, n_b) >= 2 and df >= 1 and np.isfinite(rel_var)):
        return float(ratio), float("nan"), float("nan")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        half = t_quantile(0.5 + level / 2, max(df, 1)) * np.sqrt(rel_var * (1 / n_a + 1 / n_b))
        return float(ratio), float(ratio * np.exp(-half)), float(ratio * np.exp(half))


@dataclass
class Choice:
    """The recommendation for one workload, with what it rests on.

    ``clock_mhz`` is the clock to use; ``best_measured_mhz`` the admissible clock with the best mean
    objective and ``fitted_mhz`` the optimum of the smoothed curves (``smooth_curves``). Percentages
    are "saved" (positive = less than the reference) and "slowdown" (positive = slower), each with
    a 95 % interval (``_lo``/``_hi``; NaN when a clock has one run: ``uncertainty`` says "unknown").
    """

    workload: str
    gpu: str
    objective: str
    max_slowdown: float | None
    clock_mhz: float
    verdict: str
    chosen_on: str
    best_measured_mhz: float
    fitted_mhz: float
    reference_clock_mhz: float
    energy_j: float
    time_s: float
    energy_saved_pct: float
    energy_saved_lo_pct: float
    energy_saved_hi_pct: float
    slowdown_pct: float
    slowdown_lo_pct: float
    slowdown_hi_pct: float
    objective_saved_pct: float
    objective_saved_lo_pct: float
    objective_saved_hi_pct: float
    energy_saved_vs_default_pct: float = float("nan")
    energy_saved_vs_default_lo_pct: float = float("nan")
    energy_saved_vs_default_hi_pct: float = float("nan")
    slowdown_vs_default_pct: float = float("nan")
    slowdown_vs_default_lo_pct: float = float("nan")
    slowdown_vs_default_hi_pct: float = float("nan")
    runs_at_choice: int = 0
    runs_at_reference: int = 0
    uncertainty: str = ""
    excluded_rows: int = 0
    excluded: str = ""
    data_problems: str = ""
    summary: str = ""

    def to_dict(self) -> dict:
        """The fields as a flat dict (every value is a number or text, so no deep copy is needed)."""
        return {name: getattr(self, name) for name in _CHOICE_FIELDS}


_CHOICE_FIELDS = tuple(f.name for f in fields(Choice))


def _saved(ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    """A ratio (value, lo, hi) as percent saved (value, lo, hi): 1 - ratio, the ends swap."""
    r, lo, hi = ratio
    return (1 - r) * 100, (1 - hi) * 100, (1 - lo) * 100


def _slower(ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    r, lo, hi = ratio
    return (r - 1) * 100, (lo - 1) * 100, (hi - 1) * 100


Interval = tuple[float, float, float]  # (value, lo, hi); lo and hi NaN where there is no interval


def _verdict(at_reference: bool, known: bool, objective_ratio: Callable[[], Interval]) -> str:
    """The verdict on the best candidate against the reference: one rule for a sweep and a guided search.

    ``known``: both sides have repeats, so the objective's ratio has an interval; a saving counts
    only when the interval's worse end still saves. ``objective_ratio`` is called only then.
    """
    if at_reference:
        return "reference is best"
    if not known:
        return "uncertainty unknown"
    return "saving" if _saved(objective_ratio())[1] > 0 else "no significant saving"


def _effects(ratio: Callable[[str], Interval], objective: str) -> tuple[Interval, Interval, Interval]:
    """(energy saved, slowdown, objective saved), each (value, lo, hi) in %, from ``ratio(quantity)``
    of one clock over another: what a choice reports against the reference or the default clock."""
    return _saved(ratio("energy_j")), _slower(ratio("time_s")), _saved(ratio(objective))


class _Workload:
    """One workload's rows as arrays, with ratios and intervals on its pooled run-to-run noise.

    Arrays rather than DataFrame rows: a centre's campaign has thousands of workloads, and pandas'
    per-row overhead, not the arithmetic, would set the time. ``cols`` maps the columns of
    ``_CHOICE_INPUTS`` to this workload's slice of them (``_columns``).
    """

    METRICS = ("time_s", "power_w", "energy_j", "edp", "ed2p")

    def __init__(self, cols: Mapping[str, np.ndarray]):
        self.gpu = cols["gpu"]
        self.f = cols["sm_clock_mhz"]
        self.n = cols["n_runs"]
        self.mean = {m: cols[f"{m}_mean"] for m in self.METRICS}
        self.default = cols["is_default_clock"]
        reasons = cols["excluded"]
        self.excluded = reasons != ""
        self.valid = ~self.default & ~self.excluded & (self.n > 0)
        v = self.valid
        self.noise = {m: pooled_rel_var(cols[f"{m}_cv"][v], self.n[v]) for m in ("time_s", "energy_j", "edp", "ed2p")}
        self.n_excluded, self.excluded_text = _exclusion_text(reasons, self.n, self.f, cols["excluded_runs"])
        scatter = cols["time_s_scatter"]
        self.scatter = float(scatter[0]) if len(scatter) else float("nan")
        self._smooth: dict[bytes, tuple[np.ndarray, np.ndarray] | None] = {}

    def smoothed(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Smoothed time and power at rows ``idx`` (cached: every objective asks for the same curves)."""
        key = idx.tobytes()
        if key not in self._smooth:
            self._smooth[key] = (None if len(np.unique(self.f[idx])) < 5 else
                                 smooth_curves(self.f[idx], self.mean["time_s"][idx], self.mean["power_w"][idx],
                                               self.n[idx]))
        return self._smooth[key]

    def ratio(self, a, b: int, metric: str):
        """``metric`` at row(s) ``a`` over row ``b``: (ratio, lo, hi)."""
        return ratio_interval(self.mean[metric][a], self.n[a], self.mean[metric][b], self.n[b], *self.noise[metric])


def _exclusion_text(reasons: np.ndarray, n_runs: np.ndarray, clocks: np.ndarray,
                    excluded_runs: np.ndarray) -> tuple[int, str]:
    """How many runs and clocks were left out of one workload, and why ("outlier: 2 clocks (...)").

    ``reasons`` is the clock-level verdict per row ("" = kept), ``excluded_runs`` the run-level
    counts ("cold start:1; bad repeat:2", "" where none).
    """
    parts, total = [], 0
    hit = (reasons != "") & (n_runs > 0)
    if hit.any():
        for reason in sorted(set(reasons[hit])):
            mine = hit & (reasons == reason)
            n = int(mine.sum())
            at = sorted(clocks[mine], reverse=True)
            listed = ", ".join(f"{f:.0f}" for f in at[:6]) + (", ..." if len(at) > 6 else "")
            parts.append(f"{reason}: {n} clock{'s' * (n > 1)} ({listed} MHz)")
            total += int(n_runs[mine].sum())
    texts = [t for t in excluded_runs if t]
    if texts:
        counts: dict[str, int] = {}
        for text in texts:
            for item in text.split("; "):
                reason, _, n = item.rpartition(":")
                counts[reason] = counts.get(reason, 0) + int(n)
        for reason, n in sorted(counts.items()):
            parts.append(f"{reason}: {n} run{'s' * (n > 1)}")
            total += n
    return total, "; ".join(parts)


def smooth_curves(clocks_mhz, time_s, power_w, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Time and power at ``clocks_mhz`` on smoothed curves of log time and log power vs log clock.

    A penalised (second-difference) smoother whose strength is chosen by generalised cross-validation,
    so the curve follows a real knee (the reference data's memory-bound apps stop speeding up above
    ~900 MHz, which ``T = a + b/f`` cannot follow) but not one run's noise (NAMD's neighbouring
    clocks scatter by +-4 %). Runs per clock weight the points.
    """
    x = np.log(np.asarray(clocks_mhz, float))
    w = np.ones_like(x) if weights is None else np.maximum(np.asarray(weights, float), 1e-9)
    return tuple(np.exp(s) for s in _gcv_smooth(x, [np.log(np.asarray(y, float)) for y in (time_s, power_w)], w))


_LAMBDAS = np.logspace(-12, 2, 57)  # the smoothing strengths GCV chooses from


def _gcv_smooth(x: np.ndarray, ys: Sequence[np.ndarray], w: np.ndarray) -> list[np.ndarray]:
    """Whittaker smoother on irregular ``x``: argmin sum w (y - s)^2 + lam |D2 s|^2, lam by GCV, per ``y``.

    One eigendecomposition serves every ``lam`` of the search and every curve on the same clocks
    and weights (time and power; and the workloads of a campaign, which share their clock list and
    repeats: ``_smoother`` keeps the last few), so a workload costs a fraction of a millisecond.
    """
    order = np.argsort(x)
    xs, ws = x[order], w[order]
    n = len(xs)
    u, shrink, dof, sw = _smoother(xs.tobytes(), ws.tobytes())
    out = []
    for y in ys:
        y_sorted = y[order]
        z = u.T @ (sw * y_sorted)
        fits = (u @ (shrink * z).T).T / sw                                  # every lambda at once
        gcv = n * ((ws * (y_sorted - fits) ** 2).sum(axis=1)) / dof
        smooth = np.empty(n)
        smooth[order] = fits[int(np.argmin(gcv))]
        out.append(smooth)
    return out


@lru_cache(maxsize=64)
def _smoother(x_bytes: bytes, w_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(eigenvectors, shrink factors per lambda, GCV denominators, sqrt weights) for sorted clocks and weights."""
    xs, ws = np.frombuffer(x_bytes), np.frombuffer(w_bytes)
    n = len(xs)
    xs = (xs - xs[0]) / max(xs[-1] - xs[0], 1e-12)
    h = np.diff(xs)
    a, b = h[:-1], h[1:]
    d = np.zeros((n - 2, n))
    rows = np.arange(n - 2)
    d[rows, rows] = 2 * (1 / (a * (a + b)))
    d[rows, rows + 1] = 2 * (-1 / (a * b))
    d[rows, rows + 2] = 2 * (1 / (b * (a + b)))
    sw = np.sqrt(ws)
    m = (d / sw).T @ (d / sw)
    eig, u = np.linalg.eigh(m)
    eig = np.clip(eig, 0, None)
    shrink = 1 / (1 + _LAMBDAS[:, None] * eig[None, :])                    # (lambdas, n)
    dof = np.maximum(n - shrink.sum(axis=1), 1e-9) ** 2
    for array in (u, shrink, dof, sw):
        array.flags.writeable = False  # shared between calls: nobody may change them
    return u, shrink, dof, sw


def _fitted_optimum(w: _Workload, idx: np.ndarray, objective: str, max_slowdown: float | None) -> float:
    """The clock (among rows ``idx``) that minimises the objective on the smoothed T(f), P(f) curves."""
    curves = w.smoothed(idx)
    if curves is None:
        return float("nan")
    t, p = curves
    f = w.f[idx]
    score = objective_value(t * p, t, objective)
    if max_slowdown is not None:
        score = np.where(t <= t[np.argmax(f)] * (1 + max_slowdown), score, np.inf)
    return float(f[int(np.argmin(score))])


_CHOICE_INPUTS = ["workload", "gpu", "sm_clock_mhz", "is_default_clock", "excluded", "excluded_runs", "n_runs",
                  "time_s_scatter"] + [f"{m}_{s}" for m in ("time_s", "power_w", "energy_j", "edp", "ed2p")
                                       for s in ("mean", "cv")]


def _columns(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns a choice reads, as arrays with missing values filled as ``_Workload`` expects."""
    n = len(rows)

    def text(name: str) -> np.ndarray:
        if name not in rows:
            return np.full(n, "", dtype=object)
        return rows[name].fillna("").astype(str).to_numpy(object)

    cols = {"workload": rows["workload"].to_numpy(), "gpu": rows["gpu"].to_numpy(),
            "is_default_clock": rows["is_default_clock"].to_numpy(bool),
            "excluded": text("excluded"), "excluded_runs": text("excluded_runs"),
            "time_s_scatter": (rows["time_s_scatter"].to_numpy(float) if "time_s_scatter" in rows
                               else np.full(n, np.nan))}
    for name in _CHOICE_INPUTS:
        if name not in cols:
            cols[name] = rows[name].to_numpy(float)
    return cols


@threadpool_limits.wrap(limits=1)  # small matrices: extra BLAS threads only contend on a small or busy node
def choose_clock(table: pd.DataFrame, workload: str, objective: str = "edp", max_slowdown: float | None = 0.05,
                 choose_on: str = "measured") -> Choice:
    """The clock to use for one workload (rows of ``features.feature_table``).

    ``choose_on="fit"`` picks the optimum of the fitted curves instead of the best single mean, for
    sweeps whose neighbouring clocks scatter more than the differences between them.
    """
    return _choose(_Workload(_columns(table[table["workload"] == workload])), workload, objective, max_slowdown,
                   choose_on)


def _choose(w: _Workload, workload: str, objective: str, max_slowdown: float | None, choose_on: str) -> Choice:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    if choose_on not in ("measured", "fit"):
        raise ValueError(f"choose_on must be 'measured' or 'fit', not {choose_on!r}")
    n_excl, excl_text = w.n_excluded, w.excluded_text
    valid = np.flatnonzero(w.valid)
    if not len(valid):
        raise DataError(f"workload {workload!r} has no usable locked-clock run"
                        + (f" ({excl_text})" if excl_text else ""))
    ref = int(valid[np.argmax(w.f[valid])])
    metric = SCORE_COLUMN[objective].removesuffix("_mean")
    slow, _, slow_hi = _slower(w.ratio(valid, ref, "time_s"))
    # A lower clock "faster" than the reference beyond the noise: the data is wrong somewhere.
    scatter = 0.0 if np.isnan(w.scatter) else w.scatter
    single_noise = 100 * max(SINGLE_RUN_SIGMAS * scatter, 2 * FASTER_FLOOR)
    faster = (slow < -100 * FASTER_FLOOR) & np.where(np.isfinite(slow_hi), slow_hi < 0, slow < -single_noise)
    problems = []
    if faster.any():
        worst = int(np.argmin(np.where(faster, slow, np.inf)))
        problems.append(f"{int(faster.sum())} lower clock(s) faster than the reference {w.f[ref]:.0f} MHz beyond "
                        f"the noise (up to {-slow[worst]:.1f} % at {w.f[valid[worst]]:.0f} MHz): a cold or "
                        "throttled reference run, or locks that did not apply; left out, and savings against this "
                        "reference are overstated")
    keep = ~faster
    if max_slowdown is not None:
        keep &= np.where(np.isfinite(slow_hi), slow_hi, slow) <= 100 * max_slowdown
    keep |= valid == ref  # the reference's interval against itself is not a slowdown
    cand = valid[keep]
    best = int(cand[np.argmin(w.mean[metric][cand])])
    sane = valid[~faster]
    fitted = _fitted_optimum(w, sane, objective, max_slowdown)
    chosen = best
    if choose_on == "fit" and np.isfinite(fitted) and (w.f[cand] == fitted).any():
        chosen = int(cand[np.flatnonzero(w.f[cand] == fitted)[0]])
    known = bool(min(w.n[chosen], w.n[ref]) >= 2)
    verdict = _verdict(chosen == ref, known, lambda: w.ratio(chosen, ref, metric))
    pick = ref if verdict == "no significant saving" else chosen
    e_sv, t_sl, o_sv = _effects(lambda q: w.ratio(pick, ref, q), metric)
    choice = Choice(
        workload=workload, gpu=str(w.gpu[ref]), objective=objective, max_slowdown=max_slowdown,
        clock_mhz=float(w.f[pick]), verdict=verdict, chosen_on="fit" if chosen != best else "measured",
        best_measured_mhz=float(w.f[best]), fitted_mhz=fitted, reference_clock_mhz=float(w.f[ref]),
        energy_j=float(w.mean["energy_j"][pick]), time_s=float(w.mean["time_s"][pick]), energy_saved_pct=e_sv[0],
        energy_saved_lo_pct=e_sv[1], energy_saved_hi_pct=e_sv[2], slowdown_pct=t_sl[0], slowdown_lo_pct=t_sl[1],
        slowdown_hi_pct=t_sl[2], objective_saved_pct=o_sv[0], objective_saved_lo_pct=o_sv[1],
        objective_saved_hi_pct=o_sv[2], runs_at_choice=int(w.n[pick]), runs_at_reference=int(w.n[ref]),
        uncertainty="95 % t-interval over runs" if known else "unknown (one run per clock)",
        excluded_rows=n_excl, excluded=excl_text, data_problems="; ".join(problems))
    default = np.flatnonzero(w.default & (w.n > 0))
    if len(default):
        d = int(default[0])
        e_d, t_d, _ = _effects(lambda q: w.ratio(pick, d, q), metric)
        (choice.energy_saved_vs_default_pct, choice.energy_saved_vs_default_lo_pct,
         choice.energy_saved_vs_default_hi_pct) = e_d
        choice.slowdown_vs_default_pct, choice.slowdown_vs_default_lo_pct, choice.slowdown_vs_default_hi_pct = t_d
    choice.summary = summarise(choice)
    return choice


def pct_text(value: float, lo: float, hi: float, unknown: str = "interval unknown") -> str:
    """``12.3 % [10.1, 14.2]``, or ``12.3 % [interval unknown]`` where one run per clock gives no interval.

    The one way a percentage and its interval are written in sentences (the choices' summaries
    here, the report's headline); ``unknown`` says why there is no interval where that helps.
    """
    if not np.isfinite(lo):
        return f"{value:.1f} % [{unknown}]"
    return f"{value:.1f} % [{lo:.1f}, {hi:.1f}]"


def _pm(value: float, lo: float, hi: float) -> str:
    """``pct_text`` for a choice's summary, which a user reads alone: it says why the interval is missing."""
    return pct_text(value, lo, hi, "interval unknown: one run")


def summarise(c: Choice) -> str:
    """One or two sentences a reader can act on: which clock and why, or that the data cannot tell."""
    cap = "" if c.max_slowdown is None else f" at <= {100 * c.max_slowdown:.0f} % slowdown"
    name = {"energy": "energy", "edp": "EDP", "ed2p": "ED²P"}[c.objective]
    tested = (f"the smoothed curves' optimum, {c.fitted_mhz:.0f} MHz," if c.chosen_on == "fit"
              else f"the best measured clock, {c.best_measured_mhz:.0f} MHz,")
    if c.verdict == "no significant saving":
        text = (f"{c.workload}: no significant {name} saving{cap}; keep {c.reference_clock_mhz:.0f} MHz ({tested} "
                "is within the run-to-run noise of the reference).")
    elif c.verdict == "reference is best" and c.chosen_on == "fit":
        text = (f"{c.workload}: keep {c.reference_clock_mhz:.0f} MHz: the smoothed curves' {name} optimum{cap} is "
                f"the reference itself (best single mean: {c.best_measured_mhz:.0f} MHz).")
    elif c.verdict == "reference is best":
        text = f"{c.workload}: keep {c.reference_clock_mhz:.0f} MHz; no lower clock lowers {name}{cap}."
    else:
        text = (f"{c.workload}: use {c.clock_mhz:.0f} MHz for minimum {name}{cap}: energy saved "
                f"{_pm(c.energy_saved_pct, c.energy_saved_lo_pct, c.energy_saved_hi_pct)}, slowdown "
                f"{_pm(c.slowdown_pct, c.slowdown_lo_pct, c.slowdown_hi_pct)} vs {c.reference_clock_mhz:.0f} MHz")
        if np.isfinite(c.energy_saved_vs_default_pct):
            text += (f"; vs the default clock: energy saved {_pm(c.energy_saved_vs_default_pct, c.energy_saved_vs_default_lo_pct, c.energy_saved_vs_default_hi_pct)}"  # noqa: E501
                     f", slowdown {_pm(c.slowdown_vs_default_pct, c.slowdown_vs_default_lo_pct, c.slowdown_vs_default_hi_pct)}")  # noqa: E501
        text += "."
        if c.verdict == "uncertainty unknown":
            text += " One run per clock: the uncertainty is unknown; repeat runs (--num-runs 3) to know it."
    if np.isfinite(c.fitted_mhz) and c.fitted_mhz != c.clock_mhz and c.chosen_on != "fit":
        text += f" The fitted curve's optimum is {c.fitted_mhz:.0f} MHz."
    if c.chosen_on == "fit" and c.best_measured_mhz != c.clock_mhz and c.verdict != "reference is best":
        text += f" The best single mean is at {c.best_measured_mhz:.0f} MHz."
    if c.excluded:
        text += f" Left out: {c.excluded}."
    if c.data_problems:
        text += f" Data problem: {c.data_problems}."
    return text


@threadpool_limits.wrap(limits=1)
def _no_answer(w: _Workload, workload: str, objective: str, max_slowdown: float | None, why: str) -> dict:
    nan = float("nan")
    c = Choice(workload=workload, gpu=str(w.gpu[0]), objective=objective, max_slowdown=max_slowdown,
               clock_mhz=nan, verdict="no usable data", chosen_on="", best_measured_mhz=nan, fitted_mhz=nan,
               reference_clock_mhz=nan, energy_j=nan, time_s=nan, energy_saved_pct=nan, energy_saved_lo_pct=nan,
               energy_saved_hi_pct=nan, slowdown_pct=nan, slowdown_lo_pct=nan, slowdown_hi_pct=nan,
               objective_saved_pct=nan, objective_saved_lo_pct=nan, objective_saved_hi_pct=nan,
               excluded_rows=w.n_excluded, excluded=w.excluded_text, uncertainty="")
    c.summary = f"{workload}: no answer: {why}."
    return c.to_dict()


def choose_all(table: pd.DataFrame, objective: str | Sequence[str] = "edp", max_slowdown: float | None = 0.05,
               choose_on: str = "measured") -> pd.DataFrame:
    """One ``Choice`` row per workload that has locked-clock rows (and per objective, given several:
    the screening, intervals and smoothed curves of a workload are then computed once for all)."""
    objectives = [objective] if isinstance(objective, str) else list(objective)
    locked = table[~table["is_default_clock"].astype(bool)]
    names = set(locked["workload"])
    # One sort and one conversion to arrays for the whole table; each workload is then a slice of them.
    order = np.argsort(table["workload"].to_numpy(), kind="stable")
    cols = _columns(table.iloc[order])
    wls = cols.pop("workload")
    starts = np.flatnonzero(np.r_[True, wls[1:] != wls[:-1]]) if len(wls) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(wls)]
    per_objective: dict[str, list[dict]] = {o: [] for o in objectives}
    for a, b in zip(starts, ends, strict=True):
        wl = wls[a]
        if wl not in names:
            continue
        w = _Workload({k: v[a:b] for k, v in cols.items()})
        for o in objectives:
            try:
                per_objective[o].append(_choose(w, wl, o, max_slowdown, choose_on).to_dict())
            except DataError as exc:  # every run of it screened out: say so, and answer for the others
                per_objective[o].append(_no_answer(w, wl, o, max_slowdown, str(exc)))
    return pd.DataFrame([row for o in objectives for row in per_objective[o]])


# --------------------------------------------------------------------------- guided search

def _tilted(hat: np.ndarray, log_f_rel: np.ndarray, probe_idx: list[int], measured: np.ndarray) -> np.ndarray:
    """``hat`` times ``(f/f_max)**g``, with ``g`` the least-squares fit of the probes' log ratio.

    The cross-workload curve is exact at the max clock by construction (it predicts ratios to that
    run), so one exponent is all a probe can correct: it tilts the curve toward what was measured.
    """
    if not probe_idx:
        return hat
    x = log_f_rel[probe_idx]
    r = np.log(measured) - np.log(hat[probe_idx])
    g = float(x @ r / (x @ x)) if x @ x > 0 else 0.0
    return hat * np.exp(g * log_f_rel)


@dataclass
class Probe:
    """What was measured at one probe clock: per-run time and energy, and the workload's features there."""

    clock_mhz: float
    time_s: np.ndarray
    energy_j: np.ndarray
    features: Mapping
    screened: list = field(default_factory=list)  # reasons of the runs screened out at this clock

    @property
    def power_w(self) -> float:
        return float(self.energy_j.sum() / self.time_s.sum())

    def stats(self, name: str) -> tuple[float, float, int]:
        """Mean, std and count over runs of ``time_s``, ``energy_j`` or an objective (energy, edp, ed2p)."""
        values = self.time_s if name == "time_s" else objective_value(self.energy_j, self.time_s,
                                                                      "energy" if name == "energy_j" else name)
        n = len(values)
        return float(values.mean()), float(values.std(ddof=1)) if n > 1 else float("nan"), n


class GuidedSearch:
    """Sequential probe planner: ``next_clock()`` / ``observe(...)`` until ``next_clock()`` is None.

    The first probe is the max clock; from it the cross-workload model predicts power and time at
    every clock. Each further probe goes to the optimum of that prediction tilted to fit the probes
    so far (at least ``min_gap * f_max`` from every earlier probe, so each run adds information
    beyond noise). The search stops after ``max_probes``, or earlier when ``stop_gain`` is set, at
    least ``min_probes`` clocks are measured, and the next probe's predicted objective is not below
    the best measured one by more than ``stop_gain`` plus the best probe's own relative noise. The
    choice is the best *measured* probe. ``min_probes`` matters: a model that has not seen the
    workload is confidently wrong often enough that stopping after 2-3 probes doubled the regret
    on held-out reference apps (docs/BENCHMARKS.md).
    On the reference data this sequential search beats fixed probes at the predicted optimum and
    +-12 % around it (EDP regret 1.7 % vs 1.8 % mean, 3.9 % vs 5.7 % p90; docs/BENCHMARKS.md).
    """

    def __init__(self, clocks: Sequence[float], cross_model, objective: str = "edp", max_probes: int = 4,
                 max_slowdown: float | None = None, min_gap: float = 0.05, stop_gain: float | None = None,
                 min_probes: int = 4):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
        self.clocks = np.array(sorted({float(c) for c in clocks}, reverse=True))
        self.model = cross_model
        self.objective = objective
        self.max_probes = max_probes
        self.max_slowdown = max_slowdown
        self.min_gap = min_gap
        self.stop_gain = stop_gain
        self.min_probes = min_probes
        self.probes: dict[float, Probe] = {}
        self.failed: set[float] = set()
        self._runs: list[tuple[float, float, float]] = []   # (clock, time, energy) in the order measured
        self.stop_reason = ""
        self._hat: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fmax(self) -> float:
        return float(self.clocks[0])

    def _score(self, p, t, t_ref):
        value = objective_value(p * t, t, self.objective)
        if self.max_slowdown is None:
            return value
        return np.where(np.asarray(t) <= t_ref * (1 + self.max_slowdown), value, np.inf)

    def _curve_inputs(self, probe: Probe) -> pd.DataFrame:
        """Rows for every candidate clock of a workload known only by its max-clock probe."""
        df = pd.DataFrame({"sm_clock_mhz": self.clocks, "f_rel": self.clocks / self.fmax})
        df["power_w_at_max"] = probe.power_w
        df["time_s_at_max"] = float(probe.time_s.mean())
        for name in getattr(self.model, "feature_names_", []) + list(getattr(self.model, "activity_names_", [])):
            if name.endswith("_at_max") and name not in df:
                base = name.removesuffix("_at_max")
                df[name] = probe.features.get(name, probe.features.get(base, np.nan))
        if "power_tdp_at_max" in df and df["power_tdp_at_max"].isna().all() and "tdp_w" in probe.features:
            df["power_tdp_at_max"] = probe.power_w / float(probe.features["tdp_w"])
        return df

    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """Power and time at every clock: the model's curve tilted to the probes measured so far."""
        if self._hat is None:
            raise RuntimeError("observe the max clock first")
        p_hat, t_hat = self._hat
        log_f_rel = np.log(self.clocks / self.fmax)
        idx = [int(np.flatnonzero(self.clocks == f)[0]) for f in self.probes if f != self.fmax]
        p = _tilted(p_hat, log_f_rel, idx, np.array([self.probes[self.clocks[i]].power_w for i in idx]))
        t = _tilted(t_hat, log_f_rel, idx, np.array([self.probes[self.clocks[i]].time_s.mean() for i in idx]))
        return p, t

    def next_clock(self) -> float | None:
        if self.fmax not in self.probes:
            return self.fmax
        if self.fmax in self.failed:
            self.stop_reason = f"no usable run at the max clock {self.fmax:.0f} MHz: no reference"
            return None
        if len(self.probes) + len(self.failed) >= self.max_probes:
            self.stop_reason = f"{self.max_probes} probes measured" + (
                f" ({len(self.failed)} without a usable run)" if self.failed else "")
            return None
        p, t = self.predicted()
        score = self._score(p, t, t[0])
        far = [i for i in np.argsort(score, kind="stable")
               if np.isfinite(score[i]) and self.clocks[i] not in self.failed
               and all(abs(self.clocks[i] - f) >= self.min_gap * self.fmax for f in self.probes)]
        if not far:
            self.stop_reason = "no unprobed clock left at the minimum gap"
            return None
        nxt = far[0]
        if self.stop_gain is not None and len(self.probes) >= self.min_probes:
            best = self.best()
            mean, std, n = best.stats(self.objective)
            noise = (std / mean / np.sqrt(n)) if n > 1 and np.isfinite(std) else 0.0
            if score[nxt] >= self._measured_score(best) * (1 - self.stop_gain - 2 * noise):
                self.stop_reason = (f"the next probe ({self.clocks[nxt]:.0f} MHz) is predicted to improve "
                                    f"{self.objective} by less than the noise")
                return None
        return float(self.clocks[nxt])

    def observe(self, clock: float, time_s: Sequence[float], energy_j: Sequence[float],
                features: Mapping | None = None) -> None:
        """Record one probe's runs (work time and energy per run; several runs give an interval).

        The runs are screened as ``features.flag_runs`` screens a sweep: the job's first run when it
        is a cold start (it lands on the max clock, the reference), and one bad repeat among three.
        """
        clock = float(clock)
        if clock not in self.clocks:
            raise ValueError(f"{clock} MHz is not one of the candidate clocks")
        self._runs += [(clock, float(t), float(e)) for t, e in zip(time_s, energy_j, strict=True)]
        self._screen()
        self.probes[clock].features = dict(features or {})
        if clock == self.fmax:
            curve = self._curve_inputs(self.probes[clock])
            self._hat = (np.asarray(self.model.predict_power(curve)), np.asarray(self.model.predict_time(curve)))

    def _screen(self) -> None:
        runs = pd.DataFrame(self._runs, columns=["sm_clock_mhz", "time_s", "energy_j"])
        runs = runs.assign(workload="probe", gpu="", is_default_clock=False, source="guided", sequence=runs.index,
                           power_w=runs["energy_j"] / runs["time_s"])
        runs["excluded"] = flag_runs(runs)
        for f, g in runs.groupby("sm_clock_mhz"):
            kept = g[g["excluded"] == ""]
            old = self.probes.get(float(f))
            self.probes[float(f)] = Probe(float(f), kept["time_s"].to_numpy(), kept["energy_j"].to_numpy(),
                                          old.features if old else {}, screened=list(g.loc[g["excluded"] != "",
                                                                                            "excluded"]))

    def mark_failed(self, clock: float) -> None:
        """A probe that gave no usable run (failed, or its lock did not apply): never proposed again."""
        self.failed.add(float(clock))

    def _noise(self, name: str) -> tuple[float, int]:
        return pooled_rel_var(*zip(*[(pr.stats(name)[1] / pr.stats(name)[0], pr.stats(name)[2])
                                     for pr in self.probes.values()], strict=True))

    def _interval(self, probe: Probe, name: str):
        """``name`` at ``probe`` over the max clock, with a 95 % interval on the probes' pooled noise."""
        ref = self.probes[self.fmax]
        return ratio_interval(probe.stats(name)[0], len(probe.time_s), ref.stats(name)[0], len(ref.time_s),
                              *self._noise(name))

    def _admissible(self, probe: Probe) -> bool:
        """Within the slowdown cap by the interval's upper end (the mean with one run), and not "faster"
        than the reference beyond the noise (that is a data problem, not a saving)."""
        if probe.clock_mhz == self.fmax:
            return True
        r, lo, hi = self._interval(probe, "time_s")
        if np.isfinite(hi) and hi < 1 and r < 1 - FASTER_FLOOR:
            return False
        return self.max_slowdown is None or (hi if np.isfinite(hi) else r) <= 1 + self.max_slowdown

    def _measured_score(self, probe: Probe) -> float:
        return float(objective_value(probe.energy_j.mean(), probe.time_s.mean(), self.objective))

    def best(self) -> Probe:
        ok = [pr for pr in self.probes.values() if self._admissible(pr)]
        return min(ok, key=lambda pr: (self._measured_score(pr), -pr.clock_mhz))

    def result(self) -> dict:
        """The choice (best measured probe), its interval against the max clock, and prediction errors."""
        best, ref = self.best(), self.probes[self.fmax]
        p, t = self.predicted()
        p0, t0 = self._hat
        at = {float(f): i for i, f in enumerate(self.clocks)}
        obj = self.objective
        known = min(len(best.time_s), len(ref.time_s)) >= 2 and self._noise(obj)[1] >= 1
        verdict = _verdict(best is ref, known, lambda: self._interval(best, obj))
        pick = ref if verdict == "no significant saving" else best
        faster = [pr.clock_mhz for pr in self.probes.values() if pr is not ref and not self._admissible(pr)
                  and self._interval(pr, "time_s")[2] < 1]
        e_sv, t_sl, o_sv = _effects(lambda q: self._interval(pick, q), obj)
        errors = []
        for f, pr in sorted(self.probes.items(), reverse=True):
            i = at[f]
            errors.append({"clock_mhz": f, "runs": len(pr.time_s), "measured_power_w": pr.power_w,
                           "measured_time_s": float(pr.time_s.mean()), "predicted_power_w": float(p0[i]),
                           "predicted_time_s": float(t0[i]),
                           "error_power_pct": 100 * (p0[i] / pr.power_w - 1),
                           "error_time_pct": 100 * (t0[i] / pr.time_s.mean() - 1),
                           "error_energy_pct": 100 * (p0[i] * t0[i] / pr.energy_j.mean() - 1)})
        model_only = self._score(p0, t0, t0[0])
        extrapolation = getattr(self.model, "extrapolation", None)
        problems = ([f"{len(faster)} probe(s) faster than the max clock beyond the noise "
                     f"({', '.join(f'{f:.0f}' for f in sorted(faster, reverse=True))} MHz): a cold or throttled "
                     "reference, or a lock that did not apply; left out"] if faster else [])
        return {"objective": self.objective, "max_slowdown": self.max_slowdown, "clock_mhz": pick.clock_mhz,
                "verdict": verdict, "best_probe_mhz": best.clock_mhz, "data_problems": problems,
                "screened_runs": {f"{f:.0f}": pr.screened for f, pr in sorted(self.probes.items()) if pr.screened},
                "reference_clock_mhz": self.fmax, "predicted_clock_mhz": float(self.clocks[int(np.argmin(model_only))]),
                "corrected_clock_mhz": float(self.clocks[int(np.argmin(self._score(p, t, t[0])))]),
                "probes_mhz": sorted(self.probes), "stop_reason": self.stop_reason,
                "measured_power_w": pick.power_w, "measured_time_s": float(pick.time_s.mean()),
                "energy_saved_pct": e_sv[0], "energy_saved_lo_pct": e_sv[1], "energy_saved_hi_pct": e_sv[2],
                "slowdown_pct": t_sl[0], "slowdown_lo_pct": t_sl[1], "slowdown_hi_pct": t_sl[2],
                "objective_saved_pct": o_sv[0], "objective_saved_lo_pct": o_sv[1], "objective_saved_hi_pct": o_sv[2],
                "prediction_errors": errors,
                "extrapolation": extrapolation(self._curve_inputs(ref)) if callable(extrapolation) else []}


def guided_choice(measure: Callable[[int], pd.Series], clocks: list[int], cross_model, objective: str = "edp",
                  k: int = 4, max_slowdown: float | None = None, min_gap: float = 0.05,
                  stop_gain: float | None = None) -> dict:
    """Run ``GuidedSearch`` with ``measure(clock) -> row`` (``power_w_mean``, ``time_s_mean`` and the
    workload's activity columns): a real run, or a row of recorded data."""
    search = GuidedSearch(clocks, cross_model, objective, k, max_slowdown, min_gap, stop_gain)
    while (f := search.next_clock()) is not None:
        row = measure(int(f))
        t = float(row["time_s_mean"])
        search.observe(f, [t], [float(row["power_w_mean"]) * t], row.to_dict() if hasattr(row, "to_dict") else row)
    return search.result()


def evaluate_guided(table: pd.DataFrame, make_cross_model, objective: str = "edp", k: int = 4,
                    max_slowdown: float | None = None, fitted: dict | None = None, min_gap: float = 0.05,
                    progress=None) -> pd.DataFrame:
    """Leave-one-workload-out regret of the guided choice against the best measured clock.

    Screened-out rows (``features``) are left out of the truth as of the fits, so a counter glitch
    at one clock cannot pose as the optimum. ``progress(done, total, workload)`` is called per fold.
    """
    from .models import held_out_folds

    rows = []
    for wl, rows_wl, model in held_out_folds(table, make_cross_model, fitted, progress):
        test = rows_wl.set_index("sm_clock_mhz", drop=False)
        g = guided_choice(lambda f, test=test: test.loc[f], list(test.index), model, objective, k, max_slowdown, min_gap)
        true = objective_value(test["energy_j_mean"], test["time_s_mean"], objective)
        if max_slowdown is not None:
            ref_t = test.loc[test.index.max(), "time_s_mean"]
            true = true.where(test["time_s_mean"] <= ref_t * (1 + max_slowdown))
        best = true.min()
        rows.append({"workload": wl, "objective": objective, "chosen_mhz": g["clock_mhz"],
                     "predicted_mhz": g["predicted_clock_mhz"], "best_mhz": float(true.idxmin()),
                     "probes": len(g["probes_mhz"]), "regret_pct": float((true.loc[g["clock_mhz"]] / best - 1) * 100)})
    return pd.DataFrame(rows)
