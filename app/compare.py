"""Model comparison (``--compare-models a,b,c``) and the icon benchmark (``--benchmark-type icons``).

Bench mode (default) is fair: each model is loaded, warmed up, run on the same prompts with the
same seeds and parameters, then unloaded and its memory freed before the next, so no model pays
for another's cache. Dev mode (``--keep-loaded``) keeps every model resident for quick iteration.
"""

from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from sd_energy_contract.errors import InputError

from . import outputs
from .models import ICON_VARIANTS, UnknownVariantError, get_variant
from .pipeline import Generator, clear_cache, load_workload, peak_memory_mib
from .runner import GenerationRequest, check_inputs, load_styles
from .suites import ICON_PROMPTS
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
    """The user's request for one model: what the user set wins, the rest is the model's own default."""
    v = get_variant(model)
    return replace(base, model_variant=model, custom_model=None,
                   height=base.height if "height" in explicit else v.native_size,
                   width=base.width if "width" in explicit else v.native_size,
                   steps=base.steps if "steps" in explicit else v.default_steps,
                   guidance_scale=base.guidance_scale if "guidance_scale" in explicit else v.default_guidance,
                   scheduler=base.scheduler if "scheduler" in explicit else None)


def compare_models(models: list[str], base: GenerationRequest, out_root: Path, keep_loaded: bool = False,
                   per_model_dirs: bool = False, explicit: frozenset[str] = frozenset(), log=print) -> dict:
    """Run every model on the same prompts and seeds; write images, one generation_config.json and a table."""
    reqs = {m: check_inputs(_request_for(base, m, set(explicit)))[0] for m in models}  # all checked before any run
    out_root.mkdir(parents=True, exist_ok=True)
    prefix_styles = load_styles(base.style_file)
    rows, per_model = [], {}
    resident: dict[str, object] = {}
    for model in models:
        r = reqs[model]
        variant = get_variant(model)
        prefix = prefix_styles[r.style] if r.style else ""
        if not keep_loaded:
            clear_cache()
        recorder = PhaseRecorder(r.execution.device)
        t0 = time.perf_counter()
        wl = resident.get(model) or load_workload(variant, r.weights, r.scheduler, r.execution, r.seed,
                                                  r.allow_pickle, r.steps, recorder)
        load_s = time.perf_counter() - t0
        recorder.device = wl.device
        if keep_loaded:
            resident[model] = wl
        gen = Generator(wl, recorder)
        gen.run_batch([prefix + r.prompts[0]], r.negative_prompt, r.height, r.width, r.steps, r.guidance_scale,
                      [r.seed], -1, phase="warmup")
        images = []
        for i, prompt in enumerate(r.prompts):
            res = gen.run_batch([prefix + prompt], r.negative_prompt, r.height, r.width, r.steps, r.guidance_scale,
                                [r.seed + i], i)
            slug = outputs.slugify(prompt)
            name = f"{slug}.png" if per_model_dirs else f"{model}_{slug}.png"
            target_dir = out_root / model if per_model_dirs else out_root
            target_dir.mkdir(parents=True, exist_ok=True)
            path = outputs.safe_child(target_dir, name)
            outputs.save_png(res.images[0], path, {"prompt": prefix + prompt, "seed": r.seed + i, "model": variant.hub_id,
                                                   "steps": r.steps, "guidance_scale": r.guidance_scale})
            images.append({"prompt": prompt, "file": str(path.relative_to(out_root)), "seed": r.seed + i,
                           "time_s": res.latency_s})
            rows.append({"model": model, "model_id": variant.hub_id, "weights": wl.weights_source, "prompt": prompt,
                         "seed": r.seed + i, "height": r.height, "width": r.width, "steps": r.steps,
                         "guidance_scale": r.guidance_scale, "scheduler_class": wl.scheduler_class,
                         "time_s": round(res.latency_s, 4), "file": str(path.relative_to(out_root))})
        from .flops import flops_per_image, pipeline_configs

        times = [im["time_s"] for im in images]
        per_model[model] = {"model_id": variant.hub_id, "weights": wl.weights_source, "device": wl.device,
                            "dtype": wl.dtype, "scheduler_class": wl.scheduler_class, "height": r.height,
                            "width": r.width, "steps": r.steps, "guidance_scale": r.guidance_scale, "seed": r.seed,
                            "load_s": load_s, "total_s": sum(times), "mean_s_per_image": sum(times) / len(times),
                            "peak_memory_mib": peak_memory_mib(wl.device),
                            "flops_per_image": flops_per_image(pipeline_configs(wl.pipe), variant.family, r.height,
                                                               r.width, r.steps, r.guidance_scale),
                            "images": images}
        log(f"{model:<22} {len(times)} image(s), total {sum(times):.3f} s, mean {sum(times) / len(times):.3f} s/image, "
            f"load {load_s:.2f} s ({wl.weights_source})")
    if not keep_loaded:
        clear_cache()
    with open(out_root / "comparison.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    config = {"mode": "dev (--keep-loaded)" if keep_loaded else "bench (fresh load per model)",
              "prompts": base.prompts, "style": base.style, "negative_prompt": base.negative_prompt,
              "created": datetime.now().isoformat(timespec="seconds"), "models": per_model}
    outputs.write_json_atomic(out_root / "generation_config.json", config)
    return config


def timestamped(root: str | Path) -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


def icon_benchmark(base: GenerationRequest, out_root: Path, quick: bool = False,
                   explicit: frozenset[str] = frozenset(), log=print) -> Path:
    """The three icon fine-tunes x the five icon prompts (``--quick``: one model, two prompts), with a gallery."""
    models = list(ICON_VARIANTS[:1] if quick else ICON_VARIANTS)
    prompts = list(ICON_PROMPTS[:2] if quick else ICON_PROMPTS)
    req = replace(base, prompts=prompts, style="icon")
    config = compare_models(models, req, out_root, per_model_dirs=True, explicit=explicit, log=log)
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
