"""Fault trials for "one GPU, one owner": repeat each fault several times and count the outcomes.

Each trial runs real launcher processes on the simulated H100 with the fake app
(tests/data/fake_app.py), in a fresh temporary directory:

* two-launchers: a second launcher on the same GPU while the first runs -> must exit 2 naming the
  holder; the first must finish ok;
* same-directory: the same sweep started twice on one results directory -> the second exits 2;
* sigkill-resume: SIGKILL the launcher while its app runs -> the app must be gone within 1.5 s,
  and the resumed sweep must finish with one ok row per run and nothing left in running/;
* garbage-records: three unreadable lock records planted -> the launch must succeed, moving
  each aside.

    .venv/bin/python benchmarks/fault_trials.py --trials 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKE = str(REPO / "tests" / "data" / "fake_app.py")
BASE = [sys.executable, "-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100",
        "--sleep-interval", "0", "--idle-seconds", "0", "--sampling-interval", "20", "--app-executable", FAKE,
        "--profiling-mode", "custom", "--custom-frequencies", "1395", "--num-runs", "1"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "SD_ENERGY_SIMULATED_DIR": str(tmp / "gpu"), "SD_ENERGY_LOCK_DIR": str(tmp / "locks"),
            "SD_ENERGY_FORCE_SIMULATED": "1"}


def _wait(pred, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _second_launcher(tmp: Path, second_dir: str, refusal: str) -> str:
    """Start a sweep, then a second launcher into ``second_dir`` while the first runs: it must be refused."""
    env = _env(tmp)
    first = subprocess.Popen([*BASE, "--app-params", "ok 2", "--output-dir", str(tmp / "a")], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _wait(lambda: list((tmp / "a").glob("events/*.jsonl")), 60):
        return "first never started"
    second = subprocess.run([*BASE, "--app-params", "ok 2", "--output-dir", str(tmp / second_dir)], env=env,
                            cwd=REPO, capture_output=True, text=True)
    rc = first.wait()
    if second.returncode != 2 or refusal.format(pid=first.pid) not in second.stderr:
        return f"second not refused (rc {second.returncode})"
    return "ok" if rc == 0 else f"first failed (rc {rc})"


def two_launchers(tmp: Path) -> str:
    return _second_launcher(tmp, "b", "pid {pid}")


def same_directory(tmp: Path) -> str:
    return _second_launcher(tmp, "a", "another launcher is writing to it")


def sigkill_resume(tmp: Path) -> str:
    env = _env(tmp)
    cmd = [*BASE, "--app-params", "ok 4", "--output-dir", str(tmp / "a")]
    launcher = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp / "a" / "running" / "f1395_r00.json"
    if not _wait(record.exists, 60):
        return "app never started"
    app = json.loads(record.read_text())["pid"]
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    if not _wait(lambda: not _alive(app), 1.5):
        return "app survived its launcher"
    resumed = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    rows = (tmp / "a" / "runs.csv").read_text().splitlines()[1:]
    if resumed.returncode != 0 or len(rows) != 1 or ",ok," not in rows[0]:
        return f"resume did not finish cleanly (rc {resumed.returncode}, {len(rows)} rows)"
    return "ok" if not list((tmp / "a" / "running").glob("*.json")) else "running record left"


def garbage_records(tmp: Path) -> str:
    env = _env(tmp)
    locks = tmp / "locks"
    locks.mkdir(parents=True)
    (locks / "a.json").write_text("\x00 not json")
    (locks / "b.json").write_text("[1, 2]")
    (locks / "c.json").write_text(json.dumps({"backend": "nope", "gpu_index": 0, "pid": 2**22 + 7,
                                              "host": socket.gethostname()}))
    p = subprocess.run([*BASE, "--app-params", "ok 0.1", "--output-dir", str(tmp / "a")], env=env, cwd=REPO,
                       capture_output=True, text=True)
    moved = sorted(x.name for x in locks.glob("*.bad"))
    if p.returncode != 0:
        return f"launch failed (rc {p.returncode})"
    return "ok" if moved == ["a.json.bad", "b.json.bad", "c.json.bad"] else f"moved aside: {moved}"


TRIALS = {"two-launchers": two_launchers, "same-directory": same_directory, "sigkill-resume": sigkill_resume,
          "garbage-records": garbage_records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    for name, trial in TRIALS.items():
        outcomes = Counter()
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                outcomes[trial(Path(tmp))] += 1
        print(f"{name:16s} " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))


if __name__ == "__main__":
    main()
