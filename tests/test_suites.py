"""Benchmark suites, scheduler comparison and multi-resolution produce their rows and CSVs."""

from __future__ import annotations

import csv
import json

import pytest

from app.cli import main

SMALL = ["--height", "64", "--width", "64", "--steps", "2", "--weights", "tiny", "--device", "cpu", "-q"]
SMALLEST = [*SMALL, "--height", "32", "--width", "32"]  # where the size is not what is tested


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from app.quality import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.mark.parametrize("kind, n_cases", [("speed", 2), ("quality", 3), ("memory_stress", 6),
                                           ("artistic_styles", 6), ("energy_research", 6)])
def test_benchmark_types(tmp_path, kind, n_cases, monkeypatch, request):
    events = tmp_path / "ev.jsonl"
    monkeypatch.setenv("SD_ENERGY_EVENTS_FILE", str(events))
    clip = ["--clip-model", str(request.getfixturevalue("tiny_clip"))] if kind == "quality" else []
    rc = main([*SMALL, "--benchmark", "--benchmark-type", kind, "--benchmark-runs", "2",
               "--output-dir", str(tmp_path), "--export-metrics", str(tmp_path / "m.json"), *clip])
    assert rc == 0
    table = rows(tmp_path / f"benchmark_{kind}.csv")
    assert len(table) == n_cases
    for r in table:
        assert r["runs"] == "2" and float(r["images_per_s_mean"]) > 0 and r["images_per_s_cv"] != ""
    if kind == "memory_stress":
        assert {r["batch_size"] for r in table} >= {"1", "2", "4", "8"} and {"96", "128"} <= {r["height"] for r in table}
    if kind == "quality":  # the CLIP scores computed for each run stay in the table
        assert [r["steps"] for r in table] == ["1", "2", "4"]
        assert all(0 <= float(r["clip_score_mean"]) <= 100 for r in table)
    # --export-metrics holds the suite's rows and totals; the first case ran warm.
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(metrics["suites"][kind]) == n_cases
    assert metrics["images"] == sum(int(r["images"]) * 2 for r in table)
    phases = [e["phase"] for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "start"]
    assert phases.index("warmup") < phases.index("batch")


def test_scheduler_comparison_covers_every_fitting_scheduler(tmp_path):
    assert main([*SMALL, "--scheduler-comparison", "--benchmark-runs", "1", "--output-dir", str(tmp_path)]) == 0
    table = rows(tmp_path / "benchmark_scheduler_comparison.csv")
    classes = {r["scheduler"]: r["scheduler_class"] for r in table}
    assert len(classes) == 15 and "flow-euler" not in classes
    assert classes["heun"] == "HeunDiscreteScheduler" and classes["unipc"] == "UniPCMultistepScheduler"


def test_multi_resolution(tmp_path):
    assert main([*SMALL, "--multi-resolution", "--benchmark-runs", "1", "--output-dir", str(tmp_path)]) == 0
    assert [r["height"] for r in rows(tmp_path / "benchmark_multi_resolution.csv")] == ["32", "48", "64", "80"]


# --------------------------------------------------------------------------- model comparison and icons

def test_compare_models_writes_every_file(tmp_path):
    rc = main([*SMALLEST, "--compare-models", "sd-v1.5,sd-v2.1,sdxl", "--prompt", "a red fox", "--prompt", "a blue car",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # outputs/<timestamp>/
    table = rows(root / "comparison.csv")
    assert len(table) == 6 and {r["model"] for r in table} == {"sd-v1.5", "sd-v2.1", "sdxl"}
    assert {r["seed"] for r in table if r["prompt"] == "a blue car"} == {"1"}
    for r in table:
        assert (root / r["file"]).exists() and r["height"] == "32"
    cfg = json.loads((root / "generation_config.json").read_text())
    assert cfg["mode"].startswith("bench") and cfg["models"]["sdxl"]["flops_per_image"] > 0
    assert cfg["models"]["sd-v1.5"]["model_id"].endswith("stable-diffusion-v1-5")
    for info in cfg["models"].values():
        assert info["peak_memory_mib"] > 0 and info["total_s"] > 0


def test_compare_models_keep_loaded_relative_dir_under_the_launcher(tmp_path, monkeypatch):
    """The README's example as written (default relative output dir), as the launcher runs it: phase events,
    the simulated clock's step dilation and the metrics file, as in a plain run."""
    from profiling.backends import simulated

    dilated = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SD_ENERGY_EVENTS_FILE", str(tmp_path / "ev.jsonl"))
    monkeypatch.setenv("SD_ENERGY_METRICS_FILE", str(tmp_path / "m.json"))
    monkeypatch.setenv("SD_ENERGY_SIMULATED_STATE", str(tmp_path / "h100-0.json"))
    monkeypatch.setattr(simulated.StepDilation, "from_env", classmethod(lambda cls, signature="default": dilated.append))
    assert main([*SMALLEST, "--compare-models", "sd-v1.5,sd-v2.1", "--keep-loaded"]) == 0
    (root,) = (tmp_path / "outputs").iterdir()
    assert len(rows(root / "comparison.csv")) == 2 and len(list(root.glob("*.png"))) == 2
    starts = [e["phase"] for e in map(json.loads, (tmp_path / "ev.jsonl").read_text().splitlines())
              if e["event"] == "start"]
    assert starts.count("load") == 2 and starts.count("batch") == 2 and starts.count("denoise_step") >= 2 * 2 * 2
    assert len(dilated) == starts.count("denoise_step")  # warm-up and measured steps alike
    assert json.loads((tmp_path / "m.json").read_text())["images"] == 2


@pytest.mark.parametrize("args, expect", [
    (["--compare-models", "sd-v1.5,nope"], "--compare-models nope: unknown model variant"),
    (["--compare-models", "sd-v1.5,sd3-medium", "--height", "72"], "--height 72: must be a positive multiple of 16"),
])
def test_compare_models_bad_input(capsys, tmp_path, args, expect):
    assert main([*SMALL, *args, "--output-dir", str(tmp_path)]) == 2
    assert expect in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_icon_benchmark_quick_and_gallery_relative_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's example as written: the default, relative, output dir
    assert main([*SMALLEST, "--benchmark", "--benchmark-type", "icons", "--quick"]) == 0
    out = tmp_path / "outputs"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == ["flat-design-icons/bank-transfer-icon.png", "flat-design-icons/minimal-fintech-payment-icon.png"]
    gallery = (out / "gallery.html").read_text()
    assert 'src="flat-design-icons/bank-transfer-icon.png"' in gallery and " s</td>" in gallery


def test_icon_benchmark_full_grid(tmp_path):
    assert main([*SMALLEST, "--benchmark", "--benchmark-type", "icons", "--output-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("*.png"))) == 15
    table = rows(tmp_path / "comparison.csv")
    assert {r["model"] for r in table} == {"flat-design-icons", "sd-logo", "fantassified-icons"}
    from PIL import Image
    prompt = json.loads(Image.open(tmp_path / "sd-logo" / "premium-investment-logo.png").text["parameters"])["prompt"]
    assert prompt.startswith("flat vector icon,") and prompt.endswith("premium investment logo")
