"""How wrong each way of reading a GPU's energy is, on the simulated H100 with the real sensors' artefacts.

A synthetic 60 s run is played on the simulated GPU on a virtual clock (nothing sleeps): idle, model
load, then 5 images of text encode (40 ms), 50 denoising steps (140 ms each, 8 ms scheduler gap),
VAE decode (1 s) and save, then idle again. The twin reports what a real sensor of its type would
(``configs/gpus.yaml`` ``sensors:``; on the H100: power sampled over 25 ms of every 100 ms, a 1 s
averaged ``nvmlDeviceGetPowerUsage``, an energy counter in 100 ms steps) and integrates the true
energy beside it. Sampled every 50 ms, each window's energy is computed three ways, as the monitor
does (``profiling.monitor.EnergyTrace``), and compared with the true energy:

* counter: the energy counter's difference, interpolated between samples;
* averaged power: the trapezoid of ``power_avg_w`` (``nvmlDeviceGetPowerUsage``);
* instantaneous power: the trapezoid of ``power_w`` (``NVML_FI_DEV_POWER_INSTANT``).

The run is repeated with the load shifted against the sensors' 100 ms grid (``--phases`` offsets),
since a window's error depends on where its edges fall. Synthetic: it measures the sensor model,
which follows the documented behaviour, not a real GPU.

    .venv/bin/python benchmarks/bench_sensor_error.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from profiling.backends.base import GpuSample
from profiling.backends.simulated import SimulatedGpu
from profiling.monitor import EnergyTrace

RUN_S = 60.0
IDLE_S, LOAD_S, IMAGES, STEPS = 4.0, 6.0, 5, 50
TEXT_S, STEP_S, GAP_S, VAE_S, SAVE_S = 0.04, 0.14, 0.008, 1.0, 0.3
METHODS = ("counter", "averaged power", "instantaneous power")


class VirtualClock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Span:
    phase: str
    start: float
    end: float


def load_profile(t0: float) -> tuple[list[Span], float, float]:
    """The run's phase spans from ``t0``, and when the app starts and exits."""
    spans, t = [], t0 + IDLE_S
    run_start = t
    spans.append(Span("load", t, t + LOAD_S))
    t += LOAD_S
    for _ in range(IMAGES):
        batch_start = t
        spans.append(Span("text_encode", t, t + TEXT_S))
        t += TEXT_S
        for _ in range(STEPS):
            spans.append(Span("denoise_step", t, t + STEP_S))
            t += STEP_S + GAP_S
        spans.append(Span("vae_decode", t, t + VAE_S))
        t += VAE_S
        spans.append(Span("batch", batch_start, t))
        spans.append(Span("save", t, t + SAVE_S))
        t += SAVE_S
    return spans, run_start, t + 1.0


def play(gpu_type: str, offset_s: float, sample_offset_s: float, interval_s: float,
         workdir: Path) -> tuple[list[GpuSample], dict, list[Span]]:
    """Run the profile on a fresh twin; returns the samples, the true energy (mJ) at every time the
    clock stopped at, and the spans. ``offset_s`` shifts the load against the sensors' grid,
    ``sample_offset_s`` the samples (a monitor's ticks are never aligned with the sensor's)."""
    t0 = 1000.0
    spans, run_start, run_end = load_profile(t0 + offset_s)
    events = workdir / f"events-{offset_s:.4f}.jsonl"
    lines = [(sp.start, {"event": "start", "phase": sp.phase, "mono_s": sp.start}) for sp in spans]
    lines += [(sp.end, {"event": "end", "phase": sp.phase, "mono_s": sp.end}) for sp in spans]
    events.write_text("".join(json.dumps(ev) + "\n" for _, ev in sorted(lines, key=lambda x: x[0])))
    clock = VirtualClock(t0)
    gpu = SimulatedGpu(gpu_type, 0, state_file=workdir / f"{gpu_type}.json", clock=clock, sensors="real")
    sample_times = [t0 + sample_offset_s + k * interval_s for k in range(int(RUN_S / interval_s) + 1)]
    edges = {t for sp in spans for t in (sp.start, sp.end)} | {run_start, run_end}
    samples, true_mj = [], {}
    for t in sorted(set(sample_times) | edges):
        clock.t = t
        if t == run_start:
            gpu.begin_run(events)
        if t == run_end:
            gpu.end_run()
        if t in sample_times:
            samples.append(gpu.sample())
        true_mj[t] = gpu.true_energy_mj()
    return samples, true_mj, spans


def window_errors(samples: list[GpuSample], true_mj: dict, windows: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Signed error (%) of each method for each window."""
    counter = EnergyTrace(samples)
    averaged = EnergyTrace([GpuSample(mono_s=s.mono_s, power_w=s.power_avg_w) for s in samples])
    out: dict[str, list[float]] = {m: [] for m in METHODS} | {"true_j": []}
    for a, b in windows:
        truth = (true_mj[b] - true_mj[a]) / 1000.0
        out["true_j"].append(truth)
        got = {"counter": counter.counter_j(a, b), "averaged power": averaged.integrated_j(a, b),
               "instantaneous power": counter.integrated_j(a, b)}
        for m in METHODS:
            out[m].append(100.0 * (float(got[m]) - truth) / truth)
    return out


def summed_step_error(samples: list[GpuSample], true_mj: dict, steps: list[tuple[float, float]]) -> dict[str, float]:
    """Error (%) of the energy of all denoising steps summed (the per-step mean over steps and images)."""
    counter = EnergyTrace(samples)
    averaged = EnergyTrace([GpuSample(mono_s=s.mono_s, power_w=s.power_avg_w) for s in samples])
    truth = sum(true_mj[b] - true_mj[a] for a, b in steps) / 1000.0
    got = {"counter": sum(counter.counter_j(a, b) for a, b in steps),
           "averaged power": sum(averaged.integrated_j(a, b) for a, b in steps),
           "instantaneous power": sum(counter.integrated_j(a, b) for a, b in steps)}
    return {m: 100.0 * (float(got[m]) - truth) / truth for m in METHODS} | {"true_j": truth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-type", default="H100")
    ap.add_argument("--interval-ms", type=float, default=50.0)
    ap.add_argument("--phases", type=int, default=10, help="offsets of the load against the sensors' 100 ms grid")
    args = ap.parse_args()
    interval_s = args.interval_ms / 1000.0
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, errs: dict[str, list[float]]) -> None:
        row = rows.setdefault(name, {m: [] for m in (*METHODS, "true_j")})
        for m in row:
            row[m] += errs[m]

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.phases):
            offset = (k * 0.1 / args.phases + 0.0037) % 0.1
            sample_offset = (0.0137 + k * 0.0071) % interval_s
            samples, true_mj, spans = play(args.gpu_type, offset, sample_offset, interval_s, Path(tmp))
            first, last = samples[0].mono_s, samples[-1].mono_s

            def of(phase: str, spans=spans) -> list[tuple[float, float]]:
                return [(sp.start, sp.end) for sp in spans if sp.phase == phase]

            steps = of("denoise_step")
            denoise = [(steps[i * STEPS][0], steps[i * STEPS + STEPS - 1][1]) for i in range(IMAGES)]
            add(f"whole run ({RUN_S:.0f} s)", window_errors(samples, true_mj, [(first, last)]))
            add(f"batch ({of('batch')[0][1] - of('batch')[0][0]:.2f} s)", window_errors(samples, true_mj, of("batch")))
            add(f"denoise phase, 50 steps ({denoise[0][1] - denoise[0][0]:.2f} s)",
                window_errors(samples, true_mj, denoise))
            add(f"VAE decode ({VAE_S * 1000:.0f} ms)", window_errors(samples, true_mj, of("vae_decode")))
            add(f"one denoising step ({STEP_S * 1000:.0f} ms)", window_errors(samples, true_mj, steps))
            add(f"text encode ({TEXT_S * 1000:.0f} ms)", window_errors(samples, true_mj, of("text_encode")))
            add(f"all {IMAGES * STEPS} steps summed (per-step mean)",
                {m: [e] for m, e in summed_step_error(samples, true_mj, steps).items()})

    print(f"simulated {args.gpu_type}, real-sensor artefacts on, sampled every {args.interval_ms:.0f} ms, "
          f"{args.phases} load offsets against the 100 ms sensor grid")
    print("energy error vs the twin's true energy: mean |error| (worst |error|), over windows x offsets\n")
    print("| window | windows | true energy (mean) | " + " | ".join(METHODS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in METHODS) + " |")
    for name, errs in rows.items():
        cells = [f"{statistics.fmean(abs(e) for e in errs[m]):.2f} % ({max(abs(e) for e in errs[m]):.2f} %)"
                 for m in METHODS]
        true_j = statistics.fmean(errs["true_j"])
        print(f"| {name} | {len(errs['true_j'])} | {true_j:.{1 if true_j < 100 else 0}f} J | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
