"""power_modeling at a centre's scale: load, screen, choose, fit and report a 1-million-run results table.

    .venv/bin/python benchmarks/bench_analysis_scale.py [--runs 1000000] [--workloads 1000] [--report]

Writes one synthetic results directory (``runs.csv`` as the launcher writes it, no per-run sample
files: a merged campaign) under a temporary folder, then times each stage in this process and
reports the peak resident memory. The data are synthetic (the simulated H100's form, 2 % run noise,
a cold first run per workload and one glitched clock per workload), so the screening has work to do.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def make_results(path: Path, runs: int, workloads: int, seed: int = 0) -> None:
    """A results directory with ``runs`` rows: ``workloads`` x clocks x repeats, launcher column names."""
    from profiling.results import RUNS_COLUMNS

    rng = np.random.default_rng(seed)
    clocks = np.arange(1785, 344, -15)
    per = max(runs // (workloads * len(clocks)), 1)
    wl = np.repeat(np.arange(workloads), len(clocks) * per)
    f = np.tile(np.repeat(clocks, per), workloads)
    idx = np.tile(np.arange(per), workloads * len(clocks))
    n = len(wl)
    x = f / 1785
    cb = rng.uniform(0.2, 0.9, workloads)[wl]
    t = rng.uniform(1, 60, workloads)[wl] * (cb / x + 1 - cb) * (1 + 0.02 * rng.standard_normal(n))
    p = (61 + 60 + 260 * x * np.maximum(0.62, x) ** 2) * (1 + 0.02 * rng.standard_normal(n))
    first = np.r_[True, wl[1:] != wl[:-1]]
    t[first] *= 4                                                     # a cold first run per workload
    glitch = (f == 1095) & (idx == 0)
    p[glitch] *= 0.6                                                  # one glitched run per workload
    df = pd.DataFrame({c: np.nan for c in RUNS_COLUMNS}, index=range(n))
    df = df.assign(run_id=[f"w{w}_{c}_r{i:02d}" for w, c, i in zip(wl, f, idx, strict=True)], sm_clock_target_mhz=f,
                   run_index=idx, warmup=0, status="ok", work_s=t, work_energy_j=t * p, wall_s=t + 5,
                   sm_clock_mean_mhz=f, clock_mismatch=0, backend="simulated", gpu_name="NVIDIA H100 NVL",
                   gpu_type="H100", workload=[f"app{w:04d}" for w in wl], images=4)
    path.mkdir(parents=True)
    df.to_csv(path / "runs.csv", index=False)
    (path / "manifest.json").write_text('{"gpu_type": "H100", "synthetic": true, "backend": "simulated"}')


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--report", action="store_true", help="also build the HTML report")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from power_modeling import choose_all, feature_table, load_runs
    from power_modeling.models import physical_fits

    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "campaign"
        t0 = time.perf_counter()
        make_results(res, args.runs, args.workloads)
        print(f"synthetic results: {args.runs} runs requested, written in {time.perf_counter() - t0:.1f} s "
              f"({(res / 'runs.csv').stat().st_size / 1e6:.0f} MB)")
        stages = {}
        t0 = time.perf_counter()
        runs = load_runs([res])
        stages["load_runs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = feature_table(runs)
        stages["feature_table (screening + stats)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        choices = choose_all(table, "edp", 0.05)
        stages["choose_all (edp, 5 %)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in physical_fits(table):
            pass
        stages["fit (physical, per workload)"] = time.perf_counter() - t0
        if args.report:
            from power_modeling.report import build_report

            t0 = time.perf_counter()
            build_report(runs, table, Path(tmp) / "report", "edp", 0.05)
            stages["report"] = time.perf_counter() - t0
        print(f"{len(runs)} runs, {table['workload'].nunique()} workloads, {len(table)} (workload, clock) rows; "
              f"{int(table['n_excluded_runs'].fillna(0).sum())} runs "
              f"and {int((table['excluded'] != '').sum())} clocks screened out")
        for name, s in stages.items():
            print(f"  {name:<36} {s:7.2f} s")
        print(f"  {'total':<36} {sum(stages.values()):7.2f} s   peak RSS {peak_rss_mb():.0f} MB")
        print(f"choices: {choices['verdict'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
