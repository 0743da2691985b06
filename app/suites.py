"""Benchmark suites, scheduler comparison and multi-resolution runs.

A suite is a list of cases, each a set of overrides on the user's request. Every case runs
``repeats`` times on one resident pipeline and becomes one row with mean, std and coefficient
of variation of its latency and throughput, so run-to-run noise is visible next to the number.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

from . import schedulers
from .outputs import write_json_atomic
from .pipeline import PipelineCache
from .runner import GenerationRequest, check_inputs, generate, load_styles, run_stats
from .timing import PhaseRecorder

BENCHMARK_TYPES = ("speed", "quality", "memory_stress", "artistic_styles", "energy_research", "icons")


def _round_to(x: float, factor: int) -> int:
    return max(factor, int(round(x / factor)) * factor)


def suite_cases(kind: str, r: GenerationRequest) -> list[tuple[str, dict]]:
    """(case name, request overrides) for a benchmark type, scaled to the request's own operating point."""
    _, variant = check_inputs(r)
    base = r.resolved()
    s, f, n = base.steps, variant.size_factor, base.height
    if kind == "speed":
        return [("default", {}), ("batch2", {"batch_size": 2, "num_images": 2})]
    if kind == "quality":
        return [(f"steps{k}", {"steps": k}) for k in sorted({max(1, s // 2), s, s * 2})]
    if kind == "memory_stress":
        cases = [(f"batch{b}", {"batch_size": b, "num_images": b}) for b in (1, 2, 4, 8)]
        return cases + [(f"{_round_to(n * m, f)}px", {"height": _round_to(n * m, f), "width": _round_to(n * m, f)})
                        for m in (1.5, 2.0)]
    if kind == "artistic_styles":
        return [(name, {"style": name}) for name in sorted(load_styles(r.style_file))]
    if kind == "energy_research":
        # The grid an energy study varies: work per image (steps) and parallelism (batch).
        return [(f"steps{k}_batch{b}", {"steps": k, "batch_size": b, "num_images": b})
                for k in sorted({max(1, s // 2), s}) for b in (1, 2, 4)]
    raise ValueError(f"{kind} is not a case suite (icons runs through app.compare.icon_benchmark)")


def scheduler_cases(r: GenerationRequest) -> list[tuple[str, dict]]:
    _, variant = check_inputs(r)
    fits = [n for n, spec in schedulers.SCHEDULERS.items()
            if spec.flow == (variant.family in schedulers.FLOW_FAMILIES)]
    return [(name, {"scheduler": name}) for name in fits]


def resolution_cases(r: GenerationRequest) -> list[tuple[str, dict]]:
    _, variant = check_inputs(r)
    n, f = r.resolved().height, variant.size_factor
    sizes = sorted({_round_to(n * m, f) for m in (0.5, 0.75, 1.0, 1.25)})
    return [(f"{h}x{h}", {"height": h, "width": h}) for h in sizes]


def run_suites(kinds: list[tuple[str, list[tuple[str, dict]]]], r: GenerationRequest, repeats: int, out_dir: Path,
               log=print, recorder: PhaseRecorder | None = None, cache: PipelineCache | None = None,
               metrics_targets: list[Path] = ()) -> dict[str, list[dict]]:
    """Run each suite's cases ``repeats`` times on one resident pipeline; a CSV per suite, one metrics JSON.

    Every case is checked before the first run (a bad case never stops a table half-way). The
    first case is warmed up (at least one batch, or --warmup), so it does not run cold; later cases
    warm up only when --warmup asks. The metrics JSON (--export-metrics, or the launcher's file)
    holds every suite's rows and the images and generation time in total.
    """
    recorder = recorder or PhaseRecorder(r.execution.device)
    cache = cache or PipelineCache()
    checked = {name: [(case, check_inputs(replace(r, output_dir=str(out_dir / name / case), export_metrics=None,
                                                  **overrides))) for case, overrides in cases]
               for name, cases in kinds}
    tables: dict[str, list[dict]] = {}
    cold = True
    for name, cases in checked.items():
        rows = tables[name] = []
        for case, (req, variant) in cases:
            runs = []
            for k in range(repeats):
                warmup = 0 if k else (max(1, req.warmup) if cold else req.warmup)
                runs.append(generate(req, variant, recorder, cache, warmup=warmup, log=lambda *_: None).metrics())
                cold = False
            rows.append(_row(name, case, runs))
            log(_format_row(rows[-1]))
        _write_csv(out_dir / f"benchmark_{name}.csv", rows)
        log(f"wrote {out_dir / f'benchmark_{name}.csv'}")
    if metrics_targets:
        summary = suite_metrics(tables)
        for path in metrics_targets:
            write_json_atomic(path, summary)
    return tables


def suite_metrics(tables: dict[str, list[dict]]) -> dict:
    """The suites' metrics JSON: every row, plus the totals a launcher row needs (images, time)."""
    rows = [row for table in tables.values() for row in table]
    first = rows[0] if rows else {}
    return {"schema": "sd-energy.app-suite/1", "suites": tables,
            "config": {k: first.get(k) for k in ("model_variant", "weights", "scheduler", "dtype", "height", "width",
                                                 "steps", "batch_size", "device")},
            "images": sum(row["images"] * row["runs"] for row in rows),
            "generation_s": sum(row["latency_s_mean"] * row["runs"] for row in rows)}


def _row(suite: str, case: str, runs: list[dict]) -> dict:
    c = runs[0]["config"]
    row = {"suite": suite, "case": case, "runs": len(runs), "model_variant": c["model_variant"],
           "weights": c["weights"], "scheduler": c["scheduler"], "scheduler_class": c["scheduler_class"],
           "height": c["height"], "width": c["width"], "steps": c["steps"], "batch_size": c["batch_size"],
           "images": c["num_images"], "style": c["style"], "dtype": c["dtype"], "device": c["device"]}
    for key, values in (("latency_s", [m["generation_s"] for m in runs]),
                        ("images_per_s", [m["images_per_s"] for m in runs]),
                        ("steps_per_s", [m["steps_per_s"] for m in runs])):
        stats = run_stats(values)
        row.update({f"{key}_mean": stats["mean"], f"{key}_std": stats["std"], f"{key}_cv": stats["cv"]})
    if "clip_score" in runs[0]:
        stats = run_stats([m["clip_score"]["mean"] for m in runs])
        row.update({"clip_score_mean": stats["mean"], "clip_score_std": stats["std"]})
    row["peak_memory_mib"] = max(m["peak_memory_mib"] for m in runs)
    row["files"] = len(runs[-1]["files"])
    return row


def _format_row(row: dict) -> str:
    return (f"{row['suite']:<16} {row['case']:<28} {row['height']}x{row['width']} steps={row['steps']:<3} "
            f"batch={row['batch_size']:<2} {row['images_per_s_mean']:.3f} img/s (cv {row['images_per_s_cv'] or 0:.1%}) "
            f"latency {row['latency_s_mean']:.3f}s  {row['scheduler_class']}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
