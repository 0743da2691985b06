"""The generation path: validate a request (``check_inputs``), then ``generate`` it on a loaded or
resident pipeline: warm-up, batches, save; metrics JSON. Every mode goes through ``generate``.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from sd_energy_contract import env
from sd_energy_contract.errors import InputError

from . import outputs, schedulers, weights
from .models import FAMILY_PIPELINES, ModelVariant, UnknownVariantError, custom_variant, get_variant
from .pipeline import (
    BatchResult,
    ExecutionOptions,
    Generator,
    LoadedWorkload,
    PipelineCache,
    environment_info,
    load_workload,
    peak_memory_mib,
    pipeline_state,
    reset_peak_memory,
)
from .timing import PhaseRecorder
from .warmup import Preparation, dynamo_totals, prepare

ICON_PREFIX = ("flat vector icon, minimal, solid shapes, no gradients, no shading, no texture, white background, "
               "centered composition, simple geometry, ")
STYLES_FILE = Path(__file__).resolve().parent.parent / "configs" / "styles.yaml"
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"


# Bounds on the work one request may ask for. Each is far beyond any real benchmark and exists so
# that a typo (an extra zero or five) is an error naming the option, not a run that never ends or
# a list of a hundred million jobs built before the first image.
MAX_STEPS = 1000  # the training timesteps of every scheduler here: more steps than that repeat timesteps
MAX_SIZE_FACTOR = 4  # height/width up to 4x the model's native size (16x its pixels)
MAX_IMAGES = 10_000  # images (and images per prompt, batch size) per run
MAX_WARMUP = 100  # untimed warm-up runs
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds; image i uses seed + i
# A lower bound on the bytes each image needs at full resolution on a GPU (the VAE decoder holds
# 128 fp16 channels in and out at the output size): batch x height x width x this beyond the GPU's
# memory can never fit, so it is refused before the model loads rather than failing after.
MIN_BYTES_PER_PIXEL = 512


def read_style_file(path: str | Path, option: str = "--style-file") -> dict[str, str]:
    """A styles YAML (``name: prompt prefix``), checked: a missing file, broken YAML or anything other
    than a mapping of names to strings is an ``InputError`` naming ``option`` (it used to be skipped
    silently when missing, and to fail deep in generation otherwise)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(option, path, f"cannot read: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(option, path, f"not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(option, path, f"must be a mapping of style name: prompt prefix, not a {type(data).__name__}")
    for name, prefix in data.items():
        if not isinstance(name, str) or not isinstance(prefix, str):
            raise InputError(option, path, f"style {name!r}: must map a name to a prompt-prefix string, "
                                           f"not {type(prefix).__name__}")
    return data


def load_styles(extra_file: str | None = None) -> dict[str, str]:
    styles = {"icon": ICON_PREFIX}
    if STYLES_FILE.exists():
        styles.update(read_style_file(STYLES_FILE, "configs/styles.yaml"))
    if extra_file:
        styles.update(read_style_file(extra_file))
    return styles


# Warm-up rounds (see app.warmup) when the launcher runs the app and --warmup is not given: a process
# per run starts cold (lazy CUDA init, kernel selection, allocator growth), and that is not the
# steady state a sweep compares across clocks. Alone, the app runs none unless asked.
DEFAULT_WARMUP = 1


def default_warmup() -> int:
    """``DEFAULT_WARMUP`` under the launcher (it sets ``SD_ENERGY_RUN_ID`` for each run), else 0."""
    return DEFAULT_WARMUP if os.environ.get(env.RUN_ID) else 0


@dataclass
class GenerationRequest:
    model_variant: str = "sd-v1.5"
    custom_model: str | None = None
    model_family: str = "sd1"
    weights: str = "auto"
    allow_pickle: bool = False
    scheduler: str | None = None
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    prompts: list[str] = field(default_factory=list)
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    num_images: int | None = None
    batch_size: int | str = 1
    images_per_prompt: int = 1
    warmup: int | None = None  # None: DEFAULT_WARMUP under the launcher, else none (``default_warmup``)
    style: str | None = None
    style_file: str | None = None
    init_image: str | None = None
    strength: float = 0.3
    output_dir: str = "outputs"
    output_prefix: str = ""
    save_images: bool = True
    export_metrics: str | None = None
    clip_model: str | None = None

    def variant(self) -> ModelVariant:
        if self.custom_model:
            return replace(custom_variant(self.custom_model, self.model_family))
        return get_variant(self.model_variant)

    def resolved(self) -> GenerationRequest:
        """Fill unset work parameters from the variant's defaults (its own operating point)."""
        v = self.variant()
        prompts = self.prompts or [DEFAULT_PROMPT]
        def pick(value, default):
            return default if value is None else value

        return replace(self, prompts=prompts, height=pick(self.height, v.native_size),
                       width=pick(self.width, v.native_size), steps=pick(self.steps, v.default_steps),
                       scheduler=pick(self.scheduler, v.default_scheduler),
                       guidance_scale=pick(self.guidance_scale, v.default_guidance),
                       num_images=pick(self.num_images, len(prompts) * self.images_per_prompt),
                       warmup=pick(self.warmup, default_warmup()))


def _whole(option: str, value: object, low: int, high: int, why_high: str) -> None:
    """``value`` must be an int (not a bool, not a float) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(option, value, f"must be an integer, not {type(value).__name__}")
    if value < low:
        raise InputError(option, value, f"must be at least {low}" if low else "must be >= 0")
    if value > high:
        raise InputError(option, value, f"must be at most {high} ({why_high})")


def _real(option: str, value: object) -> float:
    """``value`` must be a finite int or float (not a bool, not NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(option, value, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise InputError(option, value, "must be a finite number")
    return float(value)


def _cuda_total_bytes() -> int | None:
    """The memory of the current CUDA device, or None when there is no usable CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def _check_device(r: GenerationRequest) -> None:
    """An explicit --device the machine lacks: before, CUDA failed deep in torch ('Torch not compiled
    with CUDA enabled') and MPS at the first synchronisation, both as tracebacks."""
    device = r.execution.device
    if device == "cuda" and _cuda_total_bytes() is None:
        raise InputError("--device", device, "no CUDA GPU is available here (torch.cuda.is_available() is False); "
                                             "use --device cpu or auto")
    if device == "mps" and not _mps_available():
        raise InputError("--device", device, "no Apple MPS device is available here; use --device cpu or auto")


def memory_problem(r: GenerationRequest, total_bytes: int) -> tuple[str, object, str] | None:
    """(option, value, problem) when the request's images can never fit in ``total_bytes`` of GPU
    memory (a lower bound: ``MIN_BYTES_PER_PIXEL`` per output pixel per image in a batch), else None.

    VAE tiling bounds the decoder's working set, so a tiled request is never refused here.
    """
    if r.execution.vae_tiling or r.batch_size == "auto":
        return None
    batch = min(int(r.batch_size), r.num_images)
    need = batch * r.height * r.width * MIN_BYTES_PER_PIXEL
    if need <= total_bytes:
        return None
    gib = f"needs at least {need / 2**30:.1f} GiB of GPU memory ({MIN_BYTES_PER_PIXEL} B per pixel per image), " \
          f"the GPU has {total_bytes / 2**30:.1f} GiB"
    if batch > 1:
        return "--batch-size", r.batch_size, f"{batch} images of {r.height}x{r.width} {gib}; use a smaller batch"
    return "--height", r.height, f"one {r.height}x{r.width} image {gib}; use a smaller size or --vae-tiling"


def _check_init_image(r: GenerationRequest, variant: ModelVariant) -> None:
    """An init image must be a file PIL can read: before, a text file failed with a traceback in
    the middle of the run (after the model had loaded)."""
    if variant.needs_init_image and not r.init_image:
        raise InputError("--init-image", None, f"{variant.key} is an img2img refiner and needs --init-image PATH")
    if not r.init_image:
        return
    path = Path(r.init_image)
    if not path.is_file():
        raise InputError("--init-image", r.init_image, "is a directory, not an image file" if path.is_dir()
                         else "no such file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError("--init-image", r.init_image, f"not an image PIL can read ({str(exc).splitlines()[0]})") \
            from None


def check_inputs(req: GenerationRequest) -> tuple[GenerationRequest, ModelVariant]:
    """Every user error, named by its option and value, before anything loads or is written.

    Nothing here creates a file or directory, so a request refused by any check leaves no trace.
    The Python API, the command line, the service and the in-process workload all come through here,
    so numbers are type-checked too (a string for --steps from a service request, NaN from a config).
    """
    if req.custom_model and req.model_family not in FAMILY_PIPELINES:
        raise InputError("--model-family", req.model_family, f"must be one of {', '.join(sorted(FAMILY_PIPELINES))}")
    try:
        variant = req.variant()
    except UnknownVariantError as exc:
        raise InputError("--model-variant", req.model_variant, exc.message.split(": ", 1)[-1]) from None
    if not isinstance(req.prompts, list | tuple) or not all(isinstance(p, str) for p in req.prompts):
        raise InputError("--prompt", req.prompts, "must be a list of strings")
    _whole("--images-per-prompt", req.images_per_prompt, 1, MAX_IMAGES, "the per-run image limit")
    r = req.resolved()
    _check_device(r)
    _whole("--steps", r.steps, 1, MAX_STEPS, "schedulers are trained on 1000 timesteps")
    if variant.allowed_steps and r.steps not in variant.allowed_steps:
        raise InputError("--steps", r.steps, f"{variant.key} ships checkpoints for {variant.allowed_steps} steps only")
    biggest = variant.native_size * MAX_SIZE_FACTOR
    for opt, val in (("--height", r.height), ("--width", r.width)):
        _whole(opt, val, 1, biggest, f"{MAX_SIZE_FACTOR}x the native {variant.native_size} of {variant.key}")
        if val < variant.size_factor or val % variant.size_factor:
            raise InputError(opt, val, f"must be a positive multiple of {variant.size_factor} for {variant.family} models")
    if _real("--guidance-scale", r.guidance_scale) < 0:
        raise InputError("--guidance-scale", r.guidance_scale, "must be >= 0")
    if not 0 < _real("--strength", r.strength) <= 1:
        raise InputError("--strength", r.strength, "must be in (0, 1]: the fraction of the steps run on the init image")
    _whole("--num-images", r.num_images, 1, MAX_IMAGES, "the per-run image limit")
    _whole("--seed", r.seed, 0, MAX_SEED - (r.num_images - 1), "seeds are 64-bit and image i uses seed + i")
    if r.batch_size != "auto":
        _whole("--batch-size", r.batch_size, 1, MAX_IMAGES, "the per-run image limit; or 'auto'")
    _whole("--warmup", r.warmup, 0, MAX_WARMUP, "untimed runs before measuring")
    try:
        schedulers.check_fits(r.scheduler, variant.family)
    except schedulers.SchedulerError as exc:
        raise InputError("--scheduler", r.scheduler, str(exc)) from None
    if r.style_file or r.style:
        styles = load_styles(r.style_file)
        if r.style and r.style not in styles:
            raise InputError("--style", r.style, f"unknown style; known: {', '.join(sorted(styles))}")
    _check_init_image(r, variant)
    if variant.needs_init_image and int(r.steps * r.strength) < 1:
        raise InputError("--steps", r.steps, f"with strength {r.strength} the refiner would run no denoising step")
    threads = r.execution.cpu_threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError("--cpu-threads", threads, "must be a whole number of threads, at least 1")
    if r.execution.cpu_offload != "none":
        from .pipeline import resolve_device

        if resolve_device(r.execution.device) == "cpu":
            raise InputError("--cpu-offload", r.execution.cpu_offload,
                            "moves weights between the CPU and a GPU; there is no GPU here (--device cpu)")
    if r.execution.device in ("auto", "cuda"):
        total = _cuda_total_bytes()
        problem = memory_problem(r, total) if total else None
        if problem:
            raise InputError(*problem)
    if r.clip_model:
        from .quality import check_clip_path

        reason = check_clip_path(r.clip_model)
        if reason:
            raise InputError("--clip-model", r.clip_model, reason)
    if r.execution.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise InputError("--attention", "xformers",
                            "xformers is not installed (pip install '.[xformers]'), use sdpa") from None
    _check_outputs(r)
    return r, variant


def _check_outputs(r: GenerationRequest) -> None:
    """Where the run writes: checked last and without creating anything (see ``outputs.check_writable_dir``)."""
    reason = outputs.check_file_prefix(r.output_prefix)
    if reason:
        raise InputError("--output-prefix", r.output_prefix, reason)
    if r.save_images:
        reason = outputs.check_writable_dir(Path(r.output_dir))
        if reason:
            raise InputError("--output-dir", r.output_dir, reason)
    if r.export_metrics:
        target = Path(r.export_metrics)
        if target.is_dir() or str(r.export_metrics).endswith(("/", os.sep)):
            raise InputError("--export-metrics", r.export_metrics, "is a directory; give the metrics JSON file's path")
        if target.exists() and not os.access(target, os.W_OK):
            raise InputError("--export-metrics", r.export_metrics, "not writable")
        reason = outputs.check_writable_dir(target.absolute().parent)
        if reason:
            raise InputError("--export-metrics", r.export_metrics, f"its directory {reason}")


def expand_jobs(r: GenerationRequest) -> list[tuple[str, int]]:
    """(prompt, seed) for each image: prompts in order, each ``images_per_prompt`` times, cycled to num_images.

    Seeds are per image (seed + index), so an image does not change with the batch size.
    """
    order = [p for p in r.prompts for _ in range(r.images_per_prompt)]
    return [(order[i % len(order)], r.seed + i) for i in range(r.num_images)]


def step_hook_from_env(r: GenerationRequest | None = None) -> Callable[[float], None] | None:
    """The simulated GPU paces each step to its modelled time at the locked clock.

    Read at each generation, not at import: an in-process launcher sets the variable per run. The
    request names the workload whose step time the simulated GPU calibrates once and keeps.
    """
    if os.environ.get(env.SIMULATED_STATE):
        from profiling.backends.simulated import StepDilation

        signature = "default" if r is None else "|".join(str(v) for v in (
            r.custom_model or r.model_variant, r.weights, r.scheduler, r.height, r.width, r.batch_size,
            r.guidance_scale, r.execution.dtype, r.execution.device, bool(r.negative_prompt), bool(r.init_image)))
        return StepDilation.from_env(signature)
    return None


def load(r: GenerationRequest, variant: ModelVariant, recorder: PhaseRecorder,
         cache: PipelineCache | None = None) -> LoadedWorkload:
    """The request's pipeline, loaded or taken from ``cache``; weights that cannot be had are a --weights error."""
    try:
        wl = load_workload(variant, r.weights, r.scheduler, r.execution, r.seed, r.allow_pickle, r.steps, recorder,
                           cache)
    except weights.WeightsError as exc:
        raise InputError("--weights", r.weights, str(exc)) from None
    recorder.device = wl.device
    return wl


# (image index, prompt, seed) -> the image's file name inside the output directory.
FileNamer = Callable[[int, str, int], str]


@dataclass
class Generation:
    """What one pass of the generation path produced: the images (in memory and on disk) and their timings."""

    request: GenerationRequest
    variant: ModelVariant
    workload: LoadedWorkload
    jobs: list[tuple[str, int]]
    prefix: str
    batches: list[BatchResult]
    batch_size: int
    files: list[str]
    started: datetime
    outside_batches_s: dict[str, float]
    preparation: Preparation
    recompiles: int | None = None  # torch.compile frames compiled during the measured batches

    @property
    def images(self) -> list:
        return [im for res in self.batches for im in res.images]

    def metrics(self) -> dict:
        """The app metrics JSON (docs/ARCHITECTURE.md). FLOPs and CLIP scores are computed here,
        after the timed work, so they never change a measured time."""
        r, wl = self.request, self.workload
        metrics = build_metrics(r, self.variant, wl, self.batches, self.batch_size, self.started, self.files,
                                self.outside_batches_s)
        prep = self.preparation
        metrics["compile"] = prep.compile_metrics(wl.options.compile, self.recompiles)
        metrics["compile_s"] = prep.compile_s
        metrics["unmeasured_passes"] = {"batch_size_search": prep.searched, "compile": len(prep.compile_passes_s),
                                        "warmup": prep.warmup_passes}
        from .flops import flops_per_image, pipeline_configs

        # Counted on the meta device from the loaded components' configs (cached on disk per shape).
        metrics["flops_per_image"] = flops_per_image(pipeline_configs(wl.pipe), self.variant.family, r.height,
                                                     r.width, r.steps, r.guidance_scale)
        if r.clip_model:
            from .quality import clip_scorer

            scores = clip_scorer(r.clip_model).score(self.images, [self.prefix + p for p, _ in self.jobs])
            metrics["clip_score"] = {"per_image": scores, "mean": sum(scores) / len(scores), "model": r.clip_model}
        if metrics["flops_per_image"] and metrics["generation_s"]:
            metrics["achieved_tflops"] = metrics["flops_per_image"] * metrics["images"] / metrics["generation_s"] / 1e12
        return metrics


def generate(r: GenerationRequest, variant: ModelVariant, recorder: PhaseRecorder,
             cache: PipelineCache | None = None, warmup: int | None = None, log=print,
             file_name: FileNamer | None = None) -> Generation:
    """The one generation path, taken by every mode: a run, a suite case, a compared model, a
    service or harness request, an in-process run. Load (or take from ``cache``), warm up, generate
    in batches, save.

    ``r`` and ``variant`` come from ``check_inputs``: each caller checks its request once, before
    anything loads. ``warmup`` overrides the request's warm-up count (a resident model that is
    already warm needs none). Phase events go to ``recorder``; the simulated GPU's step dilation
    applies whenever the launcher set it up.
    """
    from PIL import Image

    prefix = load_styles(r.style_file)[r.style] if r.style else ""
    init_image = Image.open(r.init_image).convert("RGB") if r.init_image else None
    started = datetime.now(timezone.utc)
    wl = load(r, variant, recorder, cache)
    for note in wl.notes:
        log(f"note: {note}")
    gen = Generator(wl, recorder, step_hook_from_env(r))
    jobs = expand_jobs(r)
    before = dict(recorder.totals_s)  # a recorder may serve several generations (suites, services)

    def batch(items, index, phase="batch", **event):
        return gen.run_batch([prefix + p for p, _ in items], r.negative_prompt, r.height, r.width, r.steps,
                             r.guidance_scale, [s for _, s in items], index, init_image, r.strength, phase, **event)

    unmeasured = itertools.count(1)  # unmeasured passes are batches -1, -2, ... in the events

    def unmeasured_pass(n: int, **event) -> None:
        batch(jobs[:n], -next(unmeasured), phase="warmup", **event)

    state = pipeline_state(wl.pipe)
    shape = (r.height, r.width, r.guidance_scale, bool(r.negative_prompt), r.init_image)
    prep = prepare(unmeasured_pass, len(jobs), r.batch_size, r.warmup if warmup is None else warmup, wl.device,
                   compiled=state["compiled"] if wl.options.compile else None, shape_key=lambda n: (n, *shape),
                   found=state["auto_batch"], search_key=(len(jobs), *shape))
    batch_size = prep.batch_size
    reset_peak_memory(wl.device)  # the peak of the measured batches, not of loading or the search
    compiled_before = dynamo_totals() if wl.options.compile else None
    results = [batch(jobs[i:i + batch_size], k) for k, i in enumerate(range(0, len(jobs), batch_size))]
    compiled_after = dynamo_totals() if compiled_before is not None else None
    recompiles = compiled_after[0] - compiled_before[0] if compiled_before and compiled_after else None
    if recompiles:
        wl.notes.append(f"torch.compile compiled {recompiles} time(s) inside measured batches: their time "
                        "includes compilation")

    name = file_name or (lambda idx, prompt, seed: f"{r.output_prefix}{outputs.slugify(prompt)}_{idx:03d}_s{seed}.png")
    out_dir = Path(r.output_dir)
    files = []
    with recorder.phase("save"):
        if r.save_images:
            out_dir.mkdir(parents=True, exist_ok=True)
            images = [im for res in results for im in res.images]
            for idx, ((prompt, seed), im) in enumerate(zip(jobs, images, strict=True)):
                path = outputs.safe_child(out_dir, name(idx, prompt, seed))
                params = {"prompt": prefix + prompt, "negative_prompt": r.negative_prompt, "seed": seed,
                          "steps": r.steps, "guidance_scale": r.guidance_scale, "height": r.height, "width": r.width,
                          "scheduler": wl.scheduler_class, "model": variant.hub_id, "weights": wl.weights_source}
                outputs.save_png(im, path, params)
                files.append(str(path))
    outside = {k: recorder.totals_s[k] - before.get(k, 0.0) for k in ("warmup", "save")
               if k == "save" or prep.passes}
    return Generation(r, variant, wl, jobs, prefix, results, batch_size, files, started, outside, prep, recompiles)


def launcher_metrics_file() -> str | None:
    """Process mode: where the launcher wants this run's metrics JSON (``SD_ENERGY_METRICS_FILE``)."""
    return os.environ.get(env.METRICS_FILE) or None


def metrics_targets(export_metrics: str | Path | None, launcher_file: str | Path | None) -> list[Path]:
    """Both the user's --export-metrics and the launcher's file: neither may starve the other."""
    return list(dict.fromkeys(Path(p) for p in (export_metrics, launcher_file) if p))


def record(g: Generation, targets: list[Path]) -> dict:
    """A finished generation's metrics, written to ``targets``, with generation_config.json beside the images."""
    metrics = g.metrics()
    r = g.request
    if r.save_images:
        outputs.write_json_atomic(Path(r.output_dir) / f"{r.output_prefix}generation_config.json",
                                  {"config": metrics["config"], "environment": metrics["environment"],
                                   "images": g.files})
    for path in targets:
        outputs.write_json_atomic(path, metrics)
    return metrics


def run_generation(req: GenerationRequest, log=print, cache: PipelineCache | None = None) -> dict:
    """One generation run, as the command line does it: check, generate, write the metrics; returns them.

    ``cache`` keeps the pipeline resident for the next call (suites, tests); without it every call loads.
    """
    r, variant = check_inputs(req)
    recorder = PhaseRecorder.from_env(r.execution.device)
    try:
        g = generate(r, variant, recorder, cache, log=log)
    finally:
        recorder.close()
    return record(g, metrics_targets(r.export_metrics, launcher_metrics_file()))


def request_generator(base: GenerationRequest, recorder: PhaseRecorder,
                      cache: PipelineCache) -> Callable[..., list]:
    """``f(prompt, width, height, num_images, num_inference_steps, guidance_scale, seed=0) -> images``:
    the service's and the harness's generator on the resident pipeline.

    Each request is checked like any other (a size the model cannot take is an ``InputError``)
    and runs on the one generation path, one at a time: a GPU runs one batch, requests queue.
    """
    lock = threading.Lock()

    def generate_images(prompt: str, width: int, height: int, num_images: int, num_inference_steps: int,
                        guidance_scale: float, seed: int = 0) -> list:
        r, variant = check_inputs(replace(
            base, prompts=[str(prompt)], width=width, height=height, num_images=num_images, batch_size=num_images,
            images_per_prompt=1, steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed, warmup=0,
            save_images=False, export_metrics=None, clip_model=None))
        with lock:
            return generate(r, variant, recorder, cache, log=lambda *_: None).images

    return generate_images


def run_stats(values: list[float]) -> dict:
    """Mean, sample standard deviation and coefficient of variation of repeated runs."""
    if not values:
        return {"mean": None, "std": None, "cv": None, "n": 0}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "cv": std / mean if mean else None, "n": len(values)}


def run_config(r: GenerationRequest, variant: ModelVariant, wl: LoadedWorkload, batch_size: int | str,
               n_images: int) -> dict:
    """The metrics' ``config``: what was asked and what it resolved to (the launcher's ``app_*`` columns)."""
    return {
        "model_variant": variant.key, "model_id": variant.hub_id, "family": variant.family,
        "weights": wl.weights_source, "scheduler": r.scheduler, "scheduler_class": wl.scheduler_class,
        "dtype": wl.dtype, "dtype_requested": r.execution.dtype, "dtype_reason": wl.dtype_reason,
        "attention": wl.options.attention, "device": wl.device,
        "cpu_offload": wl.options.cpu_offload, "compile": wl.options.compile, "channels_last": wl.options.channels_last,
        "cpu_threads": wl.options.cpu_threads,
        "vae_slicing": wl.options.vae_slicing, "vae_tiling": wl.options.vae_tiling,
        "height": r.height, "width": r.width, "steps": r.steps, "guidance_scale": r.guidance_scale,
        "batch_size": batch_size, "batch_size_requested": r.batch_size, "num_images": n_images,
        "images_per_prompt": r.images_per_prompt, "seed": r.seed, "warmup": r.warmup, "style": r.style,
        "prompts": r.prompts, "negative_prompt": r.negative_prompt,
    }


def build_metrics(r: GenerationRequest, variant: ModelVariant, wl: LoadedWorkload, results: list[BatchResult],
                  batch_size: int, started: datetime, files: list[str], outside_batches_s: dict[str, float]) -> dict:
    """The app metrics JSON (see docs/ARCHITECTURE.md); phases cover measured batches plus load/warm-up/save."""
    n_images = sum(len(res) for res in results)
    total_s = sum(res.latency_s for res in results)
    phases: dict[str, float] = {"load": wl.load_s, **outside_batches_s}
    for res in results:
        for k, v in res.phases_s.items():
            phases[k] = phases.get(k, 0.0) + v
    steps_total = sum(len(res.step_times_s) for res in results)
    config = run_config(r, variant, wl, batch_size, n_images)
    per_image = [res.latency_s / len(res) for res in results for _ in range(len(res))]
    return {
        "schema": "sd-energy.app-metrics/1",
        "started_utc": started.isoformat(),
        "finished_utc": datetime.now(timezone.utc).isoformat(),
        "config": config,
        "environment": environment_info(wl.device),
        "notes": wl.notes,
        "per_image_latency_s": per_image,
        "per_batch_latency_s": [res.latency_s for res in results],
        "per_step_s": [res.step_times_s for res in results],
        "phases_s": phases,
        "latency_stats_s": run_stats([res.latency_s for res in results]),
        "peak_memory_mib": peak_memory_mib(wl.device),
        "images": n_images,
        "generation_s": total_s,
        "images_per_s": n_images / total_s if total_s else None,
        "pixels_per_s": n_images * r.height * r.width / total_s if total_s else None,
        "steps_per_s": steps_total / total_s if total_s else None,
        "flops_per_image": None,
        "files": files,
    }

