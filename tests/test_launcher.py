"""The launcher end to end on the simulated GPU: layout, resume, faults, signals, stale locks, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import PY, REPO, run_py

from profiling.backends.simulated import state_path
from profiling.results import RUNS_COLUMNS

FAKE = str(REPO / "tests" / "data" / "fake_app.py")
BASE = ["-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "A100", "--sleep-interval", "0",
        "--idle-seconds", "0.1", "--sampling-interval", "10"]


def launch(*args, timeout=300):
    return run_py(*BASE, *args, timeout=timeout)


def rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "runs.csv")


def test_sweep_with_the_tiny_diffusion_app(tmp_path):
    out = tmp_path / "res"
    # Two app processes only (warm-up runs are covered in-process, test_sweep_core): each costs ~8 s here.
    p = launch("--profiling-mode", "custom", "--custom-frequencies", "1410,705", "--num-runs", "1", "--app-params",
               "--weights tiny --height 64 --width 64 --steps 6 --num-images 2 --batch-size 2 --no-save-images",
               "--output-dir", str(out))
    assert p.returncode == 0, p.stderr + p.stdout
    assert "SIMULATED A100" in p.stdout
    df = rows(out)
    assert list(df.columns) == RUNS_COLUMNS
    assert len(df) == 2 and set(df["status"]) == {"ok"} and df["warmup"].sum() == 0
    assert set(df["backend"]) == {"simulated"} and set(df["app_model_variant"]) == {"sd-v1.5"}
    measured = df[df["warmup"] == 0].set_index("sm_clock_target_mhz")
    assert (measured["images"] == 2).all()
    assert (measured["work_energy_j"] < measured["energy_j"]).all()  # load and start-up excluded from work
    assert measured.loc[705, "work_avg_power_w"] < measured.loc[1410, "work_avg_power_w"]
    assert measured.loc[705, "work_s"] > measured.loc[1410, "work_s"]  # time stretches at a low clock
    assert (measured["sm_clock_mean_mhz"] == measured.index).all() and measured["clock_mismatch"].sum() == 0
    phases = json.loads(measured.loc[1410, "phase_energy_json"])
    assert {"load", "text_encode", "denoise_step", "vae_decode"} <= set(phases)
    for rid in df["run_id"]:
        for sub, ext in (("samples", "csv"), ("apps", "json"), ("events", "jsonl")):
            assert (out / sub / f"{rid}.{ext}").exists(), (sub, rid)
        assert (out / "logs" / f"{rid}.err").exists()
    samples = pd.read_csv(out / "samples" / "f1410_r00.csv")
    assert {"mono_s", "power_w", "energy_mj", "sm_clock_mhz", "phase"} <= set(samples.columns)
    assert "denoise_step" in set(samples["phase"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "simulated" and manifest["synthetic"] is True
    assert manifest["clocks_mhz"] == [1410, 705] and manifest["config_hash"]
    assert json.loads(state_path("A100", 0).read_text()).get("sm_clock_locked_mhz") is None  # restored


def test_resume_does_only_missing_runs(tmp_path):
    out = tmp_path / "res"
    args = ["--profiling-mode", "custom", "--custom-frequencies", "1410,1005", "--num-runs", "2",
            "--app-executable", FAKE, "--app-params", "ok 0.05", "--output-dir", str(out)]
    assert launch(*args).returncode == 0
    first = rows(out)
    # Drop the last two rows as if the sweep had died there, and leave a half-written line.
    text = (out / "runs.csv").read_text().splitlines(keepends=True)
    (out / "runs.csv").write_text("".join(text[:-2]) + "f1005_r01,1005,1,0,o")
    p = launch(*args)
    assert p.returncode == 0 and "resuming: 2 of 4 runs already done" in p.stdout
    again = rows(out)
    assert sorted(again["run_id"]) == sorted(first["run_id"]) and len(again) == 4
    p = launch(*args)
    assert "4 of 4 runs already done" in p.stdout and len(rows(out)) == 4


def test_different_sweep_in_same_dir_is_refused(tmp_path):
    out = tmp_path / "res"
    assert launch("--profiling-mode", "baseline", "--num-runs", "1", "--app-executable", FAKE, "--app-params", "ok 0.01",
                  "--output-dir", str(out)).returncode == 0
    p = launch("--profiling-mode", "baseline", "--num-runs", "2", "--app-executable", FAKE, "--output-dir", str(out))
    assert p.returncode == 2 and "holds a different sweep" in p.stderr


@pytest.mark.parametrize("mode, status", [("crash", "crashed"), ("exit3", "failed"), ("oom", "oom"),
                                          ("ok 5", "timeout")])
def test_faults_become_rows_and_the_sweep_goes_on(tmp_path, mode, status):
    out = tmp_path / "res"
    p = launch("--profiling-mode", "custom", "--custom-frequencies", "1410,705", "--num-runs", "1",
               "--app-executable", FAKE, "--app-params", mode, "--timeout", "1", "--output-dir", str(out))
    assert p.returncode == 1 and "no run succeeded" in p.stderr, p.stderr  # a job of failures must not look fine
    df = rows(out)
    assert list(df["status"]) == [status, status] and len(df) == 2


def test_app_that_cannot_start_is_a_failed_row(tmp_path):
    bad = tmp_path / "notreally"
    bad.write_text("this is not a program")
    bad.chmod(0o755)
    out = tmp_path / "res"
    p = launch("--profiling-mode", "baseline", "--num-runs", "2", "--app-executable", str(bad), "--output-dir", str(out))
    assert p.returncode == 1 and list(rows(out)["status"]) == ["failed", "failed"]  # every run failed: exit 1
    assert "Exec format error" in (out / "logs" / "fdefault_r00.err").read_text()


def test_app_params_reach_the_app_literally(tmp_path):
    out, argv_file = tmp_path / "res", tmp_path / "argv.json"
    params = f"argv {argv_file} '; rm -rf x' '$(touch {tmp_path}/pwned)' \"two words\" `id`"
    p = launch("--profiling-mode", "baseline", "--num-runs", "1", "--app-executable", FAKE, "--app-params", params,
               "--output-dir", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads(argv_file.read_text()) == ["; rm -rf x", f"$(touch {tmp_path}/pwned)", "two words", "`id`"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_restores_clocks_and_records_the_run(tmp_path, sig):
    out = tmp_path / "res"
    proc = subprocess.Popen([PY, *BASE, "--profiling-mode", "custom", "--custom-frequencies", "1005", "--num-runs", "1",
                             "--app-executable", FAKE, "--app-params", "ok 30", "--output-dir", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = state_path("A100", 0)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("events/*.jsonl")):
        time.sleep(0.1)
    assert json.loads(state.read_text())["sm_clock_locked_mhz"] == 1005
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert "clocks restored" in err
    assert json.loads(state.read_text()).get("sm_clock_locked_mhz") is None
    assert list(rows(out)["status"]) == ["interrupted"]
    assert not list(Path(os.environ["SD_ENERGY_LOCK_DIR"]).glob("*.json"))


def test_sigkill_leaves_a_lock_record_that_the_next_launch_restores(tmp_path):
    out = tmp_path / "res"
    proc = subprocess.Popen([PY, *BASE, "--profiling-mode", "custom", "--custom-frequencies", "705", "--num-runs", "1",
                             "--app-executable", FAKE, "--app-params", "ok 30", "--output-dir", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    locks = Path(os.environ["SD_ENERGY_LOCK_DIR"])
    deadline = time.time() + 60
    while time.time() < deadline and not list(locks.glob("*.json")):
        time.sleep(0.1)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = state_path("A100", 0)
    assert json.loads(state.read_text())["sm_clock_locked_mhz"] == 705  # left locked, like real hardware
    assert list(locks.glob("*.json"))
    p = launch("--reset-clocks")
    assert p.returncode == 0 and "restored clocks of SIM-A100-0 left locked by pid" in p.stdout
    assert json.loads(state.read_text()).get("sm_clock_locked_mhz") is None and not list(locks.glob("*.json"))


def test_dry_run_prints_the_plan(tmp_path):
    p = launch("--profiling-mode", "dvfs", "--min-frequency", "1005", "--max-frequency", "1410",
               "--frequency-step", "100", "--num-runs", "3", "--warmup-runs", "1", "--dry-run",
               "--output-dir", str(tmp_path / "x"))
    assert p.returncode == 0, p.stderr
    assert "clocks (5): 1410, 1305, 1215, 1110, 1005" in p.stdout and "runs: 20" in p.stdout
    assert "estimated time" in p.stdout and not (tmp_path / "x").exists()


def test_slurm_node_numbers_never_index_the_gpus_the_job_sees(tmp_path):
    out = tmp_path / "res"
    p = run_py(*BASE, "--profiling-mode", "baseline", "--num-runs", "1", "--app-executable", FAKE, "--app-params",
               "ok 0.01", "--output-dir", str(out), env={"SLURM_JOB_GPUS": "2", "SLURM_JOB_ID": "4242"})
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    # The job sees one GPU (renumbered from 0); SLURM's node number 2 is recorded, not used as an index.
    assert m["gpu_index"] == 0 and m["gpu_uuid"] == "SIM-A100-0" and m["slurm"]["SLURM_JOB_ID"] == "4242"
    assert m["slurm"]["SLURM_JOB_GPUS"] == "2" and m["gpu_selection"]["uuid"] == "SIM-A100-0"


def test_launch_sh_wrapper(tmp_path):
    p = subprocess.run([str(REPO / "sample-collection-scripts" / "launch.sh"), "--profiling-tool", "simulated",
                        "--gpu-type", "V100", "--profiling-mode", "custom", "--custom-frequencies", "1380,1005",
                        "--dry-run", "--app-executable", FAKE], capture_output=True, text=True,
                       env={**os.environ, "SD_ENERGY_PYTHON": sys.executable})
    assert p.returncode == 0 and "clocks (2): 1380, 1005" in p.stdout


@pytest.mark.parametrize("args, expect", [
    (["--gpu-type", "P100"], "--gpu-type P100: unknown GPU type"),
    (["--profiling-mode", "custom", "--custom-frequencies", "1400"], "--custom-frequencies 1400: not a supported SM clock; nearest supported: 1410, 1395, 1380"),
    (["--max-frequency", "2000"], "--max-frequency 2000: outside the GPU's supported SM clocks 210-1410 MHz"),
    (["--sampling-interval", "5"], "--sampling-interval 5.0: below the 10 ms minimum"),
    (["--app-executable", "/no/such/app"], "--app-executable /no/such/app: no such file"),
    (["--app-executable", "NOEXEC"], "not executable"),
    (["--num-runs", "0"], "--num-runs 0: must be at least 1"),
    (["--output-dir", "/proc/forbidden/x"], "--output-dir /proc/forbidden/x: not writable"),
    (["--app-params", "'unbalanced"], "--app-params 'unbalanced: cannot be split"),
])
def test_bad_input(args, expect, tmp_path):
    noexec = tmp_path / "app.bin"
    noexec.write_text("data")
    noexec.chmod(0o644)
    p = launch(*[str(noexec) if a == "NOEXEC" else a for a in args])
    assert p.returncode == 2 and expect in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1


def test_guided_mode_needs_two_probes(tmp_path):
    """Guided mode end to end is in test_guided_launcher.py; here only its option check, like the others."""
    p = launch("--profiling-mode", "guided", "--guided-probes", "1", "--app-executable", FAKE,
               "--output-dir", str(tmp_path / "res"))
    assert p.returncode == 2 and "--guided-probes 1: must be at least 2" in p.stderr
    assert p.stderr.count("\n") == 1 and not (tmp_path / "res").exists()


def test_resume_flag_finds_the_newest_matching_sweep(tmp_path):
    args = ["--profiling-mode", "custom", "--custom-frequencies", "1410,1005", "--num-runs", "1",
            "--app-executable", FAKE, "--app-params", "ok 0.05"]
    first = run_py(*BASE, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (res,) = list((tmp_path / "results").iterdir())
    lines = (res / "runs.csv").read_text().splitlines(keepends=True)
    (res / "runs.csv").write_text("".join(lines[:-1]))  # the last run went missing
    again = run_py(*BASE, *args, "--resume", cwd=tmp_path)
    assert again.returncode == 0 and f"results: {res}" in again.stdout and "1 of 2 runs already done" in again.stdout
    assert len(list((tmp_path / "results").iterdir())) == 1


def test_index_sleep_sampling_idle_and_name_options_take_effect(tmp_path):
    from datetime import datetime

    def sweep(out, *extra):
        p = run_py("-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "A100", "--profiling-mode",
                   "baseline", "--num-runs", "2", "--app-executable", FAKE, "--app-params", "ok 0.4",
                   "--output-dir", str(out), *extra, env={"SD_ENERGY_SIMULATED_GPUS": "4"})  # a 4-GPU node
        assert p.returncode == 0, p.stderr
        return rows(out), json.loads((out / "manifest.json").read_text())

    fast, m_fast = sweep(tmp_path / "a", "--gpu-index", "3", "--sleep-interval", "0", "--sampling-interval", "10",
                         "--idle-seconds", "0", "--app-name", "MyBench")
    slow, _ = sweep(tmp_path / "b", "--sleep-interval", "1.5", "--sampling-interval", "100", "--idle-seconds", "0.3")
    assert m_fast["gpu_index"] == 3 and set(fast["gpu_uuid"]) == {"SIM-A100-3"}
    assert set(fast["workload"]) == {"MyBench"} and m_fast["app_name"] == "MyBench"
    gap = [(datetime.fromisoformat(d["start_utc"].iloc[1]) - datetime.fromisoformat(d["start_utc"].iloc[0])).total_seconds()
           for d in (fast, slow)]
    assert gap[1] - gap[0] >= 1.0  # the 1.5 s cool-down sits between the runs (same-length runs otherwise)
    assert fast["samples"].min() > 2 * slow["samples"].max()  # 10 ms sampling vs 100 ms
    assert fast["idle_power_w"].isna().all() and slow["idle_power_w"].notna().all()
