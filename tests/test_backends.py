"""Backends through a patched NVML module, a fake nvidia-smi on PATH, the real captures, and recorded data."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest
from conftest import REFERENCE, SMI_CAPTURES, requires_reference
from fakes import make_fake_pynvml

from profiling.backends import detect_gpu_type, open_backend
from profiling.backends.dcgm import parse_dmon_line
from profiling.errors import ClockError, GpuNotFoundError, GpuPermissionError
from profiling.smi_parse import parse_query_csv, parse_supported_clocks


@pytest.fixture
def fake_nvml(monkeypatch):
    def install(**kw):
        nv = make_fake_pynvml(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv
    return install


def test_nvml_queries_and_units(fake_nvml):
    nv = fake_nvml()
    gpu = open_backend("nvml", 1)
    assert gpu.device_name() == "NVIDIA H100 80GB HBM3" and gpu.uuid() == "GPU-1234-1"  # GPU 1 of the fake node
    assert detect_gpu_type(gpu.device_name()) == "H100"
    assert gpu.supported_sm_clocks_mhz() == [1980, 1755, 1410, 1005, 705]
    s = gpu.sample()
    assert s.power_w == 250.0 and s.mem_used_mib == 10240 and s.gpu_util_pct == 97 and s.temp_c == 55
    assert s.energy_mj is not None and gpu.energy_mj() > s.energy_mj  # counter is monotonic
    assert gpu.throttle_reasons() == "0x4"
    gpu.lock_sm_clock(1410)
    assert nv.state["locked"] == (1410, 1410) and gpu.sample().sm_clock_mhz == 1410
    gpu.reset_clocks()
    assert nv.state["locked"] is None


def test_nvml_falls_back_to_application_clocks(fake_nvml):
    nv = fake_nvml(lock_error="NotSupported")
    gpu = open_backend("nvml", 0)
    gpu.lock_sm_clock(1005)
    assert nv.state["app"] == (2619, 1005)


def test_nvml_permission_error_says_what_to_do(fake_nvml):
    fake_nvml(lock_error="NoPermission")
    gpu = open_backend("nvml", 0)
    with pytest.raises(GpuPermissionError) as exc:
        gpu.lock_sm_clock(1005)
    msg = str(exc.value)
    assert "root" in msg and "nvidia-smi -acp 0" in msg and "--profiling-mode baseline" in msg


def test_nvml_no_energy_counter_returns_none(fake_nvml):
    fake_nvml(energy_supported=False)
    assert open_backend("nvml", 0).sample().energy_mj is None


def test_nvml_index_out_of_range(fake_nvml):
    fake_nvml()
    with pytest.raises(GpuNotFoundError, match="this node has 2 GPU"):
        open_backend("nvml", 5)


# ---------------------------------------------------------------- nvidia-smi

@pytest.mark.parametrize("gpu, n, top, bottom, mems", [("V100", 167, 1380, 135, [877]), ("A100", 81, 1410, 210, [1215]),
                                                       ("H100", 97, 1785, 345, [2619, 1593])])
def test_parse_real_supported_clock_captures(gpu, n, top, bottom, mems):
    parsed = parse_supported_clocks((SMI_CAPTURES / f"supported_clocks_{gpu}.txt").read_text())
    first = next(iter(parsed.values()))
    assert sorted(first, reverse=True) == mems
    clocks = first[mems[0]]
    assert len(clocks) == n and clocks[0] == top and clocks[-1] == bottom
    if gpu == "H100":
        assert len(parsed) == 2  # two nodes captured


def test_gpus_yaml_lists_come_from_the_captures():
    from profiling.backends.base import load_gpu_specs

    specs = load_gpu_specs()
    for gpu in ("V100", "A100", "H100"):
        parsed = next(iter(parse_supported_clocks((SMI_CAPTURES / f"supported_clocks_{gpu}.txt").read_text()).values()))
        assert specs[gpu]["sm_clocks_mhz"] == parsed[specs[gpu]["memory_clock_mhz"]]
    assert "derived" in specs["H200"]["source"]


def test_parse_query_csv_handles_na():
    rows = parse_query_csv("250.31, 1410, [N/A]\n", ["power", "sm", "energy"])
    assert rows == [{"power": 250.31, "sm": 1410.0, "energy": None}]


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """A fake nvidia-smi that answers from the real H100 capture and logs every argv."""
    log = tmp_path / "smi.log"
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text(f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
if "-q" in args:
    print(open({str(SMI_CAPTURES / 'supported_clocks_H100.txt')!r}).read())
elif any(a.startswith("--query-gpu=name") for a in args):
    print("NVIDIA H100 NVL, GPU-abcd, 570.124.06")
elif any(a.startswith("--query-gpu=") for a in args):
    print("312.45, 1785, 2619, 98, 40960, 61, 0x0000000000000000")
elif "-lgc" in args and args[args.index("-lgc") + 1] == "999,999":
    print("Setting locked GPU clocks is not permitted: Insufficient Permissions"); sys.exit(4)
elif "-ac" in args and args[args.index("-ac") + 1].endswith(",999") and not os.environ.get("FAKE_SMI_ACP_OPEN"):
    print("Setting applications clocks is not permitted: Insufficient Permissions"); sys.exit(4)
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def test_smi_backend_parses_and_controls(fake_smi):
    gpu = open_backend("smi", 3)
    assert gpu.device_name() == "NVIDIA H100 NVL" and gpu.uuid() == "GPU-abcd"
    clocks = gpu.supported_sm_clocks_mhz()
    assert clocks[0] == 1785 and len(clocks) == 97 and gpu.supported_mem_clocks_mhz() == [2619, 1593]
    s = gpu.sample()
    assert s.power_w == 312.45 and s.sm_clock_mhz == 1785 and s.mem_used_mib == 40960 and s.energy_mj is None
    gpu.lock_sm_clock(1410)
    gpu.reset_clocks()
    calls = fake_smi.read_text().splitlines()
    assert "-i 3 -lgc 1410,1410" in calls and "-i 3 -rgc" in calls


def test_smi_permission_error(fake_smi):
    with pytest.raises(GpuPermissionError, match="nvidia-smi -acp 0"):
        open_backend("smi", 0).lock_sm_clock(999)


def test_smi_non_root_with_acp_0_gets_application_clocks(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_ACP_OPEN", "1")  # the admin ran `nvidia-smi -acp 0`
    gpu = open_backend("smi", 0)
    gpu.lock_sm_clock(999)
    assert gpu.clock_method == "application" and "-ac 2619,999" in fake_smi.read_text()


def test_dcgm_dmon_line_parsing():
    line = "GPU 1   212.5   998877   1410   2619   97   40960   61   0.93   0.61   0.45   0.31   0.00   0.12   0.51\n"
    row = parse_dmon_line(line, 1)
    assert row["power_w"] == 212.5 and row["energy_mj"] == 998877 and row["sm_active"] == 0.93
    assert row["dram_active"] == 0.31 and row["fp16_active"] == 0.51
    assert parse_dmon_line(line, 0) is None and parse_dmon_line("#Entity POWER TOTEC", 1) is None
    na = line.replace("0.12", "N/A")
    assert parse_dmon_line(na, 1)["fp32_active"] is None


# ---------------------------------------------------------------- simulated

def test_simulated_state_persists_across_instances():
    a = open_backend("simulated", 0, "A100", announce=lambda m: None)
    a.lock_sm_clock(1005)
    b = open_backend("simulated", 0, "A100", announce=lambda m: None)
    assert b.locked_sm_clock_mhz() == 1005 and b.sample().sm_clock_mhz == 1005
    b.reset_clocks()
    assert a.current_sm_clock_mhz() == 1410
    with pytest.raises(ClockError):
        a.lock_sm_clock(1006)


def test_simulated_power_model_has_an_interior_energy_optimum():
    gpu = open_backend("simulated", 0, "H100", announce=lambda m: None)
    beta = gpu.model["compute_bound_frac"]
    fmax = gpu.spec["sm_clock_max_mhz"]
    energy = {f: gpu.power_w(f, 1.0) * (beta * fmax / f + 1 - beta) for f in gpu.supported_sm_clocks_mhz()}
    best = min(energy, key=energy.get)
    assert gpu.spec["sm_clock_min_mhz"] < best < fmax
    assert gpu.power_w(fmax, 0.0) == gpu.model["idle_w"]


def test_simulated_banner_and_unknown_type():
    seen = []
    open_backend("simulated", 0, "V100", announce=seen.append)
    assert "SIMULATED V100" in seen[0] and "synthetic" in seen[0]
    with pytest.raises(GpuNotFoundError, match="unknown GPU type"):
        open_backend("simulated", 0, "P100", announce=lambda m: None)


def _paced(monkeypatch, gpu, clock_index):
    from profiling.backends.simulated import StepDilation

    gpu.lock_sm_clock(gpu.spec["sm_clocks_mhz"][clock_index])
    monkeypatch.setenv("SD_ENERGY_SIMULATED_STATE", str(gpu.state_file))
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    return StepDilation.from_env("sd-v1.5|tiny|128x128|b2"), slept


def test_step_time_is_modelled_from_the_clock_not_from_how_busy_the_host_is(monkeypatch):
    gpu = open_backend("simulated", 0, "H100", announce=lambda m: None)
    pace, slept = _paced(monkeypatch, gpu, 0)
    for host_s in (0.045, 0.030, 0.040):  # calibration: SAFETY (2) x the fastest step
        pace(host_s)
    assert pace.ref_s == pytest.approx(0.060) and pace.SAFETY == 2.0
    # An idle host (10 ms) and a loaded one (45 ms): the step lasts the modelled 60 ms either way.
    for host_s in (0.010, 0.045):
        slept.clear()
        pace(host_s)
        assert host_s + slept[0] == pytest.approx(0.060)

    # Another process (a later run at about half the clock) reads the calibration from the GPU's state.
    half, slept = _paced(monkeypatch, gpu, 48)
    assert half.ref_s == pytest.approx(0.060)
    f = gpu.spec["sm_clocks_mhz"][48]
    half(0.012)
    assert 0.012 + slept[0] == pytest.approx(0.060 * (0.85 * 1785 / f + 0.15))
    assert half.stretch(1785) == pytest.approx(1.0)


def test_a_burst_of_host_load_is_paid_back_and_what_is_not_is_recorded_as_host_bound(monkeypatch, capsys):
    gpu = open_backend("simulated", 0, "H100", announce=lambda m: None)
    pace, slept = _paced(monkeypatch, gpu, 0)
    for _ in range(3):
        pace(0.015)  # calibrated: 30 ms a step at the max clock
    slept.clear()
    pace(0.080)  # 50 ms late
    assert pace.debt_s == pytest.approx(0.050) and slept == []
    pace(0.010)  # 20 ms of slack pays part of it back, no sleep
    assert pace.debt_s == pytest.approx(0.030) and slept == []
    assert "catch up" in capsys.readouterr().err
    assert gpu.take_host_bound_s() == pytest.approx(0.030)  # what the launcher reads at the run's end
    assert gpu.take_host_bound_s() == 0.0  # and the next run starts from zero
    for _ in range(3):
        pace(0.010)
    assert pace.debt_s == 0.0 and sum(slept) == pytest.approx(0.030)  # paid back, then the pace again


# ---------------------------------------------------------------- replay

@requires_reference()
def test_replay_reference_data():
    gpu = open_backend("replay", replay_source=str(REFERENCE / "v100_spec_21apps_dvfs.csv"), replay_app="dgemm")
    clocks = gpu.supported_sm_clocks_mhz()
    assert len(clocks) == 117 and clocks[0] == 1380 and clocks[-1] == 510
    gpu.lock_sm_clock(1005)
    run = gpu.replay_run()
    assert run.duration_s > 0 and run.samples[-1].mono_s == pytest.approx(run.duration_s)
    assert run.activity["fp64_active"] > 0.1 and run.samples[0].sm_clock_mhz == 1005


@requires_reference()
def test_replay_unknown_app_lists_the_known_ones():
    with pytest.raises(GpuNotFoundError, match="it has .*dgemm"):
        open_backend("replay", replay_source=str(REFERENCE / "v100_spec_21apps_dvfs.csv"), replay_app="doom")


def test_replay_needs_a_source():
    from profiling.errors import GpuError

    with pytest.raises(GpuError, match="--replay-source"):
        open_backend("replay")


def test_missing_replay_source(tmp_path):
    with pytest.raises(GpuNotFoundError):
        open_backend("replay", replay_source=str(Path(tmp_path) / "nothing"))


def test_nvml_memory_clock_lock_and_reset(fake_nvml):
    nv = fake_nvml()
    gpu = open_backend("nvml", 0)
    gpu.lock_sm_clock(1410, mem_mhz=2619)
    assert nv.state["locked"] == (1410, 1410) and nv.state["mem_locked"] == (2619, 2619)
    gpu.reset_clocks()
    assert nv.state["mem_locked"] is None and nv.state["locked"] is None


def test_dcgm_backend_streams_activity_from_dcgmi(fake_nvml, tmp_path, monkeypatch):
    """A fake `dcgmi dmon` that streams like the real one; clock control goes through (patched) NVML."""
    nv = fake_nvml()
    script = tmp_path / "bin" / "dcgmi"
    script.parent.mkdir()
    script.write_text(f"""#!{sys.executable}
import sys, time
print("#Entity   POWER  TOTEC  SMCLK  MMCLK  GPUTL  FBUSD  TMPTR  SMACT  SMOCC  TENSO  DRAMA  FP64A  FP32A  FP16A", flush=True)
print("ID        W      mJ     MHZ    MHZ    %      MB     C", flush=True)
for i in range(400):
    print(f"GPU 0     {{200 + i}}.0  {{1000 * i}}  1410   2619   97     40960  61     0.91   0.60   0.40   0.30   0.00   0.10   0.50", flush=True)
    time.sleep(0.02)
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    gpu = open_backend("dcgm", 0)
    try:
        first = gpu.sample()
        time.sleep(0.15)
        later = gpu.sample()
        assert first.sm_clock_mhz == 1410 and first.extra["sm_active"] == 0.91 and first.extra["tensor_active"] == 0.40
        assert later.energy_mj > first.energy_mj and later.power_w > first.power_w
        assert gpu.energy_mj() is not None and gpu.device_name() == "NVIDIA H100 80GB HBM3"
        gpu.lock_sm_clock(1005)
        assert nv.state["locked"] == (1005, 1005)
    finally:
        gpu.close()


def test_dcgm_without_dcgmi_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GpuNotFoundError, match="install DCGM or use --profiling-tool nvml"):
        open_backend("dcgm", 0)
