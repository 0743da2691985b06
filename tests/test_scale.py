"""power_modeling at a campaign's scale: the array and bulk paths give what the one-at-a-time paths
gave, commands import only what they use, and a report of thousands of workloads stays bounded.

The timings themselves are in benchmarks/bench_scale.py and docs/BENCHMARKS.md, never asserted here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from power_modeling import bulkcsv, choose_all, choose_clock, feature_table, load_runs
from power_modeling.errors import DataError
from power_modeling.features import flag_outliers
from sd_energy_contract.layout import RUNS_COLUMNS

CLOCKS = (1785, 1590, 1395, 1200, 990, 795, 600)


# --------------------------------------------------------------------------- synthetic data

def campaign_runs(workloads: int, seed: int = 0) -> pd.DataFrame:
    """Tidy runs of many workloads with what screening and choosing must handle: repeats or single runs,
    a cold first run, a glitched clock, a default clock, a workload with nothing usable."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in range(workloads):
        repeats = 1 if w % 7 == 3 else 3
        cb, t0 = rng.uniform(0.02, 0.9), rng.uniform(1, 30)  # compute-bound share: some gain from lower clocks
        for f in CLOCKS:
            x = f / CLOCKS[0]
            for r in range(repeats):
                t = t0 * (cb / x + 1 - cb) * (1 + 0.02 * rng.standard_normal())
                p = (120 + 260 * x * max(0.62, x) ** 2) * (1 + 0.02 * rng.standard_normal())
                if w % 5 == 1 and f == 1200:
                    p *= 0.6                                   # a glitched clock: an outlier
                if f == CLOCKS[0] and r == 0 and w % 4 == 2:
                    t *= 4                                     # the job's cold first run
                rows.append({"workload": f"wl{w:04d}", "gpu": "H100", "sm_clock_mhz": float(f), "run_index": r,
                             "is_default_clock": False, "time_s": t, "power_w": p, "energy_j": t * p,
                             "warmup": w % 13 == 5, "source": f"dir{w}", "run_id": f"f{f}_r{r}"})
        if w % 6 == 0:                                         # a default-clock run
            rows.append({**rows[-1], "is_default_clock": True, "sm_clock_mhz": 1755.0, "run_id": "fdefault_r0"})
    df = pd.DataFrame(rows)
    df["sequence"] = df.groupby("source").cumcount()
    df["energy_per_image_j"] = np.nan
    return df


# --------------------------------------------------------------------------- choosing and screening

@pytest.mark.parametrize(("objective", "cap", "choose_on"), [("edp", 0.05, "measured"), ("energy", None, "fit")])
def test_choose_all_equals_choose_clock_per_workload(objective, cap, choose_on):
    table = feature_table(campaign_runs(40))
    together = choose_all(table, objective, cap, choose_on).set_index("workload")
    assert len(together) == table["workload"].nunique()
    verdicts = set(together["verdict"])
    assert "no usable data" in verdicts and len(verdicts) >= 3, verdicts  # the cases above give several
    for wl in sorted(table["workload"].unique()):
        try:
            alone = choose_clock(table, wl, objective, cap, choose_on).to_dict()
        except DataError:
            assert together.loc[wl, "verdict"] == "no usable data"
            continue
        got = together.loc[wl].to_dict()
        for key, value in alone.items():
            if key == "workload":
                continue
            if isinstance(value, float) and np.isnan(value):
                assert np.isnan(got[key]), (wl, key)
            else:
                assert got[key] == value, (wl, key, got[key], value)


def test_outlier_flags_of_many_workloads_equal_each_workload_alone():
    table = feature_table(campaign_runs(30)).drop(columns="excluded")  # judge every clock afresh
    together = flag_outliers(table)
    assert together.any()  # the glitched clocks are found
    for _, rows in table.groupby("workload"):
        pd.testing.assert_series_equal(flag_outliers(rows), together.loc[rows.index], check_names=False)


class _Recorder:
    """A model that only remembers which workloads it was fitted on."""

    def fit(self, table: pd.DataFrame) -> _Recorder:
        self.seen = set(table["workload"])
        return self


def test_held_out_folds_stop_growing_with_the_workload_count():
    from power_modeling.models import held_out_folds

    table = feature_table(campaign_runs(12))
    fitted: dict = {}
    folds = list(held_out_folds(table, _Recorder, fitted, max_folds=4))
    names = {wl for wl, _, _ in folds}
    assert len(folds) == len(names) > 4 and len({id(m) for m in fitted.values()}) == 4  # 4 fits, not one each
    for wl, rows, model in folds:
        assert wl not in model.seen and set(rows["workload"]) == {wl}  # never trained on what it predicts
    for wl, _, model in held_out_folds(table, _Recorder):  # few workloads: leave exactly one out
        assert model.seen == names - {wl}


# --------------------------------------------------------------------------- reading results directories

PHASES = json.dumps({"denoise_step": {"energy_j": 90.0, "source": "counter"},
                     "batch": {"energy_j": 100.0, "source": "counter", "contains": ["denoise_step"]}})


def write_results(root, configs: dict[str, dict], samples: dict[str, list[str]] | None = None):
    """One results directory per entry: ``{name: app config}``; rows for every clock x 2 runs, a failed run
    with an empty config (so its column reads as float), an interrupted run redone, a warm-up run."""
    dirs = []
    for name, cfg in configs.items():
        d = root / name
        d.mkdir(parents=True)
        rows = []
        for f in CLOCKS:
            for r in range(2):
                t = 10 * (0.5 * CLOCKS[0] / f + 0.5)
                rows.append({"run_id": f"f{f:04d}_r{r:02d}", "sm_clock_target_mhz": f, "run_index": r, "warmup": 0,
                             "status": "ok", "work_s": t, "work_energy_j": t * (100 + f / 10), "images": 4,
                             "sm_clock_mean_mhz": f, "clock_mismatch": 0, "backend": "nvml", "gpu_type": "H100",
                             "gpu_name": "NVIDIA H100 NVL", "workload": "StableDiffusion", "phase_energy_json": PHASES,
                             "flops_per_image": 1e12, **cfg})
        rows.insert(0, {**rows[0], "run_id": "w_r00", "warmup": 1})
        rows.insert(3, {**rows[3], "status": "interrupted"})            # redone by the row after it
        rows.append({"run_id": "f0600_r09", "sm_clock_target_mhz": 600, "run_index": 9, "warmup": 0,
                     "status": "failed", "work_s": "", "work_energy_j": ""})
        with open(d / "runs.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, RUNS_COLUMNS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        (d / "manifest.json").write_text(json.dumps({"gpu_type": "H100", "backend": "nvml"}))
        for rid, text in (samples or {}).get(name, []):
            (d / "samples").mkdir(exist_ok=True)
            (d / "samples" / f"{rid}.csv").write_text(text)
        dirs.append(d)
    return dirs


NVML_TRACE = "mono_s,power_w,energy_mj,sm_clock_mhz,phase\n1.0,200,0,1785,batch\n1.1,210,20,1785,batch\n"
DCGM_TRACE = "mono_s,power_w,sm_active,dram_active,phase\n1.0,200,0.8,0.3,batch\n1.1,210,0.6,0.5,batch\n"
CONFIGS = {"a": {"app_model_variant": "sd-v1.5", "app_steps": 20, "app_height": 512},
           "b": {"app_model_variant": "sd-v1.5", "app_steps": 20, "app_height": 512},
           "c": {"app_model_variant": "sdxl", "app_steps": 30, "app_height": 1024}}


def test_bulk_read_equals_reading_each_file_row_by_row(tmp_path, monkeypatch):
    write_results(tmp_path, CONFIGS)
    fast = load_runs([tmp_path])
    monkeypatch.setattr(bulkcsv, "check", lambda key, data: None)  # every file through read_table
    slow = load_runs([tmp_path])
    pd.testing.assert_frame_equal(fast, slow)
    # one workload over a and b (an array sweep), named alike though a failed run left "b"'s height empty
    assert sorted(fast["workload"].unique()) == ["StableDiffusion:sd-v1.5/20/512", "StableDiffusion:sdxl/30/1024"]
    assert len(fast) == 3 * (2 * len(CLOCKS) + 1)  # every ok row once, the warm-up kept (marked)


def test_a_damaged_file_among_clean_ones_is_read_row_by_row(tmp_path, monkeypatch):
    dirs = write_results(tmp_path, CONFIGS)
    lines = (dirs[1] / "runs.csv").read_text().splitlines(keepends=True)
    (dirs[1] / "runs.csv").write_text("".join([*lines[:4], lines[0], *lines[4:]]) + "f0600_r08,600,8,0,ok\n")
    notes: list[str] = []
    fast = load_runs([tmp_path], notes)
    monkeypatch.setattr(bulkcsv, "check", lambda key, data: None)
    slow_notes: list[str] = []
    pd.testing.assert_frame_equal(fast, load_runs([tmp_path], slow_notes))
    assert notes == slow_notes and any("repeated header" in n for n in notes) and any("fields" in n for n in notes)


def test_samples_files_are_read_only_for_what_the_analysis_uses(tmp_path):
    rid = f"f{CLOCKS[0]:04d}_r00"
    write_results(tmp_path / "with", {"a": CONFIGS["a"]}, {"a": [(rid, NVML_TRACE), ("f1590_r00", "\0garbage")]})
    write_results(tmp_path / "without", {"a": CONFIGS["a"]})
    notes: list[str] = []
    with_samples = load_runs([tmp_path / "with"], notes)
    plain = load_runs([tmp_path / "without"])
    pd.testing.assert_frame_equal(with_samples.drop(columns="source"), plain.drop(columns="source"))
    assert any("skipped 1 unreadable samples file(s) (f1590_r00.csv)" in n for n in notes)  # still said
    write_results(tmp_path / "dcgm", {"a": CONFIGS["a"]}, {"a": [(rid, DCGM_TRACE)]})
    counters = load_runs([tmp_path / "dcgm"]).set_index("run_id")
    assert counters.loc[rid, "sm_active"] == pytest.approx(0.7) and counters["sm_active"].isna().sum() > 0


@pytest.mark.parametrize(("data", "clean"), [
    (b"a,b\n1,2\n3,4\n", True),
    (b'a,b\n1,"x,\ny"\n3,4\n', True),                # a quoted comma and newline are inside one field
    (b"a,b\n1,2\n3,4\n5,", True),                     # a torn last line is cut, as read_table cuts it
    (b"a,b\n1,2\n3\n", False),                        # a short row
    (b"a,b\n1,2\na,b\n3,4\n", False),                 # a repeated header
    (b"a,b\n1,2\n\n3,4\n", False),                    # a blank line: read_table's to judge
    (b'a,b\n1,"2\n', False),                          # an open quote
    (b"a,b\n1,\x002\n", False),                       # binary
])
def test_only_files_shown_clean_take_the_bulk_path(data, clean):
    assert (bulkcsv.check(0, data) is not None) == clean


def test_write_csv_writes_the_bytes_pandas_writes(tmp_path):
    df = pd.DataFrame({"f": [1.5, np.nan, 1e-05, 1e16, -0.0, np.inf], "i": range(6), "b": [True, False] * 3,
                       "s": ["a", 'q"x', "c,d", None, "e\nf", ""],
                       "o": pd.Series([1, "x", None, 2.5, "y", "z"], dtype=object),
                       "d": pd.date_range("2026-01-01", periods=6)})  # a kind left to pandas
    for frame in (df.drop(columns="d"), df, df.iloc[:0]):
        frame.to_csv(tmp_path / "pandas.csv", index=False)
        bulkcsv.write_csv(frame, tmp_path / "bulk.csv")
        assert (tmp_path / "bulk.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


# --------------------------------------------------------------------------- start-up

def test_help_and_reading_commands_import_no_heavy_library(tmp_path):
    """``-X importtime`` lists every module a command imported: --help none of the analysis libraries,
    features/select neither scikit-learn nor matplotlib; BLAS/OpenMP pools default to one thread."""
    write_results(tmp_path / "res", {"a": CONFIGS["a"]})
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    heavy = {"--help": ("sklearn", "matplotlib", "scipy", "torch", "pandas"),
             "features": ("sklearn", "matplotlib", "torch"), "select": ("sklearn", "matplotlib", "torch")}
    for command, banned in heavy.items():
        args = [command] if command == "--help" else [command, str(tmp_path / "res")]
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "power_modeling", *args], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        modules = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
        assert not {m.split(".")[0] for m in modules} & set(banned), (command, set(banned) & modules)
    probe = ("import os; from power_modeling.cli import one_thread_pools; ok = one_thread_pools(); import numpy; "
             "print(ok, os.environ['OMP_NUM_THREADS'], os.environ['OPENBLAS_NUM_THREADS'])")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                       env={**env, "OPENBLAS_NUM_THREADS": "3"}, timeout=60)
    assert p.stdout.split() == ["True", "1", "3"], p.stderr  # one thread unless the user chose


def test_lazy_package_still_exports_its_names():
    import power_modeling

    for name in power_modeling.__all__:
        assert callable(getattr(power_modeling, name)), name
    assert set(power_modeling.__all__) <= set(dir(power_modeling))
    with pytest.raises(AttributeError):
        power_modeling.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- a report of thousands

def test_figures_of_2000_workloads_draw_a_bounded_number_of_panels_and_legend_entries():
    from power_modeling.report import (
        MAX_LEGEND_WORKLOADS,
        MAX_PANELS,
        MAX_PHASE_PANELS,
        plot_pareto,
        plot_phases,
        plot_small_multiples,
        plot_vs_clock,
    )

    table = feature_table(campaign_runs(2000))
    choices = choose_all(table, "edp", 0.05)
    locked = table[~table["is_default_clock"] & (table["n_runs"] > 0)]
    phases = locked[["workload", "gpu", "sm_clock_mhz", "is_default_clock"]].assign(
        denoise_step=locked["energy_j_mean"] * 0.9, vae_decode=locked["energy_j_mean"] * 0.1)
    for fig, most in ((plot_small_multiples(table, choices), MAX_PANELS), (plot_pareto(table, choices), MAX_PANELS),
                      (plot_phases(pd.DataFrame(), table, choices, phases=phases), MAX_PHASE_PANELS)):
        panels = [ax for ax in fig.axes if ax.get_title()]  # the colorbar has none
        assert len(panels) == most
        title = " ".join(t.get_text() for t in fig.texts)
        assert re.search(rf"\({most} of 1\d\d\d workloads drawn", title), title
        assert sum(len(leg.get_texts()) for leg in fig.legends) <= 12
    few = table[table["workload"].isin(sorted(table["workload"].unique())[:14])]
    fig = plot_vs_clock(few, choose_all(few, "edp", 0.05), relative=False)
    entries = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert len([e for e in entries if e.startswith("wl")]) == MAX_LEGEND_WORKLOADS
    assert any(re.fullmatch(r"\+\d+ more workloads \(in the table\)", e) for e in entries), entries
