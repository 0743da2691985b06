"""Process vs in-process sweeps: what the launcher adds per run around the same generation work.

The same sweep of the tiny diffusion app (simulated GPU, so it runs anywhere) is run twice, one
mode after the other: process mode starts the app for every clock x run (Python start, torch and
diffusers imports, the model built and loaded again); in-process mode (``--in-process``) loads it
once. Two costs are reported for each mode:

* start-up: from starting the launcher to the first run's start (interpreter, imports, the GPU
  backend; in-process mode also loads the model here, once);
* overhead per run: the time from one row to the next minus that run's steady-state work time
  (median over the runs after the first): what every further clock x run costs besides generating.
  In process mode that is a Python start, torch/diffusers imports and a model load per run.

    .venv/bin/python benchmarks/bench_inprocess.py --clocks 1410,1005,705 --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
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
    launched = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    rows = pd.read_csv(out / "runs.csv")
    written = pd.to_datetime(rows["start_utc"], utc=True)  # when each row was written: right after its run
    gaps = written.diff().dt.total_seconds().iloc[1:]
    per_run = (gaps - rows["work_s"].iloc[1:]).median()
    first_start = (written.iloc[0] - launched).total_seconds() - rows["wall_s"].iloc[0]
    return {"mode": mode, "runs": len(rows), "sweep_s": total, "startup_s": first_start,
            "overhead_per_run_s": per_run, "median_work_per_run_s": float(rows["work_s"].median()),
            "median_wall_per_run_s": float(rows["wall_s"].median())}


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
    print(f"overhead per run: in-process is {ratio:.0f}x smaller; whole sweep "
          f"{table.loc['process', 'sweep_s'] / table.loc['in-process', 'sweep_s']:.1f}x faster")


if __name__ == "__main__":
    main()
