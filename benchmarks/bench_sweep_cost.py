"""What the launcher adds per run: wall time of a run under the launcher vs the same program run directly.

Uses the fake workload (tests/data/fake_app.py, a fixed sleep) on the simulated GPU, so the difference
is the launcher's own cost: process start, monitor thread, events/metrics/samples files, the row.

    .venv/bin/python benchmarks/bench_sweep_cost.py --runs 8 --seconds 1.0
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
FAKE = REPO / "tests" / "data" / "fake_app.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "SD_ENERGY_SIMULATED_DIR": str(tmp / "gpu"), "SD_ENERGY_LOCK_DIR": str(tmp / "locks")}
    direct = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(FAKE), "ok", str(args.seconds)], check=True, env=env)
        direct.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100",
                    "--profiling-mode", "baseline", "--num-runs", str(args.runs), "--sleep-interval", "0",
                    "--idle-seconds", "0", "--app-executable", str(FAKE), "--app-params", f"ok {args.seconds}",
                    "--output-dir", str(tmp / "res")], check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    rows = pd.read_csv(tmp / "res" / "runs.csv")
    per_run = rows["wall_s"].median()
    d = sorted(direct)[len(direct) // 2]
    print(f"{args.runs} runs of a {args.seconds:.1f} s workload")
    print(f"direct: median {d:.3f} s per run")
    print(f"under the launcher: median {per_run:.3f} s per run (app process lifetime), whole sweep {total:.2f} s "
          f"= {total / args.runs:.3f} s per run including launcher start-up, monitor and files")
    print(f"launcher cost per run: {(total / args.runs - d) * 1000:.0f} ms ({(total / args.runs / d - 1) * 100:.1f} %)")


if __name__ == "__main__":
    main()
