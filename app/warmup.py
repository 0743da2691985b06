"""What runs before the measured batches, so that the work window holds steady-state work only.

In order, all as unmeasured ``warmup`` phases (never inside a ``batch``, so never in the work window):

1. ``--batch-size auto``: the search for the largest batch that fits (``pipeline.backoff_batches``);
   a failed attempt is an unmeasured pass that ran out of memory, nothing more.
2. ``--compile``: one pass at each measured shape the compiled denoiser has not seen, so that
   torch.compile compiles there and never inside a measured batch; its compile time is reported
   apart (``compile_s``), and recompilations during the measured batches are counted.
3. ``--warmup N``: N rounds of passes at every measured shape: the batch size, and the last,
   partial batch when the images do not divide into whole batches (kernel selection, allocator
   pools and caches are per shape).

Each pass's event carries what it is for (``search``, ``compile``), and every pass uses the first
images of the run (same prompts and seeds as measured).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from .pipeline import backoff_batches

# Where --batch-size auto starts on a GPU (halving from there); on a CPU it starts at every image.
AUTO_BATCH_START = 64


def measured_batches(n_images: int, batch_size: int) -> list[int]:
    """The size of each measured batch: whole batches, then what is left."""
    return [min(batch_size, n_images - i) for i in range(0, n_images, batch_size)]


def measured_shapes(n_images: int, batch_size: int) -> list[int]:
    """The distinct batch sizes the measured batches have, in the order they run."""
    return list(dict.fromkeys(measured_batches(n_images, batch_size)))


def dynamo_totals() -> tuple[int, float] | None:
    """(frames compiled, seconds compiling) so far in this process, from torch.compile's own counters.

    These are torch internals (``torch._dynamo.utils``); where a torch version keeps them elsewhere
    the answer is None and compile time falls back to the passes' wall time.
    """
    try:
        from torch._dynamo.utils import compilation_time_metrics, counters
    except ImportError:
        return None
    return int(counters["frames"]["total"]), float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))


@dataclass
class Preparation:
    """What ran before the measured batches, for the metrics JSON."""

    batch_size: int
    searched: list[int] = field(default_factory=list)  # --batch-size auto: sizes tried, largest first
    compile_passes_s: dict[int, float] = field(default_factory=dict)  # batch size -> wall time of its compile pass
    compile_s: float | None = None  # compile time in those passes; None when nothing compiled
    compile_source: str | None = None  # "torch.compile counters", or "pass wall time" (one run included)
    warmup_passes: int = 0

    @property
    def passes(self) -> int:
        """Unmeasured passes started (a failed search attempt included)."""
        return len(self.searched) + len(self.compile_passes_s) + self.warmup_passes

    def compile_metrics(self, enabled: bool, recompiles: int | None) -> dict:
        """The metrics' ``compile`` block: compile time apart from every measured time."""
        return {"enabled": enabled, "compile_s": self.compile_s, "compile_source": self.compile_source,
                "compile_passes_s": {str(k): v for k, v in self.compile_passes_s.items()},
                "recompiles_in_measured_batches": recompiles}


UnmeasuredPass = Callable[..., object]  # run(n_images, **event fields): one unmeasured batch of the first n images


def prepare(run: UnmeasuredPass, n_images: int, batch_size: int | str, warmup: int, device: str,
            compiled: set | None = None, shape_key: Callable[[int], Hashable] = lambda n: n,
            found: dict | None = None, search_key: Hashable = None) -> Preparation:
    """Run the unmeasured passes (see the module docstring); returns the batch size to measure with.

    ``compiled``: the shapes the compiled denoiser has seen (None: not compiled); updated here.
    ``found``: batch sizes an earlier generation on this pipeline found for ``search_key``; updated here.
    """
    prep = Preparation(batch_size=0)
    if batch_size == "auto":
        if found is not None and search_key in found:
            batch_size = found[search_key]
        else:
            start = n_images if device == "cpu" else min(n_images, AUTO_BATCH_START)

            def attempt(b: int) -> None:
                prep.searched.append(b)
                run(b, search=b)

            batch_size = backoff_batches(attempt, start)
            if found is not None:
                found[search_key] = batch_size
    prep.batch_size = int(batch_size)
    shapes = measured_shapes(n_images, prep.batch_size)
    new_shapes = [n for n in shapes if compiled is not None and shape_key(n) not in compiled]
    if new_shapes:
        before = dynamo_totals()
        for n in new_shapes:
            t0 = time.perf_counter()
            run(n, compile=True)
            prep.compile_passes_s[n] = time.perf_counter() - t0
            compiled.add(shape_key(n))
        after = dynamo_totals()
        if before is not None and after is not None:
            prep.compile_s, prep.compile_source = after[1] - before[1], "torch.compile counters"
        else:
            prep.compile_s, prep.compile_source = sum(prep.compile_passes_s.values()), "pass wall time"
    for _ in range(warmup):
        for n in shapes:
            run(n)
            prep.warmup_passes += 1
    return prep
