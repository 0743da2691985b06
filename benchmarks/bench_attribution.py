"""Cost of the per-run post-processing: labelling samples with phases and energy per phase.

A long run: 10 min at 50 ms sampling (12,000 samples) with 2,500 denoising-step spans.

    .venv/bin/python benchmarks/bench_attribution.py
"""

from __future__ import annotations

import time

import numpy as np

from profiling import monitor as mon
from profiling.backends.base import GpuSample


def main() -> None:
    n, steps = 12000, 2500
    samples = [GpuSample(mono_s=i * 0.05, power_w=200 + 50 * np.sin(i / 10)) for i in range(n)]
    spans = [mon.PhaseSpan("denoise_step", 10 + i * 0.2, 10 + i * 0.2 + 0.19, i, 0) for i in range(steps)]
    spans.append(mon.PhaseSpan("batch", 10, 10 + steps * 0.2))
    t0 = time.perf_counter()
    mon.label_samples(samples, spans)
    t1 = time.perf_counter()
    energy = mon.phase_energy_j(samples, spans)
    t2 = time.perf_counter()
    print(f"{n} samples, {len(spans)} spans: label {1000 * (t1 - t0):.1f} ms, phase energy {1000 * (t2 - t1):.1f} ms; "
          f"denoise {energy['denoise_step']:.1f} J of batch {energy['batch']:.1f} J")


if __name__ == "__main__":
    main()
