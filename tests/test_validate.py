"""The node check (``launch.sh --validate``, ``python -m profiling.validate``), run in this process.

Against the simulated H100 with its sensor artefacts on (energy counter in 100 ms steps, partly
sampled power), and against the fake NVML with a fake ``torch`` on the children's path, which stands
in for CUDA: it reports the GPU named by ``CUDA_VISIBLE_DEVICES`` as the one it sees, and "computes"
without doing anything. Windows are a few tenths of a second, so each check takes about a second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO
from fakes import make_fake_pynvml

from profiling.backends.replay import ReplayGpu
from profiling.backends.simulated import SimulatedGpu
from profiling.errors import GpuPermissionError
from profiling.validate import (
    FAIL,
    PASS,
    SKIP,
    VALIDATE_JSON,
    VALIDATE_MD,
    WARN,
    Load,
    Options,
    Report,
    Validator,
    main,
    pick_clocks,
    probe_cuda,
    update_period_s,
    validate,
)
from sd_energy_contract.errors import InputError
from sd_energy_contract.gpus import identify_gpu

QUICK = {"idle_seconds": 0.1, "load_seconds": 0.4, "clock_seconds": 0.15}

FAKE_TORCH = '''
import os
__version__ = "0.0-fake"
float16 = "float16"
class _Props:
    name = "Fake CUDA GPU"
    uuid = os.environ.get("FAKE_TORCH_UUID") or os.environ.get("CUDA_VISIBLE_DEVICES", "").removeprefix("GPU-")
class cuda:
    is_available = staticmethod(lambda: True)
    device_count = staticmethod(lambda: 1)
    get_device_properties = staticmethod(lambda i: _Props())
    synchronize = staticmethod(lambda: None)
class _Tensor:
    def __matmul__(self, other):
        return self
def randn(*shape, **kw):
    return _Tensor()
def randn_like(t):
    return _Tensor()
'''


def _checks(report: Report) -> dict:
    return {c.name: c for c in report.checks}


def _quiet(*args, **kw) -> None:
    """The check's progress lines are not what these tests read."""


@pytest.fixture
def fake_torch(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_torch" / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_TORCH)
    monkeypatch.setenv("PYTHONPATH", f"{pkg.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(**kw):
        nv = make_fake_pynvml(sensors=True, **kw)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv
    return install


# ---------------------------------------------------------------- pure parts

def test_update_period_is_the_median_time_between_changes():
    from profiling.backends.base import GpuSample

    # a counter stepping at 0.1, 0.2, 0.3 and 0.45 s (one late step), polled every 10 ms
    steps = [0.1, 0.2, 0.3, 0.45]
    samples = [GpuSample(mono_s=t / 100, energy_mj=float(sum(t / 100 >= s for s in steps))) for t in range(50)]
    period, changes = update_period_s(samples, "energy_mj")
    assert changes == 4 and period == pytest.approx(0.1)
    assert update_period_s(samples[:15], "energy_mj") == (None, 1)  # one change: no interval seen whole
    assert pick_clocks([1785, 1770, 1755, 345]) == [1785, 1755, 345] and pick_clocks([705]) == [705]


# ---------------------------------------------------------------- the simulated GPU

def test_validate_on_the_simulated_gpu_writes_a_replayable_results_directory_and_a_summary(tmp_path):
    out = tmp_path / "check"
    report = validate(Options(profiling_tool="simulated", gpu_type="H100", output_dir=str(out), skip_sweep=True,
                              **QUICK), log=_quiet)
    checks = _checks(report)
    assert report.exit_code == 0 and report.synthetic
    for name in ("idle power", "load", "power source", "energy counter", "clock lock", "clock restore"):
        assert checks[name].status == PASS, checks[name]
    assert checks["energy counter"].value > 0 and checks["sweep"].status == SKIP
    assert checks["clock lock"].value == "locked"
    assert [r["target_mhz"] for r in report.clock_locks] == [1785, 1065, 345]
    assert [r["readback_mhz"] for r in report.clock_locks] == [1785, 1065, 345]
    powers = [r["power_w"] for r in report.clock_locks]
    assert powers == sorted(powers, reverse=True)  # the twin draws less at lower clocks

    data = json.loads((out / VALIDATE_JSON).read_text())
    assert data["synthetic"] is True and data["exit_code"] == 0 and data["gpu"]["uuid"] == "SIM-H100-0"
    assert {c["name"]: c["status"] for c in data["checks"]} == {c.name: c.status for c in report.checks}
    assert all("value" in c for c in data["checks"])
    md = (out / VALIDATE_MD).read_text()
    assert "SIMULATED GPU" in md and "| clock lock | PASS | locked |" in md and "--replay-source" in md

    replay = ReplayGpu(out)  # the directory is one the replay backend serves
    assert replay.supported_sm_clocks_mhz() == [1785, 1065, 345]
    replay.lock_sm_clock(1065)
    run = replay.replay_run()
    assert run.duration_s > 0 and all(s.power_w > 0 for s in run.samples)
    from profiling.launch import main as launch

    assert launch(["--profiling-tool", "replay", "--replay-source", str(out), "--profiling-mode", "dvfs",
                   "--num-runs", "1", "--sleep-interval", "0", "--output-dir", str(tmp_path / "replayed")]) == 0
    replayed = (tmp_path / "replayed" / "runs.csv").read_text().splitlines()
    assert len(replayed) == 4 and all(",ok," in line for line in replayed[1:])


def test_a_clock_lock_the_gpu_refuses_is_a_fail_with_the_reason(tmp_path):
    class NoPermission(SimulatedGpu):
        def lock_sm_clock(self, mhz, mem_mhz=None):
            raise GpuPermissionError(f"lock SM clock at {mhz} MHz")

    gpu = NoPermission("H100", 0)
    report = validate(Options(output_dir=str(tmp_path / "check"), **QUICK), backend=gpu, log=_quiet)
    checks = _checks(report)
    lock = checks["clock lock"]
    assert report.exit_code == 1 and lock.status == FAIL
    assert "locking 1785 MHz failed" in lock.detail and "no permission" in lock.detail
    assert "nvidia-smi -acp 0" in lock.detail
    assert checks["clock restore"].status == PASS and gpu.locked_sm_clock_mhz() is None
    assert checks["sweep"].status == SKIP and "cannot be locked" in checks["sweep"].detail
    assert json.loads((tmp_path / "check" / VALIDATE_JSON).read_text())["exit_code"] == 1


def test_a_counter_that_disagrees_with_integrated_power_fails_with_the_numbers(tmp_path):
    class WrongCounter(SimulatedGpu):  # e.g. the counter of another device
        def sample(self):
            s = super().sample()
            s.energy_mj = s.energy_mj * 2
            return s

    report = validate(Options(output_dir=str(tmp_path / "check"), skip_sweep=True, **QUICK),
                      backend=WrongCounter("H100", 0), log=_quiet)
    diff = _checks(report)["counter vs integrated"]
    assert report.exit_code == 1 and diff.status == FAIL and diff.value == pytest.approx(-50, abs=5)
    assert "counter" in diff.detail and "J" in diff.detail


def test_validate_sweeps_the_three_clocks_into_its_own_results_directory(tmp_path):
    out = tmp_path / "check"

    def work():  # long enough for the twin's 100 ms power sensor to see the run's activity
        time.sleep(0.25)
        return {"images": 1}

    report = validate(Options(profiling_tool="simulated", gpu_type="H100", output_dir=str(out), sweep_runs=1, **QUICK),
                      work=work, log=_quiet)
    sweep = _checks(report)["sweep"]
    assert sweep.status == PASS and sweep.value == "3/3 ok", sweep
    assert sorted(report.sweep["clocks"], reverse=True) == [1785, 1065, 345]
    rows = (out / "sweep" / "runs.csv").read_text().splitlines()
    assert len(rows) == 4  # header + one run per clock
    assert ReplayGpu(out / "sweep").supported_sm_clocks_mhz() == [1785, 1065, 345]


# ---------------------------------------------------------------- a real GPU's path: fake NVML, fake CUDA

def test_on_nvml_the_load_runs_in_a_child_on_the_gpu_the_app_gets(tmp_path, fake_nvml, fake_torch):
    fake_nvml()
    report = validate(Options(profiling_tool="nvml", output_dir=str(tmp_path / "check"), skip_sweep=True, **QUICK),
                      log=_quiet)
    checks = _checks(report)
    mapping = checks["cuda mapping"]
    assert mapping.status == PASS and mapping.value == "GPU-1234" and "sees Fake CUDA GPU 1234" in mapping.detail
    assert "child Python on CUDA_VISIBLE_DEVICES=GPU-1234" in checks["load"].detail
    assert checks["clock lock"].status == PASS and checks["clock lock"].value == "locked"
    assert not report.synthetic and "SIMULATED" not in (tmp_path / "check" / VALIDATE_MD).read_text()


def test_cuda_seeing_another_gpu_than_the_one_measured_is_a_fail(tmp_path, fake_nvml, fake_torch, monkeypatch):
    from profiling.backends import open_backend

    fake_nvml()
    monkeypatch.setenv("FAKE_TORCH_UUID", "9999")
    gpu = open_backend("nvml", 0)
    report = Report(gpu={}, synthetic=False, backend="nvml", results_dir=str(tmp_path))
    Validator(gpu, Options(), tmp_path, identify_gpu(gpu.device_name()), _quiet)._mapping(report)
    (mapping,) = report.checks
    assert mapping.status == FAIL and "NOT the measured GPU GPU-1234" in mapping.detail


def test_non_root_with_application_clocks_allowed_reports_that_method(tmp_path, fake_nvml, fake_torch):
    fake_nvml(lock_error="NoPermission", app_clocks_restricted=False)  # a user after `nvidia-smi -acp 0`
    report = validate(Options(profiling_tool="nvml", output_dir=str(tmp_path / "check"), skip_sweep=True, **QUICK),
                      log=_quiet)
    lock = _checks(report)["clock lock"]
    assert lock.status in (PASS, WARN) and lock.value == "application"
    assert {r["method"] for r in report.clock_locks} == {"application"}


def test_the_load_child_is_stopped_when_the_window_ends(tmp_path, fake_torch):
    probe = probe_cuda({"CUDA_VISIBLE_DEVICES": "GPU-abcd"})
    assert probe["cuda"] is True and probe["uuid"] == "abcd" and probe["torch"] == "0.0-fake"
    gpu = SimulatedGpu("H100", 0)
    load = Load(gpu, "process", {"CUDA_VISIBLE_DEVICES": "GPU-abcd"})
    with load.running(tmp_path / "events.jsonl"):
        busy = subprocess.run(["pgrep", "-f", "-P", str(os.getpid()), "torch"], capture_output=True, text=True)
    assert busy.stdout.strip()  # the child was running inside the window
    after = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    assert after.stdout.strip() == ""
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["phase"]) for e in events] == [("start", "batch"), ("start", "denoise_step"),
                                                           ("end", "denoise_step"), ("end", "batch")]


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("args, says", [
    (["--gpu-type", "P100"], "error: --gpu-type P100: unknown GPU type"),
    (["--idle-seconds", "0"], "error: --idle-seconds 0.0: must be more than 0.05 seconds"),
    (["--sweep-runs", "0"], "error: --sweep-runs 0: must be at least 1"),
    (["--profiling-tool", "replay"], "error: Invalid value for '--profiling-tool'"),
])
def test_bad_options_are_one_line_and_exit_2(args, says, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(says) and "\n" not in err


def test_an_output_directory_with_results_is_refused(tmp_path):
    (tmp_path / "runs.csv").write_text("run_id\n")
    with pytest.raises(InputError, match="--output-dir .*already holds results"):
        Options(output_dir=str(tmp_path)).check()


def test_launch_sh_validate_runs_the_check():
    p = subprocess.run([str(REPO / "sample-collection-scripts" / "launch.sh"), "--validate", "--gpu-type", "P100"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: --gpu-type P100"), p.stderr


def test_on_nvidia_smi_the_stream_runs_fast_and_a_lock_that_does_not_apply_fails(tmp_path, monkeypatch, fake_torch):
    """The fake nvidia-smi accepts -lgc but its clock stays at 1755 MHz: read back above a lower lock."""
    from test_smi_dcgm_streaming import FAKE_SMI, _install, _streams

    log, _ = _install(tmp_path, monkeypatch, "nvidia-smi", FAKE_SMI)
    report = validate(Options(profiling_tool="smi", output_dir=str(tmp_path / "check"), skip_sweep=True, **QUICK),
                      log=_quiet)
    checks = _checks(report)
    assert checks["power source"].value == "instantaneous"        # power.draw.instant
    assert checks["energy counter"].status == WARN and "no energy counter" in checks["energy counter"].detail
    assert checks["counter vs integrated"].status == SKIP
    lock = checks["clock lock"]
    assert lock.status == FAIL and "ABOVE the lock: it did not apply" in lock.detail and "1065->1755" in lock.detail
    assert report.exit_code == 1
    assert all(line.endswith("-lms 10") for line in _streams(log))  # the checks' 10 ms stream
