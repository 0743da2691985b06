"""Load a diffusion pipeline, apply execution options, and generate with per-step and phase timings.

The generation call is diffusers' own ``pipe(...)``; timing rides on it through
``callback_on_step_end`` (per denoising step) and thin wrappers around ``encode_prompt`` and
``vae.decode`` (phase boundaries). So the measured work is exactly what a plain diffusers user
runs, and ``benchmarks/bench_app_overhead.py`` checks the instrumentation costs next to nothing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from . import schedulers, weights
from .models import ModelVariant
from .timing import PhaseRecorder, synchronize

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


@dataclass
class BatchResult:
    images: list
    latency_s: float
    step_times_s: list[float]
    phases_s: dict[str, float]


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


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp16" if device == "mps" else "fp32"


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
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # Linux reports ru_maxrss in KiB: the process's peak resident set.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_CACHE: dict[tuple, tuple[object, dict]] = {}


def clear_cache() -> None:
    """Drop cached pipelines and free their memory (model comparison's fair, fresh state)."""
    _CACHE.clear()
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def load_workload(variant: ModelVariant, weights_source: str, scheduler_name: str, options: ExecutionOptions,
                  seed: int = 0, allow_pickle: bool = False, steps: int | None = None,
                  recorder: PhaseRecorder | None = None, reuse: bool = False) -> LoadedWorkload:
    """Load (or, with ``reuse``, take the cached) pipeline and set the requested scheduler on it."""
    device = resolve_device(options.device)
    dtype_name = resolve_dtype(options.dtype, device)
    source, note = resolve_weights(weights_source, variant, device)
    dtype = DTYPES[dtype_name]
    recorder = recorder or PhaseRecorder(device)
    key = (variant, source, dtype_name, device, tuple(sorted(asdict(options).items())), allow_pickle, seed)
    t0 = time.perf_counter()
    if reuse and key in _CACHE:
        pipe, base = _CACHE[key]
        pipe.scheduler = schedulers.build(scheduler_name, variant.family, base)
        wl = LoadedWorkload(pipe, variant, source, device, dtype_name, scheduler_name, options, 0.0)
        if note:
            wl.notes.append(note)
        return wl
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
    if reuse:
        _CACHE.clear()  # keep one resident pipeline: benchmarks never hold two models at once
        _CACHE[key] = (pipe, base)
    wl = LoadedWorkload(pipe, variant, source, device, dtype_name, scheduler_name, options,
                        time.perf_counter() - t0)
    if note:
        wl.notes.append(note)
    return wl


def _denoiser(pipe):
    return getattr(pipe, "unet", None) or pipe.transformer


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
        _denoiser(pipe).to(memory_format=torch.channels_last)
    if opt.compile:
        denoiser = _denoiser(pipe)
        denoiser.compile(fullgraph=False, mode="max-autotune-no-cudagraphs" if device.startswith("cuda") else None)


def attention_context(attention: str):
    """``math`` forces PyTorch's reference attention kernel for every SDPA call, in any model family."""
    if attention == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _wrap_phases(pipe) -> None:
    """Time text encoding and VAE decoding inside diffusers' own call, once per pipeline object."""

    def timed(fn, name, after=None):
        @functools.wraps(fn)
        def inner(*a, **k):
            with pipe._phase_recorder.phase(name):
                out = fn(*a, **k)
            if after is not None:
                after()
            return out
        return inner

    # Denoising starts when the prompt is encoded: the running batch's hook marks step 0 there.
    pipe._after_encode = None
    pipe.encode_prompt = timed(pipe.encode_prompt, "text_encode", lambda: pipe._after_encode and pipe._after_encode())
    pipe.vae.decode = timed(pipe.vae.decode, "vae_decode")
    pipe._phases_wrapped = True


class Generator:
    """Runs batches on a loaded workload and times them; one instance per workload."""

    def __init__(self, wl: LoadedWorkload, recorder: PhaseRecorder, step_hook=None):
        self.wl = wl
        self.recorder = recorder
        self.step_hook = step_hook  # extra per-step work (the simulated GPU's clock dilation)
        wl.pipe._phase_recorder = recorder
        if not getattr(wl.pipe, "_phases_wrapped", False):
            _wrap_phases(wl.pipe)

    def run_batch(self, prompts: list[str], negative_prompt: str | None, height: int, width: int, steps: int,
                  guidance: float, seeds: list[int], batch_index: int = 0, init_image=None,
                  strength: float = 0.3, phase: str = "batch") -> BatchResult:
        wl, rec = self.wl, self.recorder
        gen_device = "cpu" if wl.options.cpu_offload != "none" else wl.device
        generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
        step_times: list[float] = []
        mark = [0.0]

        def on_step_end(pipe, i, t, kwargs):
            if self.step_hook is not None:
                synchronize(wl.device)
                self.step_hook(time.monotonic() - mark[0])
            now = rec.mark("end", "denoise_step", step=i, batch=batch_index)
            step_times.append(now - mark[0])
            mark[0] = now
            if i + 1 < getattr(pipe, "_num_timesteps", steps):  # PNDM/Heun run more calls than steps
                rec.mark("start", "denoise_step", step=i + 1, batch=batch_index)
            return kwargs

        def start_steps():
            mark[0] = rec.mark("start", "denoise_step", step=0, batch=batch_index)

        kwargs = dict(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      callback_on_step_end=on_step_end, output_type="pil")
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
        wl.pipe._after_encode = start_steps
        try:
            with torch.inference_mode(), attention_context(wl.options.attention), rec.phase(phase, batch=batch_index):
                t0 = time.perf_counter()
                images = wl.pipe(**kwargs).images
                synchronize(wl.device)
                latency = time.perf_counter() - t0
        finally:
            wl.pipe._after_encode = None
        phases = {k: v - before.get(k, 0.0) for k, v in rec.totals_s.items() if v - before.get(k, 0.0) > 0}
        phases["denoise"] = sum(step_times)
        return BatchResult(images, latency, step_times, phases)


def backoff_batches(run, start: int) -> int:
    """Largest batch that fits: try ``start``, halve on out-of-memory, return the size that ran.

    ``run(b)`` generates one batch of ``b`` images and raises ``torch.OutOfMemoryError`` when
    it does not fit. Used by ``--batch-size auto``.
    """
    b = max(1, start)
    while True:
        try:
            run(b)
            return b
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
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


def options_dict(opt: ExecutionOptions) -> dict:
    return asdict(opt)
