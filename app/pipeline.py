"""Load a diffusion pipeline, apply execution options, and generate with per-step and phase timings.

The generation call is diffusers' own ``pipe(...)``; timing rides on it through diffusers' and
torch's extension points, never by replacing methods on the pipeline: a ``PipelineCallback``
(``BatchTiming``) at the end of each denoising step, and forward pre-hooks on the text encoders,
the denoiser and the VAE for the phase boundaries, registered for one call and removed after it.
So the measured work is exactly what a plain diffusers user runs, and
``benchmarks/bench_app_overhead.py`` checks the instrumentation costs next to nothing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from diffusers.callbacks import PipelineCallback

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
    dtype_name = resolve_dtype(options.dtype, device)
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
        wl = LoadedWorkload(pipe, variant, source, device, dtype_name, scheduler_name, options, 0.0)
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


# The text encoders a pipeline may carry (SDXL has two, SD3 three); absent ones are None or missing.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


class BatchTiming(PipelineCallback):
    """Times one pipeline call from inside diffusers, at its own extension points.

    Leaf phases open when a model starts and last until the next boundary: ``text_encode`` from
    the first text-encoder call (there may be several: two encoders, the negative prompt) to the
    first denoiser call; each ``denoise_step`` from its first denoiser call (Heun makes two) to
    diffusers' step-end callback, which is this object; ``vae_decode`` from the first decoder call
    (slices and tiles make several) to the end of the pipeline call. So consecutive model calls of
    one kind are one span, and a per-phase clock switches once per phase, not once per call.
    The step-end callback also runs ``step_hook`` (the simulated GPU's clock dilation) inside the step.
    """

    tensor_inputs: list[str] = []  # reads no tensor and changes none

    def __init__(self, recorder: PhaseRecorder, batch_index: int, step_hook: Callable[[float], None] | None = None):
        super().__init__()
        self.recorder = recorder
        self.batch_index = batch_index
        self.step_hook = step_hook
        self.step_times_s: list[float] = []
        self._open: tuple[str, dict, float] | None = None  # (phase, event fields, start time)

    def _enter(self, phase: str, **extra) -> None:
        if self._open is not None and self._open[0] == phase:
            return  # the same phase goes on (another encoder, a second call within the step, a tile)
        self.finish()
        extra["batch"] = self.batch_index
        self._open = (phase, extra, self.recorder.start(phase, **extra))

    def finish(self) -> float | None:
        """Close the open phase, if any; returns its duration."""
        if self._open is None:
            return None
        phase, extra, t0 = self._open
        self._open = None
        return self.recorder.end(phase, t0, **extra) - t0

    # torch forward pre-hooks, registered for one pipeline call. Kept out of torch.compile's
    # tracing: they do I/O, and a compiled denoiser must not recompile for each new hook.
    @torch.compiler.disable
    def before_text_encoder(self, module, args) -> None:
        self._enter("text_encode")

    @torch.compiler.disable
    def before_denoiser(self, module, args) -> None:
        if self._open is None or self._open[0] != "denoise_step":
            self._enter("denoise_step", step=len(self.step_times_s))

    @torch.compiler.disable
    def before_vae_encoder(self, module, args) -> None:
        self.finish()  # img2img encodes its input image: part of the batch, no phase of its own

    @torch.compiler.disable
    def before_vae_decoder(self, module, args) -> None:
        self._enter("vae_decode")

    # diffusers' step-end callback
    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs) -> dict:
        if self._open is not None and self._open[0] == "denoise_step":
            if self.step_hook is not None:
                synchronize(self.recorder.device)
                self.step_hook(time.monotonic() - self._open[2])
            self.step_times_s.append(self.finish())
        return callback_kwargs

    @contextlib.contextmanager
    def hooked(self, pipe):
        """Forward pre-hooks on the pipeline's text encoders, denoiser and VAE, removed after the call."""
        targets = [(getattr(pipe, name, None), self.before_text_encoder) for name in TEXT_ENCODERS]
        targets += [(_denoiser(pipe), self.before_denoiser),
                    (getattr(pipe.vae, "encoder", None), self.before_vae_encoder),
                    (getattr(pipe.vae, "decoder", None), self.before_vae_decoder)]
        handles = [m.register_forward_pre_hook(hook) for m, hook in targets if isinstance(m, torch.nn.Module)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self.finish()

    def call_kwargs(self, pipe) -> dict:
        """How this pipeline takes a per-step callback: the callback object, or (PixArt) the older
        ``callback(step, t, latents)``, since ``callback_on_step_end`` would vanish into its ``**kwargs``."""
        params = _call_parameters(type(pipe))
        if "callback_on_step_end" in params:
            return {"callback_on_step_end": self}
        if "callback" in params:
            return {"callback": lambda i, t, latents: self(pipe, i, t, {}), "callback_steps": 1}
        raise TypeError(f"{type(pipe).__name__} takes no per-step callback: denoising steps cannot be timed")


@functools.cache
def _call_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__call__).parameters)


class Generator:
    """Runs batches on a loaded workload and times them; one instance per workload."""

    def __init__(self, wl: LoadedWorkload, recorder: PhaseRecorder, step_hook: Callable[[float], None] | None = None):
        self.wl = wl
        self.recorder = recorder
        self.step_hook = step_hook  # extra per-step work (the simulated GPU's clock dilation)

    def run_batch(self, prompts: list[str], negative_prompt: str | None, height: int, width: int, steps: int,
                  guidance: float, seeds: list[int], batch_index: int = 0, init_image=None,
                  strength: float = 0.3, phase: str = "batch") -> BatchResult:
        wl, rec = self.wl, self.recorder
        gen_device = "cpu" if wl.options.cpu_offload != "none" else wl.device
        generators = [torch.Generator(gen_device).manual_seed(s) for s in seeds]
        timing = BatchTiming(rec, batch_index, self.step_hook)
        kwargs = dict(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      output_type="pil", **timing.call_kwargs(wl.pipe))
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
        with torch.inference_mode(), attention_context(wl.options.attention), rec.phase(phase, batch=batch_index):
            t0 = time.perf_counter()
            with timing.hooked(wl.pipe):
                images = wl.pipe(**kwargs).images
            synchronize(wl.device)
            latency = time.perf_counter() - t0
        phases = {k: v - before.get(k, 0.0) for k, v in rec.totals_s.items()
                  if v - before.get(k, 0.0) > 0 and k != "denoise_step"}
        phases["denoise"] = sum(timing.step_times_s)  # the steps' total, under the name the metrics have always used
        return BatchResult(images, latency, timing.step_times_s, phases)


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

