"""One GPU, one owner: concurrent launchers, killed launchers, leftover apps, garbage lock records."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import PY, REPO

from profiling.clocks import lock_dir

FAKE = str(REPO / "tests" / "data" / "fake_app.py")
BASE = ["-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100", "--sleep-interval", "0",
        "--idle-seconds", "0", "--sampling-interval", "20", "--app-executable", FAKE]


def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PY, *BASE, *args, "--output-dir", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(out: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *BASE, *args, "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]


def test_a_second_launcher_on_the_same_gpu_refuses_or_waits(tmp_path):
    first = start(tmp_path / "a", "--profiling-mode", "custom", "--custom-frequencies", "1395", "--num-runs", "1",
                  "--app-params", "ok 2")
    try:
        wait_for(lambda: list((tmp_path / "a").glob("events/*.jsonl")))
        refused = run(tmp_path / "b", "--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert lines[0].startswith("error: --gpu-index 0: GPU SIM-H100-0 is in use by another sweep")
        assert f"pid {first.pid}" in lines[0] and str(tmp_path / "a") in lines[0] and "--wait-for-gpu" in lines[0]
        assert not (tmp_path / "b" / "runs.csv").exists()
        # The same command on the same directory: one writer per results directory.
        same = run(tmp_path / "a", "--profiling-mode", "custom", "--custom-frequencies", "1395", "--num-runs", "1",
                   "--app-params", "ok 2")
        assert same.returncode == 2 and "another launcher is writing to it" in same.stderr
        waited = run(tmp_path / "c", "--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05",
                     "--wait-for-gpu", "60")
        assert waited.returncode == 0, waited.stderr
        assert "waiting for GPU SIM-H100-0" in waited.stdout
    finally:
        assert first.wait(timeout=60) == 0
    a, c = pd.read_csv(tmp_path / "a" / "runs.csv"), pd.read_csv(tmp_path / "c" / "runs.csv")
    assert list(a["status"]) == ["ok"] and list(c["status"]) == ["ok"]
    # The waiting launcher started only after the first had finished: their runs never overlapped.
    assert pd.to_datetime(c["start_utc"]).iloc[0] > pd.to_datetime(a["start_utc"]).iloc[0]


def test_reset_clocks_never_resets_a_gpu_a_live_sweep_holds(tmp_path):
    first = start(tmp_path / "a", "--profiling-mode", "custom", "--custom-frequencies", "1395", "--num-runs", "1",
                  "--app-params", "ok 1.5")
    try:
        wait_for(lambda: list((tmp_path / "a").glob("events/*.jsonl")))
        p = subprocess.run([PY, "-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100",
                            "--reset-clocks"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "a live sweep holds this GPU" in p.stderr and f"pid {first.pid}" in p.stderr
    finally:
        assert first.wait(timeout=60) == 0


def test_sigkill_of_the_launcher_takes_the_app_with_it_and_resume_redoes_the_run(tmp_path):
    out = tmp_path / "res"
    args = ("--profiling-mode", "custom", "--custom-frequencies", "1395", "--num-runs", "1", "--app-params", "ok 4")
    launcher = start(out, *args)
    record = out / "running" / "f1395_r00.json"
    wait_for(record.exists)
    app_pid = json.loads(record.read_text())["pid"]
    assert alive(app_pid)
    launcher.kill()
    launcher.wait()
    wait_for(lambda: not alive(app_pid), timeout=1.5)  # at once (the app had ~4 s to go): ended with its launcher
    resumed = run(out, *args)
    assert resumed.returncode == 0, resumed.stderr
    df = pd.read_csv(out / "runs.csv")
    assert list(df["status"]) == ["ok"] and not list((out / "running").glob("*.json"))


def test_a_leftover_app_is_ended_before_its_run_is_redone(tmp_path):
    out = tmp_path / "res"
    args = ("--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05")
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stat = Path(f"/proc/{leftover.pid}/stat").read_text()
    ticks = int(stat[stat.rfind(")") + 2:].split()[19])
    (out / "running").mkdir(parents=True)
    (out / "running" / "fdefault_r00.json").write_text(json.dumps({"pid": leftover.pid, "start_ticks": ticks}))
    (out / "running" / "garbage.json").write_text("{not json")
    p = run(out, *args)
    assert p.returncode == 0, p.stderr
    assert f"leftover process(es) of run fdefault_r00 (app pid {leftover.pid})" in p.stderr
    assert leftover.wait(timeout=10) == -signal.SIGKILL
    assert not list((out / "running").iterdir())


def test_a_timeout_also_ends_the_helpers_the_app_started_in_their_own_session(tmp_path):
    out = tmp_path / "res"
    pid_file = tmp_path / "helper.pid"
    p = run(out, "--profiling-mode", "baseline", "--num-runs", "1", "--timeout", "2", "--app-params",
            f"helper {pid_file}")
    assert p.returncode == 1  # the only run timed out
    assert list(pd.read_csv(out / "runs.csv")["status"]) == ["timeout"]
    helper = int(pid_file.read_text())
    wait_for(lambda: not alive(helper), timeout=10)


def test_garbage_lock_records_are_reported_moved_aside_and_the_launch_goes_on(tmp_path):
    records = lock_dir()
    records.mkdir(parents=True, exist_ok=True)
    (records / "garbage.json").write_text("\x00\x01 not json")
    (records / "unknown.json").write_text(json.dumps({"backend": "no-such-backend", "gpu_index": 0, "pid": 2**22 + 7,
                                                      "host": socket.gethostname(), "gpu_uuid": "GPU-x"}))
    (records / "list.json").write_text("[1, 2]")
    p = run(tmp_path / "res", "--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05")
    assert p.returncode == 0, p.stderr
    for name in ("garbage", "unknown", "list"):
        assert f"lock record {records / (name + '.json')}" in p.stdout
        assert (records / f"{name}.json.bad").exists() and not (records / f"{name}.json").exists()
    again = run(tmp_path / "res2", "--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05")
    assert again.returncode == 0 and "lock record" not in again.stdout  # reported once, not on every launch


def test_a_monitor_that_dies_fails_its_run_with_the_reason(tmp_path, monkeypatch):
    from profiling import sweep
    from profiling.backends.simulated import SimulatedGpu

    real, calls = SimulatedGpu.sample, {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if 8 <= calls["n"] <= 10:
            raise OSError("sensor went away")
        return real(self)

    monkeypatch.setattr(SimulatedGpu, "sample", flaky)
    res = sweep(lambda: time.sleep(0.3), clocks=[1785], runs=1, output_dir=tmp_path / "res", backend="simulated",
                gpu_type="H100", sampling_interval_ms=10, log=lambda *a, **k: None)
    row = res.read_rows()[0]
    assert row["status"] == "failed"
    assert "power monitor stopped: OSError: sensor went away" in (res.path / "logs" / "f1785_r00.err").read_text()


def test_gpu_type_must_match_a_real_gpu_resume_must_find_its_sweep_and_all_gpus_dirs_are_the_callers(tmp_path):
    fake_nvml = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'data' / 'fake_nvml'}{os.pathsep}{REPO}"}
    wrong = subprocess.run([PY, "-m", "profiling.launch", "--profiling-tool", "nvml", "--gpu-type", "A100",
                            "--profiling-mode", "baseline", "--app-executable", FAKE, "--output-dir",
                            str(tmp_path / "x")], cwd=REPO, env=fake_nvml, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: --gpu-type A100: but the GPU is a NVIDIA H100")
    assert not (tmp_path / "x").exists()  # H100 numbers are never written under an A100 label
    resume = subprocess.run([PY, *BASE, "--profiling-mode", "baseline", "--resume"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert resume.returncode == 2 and "--resume True: no results directory under" in resume.stderr
    rel = subprocess.run([PY, *BASE, "--profiling-mode", "baseline", "--num-runs", "1", "--app-params", "ok 0.05",
                          "--all-gpus", "--output-dir", "rel/out"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert rel.returncode == 0, rel.stderr
    assert (tmp_path / "rel" / "out" / "gpu0" / "runs.csv").exists()  # the caller's directory, not the checkout's
