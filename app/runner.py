"""The generation path: validate a request (``check_inputs``), then ``generate`` it on a loaded or
resident pipeline: warm-up, batches, save; metrics JSON. Every mode goes through ``generate``.
"""

from __future__ import annotations

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
from .models import ModelVariant, UnknownVariantError, custom_variant, get_variant
from .pipeline import (
    BatchResult,
    ExecutionOptions,
    Generator,
    LoadedWorkload,
    PipelineCache,
    backoff_batches,
    environment_info,
    load_workload,
    peak_memory_mib,
)
from .timing import PhaseRecorder

ICON_PREFIX = ("flat vector icon, minimal, solid shapes, no gradients, no shading, no texture, white background, "
               "centered composition, simple geometry, ")
STYLES_FILE = Path(__file__).resolve().parent.parent / "configs" / "styles.yaml"
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"


def load_styles(extra_file: str | None = None) -> dict[str, str]:
    styles = {"icon": ICON_PREFIX}
    for path in (STYLES_FILE, extra_file):
        if path and Path(path).exists():
            styles.update(yaml.safe_load(Path(path).read_text()) or {})
    return styles


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
    warmup: int = 0
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
                       num_images=pick(self.num_images, len(prompts) * self.images_per_prompt))


def check_inputs(req: GenerationRequest) -> tuple[GenerationRequest, ModelVariant]:
    """Every user error, named by its option and value, before anything loads or is written."""
    try:
        variant = req.variant()
    except UnknownVariantError as exc:
        raise InputError("--model-variant", req.model_variant, exc.message.split(": ", 1)[-1]) from None
    r = req.resolved()
    if r.steps < 1:
        raise InputError("--steps", r.steps, "must be at least 1")
    if variant.allowed_steps and r.steps not in variant.allowed_steps:
        raise InputError("--steps", r.steps, f"{variant.key} ships checkpoints for {variant.allowed_steps} steps only")
    for opt, val in (("--height", r.height), ("--width", r.width)):
        if val < variant.size_factor or val % variant.size_factor:
            raise InputError(opt, val, f"must be a positive multiple of {variant.size_factor} for {variant.family} models")
    if r.guidance_scale < 0:
        raise InputError("--guidance-scale", r.guidance_scale, "must be >= 0")
    if r.batch_size != "auto" and int(r.batch_size) < 1:
        raise InputError("--batch-size", r.batch_size, "must be at least 1 or 'auto'")
    for opt, val in (("--num-images", r.num_images), ("--images-per-prompt", r.images_per_prompt)):
        if val < 1:
            raise InputError(opt, val, "must be at least 1")
    if r.warmup < 0:
        raise InputError("--warmup", r.warmup, "must be >= 0")
    try:
        schedulers.check_fits(r.scheduler, variant.family)
    except schedulers.SchedulerError as exc:
        raise InputError("--scheduler", r.scheduler, str(exc)) from None
    if r.style and r.style not in load_styles(r.style_file):
        raise InputError("--style", r.style, f"unknown style; known: {', '.join(sorted(load_styles(r.style_file)))}")
    if variant.needs_init_image:
        if not r.init_image:
            raise InputError("--init-image", None, f"{variant.key} is an img2img refiner and needs --init-image PATH")
        if not Path(r.init_image).is_file():
            raise InputError("--init-image", r.init_image, "no such file")
        if int(r.steps * r.strength) < 1:
            raise InputError("--steps", r.steps, f"with strength {r.strength} the refiner would run no denoising step")
    if r.execution.cpu_offload != "none":
        from .pipeline import resolve_device

        if resolve_device(r.execution.device) == "cpu":
            raise InputError("--cpu-offload", r.execution.cpu_offload,
                            "moves weights between the CPU and a GPU; there is no GPU here (--device cpu)")
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
    if r.save_images:
        reason = outputs.check_writable_dir(Path(r.output_dir))
        if reason:
            raise InputError("--output-dir", r.output_dir, reason)
    if r.export_metrics:
        reason = outputs.check_writable_dir(Path(r.export_metrics).resolve().parent)
        if reason:
            raise InputError("--export-metrics", r.export_metrics, reason)
    return r, variant


def expand_jobs(r: GenerationRequest) -> list[tuple[str, int]]:
    """(prompt, seed) for each image: prompts in order, each ``images_per_prompt`` times, cycled to num_images.

    Seeds are per image (seed + index), so an image does not change with the batch size.
    """
    order = [p for p in r.prompts for _ in range(r.images_per_prompt)]
    return [(order[i % len(order)], r.seed + i) for i in range(r.num_images)]


def step_hook_from_env() -> Callable[[float], None] | None:
    """The simulated GPU stretches each step to the time it would take at the locked clock.

    Read at each generation, not at import: an in-process launcher sets the variable per run.
    """
    if os.environ.get(env.SIMULATED_STATE):
        from profiling.backends.simulated import StepDilation

        return StepDilation.from_env()
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

    @property
    def images(self) -> list:
        return [im for res in self.batches for im in res.images]

    def metrics(self) -> dict:
        """The app metrics JSON (docs/ARCHITECTURE.md). FLOPs and CLIP scores are computed here,
        after the timed work, so they never change a measured time."""
        r, wl = self.request, self.workload
        metrics = build_metrics(r, self.variant, wl, self.batches, self.batch_size, self.started, self.files,
                                self.outside_batches_s)
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
    gen = Generator(wl, recorder, step_hook_from_env())
    jobs = expand_jobs(r)
    before = dict(recorder.totals_s)  # a recorder may serve several generations (suites, services)

    def batch(items, index, phase="batch"):
        return gen.run_batch([prefix + p for p, _ in items], r.negative_prompt, r.height, r.width, r.steps,
                             r.guidance_scale, [s for _, s in items], index, init_image, r.strength, phase)

    n_warmup = r.warmup if warmup is None else warmup
    for w in range(n_warmup):
        batch(jobs[:1], -1 - w, phase="warmup")

    batch_size = r.batch_size
    results = []
    if batch_size == "auto":
        first = {}
        start = min(len(jobs), 64 if wl.device.startswith("cuda") else len(jobs))
        batch_size = backoff_batches(lambda b: first.setdefault("r", batch(jobs[:b], 0)), start)
        results.append(first["r"])
        done = batch_size
    else:
        batch_size, done = int(batch_size), 0
    for i in range(done, len(jobs), batch_size):
        results.append(batch(jobs[i:i + batch_size], len(results)))

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
               if k == "save" or n_warmup}
    return Generation(r, variant, wl, jobs, prefix, results, batch_size, files, started, outside)


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
        "dtype": wl.dtype, "attention": wl.options.attention, "device": wl.device,
        "cpu_offload": wl.options.cpu_offload, "compile": wl.options.compile, "channels_last": wl.options.channels_last,
        "vae_slicing": wl.options.vae_slicing, "vae_tiling": wl.options.vae_tiling,
        "height": r.height, "width": r.width, "steps": r.steps, "guidance_scale": r.guidance_scale,
        "batch_size": batch_size, "batch_size_requested": r.batch_size, "num_images": n_images,
        "images_per_prompt": r.images_per_prompt, "seed": r.seed, "warmup": r.warmup, "style": r.style,
        "prompts": r.prompts, "negative_prompt": r.negative_prompt,
    }


def build_metrics(r: GenerationRequest, variant: ModelVariant, wl: LoadedWorkload, results: list[BatchResult],
                  batch_size: int, started: datetime, files: list[str], outside_batches_s: dict[str, float]) -> dict:
    """The app metrics JSON (see docs/ARCHITECTURE.md); phases cover measured batches plus load/warm-up/save."""
    n_images = sum(len(res.images) for res in results)
    total_s = sum(res.latency_s for res in results)
    phases: dict[str, float] = {"load": wl.load_s, **outside_batches_s}
    for res in results:
        for k, v in res.phases_s.items():
            phases[k] = phases.get(k, 0.0) + v
    steps_total = sum(len(res.step_times_s) for res in results)
    config = run_config(r, variant, wl, batch_size, n_images)
    per_image = [res.latency_s / len(res.images) for res in results for _ in res.images]
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

