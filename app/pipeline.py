"""Load a diffusion pipeline, apply execution options, and generate with per-step and phase timings.

The generation call is diffusers' own ``pipe(...)``; timing rides on it through torch's extension
points, never by replacing methods on the pipeline: forward pre-hooks on the text encoders, the
denoiser and the VAE (``timing.BatchTiming``), registered for one call and removed after it. So the
measured work is exactly what a plain diffusers user runs, and ``benchmarks/bench_app_overhead.py``
checks the instrumentation costs next to nothing.

A batch (the ``batch`` phase) is the pipeline call up to decoded pixels on the host, as uint8;
turning them into PIL images happens later, when they are saved, after the last measured batch.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import resource
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from . import schedulers, weights
from .models import ModelVariant
from .timing import BatchTiming, PhaseRecorder, denoiser, synchronize

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION_CHOICES = ("sdpa", "xformers", "slicing", "math")


@dataclass
class ExecutionOptions:
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "sdpa"
    cpu_offload: str = "none"
    vae_slicing: bool = False
    vae_tiling: bool = False
    channels_last: bool = False
    compile: bool = False
    # CPU runs only: torch's intra-op threads (None: torch's default, one per core). On a shared host
    # OpenMP threads that wait for each other at every op stall for whole time slices: one thread is
    # slower when the host is idle but keeps its pace when it is busy (the simulated GPU's demo uses 1).
    cpu_threads: int | None = None


class NonFiniteError(RuntimeError):
    """A batch produced NaN or infinite values: the run is meaningless (NaN arithmetic draws other
    power than real numbers) and stops. The command line exits with ``EXIT_NON_FINITE``."""


EXIT_NON_FINITE = 3


@dataclass
class BatchResult:
    pixels: torch.Tensor  # uint8 (images, height, width, RGB) on the host
    latency_s: float
    step_times_s: list[float]
    phases_s: dict[str, float]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @functools.cached_property
    def images(self) -> list:
        """The batch as PIL images, converted on first use (after the measured batches, not inside one)."""
        from PIL import Image

        return [Image.fromarray(a) for a in self.pixels.numpy()]


@dataclass
class LoadedWorkload:
    """A ready pipeline plus what was resolved while loading (device, dtype, weights source)."""

    pipe: object
    variant: ModelVariant
    weights_source: str
    device: str
    dtype: str
    scheduler_name: str
    options: ExecutionOptions
    load_s: float
    notes: list[str] = field(default_factory=list)
    dtype_reason: str = ""

    @property
    def scheduler_class(self) -> str:
        return type(self.pipe.scheduler).__name__


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# bf16 tensor cores arrived with Ampere (compute capability 8.0: A100; H100 is 9.0). On a V100 (7.0)
# or T4 (7.5) bf16 still runs, emulated through fp32 and slower: torch.cuda.is_bf16_supported() says
# True there, so the capability decides. Those GPUs have fp16 tensor cores.
BF16_MIN_CAPABILITY = (8, 0)


def dtype_choice(requested: str, device: str) -> tuple[str, str]:
    """(dtype, why): what runs, and the reason the metrics record with it (``config.dtype_reason``).

    ``auto``: bf16 on a GPU with bf16 tensor cores, fp16 on an older GPU, fp16 on Apple MPS, fp32 on
    the CPU (half precision there is slow and not what a GPU run measures).
    """
    capability = _capability(device) if device.startswith("cuda") else None
    cc = "" if capability is None else f"compute capability {capability[0]}.{capability[1]}"
    if requested != "auto":
        if requested == "bf16" and capability is not None and capability < BF16_MIN_CAPABILITY:
            return requested, f"requested; {cc} has no bf16 tensor cores: emulated, slower than fp16"
        return requested, "requested"
    if capability is not None:
        if capability >= BF16_MIN_CAPABILITY:
            return "bf16", f"auto: {cc} has bf16 tensor cores"
        return "fp16", f"auto: {cc} has no bf16 tensor cores (bf16 would be emulated), fp16 has"
    if device == "mps":
        return "fp16", "auto: Apple MPS runs fp16"
    return "fp32", f"auto: {device} runs fp32 (half precision there is slow and unlike a GPU run)"


def _capability(device: str) -> tuple[int, int]:
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def resolve_weights(requested: str, variant: ModelVariant, device: str) -> tuple[str, str | None]:
    """``auto``: real weights when they are on disk or a GPU can fetch them; otherwise tiny, and say so."""
    if requested != "auto":
        return requested, None
    if weights.pretrained_is_local(variant.hub_id):
        return "pretrained", None
    if device == "cpu":
        return "tiny", (f"no GPU and no local weights for {variant.hub_id}: using tiny weights "
                        "(a few MB, meaningless pictures); pass --weights pretrained|random to change")
    return "pretrained", None


def peak_memory_mib(device: str) -> float:
    """Peak memory since ``reset_peak_memory``: the CUDA allocator's over the measured batches; on other
    devices the process's peak resident set over its whole life (it cannot be reset)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # Linux reports ru_maxrss in KiB: the process's peak resident set.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: str) -> None:
    """Start the peak-memory count afresh before the measured batches (load, search and warm-up excluded)."""
    if device.startswith("cuda"):
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)


def free_cached_memory() -> None:
    """Return what a failed allocation left cached to the device, so the next attempt starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# What a resident pipeline has been through, per pipeline object: the shapes its compiled denoiser
# was compiled for (so a later generation compiles only new ones), and the batch size
# ``--batch-size auto`` found for a request (so every run of an in-process sweep uses the same one).
_PIPELINE_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pipeline_state(pipe) -> dict:
    return _PIPELINE_STATE.setdefault(pipe, {"compiled": set(), "auto_batch": {}})


class PipelineCache:
    """Keeps one loaded pipeline resident between generations, keyed by everything that shapes it.

    One at a time: a benchmark never holds two models in memory (model comparison in dev mode
    keeps one cache per model instead). ``loads`` counts the pipelines put here, so a caller
    can tell a reload from a reuse.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._entry: tuple[object, dict] | None = None
        self.loads = 0

    def get(self, key: tuple) -> tuple[object, dict] | None:
        """(pipeline, its scheduler's base config) when ``key`` is the resident one, else None."""
        return self._entry if self._entry is not None and key == self._key else None

    def put(self, key: tuple, pipe: object, scheduler_base: dict) -> None:
        self.clear()
        self._key, self._entry = key, (pipe, scheduler_base)
        self.loads += 1

    @property
    def pipeline(self) -> object | None:
        return self._entry[0] if self._entry is not None else None

    def clear(self) -> None:
        """Drop the resident pipeline and free its memory (model comparison's fair, fresh state)."""
        had = self._entry is not None
        self._key = self._entry = None
        if not had:
            return
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def load_workload(variant: ModelVariant, weights_source: str, scheduler_name: str, options: ExecutionOptions,
                  seed: int = 0, allow_pickle: bool = False, steps: int | None = None,
                  recorder: PhaseRecorder | None = None, cache: PipelineCache | None = None) -> LoadedWorkload:
    """Load the pipeline (or take it from ``cache``) and set the requested scheduler on it.

    Only a real load is a ``load`` phase; a cache hit costs nothing and records nothing.
    """
    device = resolve_device(options.device)
    if device == "cpu" and options.cpu_threads:
        torch.set_num_threads(options.cpu_threads)
    dtype_name, dtype_reason = dtype_choice(options.dtype, device)
    source, note = resolve_weights(weights_source, variant, device)
    dtype = DTYPES[dtype_name]
    recorder = recorder or PhaseRecorder(device)
    # The seed shapes only randomly initialised weights; tiny and pretrained ones are the same for every seed.
    key = (variant, source, dtype_name, device, tuple(sorted(asdict(options).items())), allow_pickle,
           seed if source == "random" else None)
    t0 = time.perf_counter()
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        pipe, base = cached
        pipe.scheduler = schedulers.build(scheduler_name, variant.family, base)
        wl = LoadedWorkload(pipe, variant, source, device, dtype_name, scheduler_name, options, 0.0,
                            dtype_reason=dtype_reason)
    else:
        with recorder.phase("load"):
            if source == "tiny":
                pipe = weights.load_tiny(variant, dtype)
            elif source == "random":
                pipe = weights.load_random(variant, dtype, "cpu" if options.cpu_offload != "none" else device, seed)
            else:
                device_map = weights.multi_gpu_device_map() if options.cpu_offload == "none" else None
                pipe = weights.load_pretrained(variant, dtype, allow_pickle, steps, device_map)
                if device_map:
                    options = replace(options, device="balanced")  # placed by accelerate: no .to(device) after
            pipe.set_progress_bar_config(disable=True)
            base = dict(pipe.scheduler.config)
            if variant.unet_override:  # Lightning checkpoints are trained with trailing timesteps
                base["timestep_spacing"] = "trailing"
            pipe.scheduler = schedulers.build(scheduler_name, variant.family, base)
            _apply_options(pipe, options, device)
        if cache is not None:
            cache.put(key, pipe, base)
        wl = LoadedWorkload(pipe, variant, source, device, dtype_name, scheduler_name, options,
                            time.perf_counter() - t0, dtype_reason=dtype_reason)
    if note:
        wl.notes.append(note)
    if dtype_reason.startswith("requested;"):
        wl.notes.append(f"--dtype {dtype_name}: {dtype_reason.split('; ', 1)[1]}; --dtype auto picks fp16 here")
    return wl


def _apply_options(pipe, opt: ExecutionOptions, device: str) -> None:
    if opt.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif opt.attention == "slicing":
        pipe.enable_attention_slicing()
    if opt.vae_slicing:
        pipe.vae.enable_slicing()
    if opt.vae_tiling:
        pipe.vae.enable_tiling()
    if opt.cpu_offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif opt.cpu_offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif opt.device != "balanced":
        pipe.to(device)
    if opt.channels_last:
        denoiser(pipe).to(memory_format=torch.channels_last)
    if opt.compile:  # compiled lazily, by the first call at each shape: the compile passes before the batches
        denoiser(pipe).compile(**compile_options(device))


def compile_options(device: str) -> dict:
    """``torch.compile``'s arguments for the denoiser (inductor; autotuned kernels on a GPU)."""
    return {"fullgraph": False, "mode": "max-autotune-no-cudagraphs" if device.startswith("cuda") else None}


def attention_context(attention: str):
    """``math`` forces PyTorch's reference attention kernel for every SDPA call, in any model family."""
    if attention == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class Generator:
    """Runs batches on a loaded workload and times them; one instance per workload."""

    def __init__(self, wl: LoadedWorkload, recorder: PhaseRecorder, step_hook: Callable[[float], None] | None = None):
        self.wl = wl
        self.recorder = recorder
        self.step_hook = step_hook  # extra per-step work (the simulated GPU's clock dilation)

    def run_batch(self, prompts: list[str], negative_prompt: str | None, height: int, width: int, steps: int,
                  guidance: float, seeds: list[int], batch_index: int = 0, init_image=None,
                  strength: float = 0.3, phase: str = "batch", **event) -> BatchResult:
        """One pipeline call as the phase ``phase`` (``batch``; ``warmup`` for unmeasured passes, whose
        ``event`` fields say why: ``search``, ``compile``). Raises ``NonFiniteError`` after the phase
        has ended when the latents or the images hold NaN or infinity."""
        wl, rec = self.wl, self.recorder
        gen_device = "cpu" if wl.options.cpu_offload != "none" else wl.device
        generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
        timing = BatchTiming(rec, batch_index, self.step_hook)
        # "pt": the decoded images stay a tensor; PIL conversion waits until the measured batches are done.
        kwargs = dict(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      output_type="pt")
        if wl.variant.family.startswith("pixart"):
            # Exact sizes (PixArt would otherwise snap them to its aspect-ratio bins) and no caption
            # cleaning (it needs bs4/ftfy and changes the prompt).
            kwargs.update(use_resolution_binning=False, clean_caption=False)
        if negative_prompt and guidance > 1.0:
            kwargs["negative_prompt"] = [negative_prompt] * len(prompts)
        if wl.variant.needs_init_image:
            kwargs.update(image=[init_image.resize((width, height))] * len(prompts), strength=strength)
        else:
            kwargs.update(height=height, width=width)
        before = dict(rec.totals_s)
        with torch.inference_mode(), attention_context(wl.options.attention), \
                rec.phase(phase, batch=batch_index, **event):
            t0 = time.perf_counter()
            with timing.hooked(wl.pipe):
                images = wl.pipe(**kwargs).images  # float (n, 3, h, w) in [0, 1], on the device
            finite = torch.isfinite(images).all()
            pixels = to_host_pixels(images)
            synchronize(wl.device)
            latency = time.perf_counter() - t0
        check_finite(timing.latents_finite, finite, f"{phase} {batch_index}", wl)
        phases = {k: v - before.get(k, 0.0) for k, v in rec.totals_s.items()
                  if v - before.get(k, 0.0) > 0 and k != "denoise_step"}
        phases["denoise"] = sum(timing.step_times_s)  # the steps' total, under the name the metrics have always used
        return BatchResult(pixels, latency, timing.step_times_s, phases)


def to_host_pixels(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (n, 3, h, w) -> uint8 (n, h, w, 3) on the host, rounded as diffusers' PIL output is."""
    return (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def check_finite(latents_finite: list[torch.Tensor], images_finite: torch.Tensor, where: str,
                 wl: LoadedWorkload) -> None:
    """``NonFiniteError`` naming what went non-finite: the latents reaching the VAE, or only its output."""
    latents_ok = all(bool(f) for f in latents_finite)
    if latents_ok and bool(images_finite):
        return
    what = "the latents (the VAE decoder's input)" if not latents_ok else "the decoded images (the latents were finite)"
    raise NonFiniteError(f"{what} hold NaN or infinite values after {where} ({wl.variant.key}, {wl.weights_source} "
                         f"weights, {wl.dtype}): the run is meaningless (NaN arithmetic draws other power) and stops; "
                         "try --dtype fp32, or bf16 on a GPU with compute capability 8.0 or later")


# Allocation failures that are not ``torch.OutOfMemoryError``: a CUDA call that ran out of memory
# ("CUDA error: out of memory"), a library failing to allocate its workspace
# ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"), Apple's "MPS backend out of memory".
OOM_MARKERS = ("out of memory", "ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in OOM_MARKERS))


def backoff_batches(run, start: int) -> int:
    """Largest batch that fits: try ``start``, halve on out-of-memory, return the size that ran.

    ``run(b)`` generates one batch of ``b`` images; an allocation failure (``is_out_of_memory``)
    means it does not fit, anything else is raised. Used by ``--batch-size auto``, before the
    measured batches (see ``app.warmup``).
    """
    b = max(1, start)
    while True:
        try:
            run(b)
            return b
        except Exception as exc:
            if b == 1 or not is_out_of_memory(exc):
                raise
        free_cached_memory()  # outside the handler: the traceback no longer holds the failed batch's tensors
        b //= 2


def environment_info(device: str) -> dict:
    import diffusers
    import transformers

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "device": device, "pid": os.getpid()}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name()
    else:
        info["device_name"] = "cpu"
    return info

