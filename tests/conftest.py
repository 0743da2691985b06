"""Shared fixtures: an isolated cache, simulated-GPU state and lock directory per test session/test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "data" / "reference"
SMI_CAPTURES = REPO.parent / "shared" / "data" / "nvidia-smi"
PY = sys.executable

# One BLAS/OpenMP thread for the tests and every process they start: the tiny models gain nothing from
# more, and on a busy 2-core CI host threads that wait for each other at every op stalled whole tests
# (a tiny UNet forward took ~2 s with 2 threads under load). Set before numpy or torch is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    """Tiny weights are built once per session into a private cache; nothing touches the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("sd-cache")
    os.environ["SD_ENERGY_CACHE"] = os.environ.get("SD_ENERGY_TEST_CACHE", str(cache))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["SD_ENERGY_FORCE_SIMULATED"] = "1"
    os.environ.setdefault("PYTHONPATH", str(REPO))
    yield


@pytest.fixture(autouse=True)
def gpu_state(tmp_path, monkeypatch):
    """Each test gets its own simulated-GPU state and lock records (like its own GPU)."""
    monkeypatch.setenv("SD_ENERGY_SIMULATED_DIR", str(tmp_path / "simgpu"))
    monkeypatch.setenv("SD_ENERGY_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path


def run_py(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None):
    """Run ``python ARGS`` as a user would; returns CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd or REPO)


def requires_reference():
    return pytest.mark.skipif(not REFERENCE.exists(), reason=f"reference data not found at {REFERENCE}")


FAKE_APP = str(REPO / "tests" / "data" / "fake_app.py")


@pytest.fixture(scope="session")
def sim_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "res"
    env = {"SD_ENERGY_SIMULATED_DIR": str(out.parent / "gpu"), "SD_ENERGY_LOCK_DIR": str(out.parent / "locks")}
    p = run_py("-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode",
               "custom", "--custom-frequencies", "1785,1590,1395,1200,990,795", "--num-runs", "2",
               "--sleep-interval", "0", "--idle-seconds", "0.1", "--sampling-interval", "10", "--app-executable", FAKE_APP,
               "--app-params", "ok 0.4", "--output-dir", str(out), env=env)
    assert p.returncode == 0, p.stderr
    return out
