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
                                           ("artistic_styles", 6), ("energy_research", 6), ("icons", 5)])
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
