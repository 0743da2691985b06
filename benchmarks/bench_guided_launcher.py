"""The launcher's guided mode on the 24 reference V100 applications: EDP regret and clocks measured.

For every application the launcher runs ``--profiling-mode guided`` on the replay backend (the
reference tables served as if a V100 produced them, one run per clock) with

* the shipped model (``model_store.shipped_model``). IN-SAMPLE: it was trained on these same 24
  applications, so this column is an optimistic bound, not a prediction for a new workload;
* a held-out model per application, trained on the other 23 (the same ``usable`` rows, activity
  counters on, as the shipped one), saved with ``model_store.save_model`` and passed with
  ``--guided-model``: what a workload the model has never seen gets;

beside ``selection.evaluate_guided`` (the ``python -m power_modeling select --guided K`` path) on
the same feature table with the same held-out models (and with the shipped model). The launcher
stops early when the next probe is not predicted to beat the best measured one
(``stop_gain=0``); ``evaluate_guided`` always measures ``K`` clocks. Regret is the chosen clock's
EDP over the best EDP among the application's usable clocks (screened rows left out), minus 1.

The launcher runs in this process (``profiling.launch.main``, the same entry point as
``launch.sh``) so the model files are loaded once per file rather than once per subprocess.

Run: ``.venv/bin/python benchmarks/bench_guided_launcher.py`` (about 2 minutes on 2 busy cores, half
of it fitting the 24 held-out models); ``--apps NAMD,LSTM`` for a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from power_modeling.features import feature_table  # noqa: E402
from power_modeling.io import load_runs  # noqa: E402
from power_modeling.model_store import save_model, shipped_model  # noqa: E402
from power_modeling.models import CrossWorkloadModel, usable  # noqa: E402
from power_modeling.selection import evaluate_guided  # noqa: E402
from profiling import launch  # noqa: E402

REFERENCE = REPO.parent / "shared" / "data" / "reference"
CSVS = ("v100_spec_21apps_dvfs.csv", "v100_hpc_3apps_dvfs.csv")


def run_launcher(csv: Path, app: str, out: Path, probes: int, model: Path | None = None) -> tuple[dict, int, float]:
    """One guided launch on the replayed ``app``; returns (guided.json, rows written, seconds)."""
    args = ["--profiling-tool", "replay", "--replay-source", str(csv), "--replay-app", app,
            "--profiling-mode", "guided", "--guided-probes", str(probes), "--objective", "edp", "--max-slowdown", "-1",
            "--num-runs", "1", "--sleep-interval", "0", "--idle-seconds", "0", "--output-dir", str(out)]
    if model is not None:
        args += ["--guided-model", str(model)]
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = launch.main(args)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"launcher failed ({rc}) for {app}:\n{buf.getvalue()}")
    rows = len(pd.read_csv(out / "runs.csv"))
    return json.loads((out / "guided.json").read_text()), rows, seconds


def regret_pct(table: pd.DataFrame, app: str, clock: float) -> float:
    """EDP at ``clock`` over the best EDP among ``app``'s usable clocks, minus 1, in percent."""
    ok = usable(table)
    ok = ok[ok["workload"] == app]
    best = float((ok["energy_j_mean"] * ok["time_s_mean"]).min())
    row = table[(table["workload"] == app) & (table["sm_clock_mhz"] == clock)].iloc[0]
    return 100 * (float(row["energy_j_mean"] * row["time_s_mean"]) / best - 1)


def smoothed_regret_pct(table: pd.DataFrame, app: str, clock: float) -> float:
    """The same regret on the smoothed EDP curve of the full sweep (``selection.smooth_curves``): single
    runs scatter by up to +-4 % in time (NAMD), so the best single run is partly a noise spike."""
    from power_modeling.selection import smooth_curves

    ok = usable(table)
    ok = ok[ok["workload"] == app]
    f = ok["sm_clock_mhz"].to_numpy()
    t, p = smooth_curves(f, ok["time_s_mean"], ok["power_w_mean"])
    edp = p * t * t
    return 100 * (float(edp[f == clock][0]) / float(edp.min()) - 1) if (f == clock).any() else float("nan")


def summary(name: str, regret: pd.Series, clocks: pd.Series) -> str:
    return (f"{name:<34} mean regret {regret.mean():5.2f} %  p90 {regret.quantile(0.9):5.2f} %  max "
            f"{regret.max():5.2f} %  clocks measured mean {clocks.mean():.2f}, max {int(clocks.max())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--apps", default=None, help="comma-separated subset (default: all 24)")
    ap.add_argument("--probes", type=int, default=5, help="--guided-probes, and K of evaluate_guided")
    ap.add_argument("--json", type=Path, default=None, help="also write the per-application table here")
    a = ap.parse_args(argv)

    csvs = [a.reference / c for c in CSVS]
    runs = load_runs(csvs)
    table = feature_table(runs)
    locked = usable(table)
    source = {str(wl): Path(src) for wl, src in runs.groupby("workload")["source"].first().items()}
    apps = sorted(source) if not a.apps else [s.strip() for s in a.apps.split(",")]
    os.environ.setdefault("SD_ENERGY_LOCK_DIR", tempfile.mkdtemp(prefix="bench-guided-locks-"))

    rows, held_out = [], {}
    t_fit = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-guided-") as tmp:
        tmp = Path(tmp)
        for app in apps:
            t0 = time.perf_counter()
            model = CrossWorkloadModel(use_activity=True).fit(locked[locked["workload"] != app])
            held_out[app] = model
            path = save_model(model, tmp / f"heldout_{app}.skops", {"held_out": app})
            t_fit += time.perf_counter() - t0
            g_ship, n_ship, s_ship = run_launcher(source[app], app, tmp / f"ship_{app}", a.probes)
            g_held, n_held, s_held = run_launcher(source[app], app, tmp / f"held_{app}", a.probes, path)
            rows.append({"workload": app,
                         "launch_shipped_mhz": g_ship["clock_mhz"], "launch_shipped_clocks": n_ship,
                         "launch_shipped_regret_pct": regret_pct(table, app, g_ship["clock_mhz"]),
                         "launch_shipped_model": g_ship["model"]["source"], "launch_shipped_s": s_ship,
                         "launch_heldout_mhz": g_held["clock_mhz"], "launch_heldout_clocks": n_held,
                         "launch_heldout_regret_pct": regret_pct(table, app, g_held["clock_mhz"]),
                         "launch_heldout_smoothed_regret_pct": smoothed_regret_pct(table, app, g_held["clock_mhz"]),
                         "launch_heldout_s": s_held, "stop_reason": g_held["stop_reason"]})
            print(f"{app:<14} shipped {g_ship['clock_mhz']:6.0f} MHz ({n_ship} clocks, "
                  f"{rows[-1]['launch_shipped_regret_pct']:5.2f} %)  held-out {g_held['clock_mhz']:6.0f} MHz "
                  f"({n_held} clocks, {rows[-1]['launch_heldout_regret_pct']:5.2f} %)", flush=True)
    df = pd.DataFrame(rows).set_index("workload")

    sub = table[table["workload"].isin(apps)] if a.apps else table
    ev_held = evaluate_guided(sub, CrossWorkloadModel, "edp", a.probes, None, fitted=dict(held_out)).set_index("workload")
    ship = shipped_model(activity=True)
    ev_ship = evaluate_guided(sub, CrossWorkloadModel, "edp", a.probes, None,
                              fitted={wl: ship for wl in apps}).set_index("workload")
    df["select_heldout_mhz"], df["select_heldout_clocks"] = ev_held["chosen_mhz"], ev_held["probes"]
    df["select_heldout_regret_pct"] = ev_held["regret_pct"]
    df["select_shipped_regret_pct"], df["select_shipped_clocks"] = ev_ship["regret_pct"], ev_ship["probes"]
    df["best_mhz"] = ev_held["best_mhz"]

    cols = ["best_mhz", "launch_shipped_mhz", "launch_shipped_clocks", "launch_shipped_regret_pct",
            "launch_heldout_mhz", "launch_heldout_clocks", "launch_heldout_regret_pct", "select_heldout_mhz",
            "select_heldout_clocks", "select_heldout_regret_pct", "select_shipped_regret_pct"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[cols].round(2).to_string())
    print()
    print(summary("launcher, shipped model (in-sample)", df["launch_shipped_regret_pct"], df["launch_shipped_clocks"]))
    print(summary("launcher, held-out model", df["launch_heldout_regret_pct"], df["launch_heldout_clocks"]))
    print(summary("  the same, vs the smoothed curve", df["launch_heldout_smoothed_regret_pct"],
                  df["launch_heldout_clocks"]))
    print(summary(f"select --guided {a.probes}, held-out model", df["select_heldout_regret_pct"],
                  df["select_heldout_clocks"]))
    print(summary(f"select --guided {a.probes}, shipped (in-sample)", df["select_shipped_regret_pct"],
                  df["select_shipped_clocks"]))
    print("stop reasons (held-out launcher): "
          + "; ".join(f"{k}: {v}" for k, v in df["stop_reason"].str.replace(r" \(\d+ MHz\)", "", regex=True)
                      .value_counts().items()))
    print(f"time: held-out fits {t_fit:.0f} s, launcher runs {df['launch_shipped_s'].sum():.0f} s (shipped) + "
          f"{df['launch_heldout_s'].sum():.0f} s (held-out)")
    if a.json:
        a.json.write_text(df.reset_index().replace({np.nan: None}).to_json(orient="records", indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
