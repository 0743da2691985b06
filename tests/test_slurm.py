"""SLURM: golden sbatch headers, submission checks, and real jobs on the local single-node cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, run_py

from profiling.slurm import GPU_TYPES, load_site, render

GOLDEN = REPO / "tests" / "data" / "golden"
FAST = "tests/data/experiments/fast.yaml"
SMALL_JOB = ["--cpus-per-task=1", "--mem=2G"]  # the test node has 2 CPUs; command-line options beat #SBATCH


@pytest.mark.parametrize("gpu", GPU_TYPES)
def test_committed_scripts_are_the_default_rendering(gpu):
    assert (REPO / "slurm" / f"submit_{gpu.lower()}.sh").read_text() == render(gpu, load_site(REPO / "slurm" / "site.yaml"))


def test_committed_array_script():
    assert (REPO / "slurm" / "submit_array.sh").read_text() == render("H100", load_site(REPO / "slurm" / "site.yaml"), 4)


@pytest.mark.parametrize("gpu", GPU_TYPES)
def test_golden_sbatch_header_for_a_filled_in_site(gpu):
    text = render(gpu, load_site(REPO / "tests" / "data" / "site_example.yaml"))
    assert text == (GOLDEN / f"site_example_{gpu.lower()}.sh").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH --partition=gpu" in header and "#SBATCH --gres=gpu:1" in header
    assert any(ln.startswith("#SBATCH --signal=B:USR1@") for ln in header)


def test_golden_array_script():
    text = render("H100", load_site(REPO / "tests" / "data" / "site_example.yaml"), 3)
    assert text == (GOLDEN / "site_example_array3.sh").read_text() and "#SBATCH --array=0-2" in text


def test_no_personal_settings_in_the_repository():
    site = load_site(REPO / "slurm" / "site.yaml")
    assert not site.get("partition") and not site.get("account") and not site.get("qos")
    for script in (REPO / "slurm").glob("submit_*.sh"):
        assert "@" not in script.read_text().replace("USR1@", "") and "--reservation" not in script.read_text()


def test_unknown_site_setting_is_an_error(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("partitoin: gpu\n")
    p = run_py("-m", "profiling.slurm", "render", "--site", str(bad), "--out-dir", str(tmp_path))
    assert p.returncode == 2 and "unknown setting(s) partitoin" in p.stderr


def test_missing_experiment_fails_at_submission():
    p = run_py("-m", "profiling.slurm", "submit", "H100", "no-such-experiment")
    assert p.returncode == 2 and "EXPERIMENT no-such-experiment: no experiment file" in p.stderr
    assert "known: demo" in p.stderr


def test_experiment_with_unknown_option_fails_at_submission(tmp_path):
    exp = tmp_path / "bad.yaml"
    exp.write_text("num-runz: 3\n")
    p = run_py("-m", "profiling.slurm", "submit", "H100", str(exp))
    assert p.returncode == 2 and "unknown key 'num-runz' (did you mean 'num-runs'?)" in p.stderr


# --------------------------------------------------------------------------- the real cluster

def _cluster_up() -> bool:
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        return False
    p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return p.returncode == 0 and bool(p.stdout.strip())


cluster = pytest.mark.skipif(not _cluster_up(), reason="no local SLURM (make test starts slurm/local/up.sh as root)")


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SD_ENERGY_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SD_ENERGY_PYTHON", os.environ.get("SD_ENERGY_PYTHON", str(Path(os.sys.executable))))
    monkeypatch.setenv("SD_ENERGY_ROOT", str(REPO))
    return tmp_path / "results"


def sbatch(*args: str) -> str:
    p = subprocess.run(["sbatch", "--parsable", "--chdir", str(REPO), *args], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def job_state(job: str) -> str:
    """The job's state from slurmctld ("" once it is purged).

    ``squeue`` alone is not enough: while a job is being requeued it can drop out of squeue's
    answer for a moment, which would read as "finished"; ``scontrol`` keeps the record.
    """
    p = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    if p.returncode == 0 and p.stdout.strip():
        return p.stdout.strip()
    p = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    found = re.search(r"JobState=(\S+)", p.stdout)
    return found.group(1) if found else ""


def wait_gone(job: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if job_state(job) in FINAL_STATES | {""}:
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} still in the queue after {timeout} s")


def fast_experiment(directory: Path, name: str, seconds: float) -> Path:
    """The fast test experiment with each run lasting ``seconds``; results go to ``<name>_h100``."""
    exp = directory / f"{name}.yaml"
    exp.write_text((REPO / FAST).read_text().replace('"ok 0.3"', f'"ok {seconds}"'))
    return exp


def start_job(tmp_path: Path, results: Path, name: str, seconds: float, rows: int) -> tuple[Path, str, Path]:
    """Submit the fast experiment with ``seconds``-long runs and wait until ``rows`` runs are written."""
    exp = fast_experiment(tmp_path, name, seconds)
    job = sbatch(*SMALL_JOB, "slurm/submit_h100.sh", str(exp))
    out = results / f"{name}_h100"
    wait_rows(out, rows)
    return exp, job, out


def wait_rows(out: Path, n: int, timeout: float = 120) -> None:
    """Until the running sweep in ``out`` has written ``n`` rows."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ((out / "runs.csv").exists() and len(pd.read_csv(out / "runs.csv")) >= n):
        time.sleep(0.3)


def job_log(job: str, name: str = "sd-energy-h100") -> str:
    path = REPO / f"slurm-{name}-{job}.out"
    text = path.read_text() if path.exists() else ""
    path.unlink(missing_ok=True)
    return text


def sim_locked() -> int | None:
    from profiling.backends.simulated import state_path

    path = state_path("H100", 0)
    return json.loads(path.read_text()).get("sm_clock_locked_mhz") if path.exists() else None


@cluster
def test_demo_job_runs_to_completion_and_power_modeling_reads_it(slurm_env, tmp_path):
    job = sbatch(*SMALL_JOB, "slurm/submit_h100.sh", "demo")
    wait_gone(job, 400)
    log = job_log(job)
    out = slurm_env / "demo_h100"
    assert "done:" in log, log[-3000:]
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) >= 6 and set(runs["status"]) == {"ok"} and set(runs["backend"]) == {"simulated"}
    m = json.loads((out / "manifest.json").read_text())
    assert m["slurm"]["SLURM_JOB_ID"] == job and m["slurm"]["SLURMD_NODENAME"]
    assert "--signal=B:USR1@120" in m["slurm"]["SD_ENERGY_SBATCH_OPTIONS"]
    assert m["slurm"]["granted"]["NumCPUs"] == "1"  # what SLURM granted, overrides included
    p = run_py("-m", "power_modeling", "report", str(out), "--out", str(tmp_path / "rep"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "rep" / "report.html").exists()


@cluster
def test_array_sweep_covers_the_same_clocks_as_one_job(slurm_env):
    single = sbatch(*SMALL_JOB, "slurm/submit_h100.sh", FAST)
    array = sbatch(*SMALL_JOB, "--array=0-2", "slurm/submit_array.sh", FAST)
    wait_gone(single)
    wait_gone(array)
    job_log(single)
    for k in range(3):
        job_log(f"{array}_{k}")
    one = pd.read_csv(slurm_env / "fast_h100" / "runs.csv")
    tasks = sorted((slurm_env / "fast_h100_array").glob("task*/runs.csv"))
    assert len(tasks) == 3
    parts = [pd.read_csv(t) for t in tasks]
    assert sorted(pd.concat(parts)["sm_clock_target_mhz"]) == sorted(one["sm_clock_target_mhz"])
    assert all(len(p) == 2 for p in parts)  # 6 clocks in 3 slices
    tids = {json.loads((t.parent / "manifest.json").read_text())["slurm"]["SLURM_ARRAY_TASK_ID"] for t in tasks}
    assert tids == {"0", "1", "2"}
    from power_modeling import load_runs

    merged = load_runs([slurm_env / "fast_h100_array"])  # the sweep dir: power_modeling finds every task
    assert merged["source"].nunique() == 3 and sorted(merged["sm_clock_mhz"]) == sorted(one["sm_clock_target_mhz"])


@cluster
def test_scancel_restores_clocks_and_resubmission_finishes(slurm_env, tmp_path):
    exp, job, out = start_job(tmp_path, slurm_env, "slow", 3, rows=2)
    assert sim_locked() is not None
    subprocess.run(["scancel", job], check=True)
    wait_gone(job, 120)
    job_log(job)
    assert sim_locked() is None  # the launcher reset the clock before the job ended
    partial = pd.read_csv(out / "runs.csv")
    assert 2 <= len(partial) < 6 + 1
    from power_modeling import load_runs

    assert len(load_runs([out])) >= 2  # partial results are readable
    again = sbatch(*SMALL_JOB, "slurm/submit_h100.sh", str(exp))
    wait_gone(again, 300)
    log = job_log(again)
    done = sum(partial["status"] == "ok")
    assert f"resuming: {done} of 6 runs already done" in log, log[-2000:]
    final = pd.read_csv(out / "runs.csv")
    ok = final[final["status"] == "ok"]
    assert sorted(ok["run_id"]) == sorted(set(ok["run_id"])) and len(ok) == 6


@cluster
def test_time_limit_stops_cleanly_through_the_signal(slurm_env, tmp_path, monkeypatch):
    monkeypatch.setenv("SD_ENERGY_REQUEUE", "0")
    exp = fast_experiment(tmp_path, "long", 30)
    job = sbatch(*SMALL_JOB, "--time=1", "--signal=B:USR1@55", "slurm/submit_h100.sh", str(exp))
    wait_gone(job, 150)
    log = job_log(job)
    assert "stopped by SIGUSR1" in log and "clocks restored" in log, log[-2000:]
    assert sim_locked() is None
    rows = pd.read_csv(slurm_env / "long_h100" / "runs.csv")
    assert list(rows["status"]) == ["interrupted"]


@cluster
def test_bad_partition_fails_at_submission(tmp_path):
    p = subprocess.run(["sbatch", "--partition=no-such-partition", "slurm/submit_h100.sh"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode != 0 and "invalid partition" in p.stderr.lower()
    site = tmp_path / "site.yaml"
    site.write_text("partition: no-such-partition\ngpus: 0\n")
    p = run_py("-m", "profiling.slurm", "submit", "H100", "demo", "--site", str(site))
    assert p.returncode == 2 and "partition no-such-partition: not a partition of this cluster" in p.stderr
    assert "debug" in p.stderr


@cluster
def test_submit_helper_checks_then_submits(slurm_env, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("partition: debug\ngpus: 1\ncpus_per_task: 1\nmem: 2G\ntime: '00:10:00'\n")
    p = run_py("-m", "profiling.slurm", "submit", "H100", FAST, "--site", str(site))
    assert p.returncode == 0, p.stderr
    job = p.stdout.strip()
    wait_gone(job)
    job_log(job)
    assert len(pd.read_csv(slurm_env / "fast_h100" / "runs.csv")) == 6


@cluster
def test_requeued_job_resumes_and_completes(slurm_env, tmp_path):
    exp, job, out = start_job(tmp_path, slurm_env, "requeue", 2, rows=2)
    subprocess.run(["scontrol", "requeue", job], check=True)  # SLURM stops the job (SIGTERM) and queues it again
    # A requeued job waits about two minutes before it is eligible; let it start soon after it is pending,
    # but not within the same few seconds: slurmd still holds the old launch credential as revoked and
    # kills a relaunch stamped in that second ("Job credential revoked"), which ends the job for good.
    deadline = time.time() + 60
    while time.time() < deadline and job_state(job) != "PENDING":
        time.sleep(0.3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now+3"], capture_output=True)
    wait_gone(job, 400)
    log = job_log(job)
    rows = pd.read_csv(out / "runs.csv")
    ok = rows[rows["status"] == "ok"]
    assert sorted(ok["run_id"]) == sorted(set(ok["run_id"])) and len(ok) == 6, log[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["launches"]) == 2 and m["slurm"]["SLURM_RESTART_COUNT"] == "1"
    assert sim_locked() is None
