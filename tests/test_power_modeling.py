"""power_modeling on synthetic data with a known optimum, on the real reference data, and end to end."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REFERENCE, REPO, requires_reference, run_py

from power_modeling import (
    CrossWorkloadModel,
    FGCSModel,
    PhysicalModel,
    choose_clock,
    evaluate_guided,
    feature_table,
    guided_choice,
    leave_one_workload_out,
    load_runs,
)
from power_modeling.io import DataError

FAKE = str(REPO / "tests" / "data" / "fake_app.py")


def synthetic_runs(clocks=range(700, 1801, 50), a=2.0, b=8.0, c=60.0, d=20.0, e=30.0, noise=0.005, runs=3, seed=0):
    """Runs of one workload whose time and power follow known laws (f in GHz), with small noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in clocks:
        g = f / 1000
        for i in range(runs):
            t = (a + b / g) * (1 + noise * rng.standard_normal())
            p = (c + d * g + e * g**3) * (1 + noise * rng.standard_normal())
            rows.append({"workload": "synth", "gpu": "H100", "sm_clock_mhz": float(f), "is_default_clock": False,
                         "run_index": i, "time_s": t, "power_w": p, "energy_j": t * p, "energy_per_image_j": np.nan,
                         "synthetic": True, "backend": "test", "source": "synthetic", "run_id": f"{f}_{i}"})
    return pd.DataFrame(rows)


def test_physical_model_recovers_known_laws_and_optimum():
    runs = synthetic_runs()
    table = feature_table(runs)
    m = PhysicalModel(n_bootstrap=50).fit(table["sm_clock_mhz"], table["time_s_mean"], table["power_w_mean"])
    assert m.coef_time_ == pytest.approx([2.0, 8.0], rel=0.05)
    assert m.coef_power_[0] + m.coef_power_[1] * 1.0 + m.coef_power_[2] == pytest.approx(110, rel=0.02)
    grid = np.arange(700, 1801, 50)
    true_e = (2 + 8 / (grid / 1000)) * (60 + 20 * grid / 1000 + 30 * (grid / 1000) ** 3)
    true_best = grid[np.argmin(true_e)]
    assert 700 < true_best < 1800  # a real interior optimum
    t, p = m.predict(grid)
    assert abs(grid[np.argmin(t * p)] - true_best) <= 50
    assert choose_clock(table, "synth", "energy", None).clock_mhz == pytest.approx(true_best, abs=50)
    band = m.predict_interval([1000])
    assert band["energy_j"][0, 0] <= t[6] * p[6] <= band["energy_j"][0, 1]


def test_slowdown_budget_is_respected():
    table = feature_table(synthetic_runs())
    free = choose_clock(table, "synth", "energy", None)
    capped = choose_clock(table, "synth", "energy", 0.05)
    assert capped.slowdown_pct <= 5.0 < free.slowdown_pct
    assert capped.clock_mhz > free.clock_mhz and capped.energy_saved_pct > 0


class _TiltedCrossModel:
    """A cross-workload model with the right form of curve but the wrong balance of its parts."""

    activity_names_: list[str] = []

    @staticmethod
    def _rel(table, law):
        g = table["sm_clock_mhz"].values / 1000
        return law(g) / law(g.max())

    def predict_power(self, table):  # less dynamic power than the truth (30 g^3)
        return table["power_w_at_max"].values * self._rel(table, lambda g: 60.0 + 20.0 * g + 10.0 * g**3)

    def predict_time(self, table):  # more memory-bound than the truth (8/g)
        return table["time_s_at_max"].values * self._rel(table, lambda g: 2.0 + 3.0 / g)


def _synthetic_truth(clocks):
    g = np.asarray(clocks, float) / 1000
    t, p = 2.0 + 8.0 / g, 60.0 + 20.0 * g + 30.0 * g**3
    return pd.DataFrame({"sm_clock_mhz": clocks, "time_s_mean": t, "power_w_mean": p}).set_index("sm_clock_mhz",
                                                                                               drop=False)


def test_guided_choice_corrects_a_wrong_model_with_its_probes():
    clocks = list(range(700, 1801, 15))
    truth = _synthetic_truth(clocks)
    edp = truth["power_w_mean"] * truth["time_s_mean"] ** 2
    measured = []

    def measure(f):
        measured.append(f)
        return truth.loc[f]

    g = guided_choice(measure, clocks, _TiltedCrossModel(), "edp", k=4, min_gap=0.05)
    assert len(measured) == len(set(measured)) == len(g["probes_mhz"]) == 4
    gaps = np.diff(sorted(measured))
    assert gaps.min() >= 0.05 * 1795
    assert abs(g["predicted_clock_mhz"] - edp.idxmin()) > 100  # the model alone is off (1 % regret)
    assert edp.loc[g["clock_mhz"]] / edp.min() - 1 < 0.002  # the probes bring the choice to the optimum


def test_guided_choice_keeps_the_slowdown_budget():
    clocks = list(range(700, 1801, 15))
    truth = _synthetic_truth(clocks)
    g = guided_choice(lambda f: truth.loc[f], clocks, _TiltedCrossModel(), "energy", k=4, max_slowdown=0.05)
    assert g["measured_time_s"] <= truth.loc[1795, "time_s_mean"] * 1.05


def test_noisy_groups_are_flagged():
    table = feature_table(synthetic_runs(noise=0.2, runs=4))
    assert table["noisy"].any()
    assert not feature_table(synthetic_runs(noise=0.001))["noisy"].any()


@pytest.fixture(scope="module")
def reference_table():
    if not REFERENCE.exists():
        pytest.skip(f"reference data not found at {REFERENCE}")
    runs = load_runs([REFERENCE / "v100_spec_21apps_dvfs.csv", REFERENCE / "v100_hpc_3apps_dvfs.csv"])
    return feature_table(runs)


@pytest.fixture(scope="module")
def cross_folds():
    return {}


@requires_reference()
def test_reference_cross_workload_model(reference_table, cross_folds):
    """Leave-one-application-out on 24 real V100 apps, each known only by its max-clock run.

    Measured (docs/BENCHMARKS.md): power MAPE 4.76 %, time MAPE 2.22 %; the bounds are the issue's targets.
    """
    assert reference_table["workload"].nunique() == 24
    cv = leave_one_workload_out(reference_table, CrossWorkloadModel, cross_folds)
    assert cv["power_mape"].mean() <= 0.05
    assert cv["time_mape"].mean() <= 0.03
    fgcs = leave_one_workload_out(reference_table, FGCSModel)
    assert fgcs["power_mape"].mean() > 0.2  # the refit published form, for orientation (README: 24-39 %)


@requires_reference()
def test_reference_guided_choice_regret(reference_table, cross_folds):
    """4 probe clocks per app; measured mean EDP regret 1.69 %, p90 3.90 % (plain 4-probe fit: 5.9 % mean)."""
    reg = evaluate_guided(reference_table, CrossWorkloadModel, "edp", 4, None, cross_folds)
    assert (reg["probes"] <= 4).all()
    assert reg["regret_pct"].mean() <= 2.0
    assert reg["regret_pct"].quantile(0.9) <= 5.0


@requires_reference()
def test_reference_outliers_flagged(reference_table):
    row = reference_table[(reference_table["workload"] == "lavamd") & (reference_table["sm_clock_mhz"] == 990)]
    assert row["outlier"].all()  # 37 W between neighbours at ~105 W
    row = reference_table[(reference_table["workload"] == "bfs") & (reference_table["sm_clock_mhz"] == 1200)]
    assert row["outlier"].all()  # 57 W between 76 W neighbours that scatter by 0.5 %
    namd = reference_table[reference_table["workload"] == "NAMD"]
    assert namd["outlier"].sum() <= 2  # a noisy workload keeps its rows: the bar scales with its own scatter
    assert reference_table["outlier"].mean() < 0.05


# --------------------------------------------------------------------------- end to end on launcher output

@requires_reference()
def test_cli_select_guided_on_real_data():
    """``select --guided K`` replays the guided search on fully swept data and reports its regret."""
    hpc = str(REFERENCE / "v100_hpc_3apps_dvfs.csv")
    p = run_py("-m", "power_modeling", "select", hpc, "--objective", "edp", "--max-slowdown", "-1", "--guided", "3")
    assert p.returncode == 0, p.stderr
    summary = re.search(r"guided \(3 probes\): mean regret ([\d.]+) %, p90 ([\d.]+) %", p.stdout)
    assert summary, p.stdout
    for app in ("LAMMPS", "LSTM", "NAMD"):
        assert re.search(rf"^\s*{app}\s+edp\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+3\s+[\d.]+$", p.stdout, re.M), p.stdout
    p = run_py("-m", "power_modeling", "select", hpc, "--guided", "1")
    assert p.returncode == 2 and "--guided" in p.stderr and "at least 2" in p.stderr


def test_cli_end_to_end_on_simulated_launcher_results(sim_results, tmp_path):
    p = run_py("-m", "power_modeling", "features", str(sim_results), "--out", str(tmp_path / "f"))
    assert p.returncode == 0, p.stderr
    feats = pd.read_csv(tmp_path / "f" / "features.csv")
    assert len(feats) == 6 and (feats["n_runs"] == 2).all()
    p = run_py("-m", "power_modeling", "fit", str(sim_results), "--out", str(tmp_path / "m"))
    assert p.returncode == 0 and (tmp_path / "m" / "fit_physical.csv").exists()
    p = run_py("-m", "power_modeling", "predict", str(sim_results), "--clocks", "1100,1500", "--out", str(tmp_path / "p"))
    assert p.returncode == 0 and len(pd.read_csv(tmp_path / "p" / "predictions.csv")) == 2
    p = run_py("-m", "power_modeling", "select", str(sim_results), "--objective", "energy", "--max-slowdown", "-1",
               "--out", str(tmp_path / "s"))
    assert p.returncode == 0
    choice = pd.read_csv(tmp_path / "s" / "choices_energy.csv").iloc[0]
    assert 795 < choice["clock_mhz"] < 1785 and choice["energy_saved_pct"] > 5  # the model's interior optimum
    p = run_py("-m", "power_modeling", "merge", str(sim_results), "--out", str(tmp_path / "g"))
    assert p.returncode == 0 and len(pd.read_csv(tmp_path / "g" / "runs_merged.csv")) == 12


# --------------------------------------------------------------------------- bad input

def _pm(*args):
    return run_py("-m", "power_modeling", *args)


def test_bad_inputs_are_one_line_exit_2(sim_results, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [((str(tmp_path / "missing"),), "no such file or directory"),
             ((str(empty),), "no runs.csv in it or below it")]
    broken = tmp_path / "broken"
    shutil.copytree(sim_results, broken)
    df = pd.read_csv(broken / "runs.csv")
    df.drop(columns=["work_s", "work_energy_j"]).to_csv(broken / "runs.csv", index=False)
    cases.append(((str(broken),), "missing column(s) work_s, work_energy_j"))
    failed = tmp_path / "failed"
    shutil.copytree(sim_results, failed)
    df.assign(status="failed").to_csv(failed / "runs.csv", index=False)
    cases.append(((str(failed),), "no successful measured run"))
    nan = tmp_path / "nan"
    shutil.copytree(sim_results, nan)
    df.assign(work_energy_j=np.nan).to_csv(nan / "runs.csv", index=False)
    cases.append(((str(nan),), "missing (NaN)"))
    one = tmp_path / "one"
    shutil.copytree(sim_results, one)
    df[df["sm_clock_target_mhz"] == 1785].to_csv(one / "runs.csv", index=False)
    cases.append((("fit", str(one)), "1 locked clock(s) per workload: a model needs at least 3"))
    mixed = tmp_path / "mixed"
    shutil.copytree(sim_results, mixed)
    df.assign(gpu_type="A100").to_csv(mixed / "runs.csv", index=False)
    cases.append((("select", str(sim_results), str(mixed)), "mixes GPU types (A100, H100); choose one with --gpu"))
    cases.append((("select", str(sim_results), "--gpu", "V100"), "--gpu: not in the data, which has H100"))
    for args, expect in cases:
        cmd = args if args[0] in ("fit", "select") else ("features", *args)
        p = _pm(*cmd)
        assert p.returncode == 2, (cmd, p.stderr)
        assert expect in p.stderr, (expect, p.stderr)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_load_runs_rejects_non_results_file(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a results directory nor a reference CSV"):
        load_runs([f])
