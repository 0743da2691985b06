"""The launcher's guided mode: probes chosen one at a time by the planner found through its entry point.

Fast on purpose: the replay backend serves the reference V100 tables (one run per clock, no app
is run), ``--sleep-interval 0 --idle-seconds 0 --num-runs 1``. The acceptance test runs the
launcher in this process (``profiling.launch.main``, what ``launch.sh`` calls) so the shipped
model is loaded once for all applications instead of once per subprocess; the other tests run
it as a user would, in a subprocess.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAKE_APP, REFERENCE, REPO, requires_reference, run_py

from profiling import launch
from profiling.backends.simulated import state_path
from profiling.planning import ENTRY_POINT_GROUP, PlannerError, load_planner

HPC = REFERENCE / "v100_hpc_3apps_dvfs.csv"
SPEC = REFERENCE / "v100_spec_21apps_dvfs.csv"
# The 3 HPC apps and 5 SPEC apps across the range: compute-bound (dgemm, mriq), memory-bound
# (stream, lbm) and irregular (bfs).
ACCEPTANCE_APPS = [(HPC, "LAMMPS"), (HPC, "LSTM"), (HPC, "NAMD"), (SPEC, "dgemm"), (SPEC, "mriq"),
                   (SPEC, "stream"), (SPEC, "lbm"), (SPEC, "bfs")]
FAST = ["--sleep-interval", "0", "--idle-seconds", "0"]


def replay_args(csv: Path, app: str, out: Path, *extra: str) -> list[str]:
    return ["--profiling-tool", "replay", "--replay-source", str(csv), "--replay-app", app,
            "--profiling-mode", "guided", "--max-slowdown", "-1", "--num-runs", "1", *FAST,
            "--output-dir", str(out), *extra]


def launch_here(capsys, args: list[str]) -> tuple[int, str, str]:
    """The launcher in this process; returns (exit code, stdout, stderr)."""
    rc = launch.main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def edp_regret_pct(table: pd.DataFrame, app: str, clock: float) -> float:
    """EDP at ``clock`` over the best EDP among ``app``'s usable rows, minus 1 (percent)."""
    from power_modeling.models import usable

    rows = table[table["workload"] == app]
    ok = usable(rows)
    best = float((ok["energy_j_mean"] * ok["time_s_mean"]).min())
    at = rows[rows["sm_clock_mhz"] == clock].iloc[0]
    return 100 * (float(at["energy_j_mean"] * at["time_s_mean"]) / best - 1)


@requires_reference()
def test_guided_launcher_reaches_best_edp_within_3_percent_with_at_most_5_clocks(tmp_path, capsys):
    """The issue's acceptance test (shipped model: trained on these apps, so in-sample; the held-out
    figures are in benchmarks/bench_guided_launcher.py)."""
    from power_modeling.features import feature_table
    from power_modeling.io import load_runs

    truth = {csv: feature_table(load_runs([csv])) for csv in (HPC, SPEC)}
    regrets = {}
    for csv, app in ACCEPTANCE_APPS:
        out = tmp_path / app
        rc, stdout, stderr = launch_here(capsys, replay_args(csv, app, out))
        assert rc == 0, stderr + stdout
        g = json.loads((out / "guided.json").read_text())
        rows = pd.read_csv(out / "runs.csv")
        assert 2 <= len(g["probes_mhz"]) <= 5 and len(rows) == len(g["probes_mhz"]), g["probes_mhz"]
        assert sorted(rows["sm_clock_target_mhz"]) == sorted(g["probes_mhz"]) and g["probes_mhz"][0] == 1380
        assert g["model"]["source"] == "shipped (activity)"  # replayed reference runs carry DCGM counters
        regrets[app] = edp_regret_pct(truth[csv], app, g["clock_mhz"])
    mean = sum(regrets.values()) / len(regrets)
    assert mean < 3.0, regrets


@requires_reference()
def test_guided_json_summary_and_power_modeling_select_on_the_results(tmp_path):
    out = tmp_path / "res"
    p = run_py("-m", "profiling.launch", *replay_args(HPC, "LSTM", out))
    assert p.returncode == 0, p.stderr + p.stdout
    g = json.loads((out / "guided.json").read_text())
    for key in ("clock_mhz", "reference_clock_mhz", "probes_mhz", "stop_reason", "prediction_errors", "model",
                "extrapolation", "energy_saved_pct", "energy_saved_lo_pct", "slowdown_pct", "objective", "failed_mhz"):
        assert key in g, key
    assert g["objective"] == "edp" and g["max_slowdown"] is None and g["reference_clock_mhz"] == 1380
    assert g["clock_mhz"] in g["probes_mhz"] and g["probes_mhz"][0] == 1380 and len(g["probes_mhz"]) <= 5
    assert [e["clock_mhz"] for e in g["prediction_errors"]] == sorted(g["probes_mhz"], reverse=True)
    assert all(abs(e["error_energy_pct"]) < 50 for e in g["prediction_errors"])
    assert g["stop_reason"] and g["energy_saved_lo_pct"] is None  # one run per clock: interval unknown
    assert g["model"]["source"] == "shipped (activity)" and g["model"]["trained_gpus"] == ["V100"]
    assert isinstance(g["extrapolation"], list)
    assert f"guided: use {g['clock_mhz']:.0f} MHz for minimum EDP" in p.stdout
    assert "interval unknown" in p.stdout and f"{len(g['probes_mhz'])} clocks measured" in p.stdout
    assert "stopped: " in p.stdout and "model: shipped (activity)" in p.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "guided" and manifest["guided"]["clock_mhz"] == g["clock_mhz"]
    assert manifest["clocks_mhz"][0] == 1380 and len(manifest["clocks_mhz"]) == 117  # the candidates

    sel = run_py("-m", "power_modeling", "select", str(out), "--objective", "edp", "--max-slowdown", "-1")
    assert sel.returncode == 0, sel.stderr
    assert "LSTM" in sel.stdout and f"{g['clock_mhz']:.0f}" in sel.stdout


def test_bad_guided_model_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    model, out = tmp_path / "model.skops", tmp_path / "res"
    model.write_bytes(b"\x00garbage, not a model\xff" * 10)
    args = ["--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode", "guided", "--guided-model",
            str(model), "--app-executable", FAKE_APP, "--output-dir", str(out), *FAST]
    p = run_py("-m", "profiling.launch", *args)
    assert p.returncode == 2, p.stderr + p.stdout
    assert p.stderr.startswith(f"error: --guided-model {model}: not a model file") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr and not out.exists()
    model.unlink()  # a missing file, in this process (the launcher is the same code; no second start-up)
    rc, _, err = launch_here(capsys, args)
    assert rc == 2 and err == f"error: --guided-model {model}: no such model file\n" and not out.exists()


@requires_reference()
def test_guided_resume_remeasures_nothing_and_gives_the_same_choice(tmp_path, capsys):
    out = tmp_path / "res"
    args = replay_args(HPC, "LAMMPS", out)
    args[args.index("--num-runs") + 1] = "2"  # repeats: the interval is known
    rc, first_out, err = launch_here(capsys, args)
    assert rc == 0, err
    first, rows = json.loads((out / "guided.json").read_text()), (out / "runs.csv").read_text()
    assert first["energy_saved_lo_pct"] is not None and "interval unknown" not in first_out
    rc, again_out, err = launch_here(capsys, args)
    assert rc == 0, err
    assert (out / "runs.csv").read_text() == rows  # not one run redone
    assert again_out.count("resuming: 2 of 2 runs already done") == len(first["probes_mhz"])
    again = json.loads((out / "guided.json").read_text())
    assert (again["clock_mhz"], again["probes_mhz"]) == (first["clock_mhz"], first["probes_mhz"])
    # As if killed during the last probe: its runs are missing; only they are measured again.
    lines = rows.splitlines(keepends=True)
    (out / "runs.csv").write_text("".join(lines[:-2]))
    rc, third_out, err = launch_here(capsys, args)
    assert rc == 0, err
    assert len(pd.read_csv(out / "runs.csv")) == len(lines) - 1
    assert third_out.count("resuming: 2 of 2 runs already done") == len(first["probes_mhz"]) - 1
    third = json.loads((out / "guided.json").read_text())
    assert (third["clock_mhz"], third["probes_mhz"]) == (first["clock_mhz"], first["probes_mhz"])


def test_guided_mode_on_the_simulated_gpu_uses_the_no_activity_model(tmp_path):
    """A run with NVML-like measurements (no DCGM counters) gets the shipped model without activity,
    and the model says it extrapolates: trained on V100s, used on an H100."""
    out = tmp_path / "res"
    p = run_py("-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode",
               "guided", "--guided-probes", "3", "--objective", "energy", "--num-runs", "1", "--app-executable",
               FAKE_APP, "--app-params", "ok 0.3", "--sampling-interval", "10", "--output-dir", str(out), *FAST)
    assert p.returncode == 0, p.stderr + p.stdout
    g = json.loads((out / "guided.json").read_text())
    assert g["model"]["source"] == "shipped (no activity)" and g["model"]["activity"] is False
    assert g["gpu_type"] == "H100" and g["tdp_w"] == 400
    assert any("GPU H100 not in training data" in note for note in g["extrapolation"]), g["extrapolation"]
    assert g["probes_mhz"][0] == 1785 and 2 <= len(g["probes_mhz"]) <= 3 and g["max_slowdown"] == 0.05
    rows = pd.read_csv(out / "runs.csv")
    assert len(rows) == len(g["probes_mhz"]) and set(rows["status"]) == {"ok"}
    assert "the model extrapolates here: GPU H100 not in training data" in p.stdout
    assert json.loads(state_path("H100", 0).read_text()).get("sm_clock_locked_mhz") is None  # restored
    p = run_py("-m", "power_modeling", "report", str(out), "--objective", "energy", "--out", str(tmp_path / "rep"))
    assert p.returncode == 0, p.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Guided search (res)" in html and "The model extrapolates" in html
    assert "GPU H100 not in training data" in html and f"Chosen for minimum energy: {g['clock_mhz']:.0f} MHz" in html


@requires_reference()
def test_guided_dry_run_prints_the_adaptive_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "res"
    p = run_py("-m", "profiling.launch", *replay_args(HPC, "NAMD", out, "--dry-run", "--min-frequency", "705"))
    assert p.returncode == 0, p.stderr
    assert "candidate clocks (91): 1380-705 MHz" in p.stdout
    assert "probes are chosen adaptively, one at a time: first the max clock (1380 MHz)" in p.stdout
    assert "at most 5 clocks" in p.stdout and not out.exists()


@pytest.mark.parametrize("args, expect", [
    (["--guided-probes", "0"], "--guided-probes 0: must be at least 2"),
    (["--clock-slice", "0/2"], "--clock-slice 0/2: not with --profiling-mode guided"),
    (["--objective", "speed"], "--objective"),
    (["--max-slowdown", "nan"], "--max-slowdown nan: must be a number"),
])
def test_guided_option_errors_are_one_line_exit_2(args, expect, tmp_path):
    p = run_py("-m", "profiling.launch", "--profiling-tool", "simulated", "--profiling-mode", "guided",
               "--app-executable", FAKE_APP, "--output-dir", str(tmp_path / "res"), *args)
    assert p.returncode == 2 and expect in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "res").exists()


def test_missing_planner_says_to_install_the_package():
    with pytest.raises(PlannerError, match=r"pip install -e \.") as info:
        load_planner("no-such-planner")
    assert ENTRY_POINT_GROUP in str(info.value) and "guided" in str(info.value)  # lists what is installed


def test_planner_protocol_through_the_entry_point():
    """The guided planner as the launcher sees it: plain floats in, a JSON-safe dict out."""
    planner = load_planner("guided", clocks=[1380, 1200, 1005, 810], max_probes=2, gpu_type="V100")
    assert planner.next_clock() == 1380
    planner.observe(1380, [10.0], [1500.0], {})  # no activity counters: the no-activity model
    f = planner.next_clock()
    assert f in (1200, 1005, 810)
    planner.observe(f, [], [], {})  # no usable run there: never proposed again; it counts as a probe
    assert planner.next_clock() is None
    r = planner.result()
    assert r["clock_mhz"] == 1380 and r["failed_mhz"] == [f] and "1 without a usable run" in r["stop_reason"]
    assert r["model"]["source"] == "shipped (no activity)"
    json.dumps(r, allow_nan=False)
    with pytest.raises(PlannerError) as info:
        load_planner("guided", clocks=[1380, 1005], max_probes=1)
    assert info.value.param == "max_probes"


def test_profiling_never_imports_the_layers_above_it():
    """The layering rule the commit hook checks: profiling finds power_modeling through entry points only."""
    pattern = re.compile(r"^\s*(from|import)\s+(power_modeling|app)\b", re.M)
    offenders = [str(p) for p in sorted((REPO / "profiling").rglob("*.py")) if pattern.search(p.read_text())]
    assert offenders == []


@requires_reference()
def test_guided_launcher_on_apps_its_model_never_saw(tmp_path, capsys):
    """Out of sample: a model trained on the 21 SPEC apps only (saved as ``fit --model cross --save`` does)
    guides the three HPC apps, which are nothing like them (MD, RNN training).

    Scored against the smoothed EDP curve of the full sweep: these apps' single runs scatter by up to
    +-4 % in time between neighbouring clocks (NAMD), so "the best measured clock" is partly a noise
    spike (NAMD at 960 MHz is 0.5 % off the smoothed optimum but 32 % off the best single run).
    """
    import numpy as np

    from power_modeling.features import feature_table
    from power_modeling.io import load_runs
    from power_modeling.model_store import save_model
    from power_modeling.models import CrossWorkloadModel, usable
    from power_modeling.selection import smooth_curves

    model = save_model(CrossWorkloadModel().fit(usable(feature_table(load_runs([SPEC])))), tmp_path / "spec.skops")
    truth = usable(feature_table(load_runs([HPC])))
    regrets, clocks = {}, {}
    for app in ("LAMMPS", "LSTM", "NAMD"):
        out = tmp_path / app
        rc, stdout, stderr = launch_here(capsys, replay_args(HPC, app, out, "--guided-model", str(model)))
        assert rc == 0, stderr + stdout
        g = json.loads((out / "guided.json").read_text())
        assert g["model"]["path"] == str(model)
        rows = truth[truth["workload"] == app]
        f = rows["sm_clock_mhz"].to_numpy()
        t, pw = smooth_curves(f, rows["time_s_mean"], rows["power_w_mean"])
        edp = pw * t * t
        regrets[app] = 100 * (edp[f == g["clock_mhz"]][0] / edp.min() - 1)
        clocks[app] = len(g["probes_mhz"])
    assert all(4 <= n <= 5 for n in clocks.values()), clocks  # no early stop before the 4th probe (default)
    assert np.mean(list(regrets.values())) < 3.0, regrets


@requires_reference()
def test_guided_min_probes_lets_the_search_stop_sooner(tmp_path, capsys):
    n = {}
    for k in ("2", "5"):
        out = tmp_path / k
        rc, stdout, stderr = launch_here(capsys, replay_args(SPEC, "lbm", out, "--guided-min-probes", k))
        assert rc == 0, stderr + stdout
        n[k] = len(json.loads((out / "guided.json").read_text())["probes_mhz"])
        assert json.loads((out / "manifest.json").read_text())["guided"]["min_probes"] == int(k)
    assert n["2"] < n["5"] == 5, n
    p = run_py("-m", "profiling.launch", *replay_args(SPEC, "lbm", tmp_path / "bad", "--guided-min-probes", "0"))
    assert p.returncode == 2 and "--guided-min-probes 0" in p.stderr and not (tmp_path / "bad").exists()
