"""The nvidia-smi and DCGM backends read ONE streaming process each (fake ``nvidia-smi``/``dcgmi`` on PATH).

The fakes behave like the real tools where the backends depend on it: ``nvidia-smi -lms N`` prints a
CSV line every N ms until its pipe closes, an older driver rejects a query naming a field it does not
know (``Field "..." is not a valid field to query.``, exit 2); ``dcgmi dmon -d N`` prints two header
lines and a ``GPU <id> values...`` row every N ms, fails with ``Error setting watches. Result: -36:
...`` where the GPU cannot watch the profiling fields, and (before DCGM knew it) with ``Got invalid
field ID. '157'``. Every invocation is logged, so the tests count processes.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from conftest import SMI_CAPTURES
from fakes import make_fake_pynvml

from profiling.backends.dcgm import DcgmGpu
from profiling.backends.smi import SmiGpu
from profiling.errors import GpuError

FAKE_SMI = """#!{python}
import os, sys, time
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
mode = os.environ.get("FAKE_SMI_MODE", "new")
values = {{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-abcd", "driver_version": "570.124.06",
          "power.draw": "300.00", "power.draw.instant": "400.00", "power.draw.average": "300.00",
          "clocks.sm": "1755", "clocks.mem": "2619", "utilization.gpu": "97", "memory.used": "40960",
          "temperature.gpu": "61", "clocks_throttle_reasons.active": "0x0000000000000004",
          "mig.mode.current": "Disabled", "clocks.applications.graphics": "1410"}}
query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
if "-q" in args:
    print(open({capture!r}).read())
    sys.exit(0)
if query is None:
    sys.exit(0)
fields = query.split(",")
unknown = [f for f in fields if f not in values or (mode == "old" and f.startswith("power.draw."))]
if unknown:
    print(f'Field "{{unknown[0]}}" is not a valid field to query.')
    sys.exit(2)
if "-lms" not in args:
    print(", ".join(values[f] for f in fields))
    sys.exit(0)
if mode == "broken":
    print("Unable to determine the device handle for GPU 0000:E1:00.0: Unknown Error", flush=True)
    sys.exit(15)
with open({pids!r}, "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")
period = int(args[args.index("-lms") + 1]) / 1000
lines = int(os.environ.get("FAKE_SMI_LINES", "0"))
n = 0
while True:
    n += 1
    values["power.draw.instant"] = f"{{400 + n}}.00"
    print(", ".join(values[f] for f in fields), flush=True)
    if lines and n >= lines:
        sys.exit(0)
    time.sleep(period)
"""

FAKE_DCGMI = """#!{python}
import os, sys, time
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
mode = os.environ.get("FAKE_DCGM_MODE", "new")
fields = args[args.index("-e") + 1].split(",")
period = int(args[args.index("-d") + 1]) / 1000
if mode == "noprof":
    print("Error setting watches. Result: -36: Profiling is not supported for this group of GPUs or GPU", flush=True)
    sys.exit(220)
if mode == "old" and "157" in fields:
    print("Error: Got invalid field ID. '157'. See dcgm_fields.h for a list of valid field IDs.", flush=True)
    sys.exit(2)
print("#Entity   " + "  ".join(f"F{{f}}" for f in fields), flush=True)
print("ID", flush=True)
for i in range(3000):
    values = {{"155": "300.000", "156": str(1000 * i), "157": f"{{400 + i}}.000", "100": "1755", "101": "2619",
              "203": "97", "252": "40960", "150": "61", "1002": "0.910", "1003": "0.600", "1004": "0.400",
              "1005": "0.300", "1006": "N/A", "1007": "0.100", "1008": "0.500"}}
    print("GPU 0     " + "  ".join(values[f] for f in fields), flush=True)
    time.sleep(period)
"""


def _install(tmp_path, monkeypatch, name: str, template: str) -> tuple:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log, pids = tmp_path / f"{name}.log", tmp_path / f"{name}.pids"
    script = bin_dir / name
    script.write_text(template.format(python=sys.executable, log=str(log), pids=str(pids),
                                      capture=str(SMI_CAPTURES / "supported_clocks_H100.txt")))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log, pids


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    return _install(tmp_path, monkeypatch, "nvidia-smi", FAKE_SMI)


@pytest.fixture
def fake_dcgmi(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml())  # identity and clocks go through NVML
    return _install(tmp_path, monkeypatch, "dcgmi", FAKE_DCGMI)


def _streams(log) -> list[str]:
    return [line for line in log.read_text().splitlines() if "-lms" in line or line.startswith("dmon")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _samples(gpu, n: int, gap_s: float) -> list:
    out = []
    for _ in range(n):
        out.append(gpu.sample())
        time.sleep(gap_s)
    return out


# ---------------------------------------------------------------- nvidia-smi

def test_smi_samples_come_from_one_streaming_process_with_instant_and_average_power(fake_smi):
    log, pids = fake_smi
    gpu = SmiGpu(0, interval_ms=20)
    try:
        assert gpu.power_fields == ["power.draw.instant", "power.draw.average"]
        assert gpu.power_source == "instantaneous"
        samples = _samples(gpu, 8, 0.04)
        assert samples[-1].power_w > samples[0].power_w >= 401  # the stream's newest line each time
        assert {s.power_avg_w for s in samples} == {300.0} and samples[0].throttle_mask == 0x4
        assert gpu.throttle_reasons() == "0x0000000000000004" and gpu.stream_starts == 1
        (stream,) = _streams(log)
        assert stream.startswith("-i 0 --query-gpu=power.draw,") and stream.endswith("-lms 20")
        assert "power.draw.instant,power.draw.average" in stream
    finally:
        gpu.close()
    (pid,) = map(int, pids.read_text().split())
    assert not _alive(pid)  # ended (and reaped) at close


def test_the_sampler_sets_the_stream_to_its_own_interval(fake_smi):
    from profiling.monitor import PowerMonitor

    log, _ = fake_smi
    gpu = SmiGpu(0, interval_ms=50)
    try:
        gpu.sample()
        with PowerMonitor(gpu, 0.02):
            time.sleep(0.1)
        assert gpu.interval_ms == 20 and _streams(log)[-1].endswith("-lms 20")
    finally:
        gpu.close()


def test_smi_on_a_driver_without_the_instant_field_uses_power_draw(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "old")
    gpu = SmiGpu(0, interval_ms=20)
    try:
        s = gpu.sample()
        assert gpu.power_fields == [] and s.power_w == 300.0 and s.power_avg_w is None
        assert gpu.power_source == "averaged"  # power.draw of an H100 is the 1 s average (gpus.yaml sensors)
        assert "power.draw.instant" not in _streams(fake_smi[0])[0]
    finally:
        gpu.close()


def test_smi_stream_that_ends_is_started_again_and_gives_fresh_readings(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_LINES", "2")  # each process prints two lines, then exits
    gpu = SmiGpu(0, interval_ms=10)
    try:
        samples = _samples(gpu, 4, 0.1)
        assert all(s.power_w is not None for s in samples) and gpu.stream_starts >= 2
    finally:
        gpu.close()


def test_smi_stream_that_gives_no_reading_is_an_error_quoting_nvidia_smi(fake_smi, monkeypatch):
    monkeypatch.setenv("FAKE_SMI_MODE", "broken")
    gpu = SmiGpu(0, interval_ms=20)
    try:
        with pytest.raises(GpuError, match="exited with code 15.*Unknown Error"):
            gpu.sample()
    finally:
        gpu.close()


def test_smi_stream_follows_the_sampling_interval(fake_smi):
    gpu = SmiGpu(0, interval_ms=50)
    try:
        gpu.sample()
        gpu.set_sampling_interval(0.02)
        gpu.sample()
        assert [line.rsplit(" ", 1)[1] for line in _streams(fake_smi[0])] == ["50", "20"]
        assert gpu.mig_mode() == "Disabled"
    finally:
        gpu.close()


def test_smi_application_clocks_for_clock_control(fake_smi):
    gpu = SmiGpu(0)
    try:
        gpu.set_application_clocks(1410)
        assert gpu.clock_method == "application" and gpu.applications_clock_mhz() == 1410
        assert "-i 0 -ac 2619,1410" in fake_smi[0].read_text().splitlines()
        gpu.lock_sm_clock(1755)
        assert gpu.clock_method == "locked"
    finally:
        gpu.close()


# ---------------------------------------------------------------- DCGM

def test_dcgm_dmon_gets_the_interval_and_field_157_for_instantaneous_power(fake_dcgmi):
    log, _ = fake_dcgmi
    gpu = DcgmGpu(0, interval_ms=20)
    try:
        samples = _samples(gpu, 5, 0.04)
        assert gpu.power_source == "instantaneous" and gpu.stream_starts == 1
        assert samples[-1].power_w > samples[0].power_w >= 400  # field 157
        assert {s.power_avg_w for s in samples} == {300.0}      # field 155: the 1 s average on H100
        assert samples[-1].energy_mj > samples[0].energy_mj and samples[0].extra["sm_active"] == 0.91
        assert samples[0].extra["fp64_active"] is None          # N/A
        (cmd,) = _streams(log)
        assert cmd.startswith("dmon -i 0 -e 155,156,") and cmd.endswith(",1008,157 -d 20")
        gpu.set_sampling_interval(0.05)
        assert _streams(log)[-1].endswith(" -d 50")
        gpu.set_application_clocks(1005)  # clock control goes through NVML
        assert sys.modules["pynvml"].state["app"] == (2619, 1005) and gpu.clock_method == "application"
    finally:
        gpu.close()


def test_dcgm_that_does_not_know_field_157_is_asked_again_without_it(fake_dcgmi, monkeypatch):
    monkeypatch.setenv("FAKE_DCGM_MODE", "old")
    gpu = DcgmGpu(0, interval_ms=20)
    try:
        s = gpu.sample()
        assert s.power_w == 300.0 and s.power_avg_w is None
        assert gpu.power_source == "averaged"  # field 155 on an H100
        first, second = _streams(fake_dcgmi[0])
        assert ",157 " in first and ",157" not in second
    finally:
        gpu.close()


def test_dcgm_profiling_fields_the_gpu_cannot_watch_are_one_clear_line(fake_dcgmi, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DCGM_MODE", "noprof")
    with pytest.raises(GpuError) as exc:
        DcgmGpu(0, interval_ms=20)
    msg = str(exc.value)
    assert "\n" not in msg and "Profiling is not supported" in msg and "--profiling-tool nvml" in msg
    assert "1002-1008" in msg

    from profiling.launch import main

    rc = main(["--profiling-tool", "dcgm", "--profiling-mode", "custom", "--custom-frequencies", "1410", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --profiling-tool dcgm: dcgmi dmon cannot watch") and "\n" not in err
