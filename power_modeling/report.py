"""Plots, tables and the report page (HTML with images embedded, plus Markdown with PNG files)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .models import PhysicalModel  # noqa: E402
from .selection import choose_all  # noqa: E402

SYNTHETIC_NOTE = ("SYNTHETIC DATA: these results come from the simulated GPU backend (a documented model, "
                  "profiling/backends/simulated.py), not from a measurement.")


def plot_vs_clock(table: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    panels = [("power_w", "Power (W)"), ("time_s", "Work time (s)"), ("energy_j", "Energy (J)"), ("edp", "EDP (J·s)")]
    locked = table[~table["is_default_clock"].astype(bool)]
    for ax, (m, label) in zip(axes.flat, panels, strict=True):
        for wl, g in locked.groupby("workload"):
            g = g.sort_values("sm_clock_mhz")
            if m == "edp":
                y = g["edp_mean"]
                err = y * np.sqrt((g["energy_j_cv"]) ** 2 + (g["time_s_cv"]) ** 2)
            else:
                y, err = g[f"{m}_mean"], g[f"{m}_std"]
            ax.errorbar(g["sm_clock_mhz"], y, yerr=err, marker="o", ms=3, capsize=2, label=_short(wl))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("SM clock (MHz)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Power, time, energy and EDP vs SM clock (mean ± std over runs)")
    return _save(fig, path)


def plot_pareto(table: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    locked = table[~table["is_default_clock"].astype(bool)]
    for wl, g in locked.groupby("workload"):
        g = g.sort_values("time_s_mean")
        front = g[g["energy_j_mean"] <= g["energy_j_mean"].cummin()]
        sc = ax.scatter(g["time_s_mean"], g["energy_j_mean"], c=g["sm_clock_mhz"], cmap="viridis", s=18)
        ax.plot(front["time_s_mean"], front["energy_j_mean"], "-", lw=1, label=f"{_short(wl)} front")
    fig.colorbar(sc, ax=ax, label="SM clock (MHz)")
    ax.set_xlabel("Work time (s)")
    ax.set_ylabel("Energy (J)")
    ax.set_title("Energy vs time: Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_trace(samples_csv: Path, path: Path, title: str) -> Path | None:
    if not samples_csv.exists():
        return None
    s = pd.read_csv(samples_csv)
    if s.empty or "power_w" not in s:
        return None
    t = s["mono_s"] - s["mono_s"].iloc[0]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    ax.plot(t, s["power_w"], lw=1, color="black")
    colours = {"load": "#cccccc", "text_encode": "#8dd3c7", "denoise_step": "#fb8072", "vae_decode": "#80b1d3",
               "save": "#fdb462", "warmup": "#bebada", "process": "#ffffff"}
    if "phase" in s:
        seg = (s["phase"] != s["phase"].shift()).cumsum()
        seen = set()
        for _, g in s.groupby(seg):
            ph = g["phase"].iloc[0]
            t0, t1 = t[g.index[0]], t[min(g.index[-1] + 1, len(t) - 1)]
            ax.axvspan(t0, t1, color=colours.get(ph, "#ffffb3"), alpha=0.6, lw=0,
                       label=ph if ph not in seen else None)
            seen.add(ph)
    ax.set_xlabel("time since launch (s)")
    ax.set_ylabel("Power (W)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    return _save(fig, path)


def plot_model_fit(table: pd.DataFrame, path: Path) -> tuple[Path, pd.DataFrame]:
    """Per-workload physical model fitted on all clocks: predicted vs measured energy."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    rows = []
    locked = table[~table["is_default_clock"].astype(bool)]
    for wl, g in locked.groupby("workload"):
        if g["sm_clock_mhz"].nunique() < 3:
            continue
        m = PhysicalModel(n_bootstrap=0).fit(g["sm_clock_mhz"], g["time_s_mean"], g["power_w_mean"])
        t, p = m.predict(g["sm_clock_mhz"])
        ax.scatter(g["energy_j_mean"], t * p, s=12, label=_short(wl))
        rows.append({"workload": wl, "energy_mape": float(np.mean(np.abs(t * p - g["energy_j_mean"]) / g["energy_j_mean"])),
                     "time_a_s": m.coef_time_[0], "time_b_s_ghz": m.coef_time_[1], "power_c_w": m.coef_power_[0],
                     "power_d_w_per_ghz": m.coef_power_[1], "power_e_w_per_ghz3": m.coef_power_[2]})
    lim = [locked["energy_j_mean"].min() * 0.95, locked["energy_j_mean"].max() * 1.05]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xlabel("measured energy (J)")
    ax.set_ylabel("model energy (J)")
    ax.set_title("Physical model (T=a+b/f, P=c+df+ef³): predicted vs measured")
    ax.legend(fontsize=7)
    return _save(fig, path), pd.DataFrame(rows)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _trace_run(runs: pd.DataFrame, table: pd.DataFrame, choices: pd.DataFrame) -> list[tuple[Path, str]]:
    """The sample files of the first workload at its max clock and at its chosen clock."""
    out = []
    with_dirs = runs[runs["source"].map(lambda s: Path(s).is_dir())]
    if with_dirs.empty or choices.empty:
        return out
    wl = choices.iloc[0]["workload"]
    for clock, label in ((choices.iloc[0]["reference_clock_mhz"], "max clock"), (choices.iloc[0]["clock_mhz"], "chosen clock")):
        r = with_dirs[(with_dirs["workload"] == wl) & (with_dirs["sm_clock_mhz"] == clock)]
        if len(r):
            row = r.iloc[0]
            out.append((Path(row["source"]) / "samples" / f"{row['run_id']}.csv", f"{label} {clock:.0f} MHz ({row['run_id']})"))
    return out


def build_report(runs: pd.DataFrame, table: pd.DataFrame, out: Path, objective: str = "edp",
                 max_slowdown: float | None = 0.05) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    choices = pd.concat([choose_all(table, obj, max_slowdown) for obj in ("energy", "edp", "ed2p")], ignore_index=True)
    files = {"features": out / "features.csv", "choices": out / "choices.csv", "runs": out / "runs_tidy.csv"}
    table.to_csv(files["features"], index=False)
    choices.to_csv(files["choices"], index=False)
    runs.to_csv(files["runs"], index=False)
    pngs = {"vs_clock": plot_vs_clock(table, out / "vs_clock.png"), "pareto": plot_pareto(table, out / "pareto.png")}
    fit_png, fit_table = plot_model_fit(table, out / "model_fit.png")
    pngs["model_fit"] = fit_png
    fit_table.to_csv(out / "model_fit.csv", index=False)
    main = choices[choices["objective"] == objective]
    for i, (samples, title) in enumerate(_trace_run(runs, table, main)):
        p = plot_trace(samples, out / f"trace_{i}.png", f"Power trace with app phases: {title}")
        if p:
            pngs[f"trace_{i}"] = p
    synthetic = bool(runs["synthetic"].any())
    summary = {"gpus": sorted(runs["gpu"].unique()), "workloads": int(table["workload"].nunique()),
               "runs": len(runs), "clocks": int(table["sm_clock_mhz"].nunique()), "synthetic": synthetic,
               "noisy_groups": int(table["noisy"].sum()), "objective": objective, "max_slowdown": max_slowdown}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _write_markdown(out / "report.md", summary, choices, fit_table, pngs)
    _write_html(out / "report.html", summary, choices, fit_table, pngs, table)
    files.update({k: v for k, v in pngs.items()})
    files.update({"html": out / "report.html", "markdown": out / "report.md"})
    return files


def _choice_cols(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["workload", "objective", "clock_mhz", "reference_clock_mhz", "energy_saved_pct", "energy_saved_lo_pct", "energy_saved_hi_pct",
            "slowdown_pct", "energy_saved_vs_default_pct", "slowdown_vs_default_pct"]
    return df[cols].round(2)


def _write_markdown(path, summary, choices, fit_table, pngs) -> None:
    lines = ["# DVFS energy report", ""]
    if summary["synthetic"]:
        lines += [f"> **{SYNTHETIC_NOTE}**", ""]
    lines += [f"GPU(s): {', '.join(summary['gpus'])}; {summary['workloads']} workload(s), {summary['runs']} runs, "
              f"{summary['clocks']} clocks; groups with CV > 10 %: {summary['noisy_groups']}.", "",
              f"## Chosen clocks (max slowdown {summary['max_slowdown']})", "",
              _choice_cols(choices).to_markdown(index=False) if _has_tabulate() else _choice_cols(choices).to_string(index=False),
              ""]
    for name, p in pngs.items():
        lines += [f"![{name}]({Path(p).name})", ""]
    path.write_text("\n".join(lines))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _utilisation_html(table: pd.DataFrame) -> str:
    """Energy per image, achieved TFLOP/s and model FLOP utilisation per clock, where FLOPs are known."""
    if "mfu" not in table or table["mfu"].isna().all():
        return ""
    cols = ["workload", "sm_clock_mhz", "energy_per_image_j_mean", "achieved_tflops", "mfu"]
    return ("<h2>Energy per image and model FLOP utilisation</h2><p>MFU = achieved FLOP/s over the GPU type's "
            "dense peak for the run's dtype (configs/gpus.yaml).</p>" + table[cols].round(4).to_html(index=False))


def _write_html(path, summary, choices, fit_table, pngs, table) -> None:
    banner = f'<p class="synthetic">{html.escape(SYNTHETIC_NOTE)}</p>' if summary["synthetic"] else ""
    noisy = table[table["noisy"]][["workload", "sm_clock_mhz", "time_s_cv", "energy_j_cv", "n_runs"]]
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>DVFS energy report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 6px}}
.synthetic{{background:#fff3cd;border:2px solid #e0a800;padding:.6em;font-weight:bold}}</style></head><body>
<h1>DVFS energy report</h1>{banner}
<p>GPU(s): {html.escape(', '.join(summary['gpus']))}; {summary['workloads']} workload(s), {summary['runs']} runs,
{summary['clocks']} clocks. Groups with run-to-run CV above 10 %: {summary['noisy_groups']}.</p>
<h2>Chosen clocks (max slowdown {summary['max_slowdown']})</h2>{_choice_cols(choices).to_html(index=False)}
<h2>Power, time, energy, EDP vs clock</h2>{_img(pngs['vs_clock'])}
<h2>Energy vs time</h2>{_img(pngs['pareto'])}
<h2>Model vs measurement</h2>{_img(pngs['model_fit'])}{fit_table.round(3).to_html(index=False)}
{''.join(f'<h2>Power trace {k[-1]}</h2>' + _img(v) for k, v in pngs.items() if k.startswith('trace_'))}
{_utilisation_html(table)}
<h2>Noisy groups (CV &gt; 10 %)</h2>{noisy.round(3).to_html(index=False) if len(noisy) else '<p>none</p>'}
</body></html>"""
    path.write_text(body)
