"""Benchmark suites, scheduler comparison and multi-resolution produce their rows and CSVs."""

from __future__ import annotations

import csv

import pytest

from app.cli import main

SMALL = ["--height", "64", "--width", "64", "--steps", "2", "--weights", "tiny", "--device", "cpu", "-q"]


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind, n_cases", [("speed", 2), ("quality", 3), ("memory_stress", 6),
                                           ("artistic_styles", 6), ("energy_research", 6)])
def test_benchmark_types(tmp_path, kind, n_cases):
    rc = main([*SMALL, "--benchmark", "--benchmark-type", kind, "--benchmark-runs", "2",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    table = rows(tmp_path / f"benchmark_{kind}.csv")
    assert len(table) == n_cases
    for r in table:
        assert r["runs"] == "2" and float(r["images_per_s_mean"]) > 0 and r["images_per_s_cv"] != ""
    if kind == "memory_stress":
        assert {r["batch_size"] for r in table} >= {"1", "2", "4", "8"} and {"96", "128"} <= {r["height"] for r in table}
    if kind == "quality":
        assert [r["steps"] for r in table] == ["1", "2", "4"]


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
    rc = main([*SMALL, "--compare-models", "sd-v1.5,sd-v2.1,sdxl", "--prompt", "a red fox", "--prompt", "a blue car",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # outputs/<timestamp>/
    table = rows(root / "comparison.csv")
    assert len(table) == 6 and {r["model"] for r in table} == {"sd-v1.5", "sd-v2.1", "sdxl"}
    assert {r["seed"] for r in table if r["prompt"] == "a blue car"} == {"1"}
    for r in table:
        assert (root / r["file"]).exists() and r["height"] == "64"
    import json

    cfg = json.loads((root / "generation_config.json").read_text())
    assert cfg["mode"].startswith("bench") and cfg["models"]["sdxl"]["flops_per_image"] > 0
    assert cfg["models"]["sd-v1.5"]["model_id"].endswith("stable-diffusion-v1-5")
    for info in cfg["models"].values():
        assert info["peak_memory_mib"] > 0 and info["total_s"] > 0


def test_compare_models_keep_loaded(tmp_path):
    rc = main([*SMALL, "--compare-models", "sd-v1.5,sd-v2.1", "--keep-loaded", "--output-dir", str(tmp_path)])
    assert rc == 0


@pytest.mark.parametrize("args, expect", [
    (["--compare-models", "sd-v1.5,nope"], "--compare-models nope: unknown model variant"),
    (["--compare-models", "sd-v1.5,sd3-medium", "--height", "72"], "--height 72: must be a positive multiple of 16"),
])
def test_compare_models_bad_input(capsys, tmp_path, args, expect):
    assert main([*SMALL, *args, "--output-dir", str(tmp_path)]) == 2
    assert expect in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_icon_benchmark_quick_and_gallery(tmp_path):
    assert main([*SMALL, "--benchmark", "--benchmark-type", "icons", "--quick", "--output-dir", str(tmp_path)]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert files == ["flat-design-icons/bank-transfer-icon.png", "flat-design-icons/minimal-fintech-payment-icon.png"]
    gallery = (tmp_path / "gallery.html").read_text()
    assert 'src="flat-design-icons/bank-transfer-icon.png"' in gallery and " s</td>" in gallery


def test_icon_benchmark_full_grid(tmp_path):
    assert main([*SMALL, "--benchmark", "--benchmark-type", "icons", "--output-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.rglob("*.png"))) == 15
    table = rows(tmp_path / "comparison.csv")
    assert {r["model"] for r in table} == {"flat-design-icons", "sd-logo", "fantassified-icons"}
    import json

    from PIL import Image
    prompt = json.loads(Image.open(tmp_path / "sd-logo" / "premium-investment-logo.png").text["parameters"])["prompt"]
    assert prompt.startswith("flat vector icon,") and prompt.endswith("premium investment logo")
