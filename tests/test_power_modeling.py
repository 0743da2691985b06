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
    choose_all,
    choose_clock,
    evaluate_guided,
    feature_table,
    guided_choice,
    leave_one_workload_out,
    load_runs,
)
from power_modeling.features import select_gpu
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


def test_bad_inputs_are_one_line_exit_2(sim_results, tmp_path, capsys):
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
    from power_modeling.cli import main  # in this process: the entry script itself is run by other tests

    for args, expect in cases:
        cmd = args if args[0] in ("fit", "select") else ("features", *args)
        rc = main(list(cmd))
        err = capsys.readouterr().err
        assert rc == 2, (cmd, err)
        assert expect in err, (expect, err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_load_runs_rejects_non_results_file(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a results directory nor a reference CSV"):
        load_runs([f])


# --------------------------------------------------------------------------- the decision on messy data

ARTEFACTS = REPO / "tests" / "data" / "artefacts"


def _artefact(name: str):
    return feature_table(load_runs([ARTEFACTS / f"{name}.csv"]))


def test_artefact_fixtures_are_what_their_script_makes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_artefacts", ARTEFACTS / "make_artefacts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for path in mod.write(tmp_path):
        assert path.read_text() == (ARTEFACTS / path.name).read_text(), path.name


# (fixture, what the choice must name, clocks that must not be chosen)
ARTEFACT_CASES = [
    ("cold_start", "cold start: 1 run", []),
    ("cold_start_single_run", "outlier: 1 clock (1785 MHz)", [1785]),
    ("lock_not_applied", "clock mismatch: 6 runs", [795, 645]),
    ("lock_not_applied_unrecorded", "outlier: 2 clocks (795, 645 MHz)", [795, 645]),
    ("stuck_power", "stuck power: 3 clocks (1395, 1245, 1095 MHz)", [1395, 1245, 1095]),
    ("slow_clock", "outlier: 1 clock (1245 MHz)", [1245]),
    ("bad_repeat", "bad repeat: 1 run", []),
]


@pytest.mark.parametrize(("name", "named", "never"), ARTEFACT_CASES)
def test_each_artefact_is_left_out_named_and_the_choice_stays_sane(name, named, never):
    """The truth's optima are 1095 MHz for energy (34 % saved at 38 % slowdown) and 1245 MHz for EDP
    (13 %); its ED²P gain (1 % at 1635 MHz) is below these sweeps' noise."""
    table = _artefact(name)
    for objective in ("energy", "edp", "ed2p"):
        c = choose_clock(table, "synth", objective, None)
        assert named in c.excluded and named in c.summary, (objective, c.excluded)
        assert c.clock_mhz not in never and c.reference_clock_mhz not in never
        if name.endswith("single_run"):
            assert c.verdict == "uncertainty unknown"
        elif objective == "ed2p":
            assert c.verdict in ("saving", "no significant saving", "reference is best") and c.energy_saved_pct < 20
        else:
            assert c.verdict == "saving" and 0 < c.energy_saved_pct < 50 and c.slowdown_pct > 0, c
    energy = choose_clock(table, "synth", "energy", None)
    assert energy.clock_mhz in (945, 1095, 1245, 1110, 1065, 1155)  # the truth's optimum or its neighbour
    assert table.loc[table["excluded"] != "", "sm_clock_mhz"].isin(never).all()


def test_clean_coarse_sweep_keeps_every_clock_and_finds_the_optimum():
    table = _artefact("clean_coarse")
    assert (table["excluded"] == "").all() and len(table) == 9
    c = choose_clock(table, "synth", "energy", None)
    assert c.clock_mhz == 1095 and c.verdict == "saving" and not c.excluded and not c.data_problems
    assert c.energy_saved_lo_pct < 34.1 < c.energy_saved_hi_pct  # the truth lies in the 95 % interval
    assert c.slowdown_lo_pct < 37.8 < c.slowdown_hi_pct


@requires_reference()
def test_coarse_subsets_of_the_reference_sweeps_keep_their_genuine_clocks():
    """8-10 evenly spread clocks of each real V100 sweep: the outlier rule flags nothing it would not
    flag on the full sweep (one known exception: stream's real step at 607 MHz with 10 clocks)."""
    runs = load_runs([REFERENCE / "v100_spec_21apps_dvfs.csv", REFERENCE / "v100_hpc_3apps_dvfs.csv"])
    full = feature_table(runs).set_index(["workload", "sm_clock_mhz"])["excluded"]
    extra = []
    for n in (8, 9, 10):
        for wl, g in runs.groupby("workload"):
            clocks = np.sort(g["sm_clock_mhz"].unique())[::-1]
            keep = clocks[np.round(np.linspace(0, len(clocks) - 1, n)).astype(int)]
            t = feature_table(g[g["sm_clock_mhz"].isin(keep)])
            extra += [(n, wl, f) for f in t.loc[t["excluded"] != "", "sm_clock_mhz"] if not full[(wl, f)]]
    assert len(extra) <= 1, extra


def test_a_throttled_reference_is_a_data_problem_not_a_saving():
    c = choose_clock(_artefact("throttled_reference"), "synth", "edp", None)
    assert "faster than the reference" in c.data_problems and "overstated" in c.summary
    assert c.slowdown_pct > -1  # no clock "faster" than the reference is offered


def test_no_significant_saving_when_every_clock_is_within_noise():
    for objective in ("energy", "edp"):
        c = choose_clock(_artefact("flat_within_noise"), "synth", objective, None)
        assert c.verdict == "no significant saving" and c.clock_mhz == c.reference_clock_mhz == 1785
        assert "no significant" in c.summary and f"keep {1785}" in c.summary
        assert c.energy_saved_lo_pct < 0 < c.energy_saved_hi_pct


def test_one_run_per_clock_has_unknown_uncertainty():
    c = choose_clock(_artefact("single_run"), "synth", "edp", None)
    assert c.verdict == "uncertainty unknown" and np.isnan(c.energy_saved_lo_pct)
    assert "interval unknown" in c.summary and "--num-runs" in c.summary


def test_slowdown_cap_applies_to_the_interval_not_one_mean():
    table = _artefact("clean_coarse")
    c = choose_clock(table, "synth", "energy", 0.20)
    assert c.slowdown_hi_pct <= 20.0  # the upper end of the interval, not just the mean, is within the cap
    point = table.set_index("sm_clock_mhz")
    ok_by_mean = point.index[point["time_s_rel"] <= 1.20]
    assert c.clock_mhz >= ok_by_mean.min()


def test_savings_against_the_default_clock_are_named():
    runs = load_runs([ARTEFACTS / "clean_coarse.csv"])
    default = runs[runs["sm_clock_mhz"] == 1785].assign(is_default_clock=True, sm_clock_mhz=1785.0,
                                                       run_id=lambda d: d["run_id"] + "_default")
    default["time_s"] *= 0.98
    table = feature_table(pd.concat([runs, default], ignore_index=True))
    c = choose_clock(table, "synth", "energy", None)
    assert c.reference_clock_mhz == 1785 and np.isfinite(c.energy_saved_vs_default_pct)
    assert c.slowdown_vs_default_pct > c.slowdown_pct  # the default clock ran faster than the max lock
    assert "vs the default clock" in c.summary and "vs 1785 MHz" in c.summary


def test_smoothed_choice_reports_both_optima():
    table = _artefact("single_run")
    measured = choose_clock(table, "synth", "edp", None)
    fitted = choose_clock(table, "synth", "edp", None, choose_on="fit")
    assert fitted.chosen_on == "fit" and fitted.clock_mhz == measured.fitted_mhz
    assert fitted.best_measured_mhz == measured.clock_mhz
    # the smoothed optimum is closer to the truth's EDP optimum (1245-1290 MHz on this grid) than one noisy run
    assert abs(measured.fitted_mhz - 1268) <= abs(measured.clock_mhz - 1268) + 45


@requires_reference()
def test_reference_recommendations_are_never_flagged_rows(reference_table):
    flagged = reference_table[reference_table["excluded"] != ""].set_index(["workload", "sm_clock_mhz"]).index
    for objective in ("energy", "edp", "ed2p"):
        for choose_on in ("measured", "fit"):
            for cap in (None, 0.05):
                ch = choose_all(reference_table, objective, cap, choose_on)
                assert len(ch) == 24
                picked = pd.MultiIndex.from_arrays([ch["workload"], ch["clock_mhz"]])
                assert not picked.isin(flagged).any(), ch[picked.isin(flagged)]
                refs = pd.MultiIndex.from_arrays([ch["workload"], ch["reference_clock_mhz"]])
                assert not refs.isin(flagged).any()
    glitches = {("bfs", 1200.0), ("lavamd", 990.0), ("lud", 1222.0)}
    assert glitches <= set(flagged)
    edp = choose_all(reference_table, "edp", None).set_index("workload")
    assert (edp["verdict"] == "uncertainty unknown").all()  # one run per clock
    assert "outlier: 5 clocks" in edp.loc["bfs", "excluded"]


def test_gpu_column_of_reference_csvs_keeps_gpus_apart(tmp_path):
    df = pd.read_csv(ARTEFACTS / "clean_coarse.csv")
    df.assign(gpu="A100").to_csv(tmp_path / "a100.csv", index=False)
    runs = load_runs([ARTEFACTS / "clean_coarse.csv", tmp_path / "a100.csv"])
    assert sorted(runs["gpu"].unique()) == ["A100", "H100"]
    with pytest.raises(DataError, match=r"mixes GPU types \(A100, H100\)"):
        feature_table(runs)
    assert len(feature_table(runs, "A100")) == 9


def test_reference_csv_can_mark_warmup_runs(tmp_path):
    df = pd.read_csv(ARTEFACTS / "cold_start.csv")
    df["warmup"] = 0
    df.loc[0, "warmup"] = 1  # the cold run, marked instead of detected
    df.to_csv(tmp_path / "marked.csv", index=False)
    c = choose_clock(feature_table(load_runs([tmp_path / "marked.csv"])), "synth", "energy", None)
    assert "warmup: 1 run" in c.excluded and "cold start" not in c.excluded and c.clock_mhz == 1095


def test_cli_gpu_filters_merge_and_report_and_short_times_keep_digits(tmp_path):
    df = pd.read_csv(ARTEFACTS / "clean_coarse.csv")
    df.assign(gpu="A100", run_time=df["run_time"] / 10000).to_csv(tmp_path / "a100.csv", index=False)
    both = [str(ARTEFACTS / "clean_coarse.csv"), str(tmp_path / "a100.csv")]
    for cmd in ("merge", "report"):
        p = _pm(cmd, *both, "--out", str(tmp_path / cmd))
        assert p.returncode == 2 and "mixes GPU types (A100, H100)" in p.stderr, (cmd, p.stderr)
        assert not (tmp_path / cmd).exists()
    p = _pm("merge", *both, "--gpu", "A100", "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    merged = pd.read_csv(tmp_path / "m" / "runs_merged.csv")
    assert set(merged["gpu"]) == {"A100"} and len(merged) == 27
    from power_modeling.cli import show

    short = show(feature_table(select_gpu(load_runs(both), "A100"))[["sm_clock_mhz", "time_s_mean"]])
    assert "0.001" in short and " 0.00 " not in short, short  # 1 ms kernels keep their digits
    p = _pm("report", *both, "--gpu", "A100", "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert set(pd.read_csv(tmp_path / "r" / "runs_tidy.csv")["gpu"]) == {"A100"}


def test_cli_select_prints_intervals_verdicts_and_exclusions():
    p = _pm("select", str(ARTEFACTS / "cold_start.csv"), "--objective", "energy", "--max-slowdown", "-1")
    assert p.returncode == 0, p.stderr
    assert "synth: use 1095 MHz for minimum energy" in p.stdout and "Left out: cold start: 1 run" in p.stdout
    assert re.search(r"energy saved 3\d\.\d % \[\d+\.\d, \d+\.\d\]", p.stdout), p.stdout
    p = _pm("select", str(ARTEFACTS / "single_run.csv"), "--choose-on", "fit", "--max-slowdown", "-1")
    assert p.returncode == 0 and "interval unknown" in p.stdout and "fitted_mhz" in p.stdout


def test_physical_fits_are_one_computation_for_fit_and_the_report(tmp_path):
    """``fit --model physical``, the report's model table and ``models.physical_fit_table`` agree.

    Two workloads: one on the known laws, one with only two usable clocks (too few for the five
    coefficients), which every view leaves out rather than fitting.
    """
    from power_modeling.models import physical_fit_table
    from power_modeling.report import physical_fits

    two = synthetic_runs(clocks=(900, 1800))
    runs = pd.concat([synthetic_runs(), two.assign(workload="two", run_id="two_" + two["run_id"])], ignore_index=True)
    table = feature_table(runs)
    fits, preds = physical_fit_table(table)
    assert list(fits["workload"]) == ["synth"] and set(preds["workload"]) == {"synth"}
    row = fits.iloc[0]
    assert [row["time_a_s"], row["time_b_s_ghz"]] == pytest.approx([2.0, 8.0], rel=0.05)
    assert row["power_c_w"] + row["power_d_w_per_ghz"] + row["power_e_w_per_ghz3"] == pytest.approx(110, rel=0.02)
    assert row[["time_mape", "power_mape", "energy_mape"]].max() < 0.02
    shown, shown_preds = physical_fits(table)
    assert shown["power_e_w_per_ghz3"].tolist() == fits["power_e_w_per_ghz3"].tolist()
    assert shown["energy_mape_pct"].tolist() == [100 * row["energy_mape"]]
    pd.testing.assert_frame_equal(shown_preds, preds)

    csv = ARTEFACTS / "clean_coarse.csv"
    p = _pm("fit", str(csv), "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    printed = pd.read_csv(tmp_path / "fit_physical.csv")
    expected = physical_fit_table(feature_table(load_runs([csv])))[0]
    assert list(printed.columns) == ["workload", "time_a_s", "time_b_s_ghz", "power_c_w", "power_d", "power_e",
                                     "time_mape", "power_mape"]
    assert printed["power_d"].to_numpy() == pytest.approx(expected["power_d_w_per_ghz"].to_numpy(), rel=1e-12)
    assert printed["time_mape"].to_numpy() == pytest.approx(expected["time_mape"].to_numpy(), rel=1e-12)


def test_cli_predict_never_calls_a_measured_clock_extrapolated(tmp_path):
    p = _pm("predict", str(ARTEFACTS / "clean_coarse.csv"), "--clocks", "1785,645,1000,1900", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    pred = pd.read_csv(tmp_path / "predictions.csv").set_index("sm_clock_mhz")["extrapolated"]
    assert not pred[1785.0] and not pred[645.0] and not pred[1000.0] and pred[1900.0]


@requires_reference()
def test_cli_fit_save_writes_a_model_the_launcher_can_load(tmp_path):
    from power_modeling.model_store import load_model

    hpc = str(REFERENCE / "v100_hpc_3apps_dvfs.csv")
    p = _pm("fit", hpc, "--model", "cross", "--save", str(tmp_path / "hpc.skops"))
    assert p.returncode == 0, p.stderr
    assert re.search(r"saved .*hpc.skops \(3 workloads, V100; with activity counters\)", p.stdout), p.stdout
    model = load_model(tmp_path / "hpc.skops")
    assert sorted(model.workloads_) == ["LAMMPS", "LSTM", "NAMD"] and "lowo" in model.metadata_


def test_cli_fit_save_is_for_cross_models_only(tmp_path):
    p = _pm("fit", str(ARTEFACTS / "clean_coarse.csv"), "--save", str(tmp_path / "m.skops"))
    assert p.returncode == 2 and "--save" in p.stderr and "--model cross" in p.stderr
    p = _pm("fit", str(ARTEFACTS / "clean_coarse.csv"), "--model", "cross", "--save", str(tmp_path / "no" / "m.skops"))
    assert p.returncode == 2 and "its directory does not exist" in p.stderr and not (tmp_path / "no").exists()


def test_cli_report_choose_on_fit_and_default_location_beside_a_csv(tmp_path):
    csv = tmp_path / "single_run.csv"
    csv.write_text((ARTEFACTS / "single_run.csv").read_text())
    p = _pm("report", str(csv), "--choose-on", "fit", "--max-slowdown", "-1")
    assert p.returncode == 0, p.stderr
    choices = pd.read_csv(tmp_path / "report" / "choices.csv")
    assert (choices["chosen_on"] == "fit").any() and (choices["clock_mhz"] == choices["fitted_mhz"]).all()


# --------------------------------------------------------------------------- review fixes

def test_slowdown_cap_of_zero_or_noisy_data_keeps_the_reference_admissible():
    noisy = feature_table(synthetic_runs(clocks=[1800, 1600, 1400, 1200, 1000], noise=0.085, runs=2, seed=3))
    for cap in (0.0, 0.05):
        c = choose_clock(noisy, "synth", "edp", cap)  # used to be "argmin of an empty sequence"
        assert c.clock_mhz in (1800, 1600, 1400, 1200, 1000)
    assert choose_clock(_artefact("clean_coarse"), "synth", "energy", 0.0).clock_mhz == 1785


def test_default_clock_runs_form_one_group_whatever_clock_each_reported():
    runs = load_runs([ARTEFACTS / "clean_coarse.csv"])
    default = runs[runs["sm_clock_mhz"] == 1785].copy()
    default = default.assign(is_default_clock=True, run_id=default["run_id"] + "_d",
                             sm_clock_mhz=[1980.0, 1965.0, 1972.5])  # boost clocks, one per run
    table = feature_table(pd.concat([runs, default], ignore_index=True))
    d = table[table["is_default_clock"]]
    assert len(d) == 1 and d["n_runs"].iloc[0] == 3 and d["sm_clock_mhz"].iloc[0] == 1972
    c = choose_clock(table, "synth", "energy", None)
    assert np.isfinite(c.energy_saved_vs_default_lo_pct)  # an interval, not "unknown"


def test_a_workload_with_no_usable_run_gets_a_row_saying_so_and_the_others_their_answer(tmp_path):
    df = pd.read_csv(ARTEFACTS / "clean_coarse.csv")
    bad = df.assign(application="broken", sm_clock_mean_mhz=df["sm_app_clock"] + 300)  # no lock took effect
    pd.concat([df, bad]).to_csv(tmp_path / "two.csv", index=False)
    table = feature_table(load_runs([tmp_path / "two.csv"]))
    ch = choose_all(table, "energy", None).set_index("workload")
    assert ch.loc["synth", "verdict"] == "saving" and ch.loc["synth", "clock_mhz"] == 1095
    assert ch.loc["broken", "verdict"] == "no usable data" and "clock mismatch: 27 runs" in ch.loc["broken", "summary"]
    p = _pm("select", str(tmp_path / "two.csv"), "--objective", "energy", "--max-slowdown", "-1")
    assert p.returncode == 0 and "broken: no answer" in p.stdout, p.stderr


def test_fit_choice_text_names_the_clock_it_tested():
    table = _artefact("flat_within_noise")
    c = choose_clock(table, "synth", "energy", None, choose_on="fit")
    assert c.chosen_on == "fit" and f"smoothed curves' optimum, {c.fitted_mhz:.0f} MHz" in c.summary


def _probe_truth():
    clocks = list(range(700, 1801, 15))
    return clocks, _synthetic_truth(clocks)


def test_guided_search_screens_a_cold_first_run_and_judges_significance():
    from power_modeling.selection import GuidedSearch

    clocks, truth = _probe_truth()
    search = GuidedSearch(clocks, _TiltedCrossModel(), "energy", max_probes=3, stop_gain=None)
    rng = np.random.default_rng(0)
    first = True
    while (f := search.next_clock()) is not None:
        t, p = truth.loc[f, "time_s_mean"], truth.loc[f, "power_w_mean"]
        ts = t * (1 + 0.01 * rng.standard_normal(3))
        if first:
            ts[0] *= 4  # the job's cold first run lands on the max clock
            first = False
        search.observe(f, ts, ts * p, {})
    r = search.result()
    assert r["screened_runs"] == {"1795": ["cold start"]} and r["verdict"] == "saving"
    assert r["energy_saved_lo_pct"] > 0 and r["clock_mhz"] != 1795
    # the same probes with 40 % run-to-run noise: nothing beats the max clock beyond it
    noisy = GuidedSearch(clocks, _TiltedCrossModel(), "energy", max_probes=3, stop_gain=None)
    while (f := noisy.next_clock()) is not None:
        t, p = truth.loc[f, "time_s_mean"], truth.loc[f, "power_w_mean"]
        ts = t * np.array([0.6, 1.0, 1.4])
        noisy.observe(f, ts, ts * p * np.array([1.4, 1.0, 0.6]) ** 2, {})
    r = noisy.result()
    assert r["verdict"] == "no significant saving" and r["clock_mhz"] == 1795 and r["best_probe_mhz"] != 1795


def test_guided_search_goes_on_after_a_failed_probe():
    from power_modeling.selection import GuidedSearch

    clocks, truth = _probe_truth()
    search = GuidedSearch(clocks, _TiltedCrossModel(), "edp", max_probes=4, stop_gain=None)
    f = search.next_clock()
    search.observe(f, [truth.loc[f, "time_s_mean"]], [truth.loc[f, "time_s_mean"] * truth.loc[f, "power_w_mean"]])
    second = search.next_clock()
    search.mark_failed(second)
    third = search.next_clock()
    assert third is not None and third != second
    search.observe(third, [truth.loc[third, "time_s_mean"]],
                   [truth.loc[third, "time_s_mean"] * truth.loc[third, "power_w_mean"]])
    assert search.next_clock() not in (None, second)  # the failed probe counts, the search still has one left


def test_report_guided_section_survives_a_search_with_no_choice():
    from power_modeling.report import _guided_blocks

    blocks = _guided_blocks("/x/res", {"clock_mhz": None, "stop_reason": "no usable run at the max clock"})
    assert blocks[-1] == ("p", "No clock chosen: no usable run at the max clock.")


def test_simulated_runs_the_host_could_not_pace_are_screened_as_host_bound():
    from power_modeling.features import flag_runs

    runs = pd.DataFrame({"workload": "w", "sm_clock_mhz": [1785, 1785, 990, 990], "gpu": "H100",
                         "time_s": [3.0, 3.0, 4.0, 23.0], "power_w": 300.0, "host_bound_s": [0.0, 0.01, 0.0, 19.0],
                         "run_index": [0, 1, 0, 1], "sequence": range(4), "is_default_clock": False})
    reason = flag_runs(runs)
    assert list(reason) == ["", "", "", "host-bound (simulated GPU)"]


def test_utilisation_uses_the_recorded_sku_peak_where_the_launcher_resolved_one():
    from power_modeling.io import add_utilisation

    runs = pd.DataFrame({"gpu": ["H100", "H100", "H100"], "gpu_sku": ["H100-SXM5", "", "not-a-sku"],
                         "flops_per_image": 1e15, "images": 1, "time_s": 2.0, "app_dtype": "bf16"})
    add_utilisation(runs)
    assert runs["achieved_tflops"].tolist() == [500.0] * 3
    # H100-SXM5's dense bf16 peak is 989 TFLOP/s; without a known SKU the family's default (H100-NVL, 835).
    assert runs["mfu"].tolist() == pytest.approx([500 / 989, 500 / 835, 500 / 835])
