"""Model comparison (``--compare-models a,b,c``) and the icon benchmark (``--benchmark-type icons``).

Bench mode (default) is fair: each model is loaded, warmed up, run on the same prompts with the
same seeds and parameters, then unloaded and its memory freed before the next, so no model pays
for another's cache. Dev mode (``--keep-loaded``) keeps every model resident for quick iteration.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from sd_energy_contract.errors import InputError

from . import outputs
from .models import ICON_PROMPTS, ICON_VARIANTS, UnknownVariantError, get_variant
from .pipeline import PipelineCache
from .runner import GenerationRequest, check_inputs, generate
from .timing import PhaseRecorder


def parse_models(spec: str) -> list[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        raise InputError("--compare-models", spec, "names no model")
    for name in names:
        try:
            get_variant(name)
        except UnknownVariantError as exc:
            raise InputError("--compare-models", name, exc.message.split(": ", 1)[-1]) from None
    return names


def _request_for(base: GenerationRequest, model: str, explicit: set[str]) -> GenerationRequest:
    """The user's request for one model: what the user set wins, the rest is the model's own default.

    Each prompt is one image in a batch of its own (seed + prompt index), so every model gets the
    same prompts with the same seeds and a time per image.
    """
    v = get_variant(model)
    return replace(base, model_variant=model, custom_model=None,
                   height=base.height if "height" in explicit else v.native_size,
                   width=base.width if "width" in explicit else v.native_size,
                   steps=base.steps if "steps" in explicit else v.default_steps,
                   guidance_scale=base.guidance_scale if "guidance_scale" in explicit else v.default_guidance,
                   scheduler=base.scheduler if "scheduler" in explicit else None,
                   num_images=None, images_per_prompt=1, batch_size=1, save_images=True, export_metrics=None)


def compare_models(models: list[str], base: GenerationRequest, out_root: Path, keep_loaded: bool = False,
                   per_model_dirs: bool = False, explicit: frozenset[str] = frozenset(), log=print,
                   recorder: PhaseRecorder | None = None, metrics: list[Path] = ()) -> dict:
    """Run every model on the same prompts and seeds; write images, one generation_config.json and a table.

    Each model goes through the one generation path (phase events, the simulated clock), warmed
    up with one batch (or --warmup). ``metrics`` get the comparison with its image and time totals.
    """
    out_root = Path(out_root).resolve()  # image paths are resolved: so is the root they are relative to
    # All checked before any run; the check creates no directory but the user's --output-dir.
    reqs = {m: check_inputs(_request_for(base, m, set(explicit))) for m in models}
    out_root.mkdir(parents=True, exist_ok=True)
    recorder = recorder or PhaseRecorder(base.execution.device)
    fresh = PipelineCache()
    resident: dict[str, PipelineCache] = {}
    rows, per_model = [], {}
    for model in models:
        r, variant = reqs[model]
        r = replace(r, output_dir=str(out_root / model if per_model_dirs else out_root))
        cache = resident.setdefault(model, PipelineCache()) if keep_loaded else fresh
        prefix = "" if per_model_dirs else f"{model}_"
        g = generate(r, variant, recorder, cache, warmup=max(1, r.warmup), log=log,
                     file_name=lambda idx, prompt, seed, prefix=prefix: f"{prefix}{outputs.slugify(prompt)}.png")
        m = g.metrics()
        wl = g.workload
        images = [{"prompt": prompt, "file": str(Path(f).relative_to(out_root)), "seed": seed, "time_s": t}
                  for (prompt, seed), f, t in zip(g.jobs, g.files, m["per_image_latency_s"], strict=True)]
        rows += [{"model": model, "model_id": variant.hub_id, "weights": wl.weights_source, "prompt": im["prompt"],
                  "seed": im["seed"], "height": r.height, "width": r.width, "steps": r.steps,
                  "guidance_scale": r.guidance_scale, "scheduler_class": wl.scheduler_class,
                  "time_s": round(im["time_s"], 4), "file": im["file"]} for im in images]
        times = [im["time_s"] for im in images]
        per_model[model] = {"model_id": variant.hub_id, "weights": wl.weights_source, "device": wl.device,
                            "dtype": wl.dtype, "scheduler_class": wl.scheduler_class, "height": r.height,
                            "width": r.width, "steps": r.steps, "guidance_scale": r.guidance_scale, "seed": r.seed,
                            "load_s": wl.load_s, "total_s": sum(times), "mean_s_per_image": sum(times) / len(times),
                            "peak_memory_mib": m["peak_memory_mib"], "flops_per_image": m["flops_per_image"],
                            "phases_s": m["phases_s"], "images": images}
        if "clip_score" in m:
            per_model[model]["clip_score"] = m["clip_score"]
        log(f"{model:<22} {len(times)} image(s), total {sum(times):.3f} s, mean {sum(times) / len(times):.3f} s/image, "
            f"load {wl.load_s:.2f} s ({wl.weights_source})")
        if not keep_loaded:
            fresh.clear()  # the next model starts from freed memory, paying for no one else's cache
    for cache in resident.values():
        cache.clear()
    with open(out_root / "comparison.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    config = {"mode": "dev (--keep-loaded)" if keep_loaded else "bench (fresh load per model)",
              "prompts": base.prompts, "style": base.style, "negative_prompt": base.negative_prompt,
              "created": datetime.now().isoformat(timespec="seconds"), "models": per_model}
    outputs.write_json_atomic(out_root / "generation_config.json", config)
    if metrics:
        summary = {"schema": "sd-energy.app-comparison/1", **config,
                   "images": sum(len(info["images"]) for info in per_model.values()),
                   "generation_s": sum(info["total_s"] for info in per_model.values())}
        for path in metrics:
            outputs.write_json_atomic(path, summary)
    return config


def timestamped(root: str | Path) -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


def icon_benchmark(base: GenerationRequest, out_root: Path, quick: bool = False,
                   explicit: frozenset[str] = frozenset(), log=print, recorder: PhaseRecorder | None = None,
                   metrics: list[Path] = ()) -> Path:
    """The three icon fine-tunes x the five icon prompts (``--quick``: one model, two prompts), with a gallery."""
    models = list(ICON_VARIANTS[:1] if quick else ICON_VARIANTS)
    prompts = list(ICON_PROMPTS[:2] if quick else ICON_PROMPTS)
    req = replace(base, prompts=prompts, style="icon")
    config = compare_models(models, req, out_root, per_model_dirs=True, explicit=explicit, log=log,
                            recorder=recorder, metrics=metrics)
    for model, info in config["models"].items():
        log(f"{model}: total {info['total_s']:.3f} s, average {info['mean_s_per_image']:.3f} s per image")
    gallery = out_root / "gallery.html"
    gallery.write_text(gallery_html(config, prompts))
    log(f"gallery: {gallery}")
    return gallery


def gallery_html(config: dict, prompts: list[str]) -> str:
    head = "".join(f"<th>{html.escape(p)}</th>" for p in prompts)
    body = []
    for model, info in config["models"].items():
        cells = []
        by_prompt = {im["prompt"]: im for im in info["images"]}
        for p in prompts:
            im = by_prompt[p]
            cells.append(f'<td><img src="{html.escape(im["file"])}" alt="{html.escape(p)}" width="192"><br>'
                         f'{im["time_s"]:.2f} s</td>')
        body.append(f"<tr><th>{html.escape(model)}<br><small>{html.escape(info['model_id'])}<br>"
                    f"{info['weights']} weights, avg {info['mean_s_per_image']:.2f} s</small></th>{''.join(cells)}</tr>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Icon benchmark</title><style>"
            f"body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:4px;text-align:center}}"
            f"table{{border-collapse:collapse}}</style></head><body><h1>Icon benchmark</h1>"
            f"<p>{html.escape(config['mode'])}; created {config['created']}</p>"
            f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"
            f"<pre>{html.escape(json.dumps({m: {k: v for k, v in i.items() if k != 'images'} for m, i in config['models'].items()}, indent=1, default=str))}</pre>"
            f"</body></html>")
