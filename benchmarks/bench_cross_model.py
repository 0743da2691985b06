"""CrossWorkloadModel cost and accuracy, old settings against new, side by side on the reference data.

    .venv/bin/python benchmarks/bench_cross_model.py [--reference ../shared/data/reference] [--seeds 5] [--quick]

Each row is one leave-one-workload-out over the 24 reference V100 apps (fit on 23, predict the
held-out one at every clock: power and time), then the guided EDP search (4 probes) on the same
folds. Times: LOWO wall clock, the CPU seconds this process burnt in it (all threads; the machine
may be shared, so wall clock includes waiting for other jobs), and the guided replay. "old" is 300 boosting stages at learning rate 0.05 with the thread pools left at their
defaults (what the model did before); "new" is 100 stages at 0.1 with BLAS/OpenMP capped at one
thread. The seed rows repeat old and new stages at one thread with other ``random_state`` values:
the guided regret moves with the seed by more than with the stage count. The neighbour row times
the per-row neighbour loop the model used to run against its vectorised form (same numbers).
``--quick`` leaves out the slow default-thread row (~4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

OLD = {"n_estimators": 300, "learning_rate": 0.05}
NEW = {"n_estimators": 100, "learning_rate": 0.1}


def _run(table, params: dict) -> dict:
    from power_modeling import evaluate_guided, leave_one_workload_out
    from power_modeling.models import CrossWorkloadModel

    folds: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    cv = leave_one_workload_out(table, lambda: CrossWorkloadModel(**params), folds)
    t1, c1 = time.perf_counter(), time.process_time()
    reg = evaluate_guided(table, None, "edp", 4, None, folds)
    t2 = time.perf_counter()
    return {"lowo_s": t1 - t0, "lowo_cpu_s": c1 - c0, "guided_s": t2 - t1, "power": cv["power_mape"].mean() * 100,
            "time": cv["time_mape"].mean() * 100, "energy": cv["energy_mape"].mean() * 100,
            "regret": reg["regret_pct"].mean(), "p90": reg["regret_pct"].quantile(0.9),
            "worst": f"{reg['regret_pct'].max():.1f} ({reg.loc[reg['regret_pct'].idxmax(), 'workload']})"}


def _row(name: str, r: dict) -> str:
    return (f"{name:<44} {r['lowo_s']:7.1f} {r['lowo_cpu_s']:7.1f} {r['guided_s']:6.1f} {r['power']:7.2f} {r['time']:6.2f} {r['energy']:7.2f}"
            f" {r['regret']:7.2f} {r['p90']:6.2f}  {r['worst']}")


def _neighbours(table) -> str:
    """Old per-row neighbour loop vs the vectorised one on one fold (all rows of a held-out app)."""
    from power_modeling.models import CrossWorkloadModel, usable

    locked = usable(table)
    model = CrossWorkloadModel(n_estimators=5).fit(locked[locked["workload"] != "LAMMPS"])
    X = model._features(locked[locked["workload"] == "LAMMPS"])

    def per_row():
        z_rows = (X.iloc[:, 1:].to_numpy() - model.feature_mean_) / model.feature_std_
        out = np.empty(len(X))
        for i, (f_rel, z) in enumerate(zip(X["f_rel"].to_numpy(), z_rows, strict=True)):
            d = np.nansum((model.workload_z_ - z) ** 2, axis=1)
            near = np.argsort(d)[: model.n_neighbors]
            logs = [np.interp(f_rel, model.curves_[model.workloads_[j]][:, 0], model.curves_[model.workloads_[j]][:, 1])
                    for j in near]
            out[i] = np.average(logs, weights=1.0 / (d[near] + 1e-3))
        return out

    timings = {}
    for name, fn in (("per-row loop", per_row), ("vectorised", lambda: model._neighbor_log_rel(X, "power_w_rel"))):
        t0 = time.perf_counter()
        for _ in range(20):
            result = fn()
        timings[name] = ((time.perf_counter() - t0) / 20 * 1000, result)
    same = np.allclose(timings["per-row loop"][1], timings["vectorised"][1], rtol=0, atol=1e-12)
    return (f"neighbour part, {len(X)} rows x 1 target: per-row loop {timings['per-row loop'][0]:.1f} ms, "
            f"vectorised {timings['vectorised'][0]:.2f} ms, same values: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"))
    ap.add_argument("--seeds", type=int, default=5, help="random_state values 0..N-1 for the seed rows (1: none)")
    ap.add_argument("--quick", action="store_true", help="skip the default-thread-pool row (slow on few cores)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from power_modeling import feature_table, load_runs

    ref = Path(args.reference)
    table = feature_table(load_runs([ref / "v100_spec_21apps_dvfs.csv", ref / "v100_hpc_3apps_dvfs.csv"]))
    print(f"{table['workload'].nunique()} applications, {len(table)} (app, clock) rows; {os.cpu_count()} CPU cores")
    print(f"{'settings':<44} {'LOWO s':>7} {'CPU s':>7} {'guid s':>6} {'P MAPE':>7} {'T MAPE':>6} {'E MAPE':>7}"
          f" {'regret':>7} {'p90':>6}  worst %")
    runs = [("old: 300 stages @0.05, default threads", {**OLD, "n_threads": None})] if not args.quick else []
    runs += [("300 stages @0.05, 1 thread", {**OLD, "n_threads": 1}),
             ("new: 100 stages @0.1, 1 thread", {**NEW, "n_threads": 1}),
             ("new, no activity counters", {**NEW, "n_threads": 1, "use_activity": False})]
    results = {}
    for name, params in runs:
        results[name] = _run(table, params)
        print(_row(name, results[name]), flush=True)
    if args.seeds > 1:
        for label, stages, seed0 in (("300 @0.05", OLD, "300 stages @0.05, 1 thread"),
                                     ("100 @0.1", NEW, "new: 100 stages @0.1, 1 thread")):
            got = [results[seed0]]
            for s in range(1, args.seeds):
                got.append(_run(table, {**stages, "random_state": s}))
                print(_row(f"{label}, 1 thread, random_state={s}", got[-1]), flush=True)
            regrets = [r["regret"] for r in got]
            print(f"{label}: regret mean over seeds {np.mean(regrets):.2f} % (range {min(regrets):.2f}-"
                  f"{max(regrets):.2f}), p90 range {min(r['p90'] for r in got):.2f}-{max(r['p90'] for r in got):.2f}, "
                  f"LOWO {np.mean([r['lowo_s'] for r in got]):.1f} s per run", flush=True)
    print(_neighbours(table))


if __name__ == "__main__":
    main()
