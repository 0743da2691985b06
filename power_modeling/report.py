"""Plots, tables and the report page: the clock to use, and the evidence a reader needs to trust it.

Every plot function returns a ``matplotlib.figure.Figure`` built without pyplot, so importing this
module never picks or forces a backend: the report renders headless (``build_report`` saves the
figures as PNG) and the notebook displays the same figures inline. Per-clock plots mark the chosen
clock, the reference clocks and the rows screening left out, with 95 % intervals of the mean; with
many workloads they become small multiples relative to each workload's max clock, because one
axes with two dozen colour-cycled curves cannot be read.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import special

from sd_energy_contract.phases import CONTAINER_PHASES, LEAF_PHASES

from .bulkcsv import write_csv
from .features import GROUP, flag_runs, usable_mask
from .models import fit_physical, physical_fit_table
from .phase_policy import compare_phase_policies
from .selection import choose_all, choose_clock, pct_text, smooth_curves

SYNTHETIC_NOTE = ("SYNTHETIC DATA: these results come from the simulated GPU backend (a documented model, "
                  "profiling/backends/simulated.py), not from a measurement.")

PHASE_COLOURS = {"load": "#bdbdbd", "warmup": "#bebada", "text_encode": "#8dd3c7", "denoise_step": "#fb8072",
                 "vae_decode": "#80b1d3", "save": "#fdb462", "batch": "#ffffb3", "process": "#ffffff"}
SMALL_MULTIPLES_FROM = 5  # from this many workloads on, one small panel per workload, relative to its max clock
OBJECTIVE_NAME = {"energy": "energy", "edp": "EDP", "ed2p": "ED²P"}
OBJECTIVE_METRIC = {"energy": "energy_j", "edp": "edp", "ed2p": "ed2p"}
UNITS = {"power_w": "Power (W)", "time_s": "Work time (s)", "energy_j": "Energy (J)", "edp": "EDP (J·s)",
         "ed2p": "ED²P (J·s²)"}
NO_ERROR_BARS = "one run per clock: no error bars"
CAPTION_CI = "error bars: 95 % t-interval of the mean over the runs at each clock"
FIT_COLUMNS = {"energy_mape_pct": "energy error (MAPE, %)", "time_mape_pct": "time error (MAPE, %)",
               "power_mape_pct": "power error (MAPE, %)", "time_a_s": "a (s)", "time_b_s_ghz": "b (s·GHz)",
               "power_c_w": "c (W)", "power_d_w_per_ghz": "d (W/GHz)", "power_e_w_per_ghz3": "e (W/GHz³)"}
MAX_TABLE_ROWS = 60    # the per-clock table in the page; features.csv always has every row
MAX_PANELS = 36        # small multiples drawn; beyond, the page says which were chosen and the CSVs hold all
MAX_PHASE_PANELS = 12  # stacked-bar panels of phase energy (a bar per clock and phase: thousands of patches)
MAX_CHOICE_ROWS = 200  # choices shown in the page
MAX_TIDY_RUNS = 100_000  # runs_tidy.csv beside the report up to this size (1 M rows take ~40 s to write)
MAX_LEGEND_WORKLOADS = 8  # one-axes plots name at most this many workloads in the legend; the rest are "+N more"
MAX_LIST_ITEMS = 50      # data problems listed in the page; choices.csv has every one


# --------------------------------------------------------------------------- inputs

def resolve_results(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Paths from what a user types: a directory, a CSV, a glob, a list, or several joined by ``os.pathsep``.

    The notebook takes ``RESULTS_DIR`` from the environment, where a list can only be a string; a
    pattern that matches nothing is an error here rather than a confusing "no runs" later.
    """
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: list[str] = []
    for item in items:
        for part in str(item).split(os.pathsep) if isinstance(item, str) else [str(item)]:
            part = os.path.expanduser(part.strip())
            if not part:
                continue
            if glob.has_magic(part):
                hits = sorted(glob.glob(part))
                if not hits:
                    raise FileNotFoundError(f"{part}: the pattern matches no file or directory")
                paths.extend(hits)
            else:
                paths.append(part)
    if not paths:
        raise FileNotFoundError("no results path given")
    return paths


# --------------------------------------------------------------------------- numbers

def ci95(std, n) -> np.ndarray:
    """Half-width of the t-based 95 % interval of a mean; NaN with one run, which says nothing about noise."""
    std, n = np.asarray(std, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = special.stdtrit(np.where(n > 1, n - 1, np.nan), 0.975)  # scipy.stats.t.ppf, without importing stats
        return np.where(n > 1, t * std / np.sqrt(n), np.nan)


def _num(x: float, fmt: str = ".4g") -> str:
    """Significant digits, not decimals: a 0.0031 s kernel must not print as 0.00."""
    return "" if x is None or not np.isfinite(x) else format(float(x), fmt)


def interval_text(v: float, lo: float, hi: float) -> str:
    """``9.9 [8.1, 11.6]``; ``[unknown]`` with one run per clock; empty where there is no value."""
    if v is None or not np.isfinite(v):
        return ""
    if not np.isfinite(lo):
        return f"{v:.1f} [unknown]"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _locked(table: pd.DataFrame) -> pd.DataFrame:
    return table[~table["is_default_clock"].astype(bool) & (table["n_runs"] > 0)]


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    return table[usable_mask(table) & (table["n_runs"] > 0)].sort_values("sm_clock_mhz")


def _left_out(table: pd.DataFrame) -> pd.DataFrame:
    """Locked rows screening excluded that still have a value to draw."""
    locked = _locked(table)
    return locked[locked["excluded"].fillna("") != ""]


def _default_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["is_default_clock"].astype(bool) & (table["n_runs"] > 0)]


PLOT_COLUMNS = ("workload", "gpu", "sm_clock_mhz", "is_default_clock", "n_runs", "excluded", "n_excluded_runs",
                "excluded_runs", *(f"{m}_{s}" for m in ("time_s", "power_w", "energy_j", "edp", "ed2p")
                                   for s in ("mean", "std")))


def _by_workload(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each workload's rows, with only the columns the plots read: one split instead of a mask per workload."""
    slim = table[[c for c in PLOT_COLUMNS if c in table]]
    return {str(wl): g for wl, g in slim.groupby("workload", sort=True)}


def _workloads(table: pd.DataFrame) -> list[str]:
    return sorted(_locked(table)["workload"].unique())


def _panels(choices: pd.DataFrame | None, workloads: list[str], most: int = MAX_PANELS) -> tuple[list[str], str]:
    """At most ``most`` of ``workloads`` to draw (``panel_workloads``'s pick) and the words that say so.

    Small multiples stay readable up to a few dozen panels; a campaign's thousands of workloads
    would make a figure of thousands of axes that takes minutes to draw and cannot be read.
    """
    if len(workloads) <= most:
        return workloads, ""
    if choices is not None and len(choices) and "data_problems" in choices:
        picked = panel_workloads(choices[choices["workload"].isin(workloads)], most)
    else:
        picked = workloads[:most]
    return picked, (f" ({len(picked)} of {len(workloads)} workloads drawn: data problems first, then the largest "
                    "savings)")


def _legend_label(i: int, n: int, name: str) -> str:
    """The legend label of the ``i``-th of ``n`` workloads on one axes: the first ``MAX_LEGEND_WORKLOADS`` by
    name, one "+N more" entry for the rest (their curves are drawn, unnamed), so a legend stays a legend."""
    if i < MAX_LEGEND_WORKLOADS:
        return name
    return f"+{n - MAX_LEGEND_WORKLOADS} more workloads (in the table)" if i == MAX_LEGEND_WORKLOADS else "_nolegend_"


def _choices_for(table: pd.DataFrame, choices: pd.DataFrame | None, objective: str, max_slowdown: float | None,
                 choose_on: str = "measured") -> pd.DataFrame:
    if choices is None:
        return choose_all(table, objective, max_slowdown, choose_on)
    if "objective" in choices and choices["objective"].nunique() > 1:
        return choices[choices["objective"] == objective]
    return choices


def _error_caption(n_runs: pd.Series) -> str:
    if (n_runs <= 1).all():
        return NO_ERROR_BARS
    if (n_runs <= 1).any():
        return CAPTION_CI + " (none where a clock has one run)"
    return CAPTION_CI


def _smoothed(use: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """Time, power and the objectives on the smoothed curves (``selection.smooth_curves``), as the choice sees them."""
    if use["sm_clock_mhz"].nunique() < 5 or len(use) != use["sm_clock_mhz"].nunique():
        return None
    t, p = smooth_curves(use["sm_clock_mhz"], use["time_s_mean"], use["power_w_mean"], use["n_runs"])
    return {"time_s": t, "power_w": p, "energy_j": t * p, "edp": t * t * p, "ed2p": t**3 * p}


# --------------------------------------------------------------------------- figures

def _grid(n: int, panel: tuple[float, float] = (2.6, 2.0), ncols: int | None = None, sharex: bool = True,
          right: float = 0.25, bottom: float = 1.15, hgap: float = 0.62) -> tuple[Figure, list]:
    """``n`` panels on a near-square grid; the unused cells are removed, so no empty panel is shown.

    Margins are fixed in inches rather than left to constrained layout, which spends seconds per
    figure measuring the tick labels of two dozen panels.
    """
    ncols = min(ncols or min(6, max(1, math.ceil(math.sqrt(n * 1.6)))), n)
    nrows = math.ceil(n / ncols)
    left, top, wgap = 0.75, 0.75, 0.5
    width = left + right + ncols * panel[0] + (ncols - 1) * wgap
    height = top + bottom + nrows * panel[1] + (nrows - 1) * hgap
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)  # shared limits are set by _finish_grid: sharex costs O(n²)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wgap / panel[0], hspace=hgap / panel[1])
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.remove()
    for i, ax in enumerate(flat[:n]):
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        if sharex and i + ncols < n:  # only the last panel of a column carries the x tick labels
            ax.xaxis.set_tick_params(labelbottom=False)
    return fig, flat[:n]


def _finish_grid(fig: Figure, axes: list, title: str, xlabel: str, ylabel: str, legend_cols: int = 4,
                 sharex: bool = True) -> None:
    """Title, shared x range, shared axis labels and one legend below the panels, in the margins ``_grid`` left."""
    if sharex and axes:
        lims = np.array([ax.get_xlim() for ax in axes])
        for ax in axes:
            ax.set_xlim(lims[:, 0].min(), lims[:, 1].max())
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    fig.supxlabel(xlabel, fontsize=9, y=fig.subplotpars.bottom - 0.42 / height, va="top")
    fig.supylabel(ylabel, fontsize=9, x=0.08 / fig.get_figwidth(), ha="left")
    _legend(fig, axes, ncols=legend_cols, loc="lower center", y=0.04 / height)


LEGEND_LAST = ("smoothed", "chosen", "max clock", "fitted optimum", "default", "left out", "clock left out",
               "95 %", "predicted")


def _legend(fig: Figure, axes: Iterable, ncols: int = 4, loc: str = "outside lower center", y: float | None = None) -> None:
    """One legend for the whole figure, one entry per label, below the panels: the data first, then the marks."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                seen.setdefault(label, h)
    if not seen:
        return

    def rank(label: str) -> int:
        return next((i + 1 for i, p in enumerate(LEGEND_LAST) if label.startswith(p)), 0)

    labels = sorted(seen, key=rank)
    extra = {} if y is None else {"bbox_to_anchor": (0.5, y)}
    fig.legend([seen[k] for k in labels], labels, loc=loc, ncols=min(ncols, len(labels)), fontsize=8, frameon=False,
               **extra)


def plot_vs_clock(table: pd.DataFrame, choices: pd.DataFrame | None = None, objective: str = "edp",
                  max_slowdown: float | None = 0.05, relative: bool | None = None) -> Figure:
    """Power, time, energy and the objective vs clock, with the chosen and reference clocks marked.

    With ``SMALL_MULTIPLES_FROM`` workloads or more (or ``relative=True``) this is
    ``plot_small_multiples``; otherwise absolute units, one colour per workload.
    """
    choices = _choices_for(table, choices, objective, max_slowdown)
    workloads = _workloads(table)
    groups = _by_workload(table)
    if relative or (relative is None and len(workloads) >= SMALL_MULTIPLES_FROM):
        return plot_small_multiples(table, choices, objective, max_slowdown)
    metric = OBJECTIVE_METRIC[objective] if objective != "energy" else "edp"
    panels = ["power_w", "time_s", "energy_j", metric]
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    single = len(workloads) == 1
    by_wl = choices.set_index("workload")
    for i, wl in enumerate(workloads):
        colour = f"C{i % 10}"
        rows = groups[wl]
        use, out, default = _usable(rows), _left_out(rows), _default_rows(rows)
        smooth = _smoothed(use)
        ch = by_wl.loc[wl] if wl in by_wl.index else None
        x = use["sm_clock_mhz"].to_numpy(float)
        for ax, m in zip(axes.flat, panels, strict=True):
            y = use[f"{m}_mean"].to_numpy(float)
            err = ci95(use[f"{m}_std"], use["n_runs"])
            ax.errorbar(x, y, yerr=None if np.isnan(err).all() else err, fmt="o-", ms=4, lw=1.2, capsize=3,
                        color=colour, label=_legend_label(i, len(workloads), _short(wl)) if not single
                        else "measured (mean)")
            if smooth is not None:
                ax.plot(x, smooth[m], "--", lw=0.9, color=colour, alpha=0.7, label="smoothed fit")
            if len(out):
                ax.scatter(out["sm_clock_mhz"], out[f"{m}_mean"], s=40, facecolors="none", edgecolors="0.45",
                           linewidths=1.2, zorder=3, label="left out by screening (not used)")
            if len(default):
                d = default.iloc[0]
                ax.axhline(d[f"{m}_mean"], color=colour, ls="-.", lw=1,
                           label=f"default clock (unlocked, {d['sm_clock_mhz']:.0f} MHz)" if single
                           else "default clock (unlocked)")
            if ch is None:
                continue
            _mark_reference(ax, x, y, ch["reference_clock_mhz"],
                            f"max clock: {ch['reference_clock_mhz']:.0f} MHz (reference)" if single
                            else "max clock (reference)")
            if smooth is not None and np.isfinite(ch["fitted_mhz"]) and ch["fitted_mhz"] in x:
                k = int(np.flatnonzero(x == ch["fitted_mhz"])[0])
                ax.plot(x[k], smooth[m][k], "X", ms=8, mfc="white", mec=colour, mew=1.5, ls="none",
                        label="fitted optimum (smoothed curve)")
            _mark_chosen(ax, x, y, ch["clock_mhz"], colour,
                         f"chosen: {ch['clock_mhz']:.0f} MHz ({ch['verdict']})" if single else "chosen clock")
            ax.set_ylabel(UNITS[m])
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("SM clock (MHz)")
    cap = "" if max_slowdown is None else f", <= {100 * max_slowdown:.0f} % slowdown"
    who = f"{_short(workloads[0], 60)}: " if single else ""
    fig.suptitle(f"{who}power, time, energy and {OBJECTIVE_NAME[metric if objective == 'energy' else objective]} "
                 f"vs SM clock (chosen for minimum {OBJECTIVE_NAME[objective]}{cap})\n"
                 f"mean per clock; {_error_caption(_locked(table)['n_runs'])}", fontsize=11)
    _legend(fig, axes.flat, ncols=3)
    return fig


def _mark_chosen(ax, x: np.ndarray, y: np.ndarray, clock: float, colour: str, label: str) -> None:
    ax.axvline(clock, color=colour, ls=":", lw=1.3, zorder=1)
    if clock in x:
        k = int(np.flatnonzero(x == clock)[0])
        ax.plot(clock, y[k], "*", ms=15, color=colour, mec="black", mew=0.8, ls="none", zorder=5, label=label)


def _mark_reference(ax, x: np.ndarray, y: np.ndarray, clock: float, label: str, value: float | None = None) -> None:
    if value is None:
        if clock not in x:
            return
        value = y[int(np.flatnonzero(x == clock)[0])]
    ax.plot(clock, value, "s", ms=11, mfc="none", mec="black", mew=1.5, ls="none", zorder=4, label=label)


def plot_small_multiples(table: pd.DataFrame, choices: pd.DataFrame | None = None, objective: str = "edp",
                         max_slowdown: float | None = 0.05, ncols: int | None = None) -> Figure:
    """One small panel per workload: energy, time and the objective relative to its max clock (= 1).

    Relative units put every workload on the same scale, so 24 panels read at a glance: where the
    objective curve dips below 1 a lower clock pays, and the chosen clock sits at its minimum.
    """
    choices = _choices_for(table, choices, objective, max_slowdown)
    workloads, drawn = _panels(choices, _workloads(table))
    groups = _by_workload(table[table["workload"].isin(workloads)])
    fig, axes = _grid(len(workloads), ncols=ncols)
    by_wl = choices.set_index("workload")
    metric = OBJECTIVE_METRIC[objective]
    curves = [("energy_j", "C0", "energy"), ("time_s", "C1", "time")]
    if objective != "energy":
        curves.append((metric, "C2", OBJECTIVE_NAME[objective]))
    for ax, wl in zip(axes, workloads, strict=True):
        rows = groups[wl]
        use, out, default = _usable(rows), _left_out(rows), _default_rows(rows)
        if use.empty:
            ax.set_title(_short(wl, 24), fontsize=8, y=1.0, pad=3)
            continue
        ref = use.iloc[-1]
        x = use["sm_clock_mhz"].to_numpy(float)
        values = []
        for m, colour, name in curves:
            y = use[f"{m}_mean"].to_numpy(float) / ref[f"{m}_mean"]
            band = ci95(use[f"{m}_std"], use["n_runs"]) / ref[f"{m}_mean"]
            ax.plot(x, y, "-", lw=1.1, color=colour, label=f"{name} / max clock's")
            if np.isfinite(band).any():
                ax.fill_between(x, y - band, y + band, color=colour, alpha=0.25, lw=0,
                                label="95 % interval of the mean")
            values.append(y)
        lo, hi = np.nanmin(np.concatenate(values)), np.nanmax(np.concatenate(values))
        pad = 0.06 * max(hi - lo, 0.02)
        lo, hi = lo - pad, hi + pad
        ax.set_ylim(lo, hi)
        main = values[-1]
        if len(out):
            for m, _, _ in curves:
                yo = (out[f"{m}_mean"].to_numpy(float) / ref[f"{m}_mean"]).clip(lo, hi)
                ax.scatter(out["sm_clock_mhz"], yo, s=16, facecolors="none", edgecolors="0.45", linewidths=0.9,
                           zorder=3, label="left out by screening (at the edge if off scale)")
        if len(default):
            dv = default.iloc[0][f"{metric}_mean"] / ref[f"{metric}_mean"]
            if lo <= dv <= hi:
                ax.axhline(dv, color=curves[-1][1], ls="-.", lw=0.9,
                           label=f"default clock (unlocked), {curves[-1][2]}")
        ax.axhline(1, color="0.6", lw=0.6, zorder=0)
        _mark_reference(ax, x, main, float(ref["sm_clock_mhz"]), "max clock (reference)", value=1.0)
        title = _short(wl, 24)
        if wl in by_wl.index:
            ch = by_wl.loc[wl]
            if np.isfinite(ch["fitted_mhz"]) and ch["fitted_mhz"] in x and ch["fitted_mhz"] != ch["clock_mhz"]:
                k = int(np.flatnonzero(x == ch["fitted_mhz"])[0])
                ax.plot(x[k], main[k], "X", ms=7, mfc="white", mec="black", mew=1.2, ls="none", zorder=4,
                        label="fitted optimum (smoothed curve)")
            _mark_chosen(ax, x, main, ch["clock_mhz"], "black", "chosen clock")
            title += f"\n{ch['clock_mhz']:.0f} MHz: {ch['verdict']}"
            if ch["data_problems"]:
                title += " (!)"
        ax.set_title(title, fontsize=8, y=1.0, pad=3)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    cap = "" if max_slowdown is None else f", <= {100 * max_slowdown:.0f} % slowdown"
    _finish_grid(fig, axes, f"{len(workloads)} workloads{drawn}, each relative to its max usable clock (= 1); chosen "
                 f"for minimum {OBJECTIVE_NAME[objective]}{cap}\n{_error_caption(_locked(table)['n_runs'])}",
                 "SM clock (MHz)", "relative to the max clock", legend_cols=4)
    return fig


def plot_pareto(table: pd.DataFrame, choices: pd.DataFrame | None = None, objective: str = "edp",
                max_slowdown: float | None = 0.05, relative: bool | None = None) -> Figure:
    """Energy vs time per clock with each workload's Pareto front: what every clock trades."""
    choices = _choices_for(table, choices, objective, max_slowdown)
    workloads = _workloads(table)
    many = relative or (relative is None and len(workloads) >= SMALL_MULTIPLES_FROM)
    drawn = ""
    if many:
        workloads, drawn = _panels(choices, workloads)
    groups = _by_workload(table[table["workload"].isin(workloads)])
    locked = _locked(table)
    norm = (float(locked["sm_clock_mhz"].min()), float(locked["sm_clock_mhz"].max()))
    by_wl = choices.set_index("workload")
    if many:
        fig, axes = _grid(len(workloads), sharex=False, right=1.1)
    else:
        fig = Figure(figsize=(8, 5.8), layout="constrained")
        axes = [fig.subplots()] * len(workloads)
    sc = None
    for i, (ax, wl) in enumerate(zip(axes, workloads, strict=True)):
        rows = groups[wl]
        use, out = _usable(rows), _left_out(rows)
        if use.empty:
            continue
        ref = use.iloc[-1]
        sx = ref["time_s_mean"] if many else 1.0
        sy = ref["energy_j_mean"] if many else 1.0
        g = use.sort_values("time_s_mean")
        front = g[g["energy_j_mean"] <= g["energy_j_mean"].cummin()]
        colour = "0.2" if many else f"C{i % 10}"
        sc = ax.scatter(g["time_s_mean"] / sx, g["energy_j_mean"] / sy, c=g["sm_clock_mhz"], cmap="viridis",
                        vmin=norm[0], vmax=norm[1], s=14 if many else 22, zorder=2)
        ax.plot(front["time_s_mean"] / sx, front["energy_j_mean"] / sy, "-", lw=1, color=colour,
                label="Pareto front" if many else _legend_label(i, len(workloads), f"{_short(wl)}: Pareto front"))
        if len(out):
            ax.scatter(out["time_s_mean"] / sx, out["energy_j_mean"] / sy, s=20, facecolors="none",
                       edgecolors="0.45", label="left out by screening (not used)")
        for d in _default_rows(rows).itertuples():
            ax.plot(d.time_s_mean / sx, d.energy_j_mean / sy, "D", ms=7, mfc="none", mec=colour,
                    label="default clock (unlocked)")
        ax.plot(ref["time_s_mean"] / sx, ref["energy_j_mean"] / sy, "s", ms=10, mfc="none", mec="black", mew=1.5,
                label="max clock (reference)")
        if wl in by_wl.index:
            ch = by_wl.loc[wl]
            at = use[use["sm_clock_mhz"] == ch["clock_mhz"]]
            if len(at):
                ax.plot(at["time_s_mean"].iloc[0] / sx, at["energy_j_mean"].iloc[0] / sy, "*", ms=14, color=colour,
                        mec="black", mew=0.8, zorder=5,
                        label="chosen clock" if many else f"chosen: {ch['clock_mhz']:.0f} MHz")
        if many:
            ax.set_title(_short(wl, 24), fontsize=8, y=1.0, pad=3)
            ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if sc is not None:
        if many:
            p = fig.subplotpars
            w = fig.get_figwidth()
            cax = fig.add_axes((p.right + 0.25 / w, p.bottom, 0.15 / w, p.top - p.bottom))
            fig.colorbar(sc, cax=cax, label="SM clock (MHz)")
        else:
            fig.colorbar(sc, ax=axes[0], label="SM clock (MHz)")
    if many:
        _finish_grid(fig, axes, f"Energy vs time per clock, relative to each workload's max clock: the Pareto "
                     f"front{drawn}",
                     "work time / max clock's", "energy / max clock's", legend_cols=5, sharex=False)
    else:
        axes[0].set_xlabel("Work time (s)")
        axes[0].set_ylabel("Energy (J)")
        axes[0].set_title("Energy vs time per clock: the Pareto front")
        _legend(fig, axes[:1], ncols=3)
    return fig


def phase_energy(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean energy (J) per leaf phase per (workload, gpu, clock) over the runs screening kept.

    ``batch`` and ``process`` contain the other phases, so only the leaves are returned: stacked,
    they add up without counting a joule twice. Empty when the data has no phase energies
    (reference CSVs have none). Reads both ``phase_energy_json`` formats (``_leaf_energies``).
    ``load_runs`` checks only the texts' shape, so a text that still fails to parse is left out
    here and counted in the result's ``attrs["unreadable_runs"]``.
    """
    col = runs.get("phase_energy_json")
    if col is None:
        return pd.DataFrame()
    has = col.notna() & (col.astype(str).str.strip().str.len() > 2)
    if not has.any():
        return pd.DataFrame()
    kept = runs[has & (flag_runs(runs) == "")]
    if kept.empty:
        return pd.DataFrame()
    entries = [_leaf_energies(s) for s in kept["phase_energy_json"]]
    readable = np.array([e is not None for e in entries], bool)
    if not readable.any():
        return pd.DataFrame()
    kept = kept[readable]
    parsed = pd.DataFrame.from_records([e for e in entries if e is not None], index=kept.index)
    leaves = [p for p in LEAF_PHASES if p in parsed] + sorted(
        c for c in parsed if c not in LEAF_PHASES and c not in CONTAINER_PHASES)
    if not leaves:
        return pd.DataFrame()
    parsed = parsed[leaves].apply(pd.to_numeric, errors="coerce").fillna(0.0)
    keys = kept[[*GROUP, "is_default_clock"]].astype({"is_default_clock": bool})
    out = parsed.join(keys).groupby([*GROUP, "is_default_clock"], dropna=False)[leaves].mean().reset_index()
    out.attrs["unreadable_runs"] = int((~readable).sum())
    return out


def _leaf_energies(text: str) -> dict | None:
    """One row's leaf-phase energies (J), None when the text is no JSON object. Today's rows give each
    phase an object (``energy_j``, ``source``, ...) and mark containers with ``contains``; older rows
    are a flat {phase: J} map whose containers are known by name."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return {k: (v.get("energy_j") if isinstance(v, dict) else v) for k, v in obj.items()
            if not (isinstance(v, dict) and "contains" in v) and k not in CONTAINER_PHASES}


def plot_phases(runs: pd.DataFrame, table: pd.DataFrame | None = None, choices: pd.DataFrame | None = None,
                objective: str = "edp", max_slowdown: float | None = 0.05,
                phases: pd.DataFrame | None = None) -> Figure | None:
    """Stacked bars of energy per leaf phase at each clock; None when the data has no phase energies."""
    phases = phase_energy(runs) if phases is None else phases
    if phases.empty:
        return None
    leaves = [c for c in phases.columns if c not in (*GROUP, "is_default_clock")]
    if choices is None and table is not None:
        choices = _choices_for(table, None, objective, max_slowdown)
    by_wl = choices.set_index("workload") if choices is not None and len(choices) else None
    workloads, drawn = _panels(choices, sorted(phases["workload"].unique()), MAX_PHASE_PANELS)
    phases = phases[phases["workload"].isin(workloads)]
    if table is not None:
        table = table[table["workload"].isin(workloads)]
    fig, axes = _grid(len(workloads), panel=(9.0, 3.6) if len(workloads) == 1 else (3.2, 2.4), sharex=False,
                      bottom=1.0)
    for ax, wl in zip(axes, workloads, strict=True):
        g = phases[phases["workload"] == wl].sort_values(["is_default_clock", "sm_clock_mhz"])
        labels = [("default" if d else f"{c:.0f}") for c, d in zip(g["sm_clock_mhz"], g["is_default_clock"],
                                                                     strict=True)]
        pos = np.arange(len(g))
        excluded = set()
        if table is not None:
            rows = table[(table["workload"] == wl) & (table["excluded"].fillna("") != "")]
            excluded = set(rows["sm_clock_mhz"][~rows["is_default_clock"].astype(bool)])
        hatch = ["//" if (c in excluded and not d) else "" for c, d in zip(g["sm_clock_mhz"], g["is_default_clock"],
                                                                           strict=True)]
        bottom = np.zeros(len(g))
        for ph in leaves:
            v = g[ph].to_numpy(float)
            ax.bar(pos, v, bottom=bottom, color=PHASE_COLOURS.get(ph, "#d9d9d9"), edgecolor="0.3", lw=0.4,
                   hatch=hatch, label=ph)
            bottom += v
        if any(hatch):
            ax.bar([], [], color="white", edgecolor="0.3", hatch="//", label="clock left out by screening")
        if by_wl is not None and wl in by_wl.index:
            ch = by_wl.loc[wl]
            locked = ~g["is_default_clock"].to_numpy(bool)
            at = np.flatnonzero(locked & (g["sm_clock_mhz"].to_numpy(float) == ch["clock_mhz"]))
            if len(at):
                k = int(at[0])
                ax.plot(pos[k], bottom[k] * 1.04, "*", ms=13, color="black", ls="none", label="chosen clock")
            ref = np.flatnonzero(locked & (g["sm_clock_mhz"].to_numpy(float) == ch["reference_clock_mhz"]))
            if len(ref):
                ax.plot(pos[ref[0]], bottom[ref[0]] * 1.04, "s", ms=8, mfc="none", mec="black", mew=1.3, ls="none",
                        label="max clock (reference)")
        ax.set_ylim(0, max(bottom.max(), 1e-12) * 1.12)
        ax.set_xticks(pos, labels, rotation=90 if len(pos) > 8 else 0, fontsize=7 if len(pos) > 8 else 9)
        ax.set_title(_short(wl, 50 if len(workloads) < 3 else 28), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    _finish_grid(fig, axes, f"Energy per phase at each clock (mean over the runs kept){drawn}\nleaf phases only: 'batch' and "
                 "'process' contain the others and are not stacked", "SM clock (MHz)", "energy per run (J)", legend_cols=6,
                 sharex=False)
    return fig


def plot_trace(samples_csv: Path, title: str) -> Figure | None:
    """Power over one run with the app's phases shaded: where the energy of a run goes in time."""
    samples_csv = Path(samples_csv)
    if not samples_csv.exists():
        return None
    try:
        s = pd.read_csv(samples_csv)
    except (OSError, ValueError):  # a damaged trace costs its figure, never the report
        return None
    if s.empty or not {"mono_s", "power_w"} <= set(s.columns):
        return None
    for col in ("mono_s", "power_w"):
        s[col] = pd.to_numeric(s[col], errors="coerce")
    s = s.dropna(subset=["mono_s", "power_w"])
    if s.empty:
        return None
    t = (s["mono_s"] - s["mono_s"].iloc[0]).to_numpy(float)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(t, s["power_w"], lw=1, color="black", label="board power")
    if "phase" in s:
        ph = s["phase"].fillna("").astype(str).to_numpy()
        starts = np.flatnonzero(np.r_[True, ph[1:] != ph[:-1]])
        ends = np.r_[starts[1:], len(ph) - 1]
        seen: set[str] = set()
        for a, b in zip(starts, ends, strict=True):
            name = ph[a]
            if not name or name in CONTAINER_PHASES:  # they span the leaves: shading them hides where power goes
                continue
            ax.axvspan(t[a], t[b], color=PHASE_COLOURS.get(name, "#ffffb3"), alpha=0.6, lw=0,
                       label=name if name not in seen else None)
            seen.add(name)
    ax.set_xlabel("time since launch (s)")
    ax.set_ylabel("Power (W)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(fig, [ax], ncols=8)
    return fig


def trace_files(runs: pd.DataFrame, choices: pd.DataFrame) -> list[tuple[Path, str]]:
    """The sample files of the first workload at its max clock and at its chosen clock (results directories only)."""
    if choices.empty or "source" not in runs:
        return []
    sources = {s for s in runs["source"].unique() if Path(s).is_dir()}
    if not sources:
        return []
    c = choices.iloc[0]
    with_dirs = runs[runs["source"].isin(sources) & (runs["workload"] == c["workload"])]
    if "warmup" in with_dirs:
        with_dirs = with_dirs[~with_dirs["warmup"].astype(bool)]
    out = []
    pairs = [(c["reference_clock_mhz"], "max clock")]
    if c["clock_mhz"] != c["reference_clock_mhz"]:
        pairs.append((c["clock_mhz"], "chosen clock"))
    else:
        pairs[0] = (c["clock_mhz"], "chosen = max clock")
    for clock, label in pairs:
        r = with_dirs[(with_dirs["sm_clock_mhz"] == clock) & ~with_dirs["is_default_clock"].astype(bool)]
        if len(r):
            row = r.iloc[0]
            out.append((Path(row["source"]) / "samples" / f"{row['run_id']}.csv",
                        f"{label} {clock:.0f} MHz ({row['run_id']})"))
    return out


def physical_fits(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per workload, ``PhysicalModel`` on its usable clocks: (coefficients and error in %, predictions per clock).

    The fits are ``models.physical_fit_table``'s (the same the ``fit`` command prints); only the
    errors are shown here as percentages, in the order the report's table lists them.
    """
    fits, preds = physical_fit_table(table)
    if fits.empty:
        return fits, preds
    fits = fits.assign(**{f"{q}_mape_pct": 100 * fits[f"{q}_mape"] for q in ("energy", "time", "power")})
    return fits[["workload", *FIT_COLUMNS]], preds


def plot_model_fit(table: pd.DataFrame, fits: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> Figure:
    """Energy the per-workload physical model predicts vs measured: how far a 5-parameter curve explains the sweep."""
    _, pred = physical_fits(table) if fits is None else fits
    fig = Figure(figsize=(6, 5.4), layout="constrained")
    ax = fig.subplots()
    if pred.empty:
        ax.text(0.5, 0.5, "fewer than 3 usable clocks per workload: no model fit", ha="center", transform=ax.transAxes)
        return fig
    workloads = sorted(pred["workload"].unique())
    few = len(workloads) <= 8
    if few:
        for i, (wl, g) in enumerate(pred.groupby("workload")):
            ax.scatter(g["energy_j_mean"], g["energy_j_pred"], s=14, color=f"C{i % 10}", label=_short(wl, 30))
    else:
        ax.scatter(pred["energy_j_mean"], pred["energy_j_pred"], s=6, color="C0", alpha=0.6,
                   label=f"{len(workloads)} workloads, every usable clock")
    lim = np.array([pred[["energy_j_mean", "energy_j_pred"]].min().min(),
                    pred[["energy_j_mean", "energy_j_pred"]].max().max()])
    if lim[1] / max(lim[0], 1e-12) > 20:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.plot(lim, lim, "k--", lw=1, label="predicted = measured")
    ax.set_xlabel("measured energy (J)")
    ax.set_ylabel("model energy (J)")
    ax.set_title("Physical model per workload (T = a + b/f, P = c + df + ef³)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def plot_prediction(table: pd.DataFrame, choices: pd.DataFrame | None = None, objective: str = "edp",
                    max_slowdown: float | None = 0.05, workloads: Sequence[str] | None = None,
                    max_workloads: int = 4) -> Figure:
    """Measured time and power per clock against the smoothed curves and the physical model.

    The choice reads its fitted optimum off the smoothed curves; this shows whether they follow
    the measurements (a knee the physical form ``T = a + b/f`` cannot follow shows up here).
    """
    choices = _choices_for(table, choices, objective, max_slowdown)
    names = list(workloads) if workloads is not None else _workloads(table)[:max_workloads]
    groups = _by_workload(table)
    fig = Figure(figsize=(11, 2.9 * len(names) + 1.2), layout="constrained")
    axes = fig.subplots(len(names), 3, squeeze=False, sharex=True)
    by_wl = choices.set_index("workload")
    for row, wl in zip(axes, names, strict=True):
        use = _usable(groups[wl])
        x = use["sm_clock_mhz"].to_numpy(float)
        smooth = _smoothed(use)
        model = fit_physical(use)
        if model is not None:
            xf = np.linspace(x.min(), x.max(), 200)
            tf, pf = model.predict(xf)
        for ax, m in zip(row, ("time_s", "power_w", "energy_j"), strict=True):
            y = use[f"{m}_mean"].to_numpy(float)
            err = ci95(use[f"{m}_std"], use["n_runs"])
            ax.errorbar(x, y, yerr=None if np.isnan(err).all() else err, fmt="o", ms=3, color="black",
                        capsize=2, label="measured (mean)")
            if smooth is not None:
                ax.plot(x, smooth[m], "-", lw=1.5, color="C0", label="smoothed curve (used for the fitted optimum)")
            if model is not None:
                ax.plot(xf, {"time_s": tf, "power_w": pf, "energy_j": tf * pf}[m], "--", lw=1.2, color="C3",
                        label="physical model T=a+b/f, P=c+df+ef³")
            if wl in by_wl.index:
                ax.axvline(by_wl.loc[wl, "clock_mhz"], color="black", ls=":", lw=1.2, label="chosen clock")
            ax.set_ylabel(UNITS[m], fontsize=8)
            ax.grid(alpha=0.3)
        row[0].set_title(_short(wl, 60), fontsize=9, loc="left")
    for ax in axes[-1]:
        ax.set_xlabel("SM clock (MHz)")
    more = len(_workloads(table)) - len(names)
    fig.suptitle("Prediction vs measurement" + (f" (first {len(names)} workloads; {more} more not shown)"
                                                if workloads is None and more > 0 else ""), fontsize=10)
    _legend(fig, axes.flat, ncols=2)
    return fig


# --------------------------------------------------------------------------- text

def headline(choices: pd.DataFrame, objective: str = "edp", max_slowdown: float | None = 0.05,
             table: pd.DataFrame | None = None) -> str:
    """Two sentences that open the report: which clock to use and why, or that the data cannot tell.

    Built from the verdicts of ``selection.choose_clock``; with one workload it names the clock and
    the saving with its interval, with many it counts verdicts (the table has each workload).
    """
    name = OBJECTIVE_NAME[objective]
    cap = "" if max_slowdown is None else f" within {100 * max_slowdown:.0f} % slowdown"
    if choices.empty:
        return "No workload has a usable locked-clock run, so no clock can be recommended. See the data problems below."
    if len(choices) == 1:
        return _headline_one(choices.iloc[0], name, cap, table)
    n = len(choices)
    counts = choices["verdict"].value_counts()
    sig, unk = int(counts.get("saving", 0)), int(counts.get("uncertainty unknown", 0))
    nsig, ref = int(counts.get("no significant saving", 0)), int(counts.get("reference is best", 0))
    lower = choices[choices["verdict"].isin(["saving", "uncertainty unknown"])]
    gpu = ", ".join(sorted(choices["gpu"].astype(str).unique()))
    if len(lower):
        lo_c, hi_c = lower["clock_mhz"].min(), lower["clock_mhz"].max()
        clocks = f"{lo_c:.0f} MHz" if lo_c == hi_c else f"{lo_c:.0f}–{hi_c:.0f} MHz"
        first = (f"For {len(lower)} of {n} workloads on {gpu} a lower clock ({clocks}, per workload in the table) "
                 f"saves energy at minimum {name}{cap}: a median {lower['energy_saved_pct'].median():.1f} % energy "
                 f"saved at {lower['slowdown_pct'].median():.1f} % slowdown vs the max clock")
        rest = []
        if nsig:
            rest.append(f"{nsig} show no significant saving")
        if ref:
            rest.append(f"for {ref} the max clock is best")
        first += ("; " + "; ".join(rest) if rest else "") + "."
        if sig and not unk:
            second = ("Each of these savings is beyond the run-to-run noise (95 % interval of the "
                      f"{name} ratio over repeat runs).")
        elif unk and not sig:
            second = ("With one run per clock their uncertainty is unknown (verdict \"uncertainty unknown\"), so "
                      "the savings may be noise: repeat runs (--num-runs 3) to confirm them.")
        else:
            second = (f"{sig} of these savings are beyond the run-to-run noise (95 % interval); {unk} rest on one "
                      "run per clock, so their uncertainty is unknown: repeat runs (--num-runs 3) to confirm them.")
        return f"{first} {second}"
    first = (f"Keep the max clock for all {n} workloads on {gpu}: no lower clock lowers {name}{cap} beyond the "
             "run-to-run noise.")
    second = (f"{nsig} show no significant saving (the best lower clock is within the noise) and for {ref} the max "
              "clock is best outright.")
    return f"{first} {second}"


def _headline_one(c: pd.Series, name: str, cap: str, table: pd.DataFrame | None) -> str:
    wl, ref, clock = c["workload"], c["reference_clock_mhz"], c["clock_mhz"]
    vs_default = ""
    if np.isfinite(c["energy_saved_vs_default_pct"]):
        vs_default = (f"; vs the default (unlocked) clock it saves "
                      f"{pct_text(c['energy_saved_vs_default_pct'], c['energy_saved_vs_default_lo_pct'], c['energy_saved_vs_default_hi_pct'])}"  # noqa: E501
                      f" energy at {pct_text(c['slowdown_vs_default_pct'], c['slowdown_vs_default_lo_pct'], c['slowdown_vs_default_hi_pct'])} slowdown")  # noqa: E501
    saved = pct_text(c["energy_saved_pct"], c["energy_saved_lo_pct"], c["energy_saved_hi_pct"])
    slower = pct_text(c["slowdown_pct"], c["slowdown_lo_pct"], c["slowdown_hi_pct"])
    if c["verdict"] == "saving":
        sig = ("the saving is" if c["objective"] == "energy" else
               f"its {name} saving, {pct_text(c['objective_saved_pct'], c['objective_saved_lo_pct'], c['objective_saved_hi_pct'])}, is")  # noqa: E501
        return (f"Use {clock:.0f} MHz for {wl} on {c['gpu']}: it has the lowest {name} of the measured clocks{cap}. "
                f"It saves {saved} energy at {slower} slowdown vs {ref:.0f} MHz (the max clock){vs_default}; {sig} "
                f"beyond the run-to-run noise (95 % intervals in brackets, over {c['runs_at_choice']} and "
                f"{c['runs_at_reference']} runs).")
    if c["verdict"] == "uncertainty unknown":
        return (f"Use {clock:.0f} MHz for {wl} on {c['gpu']}: it has the lowest {name} of the measured clocks{cap}. "
                f"It saves {c['energy_saved_pct']:.1f} % energy at {c['slowdown_pct']:.1f} % slowdown vs {ref:.0f} MHz "
                f"(the max clock){vs_default}, but with one run per clock the uncertainty is unknown: repeat runs "
                "(--num-runs 3) to know whether the saving is real.")
    if c["verdict"] == "no significant saving":
        return (f"Keep {ref:.0f} MHz (the max clock) for {wl} on {c['gpu']}: the data cannot show that a lower clock "
                f"lowers {name}{cap}. The best measured clock, {c['best_measured_mhz']:.0f} MHz, is within the "
                f"run-to-run noise of {ref:.0f} MHz (95 % interval over {c['runs_at_reference']} runs).")
    limit = cap.removeprefix(" within ").removesuffix(" slowdown")
    why = f"every lower clock has a higher {name}" + (f" or is more than {limit} slower" if cap else "")
    unlimited = ""
    if cap and table is not None:
        free = choose_clock(table, wl, c["objective"], None)
        if free.clock_mhz != ref:
            unlimited = (f"; without the slowdown limit {free.clock_mhz:.0f} MHz would save "
                         f"{pct_text(free.energy_saved_pct, free.energy_saved_lo_pct, free.energy_saved_hi_pct)} "
                         f"energy at {pct_text(free.slowdown_pct, free.slowdown_lo_pct, free.slowdown_hi_pct)} slowdown")
    return (f"Keep {ref:.0f} MHz (the max clock) for {wl} on {c['gpu']}: it has the lowest {name} of the measured "
            f"clocks{cap}. No lower clock pays: {why}{unlimited}.")


def choices_table(choices: pd.DataFrame, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The choices as a reader's table: intervals as text, each saving column naming its reference clock.

    Columns with nothing in them (no default clock measured, nothing left out) are dropped.
    """
    if choices.empty:
        return pd.DataFrame()
    refs = choices["reference_clock_mhz"].unique()
    ref_name = f"{refs[0]:.0f} MHz (max)" if len(refs) == 1 else "max clock"
    default_name = "default (unlocked)"
    if table is not None:
        d = _default_rows(table)["sm_clock_mhz"].dropna().unique()
        if len(d) == 1:
            default_name = f"default ({d[0]:.0f} MHz, unlocked)"
    obj = choices["objective"].iloc[0]
    name = OBJECTIVE_NAME.get(obj, obj)

    def col(prefix: str) -> list[str]:
        return [interval_text(v, lo, hi) for v, lo, hi in zip(choices[f"{prefix}_pct"], choices[f"{prefix}_lo_pct"],
                                                          choices[f"{prefix}_hi_pct"], strict=True)]

    out = pd.DataFrame({
        "workload": choices["workload"].to_numpy(),
        "clock (MHz)": choices["clock_mhz"].map(lambda v: f"{v:.0f}").to_numpy(),
        "verdict": choices["verdict"].to_numpy(),
        "max clock (MHz)": choices["reference_clock_mhz"].map(lambda v: f"{v:.0f}").to_numpy() if len(refs) > 1
        else [""] * len(choices),
        f"energy saved vs {ref_name}, %": col("energy_saved"),
        f"slowdown vs {ref_name}, %": col("slowdown"),
        f"{name} saved vs {ref_name}, %": col("objective_saved"),
        f"energy saved vs {default_name}, %": col("energy_saved_vs_default"),
        f"slowdown vs {default_name}, %": col("slowdown_vs_default"),
        "best measured (MHz)": choices["best_measured_mhz"].map(lambda v: _num(v, ".0f")).to_numpy(),
        "fitted optimum (MHz)": choices["fitted_mhz"].map(lambda v: _num(v, ".0f")).to_numpy(),
        "runs (chosen / max)": [f"{a} / {b}" for a, b in zip(choices["runs_at_choice"], choices["runs_at_reference"],
                                                             strict=True)],
        "left out": choices["excluded"].fillna("").to_numpy(),
        "data problems": choices["data_problems"].fillna("").to_numpy(),
    })
    return drop_empty_columns(out)


def objectives_table(all_choices: pd.DataFrame) -> pd.DataFrame:
    """Clock and verdict per workload for each objective, side by side: how much the answer depends on the goal."""
    if all_choices.empty:
        return pd.DataFrame()
    cell = all_choices["clock_mhz"].map(lambda v: f"{v:.0f}") + " MHz (" + all_choices["verdict"] + ")"
    wide = all_choices.assign(cell=cell).pivot(index="workload", columns="objective", values="cell")
    wide = wide[[o for o in OBJECTIVE_NAME if o in wide]]
    wide.columns = [f"min {OBJECTIVE_NAME[o]}" for o in wide.columns]
    return wide.reset_index()


def left_out_table(table: pd.DataFrame) -> pd.DataFrame:
    """Every row screening touched: the clock-level reason and the runs left out at that clock."""
    n_ex = table["n_excluded_runs"].fillna(0) if "n_excluded_runs" in table else pd.Series(0, index=table.index)
    hit = (table["excluded"].fillna("") != "") | (n_ex > 0)
    rows = table[hit]
    return drop_empty_columns(pd.DataFrame({
        "workload": rows["workload"].to_numpy(),
        "clock (MHz)": [("default " if d else "") + f"{c:.0f}" for c, d in zip(rows["sm_clock_mhz"],
                                                                              rows["is_default_clock"].astype(bool),
                                                                              strict=True)],
        "clock left out": rows["excluded"].fillna("").to_numpy(),
        "runs kept": rows["n_runs"].astype(int).to_numpy(),
        "runs left out": (rows["excluded_runs"].fillna("").to_numpy() if "excluded_runs" in rows
                          else [""] * len(rows)),
    }))


def left_out_summary(table: pd.DataFrame) -> str:
    """One sentence: how many clocks and runs were left out and why, over all workloads."""
    locked = table[~table["is_default_clock"].astype(bool)]
    clocks = locked[locked["excluded"].fillna("") != ""]
    parts = []
    for reason, g in clocks.groupby("excluded"):
        parts.append(f"{reason}: {len(g)} clock{'s' * (len(g) > 1)} in {g['workload'].nunique()} workload"
                     f"{'s' * (g['workload'].nunique() > 1)} ({int(g['n_runs'].sum())} runs)")
    if "excluded_runs" in table:
        items = table["excluded_runs"].dropna().astype(str).str.split("; ").explode()
        items = items[items.str.contains(":", regex=False)]
        if len(items):
            split = items.str.rsplit(":", n=1, expand=True)
            counts = pd.to_numeric(split[1], errors="coerce").groupby(split[0]).sum()
            parts += [f"{reason}: {int(n)} run{'s' * (n > 1)}" for reason, n in counts.items()]
    if not parts:
        return "Nothing was left out: every run and clock passed screening."
    return "Left out of every statistic and choice (drawn as hollow grey markers): " + "; ".join(parts) + "."


def per_clock_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ± 95 % half-width per clock, with significant digits (short kernels keep theirs)."""
    t = table.sort_values(["workload", "is_default_clock", "sm_clock_mhz"])
    out = pd.DataFrame({"workload": t["workload"].to_numpy(),
                        "clock (MHz)": [("default " if d else "") + f"{c:.0f}" for c, d in
                                        zip(t["sm_clock_mhz"], t["is_default_clock"].astype(bool), strict=True)],
                        "runs": t["n_runs"].astype(int).to_numpy()})
    for m in ("time_s", "power_w", "energy_j", "edp"):
        half = ci95(t[f"{m}_std"], t["n_runs"])
        out[f"{UNITS[m]} ± 95 %"] = [_num(v) + (f" ± {_num(h, '.2g')}" if np.isfinite(h) else "")
                                     for v, h in zip(t[f"{m}_mean"], half, strict=True)]
    out["left out"] = t["excluded"].fillna("").to_numpy()
    return drop_empty_columns(out)


def drop_empty_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Without the columns whose every cell is None, NaN or empty text: they tell the reader nothing."""
    empty = df.isna() | df.astype(str).apply(lambda s: s.str.strip().isin(["", "nan", "None"]))
    return df.loc[:, ~empty.all(axis=0)]


# --------------------------------------------------------------------------- the report

def panel_workloads(choices: pd.DataFrame, most: int = MAX_PANELS) -> list[str]:
    """At most ``most`` workloads to draw: those with data problems first, then the largest savings."""
    if len(choices) <= most:
        return list(choices["workload"])
    order = choices.assign(_problem=choices["data_problems"].fillna("") != "",
                           _saved=choices["objective_saved_pct"].fillna(-np.inf))
    order = order.sort_values(["_problem", "_saved"], ascending=[False, False])
    return sorted(order["workload"].head(most))


def build_report(runs: pd.DataFrame, table: pd.DataFrame, out: Path, objective: str = "edp",
                 max_slowdown: float | None = 0.05, *, choose_on: str = "measured", dpi: int = 100) -> dict[str, Path]:
    """Write report.html (images embedded), report.md (PNG files beside it), the CSVs and summary.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_choices = choose_all(table, list(OBJECTIVE_NAME), max_slowdown, choose_on)
    main = all_choices[all_choices["objective"] == objective].reset_index(drop=True)
    files = {"features": out / "features.csv", "choices": out / "choices.csv"}
    write_csv(table, files["features"])
    write_csv(all_choices, files["choices"])
    if len(runs) <= MAX_TIDY_RUNS:  # a campaign's tidy table is `python -m power_modeling merge`'s job
        files["runs"] = out / "runs_tidy.csv"
        write_csv(runs, files["runs"])

    kw = {"objective": objective, "max_slowdown": max_slowdown}
    figures: dict[str, tuple[Figure, str, str]] = {}
    few = len(_workloads(table)) < SMALL_MULTIPLES_FROM
    full_table, full_main = table, main
    shown = panel_workloads(main)
    if len(shown) < len(main):  # a campaign of hundreds of workloads: draw the ones a reader must see
        table, main = table[table["workload"].isin(shown)], main[main["workload"].isin(shown)]
    some = ("" if len(shown) == len(full_main) else
            f" {len(shown)} of {len(full_main)} workloads drawn: those with data problems, then the largest "
            f"savings; choices.csv has them all.")
    figures["vs_clock"] = (plot_vs_clock(table, main, **kw), "Power, time, energy and the objective vs clock" if few
                           else "Every workload relative to its max clock",
                           some.lstrip() + (" " if some else "") + "Stars: the chosen clock; squares: the max usable clock (the reference); dash-dot line: "
                           "the default (unlocked) clock where measured; hollow grey markers: rows left out by "
                           "screening, never joined to the curve.")
    phases = phase_energy(runs if len(shown) == len(full_main) else runs[runs["workload"].isin(shown)])
    if not phases.empty:
        unreadable = phases.attrs.get("unreadable_runs", 0)
        figures["phases"] = (plot_phases(runs, table, main, phases=phases, **kw), "Energy per phase",
                             "Leaf phases only (load, warmup, text_encode, denoise_step, vae_decode, save): "
                             "'batch' and 'process' contain the others. Mean over the runs kept at each clock."
                             + (f" {unreadable} run(s) whose phase_energy_json could not be read are left out."
                                if unreadable else ""))
    figures["pareto"] = (plot_pareto(table, main, **kw), "Energy vs time", "Each point a clock; the line joins the "
                         "clocks no other clock beats on both time and energy.")
    fit_table, pred = physical_fits(table)
    figures["model_fit"] = (plot_model_fit(table, (fit_table, pred)), "Model vs measurement", "")
    if few:
        figures["prediction"] = (plot_prediction(table, main, **kw), "Smoothed curves and physical model vs measured",
                                 "The fitted optimum in the choices table is read off the smoothed curves.")
    for i, (samples, title) in enumerate(trace_files(runs, main)):
        fig = plot_trace(samples, f"Power trace with app phases: {title}")
        if fig is not None:
            figures[f"trace_{i}"] = (fig, f"Power trace: {title}", "")
    table, main = full_table, full_main
    pngs: dict[str, Path] = {}
    for key, (fig, _, _) in figures.items():
        pngs[key] = out / f"{key}.png"
        fig.savefig(pngs[key], dpi=dpi if few else max(60, dpi - 20))
    write_csv(fit_table, out / "model_fit.csv")

    synthetic = bool(runs["synthetic"].any()) if "synthetic" in runs else False
    lead = headline(main, objective, max_slowdown, table)
    measured = ~runs["warmup"].astype(bool) if "warmup" in runs else pd.Series(True, index=runs.index)
    summary = {"headline": lead, "gpus": sorted(runs["gpu"].astype(str).unique()),
               "workloads": int(table["workload"].nunique()), "runs": int(measured.sum()),
               "clocks": int(table["sm_clock_mhz"].nunique()), "synthetic": synthetic,
               "noisy_groups": int(table["noisy"].sum()), "objective": objective, "max_slowdown": max_slowdown,
               "choose_on": choose_on, "verdicts": main["verdict"].value_counts().to_dict()}
    summary["guided"] = guided_results(runs)
    policies = compare_phase_policies(runs, table, objective, max_slowdown)
    if len(policies):
        files["phase_policies"] = out / "phase_policies.csv"
        write_csv(policies, files["phase_policies"])
        summary["phase_policies"] = policies.to_dict("records")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    doc = _document(summary, main, all_choices, table, fit_table, figures, few)
    (out / "report.md").write_text(_markdown(doc, pngs))
    (out / "report.html").write_text(_html(doc, pngs))
    files.update(pngs)
    files.update({"html": out / "report.html", "markdown": out / "report.md"})
    return files


def _document(summary: dict, main: pd.DataFrame, all_choices: pd.DataFrame, table: pd.DataFrame,
              fit_table: pd.DataFrame, figures: dict, few: bool) -> list[tuple]:
    """The report as blocks, so the HTML and the Markdown say the same thing in the same order."""
    name = OBJECTIVE_NAME[summary["objective"]]
    cap = ("no slowdown limit" if summary["max_slowdown"] is None
           else f"at most {100 * summary['max_slowdown']:.0f} % slower than the max clock")
    doc: list[tuple] = [("lead", summary["headline"])]
    if summary["synthetic"]:
        doc.append(("banner", SYNTHETIC_NOTE))
    problems = main[main["data_problems"].fillna("") != ""]
    if len(problems):
        items = [f"{r.workload}: {r.data_problems}" for r in problems.head(MAX_LIST_ITEMS).itertuples()]
        if len(problems) > MAX_LIST_ITEMS:
            items.append(f"... and {len(problems) - MAX_LIST_ITEMS} more workloads with data problems "
                         "(choices.csv, column data_problems).")
        doc.append(("problems", "Data problems", items))
    doc.append(("note", left_out_summary(table)))
    doc.append(("p", f"GPU(s): {', '.join(summary['gpus'])}; {summary['workloads']} workload(s), {summary['runs']} "
                     f"runs, {summary['clocks']} clocks. Objective: minimum {name}, {cap}; "
                     f"choices on the {'fitted curve' if summary['choose_on'] == 'fit' else 'measured means'}."))
    doc.append(("h2", f"Chosen clocks (minimum {name}, {cap})"))
    doc.append(("p", "Percentages with their 95 % interval in brackets (t-based, over the runs at each clock; "
                     "[unknown] with one run per clock). Positive = less energy / slower than the reference named "
                     "in the column."))
    listed = main
    if len(main) > MAX_CHOICE_ROWS:  # the ones a reader must see; the CSV has the rest
        listed = main[main["workload"].isin(panel_workloads(main, MAX_CHOICE_ROWS))]
    doc.append(("table", choices_table(listed, table)))
    if len(main) > MAX_CHOICE_ROWS:
        doc.append(("p", f"{MAX_CHOICE_ROWS} of {len(main)} workloads listed (data problems first, then the largest "
                         f"savings); choices.csv has them all."))
    if 1 < len(main) < SMALL_MULTIPLES_FROM:
        doc.append(("list", list(main["summary"])))
    doc.append(("h2", "The choice for each objective"))
    doc.append(("table", objectives_table(all_choices[all_choices["workload"].isin(listed["workload"])])))
    for source, g in summary.get("guided", {}).items():
        doc += _guided_blocks(source, g)
    if summary.get("phase_policies"):
        doc += _phase_policy_blocks(pd.DataFrame(summary["phase_policies"]), name)
    for key, (_, title, caption) in figures.items():
        doc.append(("h2", title))
        doc.append(("img", key, caption))
        if key == "model_fit" and not fit_table.empty:
            ft = fit_table.head(MAX_CHOICE_ROWS).rename(columns=FIT_COLUMNS)
            for c in ft.columns[1:]:
                ft[c] = ft[c].map(_num)
            doc.append(("table", ft))
    lo = left_out_table(table)
    if len(lo):
        doc.append(("h2", "Rows left out by screening"))
        doc.append(("table", lo.head(200)))
        if len(lo) > 200:
            doc.append(("p", f"... and {len(lo) - 200} more rows in features.csv (column 'excluded')."))
    if len(table) <= MAX_TABLE_ROWS:
        doc.append(("h2", "Per clock"))
        doc.append(("table", per_clock_table(table)))
    else:
        doc.append(("p", f"The per-clock table ({len(table)} rows) is in features.csv."))
    util = _utilisation(table)
    if util is not None:
        doc.append(("h2", "Energy per image and model FLOP utilisation"))
        doc.append(("p", "MFU = achieved FLOP/s over the GPU type's dense peak for the run's dtype (configs/gpus.yaml)."))
        doc.append(("table", util[0]))
        if util[1]:
            doc.append(("p", f"... and {util[1]} more rows in features.csv (columns energy_per_image_j_mean, "
                             "achieved_tflops, mfu)."))
    noisy = table[table["noisy"]]
    doc.append(("h2", "Noisy groups (run-to-run CV above 10 %)"))
    if len(noisy):
        cols = {"workload": "workload", "sm_clock_mhz": "clock (MHz)", "time_s_cv": "time CV",
                "energy_j_cv": "energy CV", "n_runs": "runs"}
        nt = noisy.head(MAX_TABLE_ROWS)[list(cols)].rename(columns=cols)
        for c in ("time CV", "energy CV"):
            nt[c] = nt[c].map(lambda v: _num(100 * v, ".1f") + " %" if np.isfinite(v) else "")
        nt["clock (MHz)"] = nt["clock (MHz)"].map(lambda v: f"{v:.0f}")
        doc.append(("table", nt))
        if len(noisy) > MAX_TABLE_ROWS:
            doc.append(("p", f"... and {len(noisy) - MAX_TABLE_ROWS} more noisy groups in features.csv (column noisy)."))
    else:
        doc.append(("p", "none"))
    return doc


def _phase_policy_blocks(policies: pd.DataFrame, name: str) -> list[tuple]:
    """Each per-phase clock policy against the best single clock and the max clock."""
    blocks: list[tuple] = [("h2", "Per-phase clocks vs the best single clock"),
                           ("p", f"Runs whose clock followed the app's phases (--phase-clocks) are no measurement of "
                                 f"one clock: they are left out of the per-clock statistics and compared here with the "
                                 f"clock chosen above. Saved = less {name} / energy than that clock (positive = the "
                                 f"policy is better), with 95 % intervals on the workload's run-to-run noise.")]
    sentences, shown = [], []
    for r in policies.itertuples():
        if not np.isfinite(float(r.best_clock_mhz)):
            sentences.append(f"{r.workload}: policy {r.policy}: no single-clock sweep of this workload to compare with.")
            continue
        vs_best = pct_text(r.objective_vs_best_pct, r.objective_vs_best_lo_pct, r.objective_vs_best_hi_pct)
        energy = pct_text(r.energy_vs_best_pct, r.energy_vs_best_lo_pct, r.energy_vs_best_hi_pct)
        slower = pct_text(r.slowdown_vs_best_pct, r.slowdown_vs_best_lo_pct, r.slowdown_vs_best_hi_pct)
        sentences.append(f"{r.workload} on {r.gpu}: policy {r.policy}: {r.verdict} ({r.best_clock_mhz:.0f} MHz): "
                         f"{name} saved {vs_best}, energy saved {energy}, slowdown {slower} ({r.n_runs} runs).")
        shown.append({"workload": r.workload, "GPU": r.gpu, "policy": r.policy, "runs": r.n_runs,
                      "best single clock (MHz)": f"{r.best_clock_mhz:.0f}", f"{name} saved vs it": vs_best,
                      "energy saved vs max clock": pct_text(r.energy_vs_max_pct, r.energy_vs_max_lo_pct,
                                                            r.energy_vs_max_hi_pct),
                      "slowdown vs max clock": _num(r.slowdown_vs_max_pct, ".1f") + " %", "verdict": r.verdict})
    blocks.append(("list", sentences))
    if shown:
        blocks.append(("table", pd.DataFrame(shown)))
    return blocks


def guided_results(runs: pd.DataFrame) -> dict[str, dict]:
    """``guided.json`` of every results directory in the data (the launcher's guided mode writes it)."""
    out = {}
    for source in runs["source"].astype(str).unique() if "source" in runs else []:
        path = Path(source) / "guided.json"
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                out[source] = json.loads(path.read_text())
    return out


def _guided_blocks(source: str, g: dict) -> list[tuple]:
    """What the guided search measured, chose and why it stopped; where its model extrapolated."""
    name = OBJECTIVE_NAME.get(g.get("objective", "edp"), "EDP")

    def num(key: str) -> float:
        v = g.get(key)
        return float(v) if isinstance(v, (int, float)) else float("nan")

    probes = g.get("probes_mhz") or []
    title = ("h2", f"Guided search ({Path(source).name})")
    if not np.isfinite(num("clock_mhz")):
        return [title, ("p", f"No clock chosen: {g.get('stop_reason') or 'no probe measured'}.")]
    saved = interval_text(num("energy_saved_pct"), num("energy_saved_lo_pct"), num("energy_saved_hi_pct"))
    blocks: list[tuple] = [title, ("p", f"Chosen for minimum {name}: {num('clock_mhz'):.0f} MHz "
                                        f"({g.get('verdict') or 'n/a'}), energy saved {saved} % vs "
                                        f"{num('reference_clock_mhz'):.0f} MHz, from {len(probes)} measured clocks "
                                        f"({', '.join(f'{f:.0f}' for f in probes)} MHz). The model alone predicted "
                                        f"{num('predicted_clock_mhz'):.0f} MHz. Stopped: {g.get('stop_reason') or 'n/a'}."
                                        f" Model: {(g.get('model') or {}).get('source', 'n/a')}.")]
    if g.get("data_problems"):
        blocks.append(("problems", "Data problems in the guided search", list(g["data_problems"])))
    notes = g.get("extrapolation") or []
    if notes:
        blocks.append(("problems", "The model extrapolates", list(notes)))
    errors = pd.DataFrame(g.get("prediction_errors") or [])
    if len(errors):
        cols = {"clock_mhz": "clock (MHz)", "runs": "runs", "error_power_pct": "power error %",
                "error_time_pct": "time error %", "error_energy_pct": "energy error %"}
        errors = errors[[c for c in cols if c in errors]].rename(columns=cols)
        for c in errors.columns[2:]:
            errors[c] = errors[c].map(lambda v: "" if v is None or not np.isfinite(v) else f"{v:+.1f}")
        errors["clock (MHz)"] = errors["clock (MHz)"].map(lambda v: f"{v:.0f}")
        blocks.append(("table", errors))
    return blocks


def _utilisation(table: pd.DataFrame) -> tuple[pd.DataFrame, int] | None:
    """The page's rows of energy per image and MFU (the first ``MAX_TABLE_ROWS``) and how many more features.csv has."""
    if "mfu" not in table or table["mfu"].isna().all():
        return None
    rows = table[table["mfu"].notna()]
    t = rows.head(MAX_TABLE_ROWS)
    out = pd.DataFrame({"workload": t["workload"], "clock (MHz)": t["sm_clock_mhz"].map(lambda v: f"{v:.0f}"),
                         "energy per image (J)": t["energy_per_image_j_mean"].map(_num),
                         "achieved TFLOP/s": t["achieved_tflops"].map(_num),
                         "MFU, %": (100 * t["mfu"]).map(lambda v: _num(v, ".1f"))})
    return out, len(rows) - len(t)


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _pipe_table(df: pd.DataFrame) -> str:
    """``df`` as a Markdown pipe table, columns padded to their widest cell (what tabulate wrote, in
    milliseconds where tabulate's type sniffing took seconds for a campaign's few hundred rows)."""
    cells = df.astype(str).map(_md_cell)
    names = [_md_cell(c) for c in df.columns]
    widths = [max(len(n), 3, int(cells[c].str.len().max()) if len(cells) else 0)
              for n, c in zip(names, cells.columns, strict=True)]

    def line(values) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rows = [line(names), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    rows += [line(r) for r in cells.itertuples(index=False)]
    return "\n".join(rows)


def _markdown(doc: list[tuple], pngs: dict[str, Path]) -> str:
    lines: list[str] = []
    for block in doc:
        kind = block[0]
        if kind == "lead":
            lines += [f"**{block[1]}**", "", "# DVFS energy report", ""]
        elif kind == "banner":
            lines += [f"> **{block[1]}**", ""]
        elif kind == "problems":
            lines += [f"> **{block[1]}:**", ">"] + [f"> - {_md_cell(x)}" for x in block[2]] + [""]
        elif kind == "note":
            lines += [f"> {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {x}" for x in block[1]] + [""]
        elif kind == "table":
            df = block[1]
            if df.empty:
                lines += ["(none)", ""]
                continue
            lines += [_pipe_table(df), ""]
        elif kind == "img":
            lines += [f"![{block[1]}]({pngs[block[1]].name})", ""]
            if block[2]:
                lines += [f"*{block[2]}*", ""]
    return "\n".join(lines)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:auto;padding:1em 1.2em;
 line-height:1.4;color:#222}
.lead{font-size:1.2em;font-weight:600;border-left:6px solid #2b6cb0;background:#ebf4ff;padding:.7em 1em;margin-top:0}
.synthetic{background:#fff3cd;border:2px solid #e0a800;padding:.6em;font-weight:bold}
.problems{background:#fde8e8;border:2px solid #c53030;padding:.4em 1em}
.note{background:#f4f4f4;border-left:4px solid #999;padding:.5em 1em}
h1{font-size:1.5em;margin:.8em 0 .3em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto} figure{margin:0} figcaption{font-size:.9em;color:#444}
.tw{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:.4em 0}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3;font-weight:600}
td.n{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums} td.s{white-space:nowrap}
td.t{min-width:10em;max-width:34em;overflow-wrap:anywhere}
"""


NUMERIC_CELL = r"[-+\d.,/%±e\s\[\]]*(\[unknown\])?|default \d+"


def _html_table(df: pd.DataFrame) -> str:
    """A table whose short cells stay on one line and long text wraps, so it fits a laptop screen."""
    if df.empty:
        return "<p>(none)</p>"
    cells = df.astype(str)
    long = cells.apply(lambda s: s.str.len().max() > 24)
    numeric = cells.apply(lambda s: s.str.fullmatch(NUMERIC_CELL).all())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    cls = ["t" if long[c] else "n" if numeric[c] else "s" for c in df.columns]
    body = "".join("<tr>" + "".join(f'<td class="{k}">{html.escape(v)}</td>' for k, v in zip(cls, row, strict=True))
                   + "</tr>" for row in cells.itertuples(index=False))
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _html(doc: list[tuple], pngs: dict[str, Path]) -> str:
    parts: list[str] = []
    for block in doc:
        kind = block[0]
        if kind == "lead":
            parts.append(f'<p class="lead" id="summary">{html.escape(block[1])}</p><h1>DVFS energy report</h1>')
        elif kind == "banner":
            parts.append(f'<p class="synthetic">{html.escape(block[1])}</p>')
        elif kind == "problems":
            items = "".join(f"<li>{html.escape(x)}</li>" for x in block[2])
            parts.append(f'<div class="problems"><strong>{html.escape(block[1])}</strong><ul>{items}</ul></div>')
        elif kind == "note":
            parts.append(f'<p class="note">{html.escape(block[1])}</p>')
        elif kind == "h2":
            parts.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in block[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(block[1]))
        elif kind == "img":
            cap = f"<figcaption>{html.escape(block[2])}</figcaption>" if block[2] else ""
            parts.append(f"<figure>{_img(pngs[block[1]], block[1])}{cap}</figure>")
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>DVFS energy report</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
