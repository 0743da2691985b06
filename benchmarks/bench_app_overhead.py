"""The app's instrumented generation vs a plain diffusers call on the same pipeline, same steps and seed.

Runs both alternately in one process (so drift hits both equally) and reports the median of each
and their ratio. The instrumentation is the per-step callback object, the forward pre-hooks that mark
the phases (registered for one call, removed after it) and the events file.

    .venv/bin/python benchmarks/bench_app_overhead.py --size 256 --steps 20 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="sd-v1.5")
    ap.add_argument("--weights", default="tiny", choices=["tiny", "random"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from app.models import get_variant
    from app.pipeline import ExecutionOptions, Generator, load_workload
    from app.timing import PhaseRecorder, synchronize

    variant = get_variant(args.variant)
    opts = ExecutionOptions(device=args.device, dtype=args.dtype)
    events = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    rec = PhaseRecorder(args.device, events)
    wl = load_workload(variant, args.weights, "euler", opts, recorder=rec)
    gen = Generator(wl, rec)
    pipe = wl.pipe
    prompts = ["a lighthouse at dusk"] * args.batch

    def plain():
        g = [torch.Generator(wl.device).manual_seed(i) for i in range(args.batch)]
        t0 = time.perf_counter()
        # What a user of plain diffusers runs: no callback, no hooks (the app's are removed after each call).
        with torch.inference_mode():
            type(pipe).__call__(pipe, prompt=prompts, height=args.size, width=args.size,
                                num_inference_steps=args.steps, guidance_scale=7.5, generator=g)
        synchronize(wl.device)
        return time.perf_counter() - t0

    def app():
        t0 = time.perf_counter()
        gen.run_batch(prompts, None, args.size, args.size, args.steps, 7.5, list(range(args.batch)))
        return time.perf_counter() - t0

    plain()  # warm-up both paths
    app()
    t_plain, t_app = [], []
    for _ in range(args.repeats):
        t_plain.append(plain())
        t_app.append(app())
    mp, ma = statistics.median(t_plain), statistics.median(t_app)
    print(f"{args.variant} {args.weights} {args.device} {args.dtype} {args.size}px {args.steps} steps batch {args.batch}, "
          f"{args.repeats} alternating repeats")
    print(f"plain diffusers: median {mp * 1000:.1f} ms  (p10 {sorted(t_plain)[len(t_plain) // 10] * 1000:.1f})")
    print(f"app (timed):     median {ma * 1000:.1f} ms  (p10 {sorted(t_app)[len(t_app) // 10] * 1000:.1f})")
    print(f"overhead: {(ma / mp - 1) * 100:+.2f} %")


if __name__ == "__main__":
    main()
