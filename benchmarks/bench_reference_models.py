"""power_modeling on the real V100 reference data: leave-one-application-out accuracy and guided regret.

    .venv/bin/python benchmarks/bench_reference_models.py [--reference ../shared/data/reference]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "reference"))
    ap.add_argument("--probes", type=int, default=4)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from power_modeling import (
        CrossWorkloadModel,
        FGCSModel,
        evaluate_guided,
        feature_table,
        leave_one_workload_out,
        load_runs,
    )

    ref = Path(args.reference)
    table = feature_table(load_runs([ref / "v100_spec_21apps_dvfs.csv", ref / "v100_hpc_3apps_dvfs.csv"]))
    print(f"{table['workload'].nunique()} applications, {len(table)} (app, clock) rows, "
          f"{int(table['outlier'].sum())} flagged outliers")
    # 19 of the 21 SPEC apps share one run-time column to the digit (the suite's timing), so their
    # time curves are one curve; the five apps below have their own, and are reported apart.
    own_time = ["LAMMPS", "LSTM", "NAMD", "dgemm", "stream"]
    folds: dict = {}
    folds_no_time: dict = {}
    models = (("FGCS-form refit", FGCSModel, None),
              ("cross-workload, no run-time feature", lambda: CrossWorkloadModel(use_time_at_max=False), folds_no_time),
              ("cross-workload model", CrossWorkloadModel, folds))
    for name, make, cache in models:
        t0 = time.perf_counter()
        cv = leave_one_workload_out(table, make, cache)
        hpc = cv[cv["workload"].isin(["LAMMPS", "NAMD", "LSTM"])]
        own = cv[cv["workload"].isin(own_time)]
        print(f"{name:<36} power MAPE {cv['power_mape'].mean():.2%} (HPC apps {hpc['power_mape'].mean():.2%}), "
              f"time MAPE {cv['time_mape'].mean():.2%} (apps with their own timing {own['time_mape'].mean():.2%}), "
              f"energy MAPE {cv['energy_mape'].mean():.2%}, power R2 {cv['power_r2'].mean():.3f}  "
              f"[{time.perf_counter() - t0:.0f} s]")
    for objective in ("edp", "energy", "ed2p"):
        reg = evaluate_guided(table, CrossWorkloadModel, objective, args.probes, None, folds)
        print(f"guided {objective:<6} ({args.probes} probes): regret mean {reg['regret_pct'].mean():.2f} %, "
              f"p90 {reg['regret_pct'].quantile(0.9):.2f} %, max {reg['regret_pct'].max():.2f} % "
              f"({reg.loc[reg['regret_pct'].idxmax(), 'workload']})")
    reg = evaluate_guided(table, CrossWorkloadModel, "edp", args.probes, None, folds_no_time)
    print(f"guided edp, model without the run-time feature: regret mean {reg['regret_pct'].mean():.2f} %, "
          f"p90 {reg['regret_pct'].quantile(0.9):.2f} %")
    sweep = []
    for gap in (0.0, 0.03, 0.05, 0.07, 0.09, 0.12):
        reg = evaluate_guided(table, CrossWorkloadModel, "edp", args.probes, None, folds, min_gap=gap)
        sweep.append(f"{gap:.2f}: {reg['regret_pct'].mean():.2f}/{reg['regret_pct'].quantile(0.9):.2f}")
    print("guided edp, min gap between probes (fraction of f_max): mean/p90 regret %  " + ", ".join(sweep))

if __name__ == "__main__":
    main()
