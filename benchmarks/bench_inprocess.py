"""Process vs in-process sweeps: what the launcher adds per run around the same generation work.

The same sweep of the tiny diffusion app (simulated GPU, so it runs anywhere) is run twice, one
mode after the other: process mode starts the app for every clock x run (Python start, torch and
diffusers imports, the model built and loaded again); in-process mode (``--in-process``) loads it
once. Overhead per run = (the whole launcher's wall time - the runs' steady-state work time) / runs,
so it holds everything that is not generating: start-up, loading, the monitor, files and rows.

    .venv/bin/python benchmarks/bench_inprocess.py --clocks 1410,1005,705 --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
APP = "--weights tiny --height 64 --width 64 --steps 4 --num-images 1 --batch-size 1 --no-save-images"


def sweep(mode: str, out: Path, clocks: str, runs: int, env: dict) -> dict:
    args = [sys.executable, "-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "A100",
            "--profiling-mode", "custom", "--custom-frequencies", clocks, "--num-runs", str(runs),
            "--sleep-interval", "0", "--idle-seconds", "0", "--app-params", APP, "--output-dir", str(out)]
    if mode == "in-process":
        args.insert(3, "--in-process")
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    rows = pd.read_csv(out / "runs.csv")
    work = float(rows["work_s"].sum())
    return {"mode": mode, "runs": len(rows), "sweep_s": total, "work_s": work,
            "overhead_per_run_s": (total - work) / len(rows), "median_wall_per_run_s": float(rows["wall_s"].median()),
            "median_work_per_run_s": float(rows["work_s"].median())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clocks", default="1410,1005,705")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "SD_ENERGY_SIMULATED_DIR": str(tmp / "gpu"), "SD_ENERGY_LOCK_DIR": str(tmp / "locks"),
           "SD_ENERGY_CACHE": os.environ.get("SD_ENERGY_CACHE", str(REPO / ".cache" / "sd-energy"))}
    # Build the tiny weights once, outside the timed sweeps.
    subprocess.run([sys.executable, str(REPO / "app" / "StableDiffusionViaHF.py"), *APP.split(), "--steps", "1"],
                   check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = [sweep(mode, tmp / mode, args.clocks, args.runs, env) for mode in ("process", "in-process")]
    table = pd.DataFrame(results).set_index("mode")
    print(f"tiny SD1.5 app, 1 image x 4 steps at 64 px, simulated A100, clocks {args.clocks} x {args.runs} runs; "
          f"host: {os.cpu_count()} CPUs")
    print(table.round(3).to_string())
    ratio = table.loc["process", "overhead_per_run_s"] / table.loc["in-process", "overhead_per_run_s"]
    print(f"in-process overhead per run is {ratio:.1f}x smaller")


if __name__ == "__main__":
    main()
