"""Cost of the power monitor on a CPU-bound workload, and the jitter of its sampling interval.

The workload (a fixed amount of NumPy matrix work) runs alternately without a monitor and with
one sampling at 50 ms and 10 ms, in one process; the medians are compared side by side.

    .venv/bin/python benchmarks/bench_monitor_overhead.py --repeats 15 --backend simulated
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def workload(n: int = 384, reps: int = 60) -> float:
    a = np.random.default_rng(0).standard_normal((n, n))
    t0 = time.perf_counter()
    for _ in range(reps):
        a = np.tanh(a @ a.T / n)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--backend", default="simulated", help="simulated (no GPU) or nvml")
    args = ap.parse_args()
    from profiling.backends import open_backend
    from profiling.monitor import PowerMonitor

    gpu = open_backend(args.backend, 0, "H100", announce=lambda m: None)
    t0 = time.perf_counter()
    for _ in range(1000):
        gpu.sample()
    sample_us = (time.perf_counter() - t0) / 1000 * 1e6
    results = {"none": [], "50ms": [], "10ms": []}
    intervals = {"50ms": [], "10ms": []}
    workload()
    for _ in range(args.repeats):
        results["none"].append(workload())
        for key, iv in (("50ms", 0.05), ("10ms", 0.01)):
            mon = PowerMonitor(gpu, iv).start()
            results[key].append(workload())
            s = mon.stop()
            intervals[key] += [b.mono_s - a.mono_s for a, b in zip(s, s[1:-1], strict=False)]
    base = statistics.median(results["none"])
    print(f"backend {args.backend}: one sample() costs {sample_us:.1f} us; workload median {base * 1000:.1f} ms, "
          f"{args.repeats} alternating repeats")
    for key in ("50ms", "10ms"):
        med = statistics.median(results[key])
        iv = sorted(intervals[key])
        print(f"monitor {key}: median {med * 1000:.1f} ms, overhead {(med / base - 1) * 100:+.2f} %; interval p50 "
              f"{iv[len(iv) // 2] * 1000:.2f} ms, p99 {iv[int(len(iv) * 0.99)] * 1000:.2f} ms, n={len(iv)}")


if __name__ == "__main__":
    main()
