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
    folds: dict = {}
    for name, make, cache in (("FGCS-form refit", FGCSModel, None), ("cross-workload GBR", CrossWorkloadModel, folds)):
        t0 = time.perf_counter()
        cv = leave_one_workload_out(table, make, cache)
        hpc = cv[cv["workload"].isin(["LAMMPS", "NAMD", "LSTM"])]
        print(f"{name:<20} power MAPE {cv['power_mape'].mean():.2%} (HPC apps {hpc['power_mape'].mean():.2%}), "
              f"time MAPE {cv['time_mape'].mean():.2%}, energy MAPE {cv['energy_mape'].mean():.2%}, "
              f"power R2 {cv['power_r2'].mean():.3f}  [{time.perf_counter() - t0:.0f} s]")
    for objective in ("edp", "energy", "ed2p"):
        reg = evaluate_guided(table, CrossWorkloadModel, objective, args.probes, None, folds)
        print(f"guided {objective:<6} ({args.probes} probes): regret mean {reg['regret_pct'].mean():.2f} %, "
              f"p90 {reg['regret_pct'].quantile(0.9):.2f} %, max {reg['regret_pct'].max():.2f} % "
              f"({reg.loc[reg['regret_pct'].idxmax(), 'workload']})")


if __name__ == "__main__":
    main()
