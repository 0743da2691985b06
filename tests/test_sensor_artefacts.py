"""The artefacts of real NVIDIA sensors, in the simulated GPU and the fake NVML, and what the NVML backend does with them.

Everything runs on a virtual clock (``Clock``): the sensors are driven to any time without sleeping,
so the 1 s averaging window and the 100 ms counter steps are checked exactly and fast.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from fakes import FakeGpu, cuda_devices, make_fake_pynvml

from profiling.backends.nvml import NvmlGpu
from profiling.backends.simulated import SensorModel, SimulatedGpu
from profiling.errors import GpuPermissionError
from sd_energy_contract.errors import InputError
from sd_energy_contract.gpus import sensor_model

FAKE_NVML_MODULE = Path(__file__).parent / "data" / "fake_nvml" / "pynvml.py"


class Clock:
    """A virtual monotonic clock: tests set ``t``."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _events(path: Path, *spans: tuple[str, float, float]) -> Path:
    """An app's events file with these (phase, start, end) spans."""
    lines = []
    for phase, start, end in spans:
        lines += [{"event": "start", "phase": phase, "mono_s": start}, {"event": "end", "phase": phase, "mono_s": end}]
    path.write_text("".join(json.dumps(e) + "\n" for e in sorted(lines, key=lambda e: e["mono_s"])))
    return path


@pytest.fixture
def h100(tmp_path: Path) -> tuple[SimulatedGpu, Clock]:
    clock = Clock()
    return SimulatedGpu("H100", 0, state_file=tmp_path / "h100.json", clock=clock, sensors="real"), clock


def _trace(gpu: SimulatedGpu, clock: Clock, start: float, end: float, step_s: float = 0.01) -> list:
    out = []
    for k in range(round((end - start) / step_s) + 1):
        clock.t = start + k * step_s
        out.append(gpu.sample())
    return out


# ------------------------------------------------------------------ the simulated GPU

def test_the_h100_twin_reads_its_sensor_settings_from_gpus_yaml(h100, tmp_path) -> None:
    gpu, _ = h100
    hopper = sensor_model("H100")
    assert hopper["power_usage_reading"] == "averaged" and hopper["power_avg_window_s"] == 1.0
    assert gpu.power_source == "instantaneous"
    assert gpu.power_update_period_s == hopper["power_update_period_s"] == 0.1
    assert gpu.energy_update_period_s == hopper["energy_counter_period_s"] == 0.1
    ideal = SimulatedGpu("H100", 0, state_file=tmp_path / "ideal.json", sensors="ideal")
    assert ideal.power_source == "modelled" and ideal.energy_update_period_s is None


def test_averaged_reading_lags_a_power_step_by_a_second_while_instantaneous_follows(h100, tmp_path) -> None:
    gpu, clock = h100
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 101.0, 200.0)))
    before, busy = gpu.power_w(1785, 0.05), gpu.power_w(1785, 1.0)
    trace = _trace(gpu, clock, 100.0, 103.0)

    def first_time(pred) -> float:
        return next(s.mono_s for s in trace if pred(s)) - 101.0

    inst_lag = first_time(lambda s: s.power_w == pytest.approx(busy))
    avg_lag = first_time(lambda s: s.power_avg_w == pytest.approx(busy))
    assert inst_lag <= 0.1 + 0.025 + 1e-9  # the next 25 ms slice after the step
    # ten 100 ms periods of slices later: the tenth busy slice is published 9 periods + 25 ms after the first
    assert 0.9 < avg_lag <= 1.0 + 0.025 + 1e-9
    half = next(s for s in trace if s.mono_s >= 101.5 - 1e-9)
    assert before < half.power_avg_w < busy and half.power_w == pytest.approx(busy)
    assert all(s.power_avg_w <= s.power_w + 1e-9 for s in trace)  # rising: the average trails


def test_the_energy_counter_advances_only_every_100_ms(h100, tmp_path) -> None:
    gpu, clock = h100
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 100.0, 200.0)))
    trace = _trace(gpu, clock, 100.0, 102.0, step_s=0.01)
    changes = [b.mono_s for a, b in zip(trace, trace[1:], strict=False) if b.energy_mj != a.energy_mj]
    assert len(changes) == 20
    assert all(abs(t * 10 - round(t * 10)) < 1e-6 for t in changes)  # only on the 100 ms grid
    step_mj = gpu.power_w(1785, 1.0) * 0.1 * 1000
    assert {round(b.energy_mj - a.energy_mj) for a, b in zip(trace, trace[1:], strict=False)} == {0, round(step_mj)}
    clock.t = 102.05
    assert gpu.true_energy_mj() - gpu.energy_mj() == pytest.approx(step_mj / 2)  # the counter trails the truth


def test_partial_sampling_misses_a_burst_the_counter_still_counts(h100, tmp_path) -> None:
    gpu, clock = h100
    # A 60 ms burst inside the unsampled 75 ms of one 100 ms period (the slice is [100.0, 100.025)).
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 100.03, 100.09)))
    trace = _trace(gpu, clock, 100.0, 101.5)
    idle_run = gpu.power_w(1785, 0.05)
    assert all(s.power_w == pytest.approx(idle_run) for s in trace)  # never seen by the power sensor
    burst_mj = (gpu.power_w(1785, 1.0) - idle_run) * 0.06 * 1000
    true_mj = gpu.true_energy_mj()
    assert true_mj == pytest.approx(idle_run * 1.5 * 1000 + burst_mj)
    assert trace[-1].energy_mj == pytest.approx(true_mj)  # 101.5 is on the counter's grid


def test_a_40_ms_window_of_the_counter_is_zero_or_one_step(h100, tmp_path) -> None:
    gpu, clock = h100
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 100.0, 200.0)))
    step_mj = gpu.power_w(1785, 1.0) * 0.1 * 1000
    seen = set()
    for k in range(20):  # windows starting at every 7 ms offset over 1.4 s
        clock.t = 100.2 + k * 0.007
        e0 = gpu.energy_mj()
        clock.t += 0.04
        seen.add(round((gpu.energy_mj() - e0) / step_mj, 6))
    assert seen == {0.0, 1.0}  # the true value, 0.4 steps, is never what it reads


def test_ideal_sensors_report_the_model_exactly(tmp_path) -> None:
    clock = Clock()
    gpu = SimulatedGpu("H100", 0, state_file=tmp_path / "s.json", clock=clock, sensors="ideal")
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 100.03, 100.07)))
    clock.t = 100.05
    s = gpu.sample()
    assert s.power_w == s.power_avg_w == pytest.approx(gpu.power_w(1785, 1.0))
    clock.t = 100.1
    assert gpu.energy_mj() == pytest.approx(gpu.true_energy_mj())
    assert gpu.energy_mj() == pytest.approx(1000 * (gpu.power_w(1785, 0.05) * 0.06 + gpu.power_w(1785, 1.0) * 0.04))


def test_sensor_mode_and_user_come_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SD_ENERGY_SIMULATED_SENSORS", "ideal")
    assert SimulatedGpu("H100", 0, state_file=tmp_path / "s.json").power_source == "modelled"
    monkeypatch.setenv("SD_ENERGY_SIMULATED_SENSORS", "perfect")
    with pytest.raises(InputError, match="SD_ENERGY_SIMULATED_SENSORS perfect: expected one of real, ideal"):
        SimulatedGpu("H100", 0, state_file=tmp_path / "s.json")
    monkeypatch.delenv("SD_ENERGY_SIMULATED_SENSORS")
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "admin")
    with pytest.raises(InputError, match="SD_ENERGY_SIMULATED_USER admin"):
        SimulatedGpu("H100", 0, state_file=tmp_path / "s.json").lock_sm_clock(1410)


def test_volta_power_is_instantaneous_and_finer_grained() -> None:
    s = SensorModel(sensor_model("V100"), t0=0.0, watts=100.0)
    s.set_power(1.0, 200.0)
    assert s.power_usage_w(1.02) == s.power_instant_w(1.02) == pytest.approx(200.0)  # no 1 s average on Volta
    assert s.power_instant_w(1.019) == pytest.approx(100.0)  # 20 ms update period


def test_a_non_root_user_gets_application_clocks_only_after_acp_0(h100, monkeypatch) -> None:
    gpu, _ = h100
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "nonroot")
    with pytest.raises(GpuPermissionError) as exc:
        gpu.lock_sm_clock(1410)
    assert "nvidia-smi -acp 0" in str(exc.value) and gpu.current_sm_clock_mhz() == 1785
    with pytest.raises(GpuPermissionError):
        gpu.set_api_restriction(False)  # only root may lift the restriction
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "root")
    gpu.set_api_restriction(False)  # the admin's `nvidia-smi -acp 0`
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "nonroot")
    gpu.lock_sm_clock(1410)
    assert gpu.clock_method == "application" and gpu.application_sm_clock_mhz() == 1410
    assert gpu.current_sm_clock_mhz() == 1410 and gpu.locked_sm_clock_mhz() is None
    assert gpu.sample().throttle_mask & 0x2  # clocks held down by the applications-clocks setting
    gpu.reset_clocks()
    assert gpu.current_sm_clock_mhz() == 1785
    monkeypatch.setenv("SD_ENERGY_SIMULATED_USER", "root")
    gpu.lock_sm_clock(990)
    assert gpu.clock_method == "locked" and gpu.locked_sm_clock_mhz() == 990


def test_a_clock_change_takes_effect_in_the_true_energy_when_it_is_made(h100, tmp_path) -> None:
    gpu, clock = h100
    gpu.begin_run(_events(tmp_path / "ev.jsonl", ("denoise_step", 100.0, 200.0)))
    clock.t = 100.0
    e0 = gpu.true_energy_mj()
    clock.t = 100.5
    gpu.lock_sm_clock(990)
    clock.t = 101.0
    expected = 500 * (gpu.power_w(1785, 1.0) + gpu.power_w(990, 1.0))
    assert gpu.true_energy_mj() - e0 == pytest.approx(expected)


# ------------------------------------------------------------------ the fake NVML and the NVML backend

@pytest.fixture
def nvml(monkeypatch):
    def install(**kw):
        nv = make_fake_pynvml(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return nv
    return install


def test_nvml_samples_the_instantaneous_field_and_keeps_the_averaged_reading(nvml) -> None:
    clock = Clock()
    nv = nvml(sensors=True, clock=clock)
    nv.set_power_w(100.0)
    gpu = NvmlGpu(0)
    assert gpu.power_source == "instantaneous"
    clock.t = 102.0
    nv.set_power_w(300.0)  # a step; the old power has filled the 1 s window
    clock.t = 102.5
    s = gpu.sample()
    assert s.power_w == pytest.approx(300.0) and s.power_avg_w == pytest.approx(200.0, abs=25)
    clock.t = 103.2
    assert gpu.sample().power_avg_w == pytest.approx(300.0)
    calls = [c for c, _ in nv.state["calls"]]
    assert "nvmlDeviceGetFieldValues" in calls and "nvmlDeviceGetPowerUsage" in calls


@pytest.mark.parametrize("name, source", [("NVIDIA H100 80GB HBM3", "averaged"), ("Tesla V100-PCIE-32GB", "instantaneous")])
def test_without_the_instant_field_power_comes_from_power_usage(nvml, name, source) -> None:
    clock = Clock()
    nv = nvml(sensors=True, clock=clock, instant_field=False, node=[FakeGpu("GPU-x", name=name)])
    gpu = NvmlGpu(0)
    assert gpu.power_source == source
    clock.t = 101.0
    nv.set_power_w(180.0)
    clock.t = 101.3
    s = gpu.sample()
    assert s.power_w == s.power_avg_w


def test_nvml_energy_counter_steps_every_100_ms(nvml) -> None:
    clock = Clock()
    nv = nvml(sensors=True, clock=clock)
    nv.set_power_w(200.0)
    gpu = NvmlGpu(0)
    readings = []
    for k in range(30):
        clock.t = 100.0 + k * 0.01
        readings.append(gpu.energy_mj())
    assert sorted({r - readings[0] for r in readings}) == [0.0, 20_000.0, 40_000.0]  # 200 W x 100 ms


def test_a_transient_nvml_error_does_not_switch_the_energy_counter_off(nvml) -> None:
    nv = nvml()
    gpu = NvmlGpu(0)
    assert gpu.sample().energy_mj is not None
    nv.state["fail"]["nvmlDeviceGetTotalEnergyConsumption"] = 1
    assert gpu.sample().energy_mj is None      # this reading is lost ...
    assert gpu.sample().energy_mj is not None  # ... the next one is there


def test_not_supported_switches_the_counter_off_for_good(nvml) -> None:
    nv = nvml(energy_supported=False)
    gpu = NvmlGpu(0)
    assert gpu.sample().energy_mj is None and gpu.sample().energy_mj is None
    assert [c for c, _ in nv.state["calls"]].count("nvmlDeviceGetTotalEnergyConsumption") == 1


def test_non_root_with_acp_0_gets_application_clocks(nvml) -> None:
    nv = nvml(root=False, app_clocks_restricted=False)
    gpu = NvmlGpu(0)
    gpu.lock_sm_clock(1410)
    assert gpu.clock_method == "application" and nv.gpu_state("h0")["app"] == (2619, 1410)
    assert nv.gpu_state("h0")["locked"] is None and gpu.sample().sm_clock_mhz == 1410
    gpu.reset_clocks()
    assert nv.gpu_state("h0")["app"] is None


def test_non_root_without_acp_0_gets_the_permission_error(nvml) -> None:
    nv = nvml(root=False)
    gpu = NvmlGpu(0)
    with pytest.raises(GpuPermissionError) as exc:
        gpu.lock_sm_clock(1410)
    msg = str(exc.value)
    assert "locked clocks refused, application clocks refused" in msg and "nvidia-smi -acp 0" in msg
    with pytest.raises(nv.NVMLError_NoPermission):
        nv.nvmlDeviceSetAPIRestriction("h0", nv.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS, 0)


def test_root_locks_and_can_lift_the_application_clock_restriction(nvml) -> None:
    nv = nvml()
    gpu = NvmlGpu(1)
    gpu.lock_sm_clock(1005)
    assert gpu.clock_method == "locked" and nv.gpu_state("h1")["locked"] == (1005, 1005)
    assert nv.nvmlDeviceGetAPIRestriction("h1", 0) == 1
    nv.nvmlDeviceSetAPIRestriction("h1", nv.NVML_RESTRICTED_API_SET_APPLICATION_CLOCKS, 0)
    assert nv.nvmlDeviceGetAPIRestriction("h1", 0) == 0 and nv.gpu_state("h0")["app_restricted"]


@pytest.mark.parametrize("event_api", [True, False])
def test_every_sample_carries_the_throttle_mask_of_its_time(nvml, event_api) -> None:
    clock = Clock()
    nv = nvml(clock=clock, throttle_masks=[(0.0, 0x0), (1.0, 0x4), (2.0, 0x20)], event_reasons_api=event_api)
    assert hasattr(nv, "nvmlDeviceGetCurrentClocksEventReasons") is event_api
    gpu = NvmlGpu(0)
    masks = []
    for t in (100.5, 101.5, 102.5):
        clock.t = t
        masks.append(gpu.sample().throttle_mask)
    assert masks == [0x0, 0x4, 0x20] and gpu.throttle_reasons() == "0x20"


# ------------------------------------------------------------------ the fake node: visibility and MIG

NODE = [FakeGpu("GPU-aaaa", pci_bus_id="00000000:4E:00.0", minor=2),
        FakeGpu("GPU-bbbb", pci_bus_id="00000000:1B:00.0", minor=0, name="NVIDIA A100-SXM4-80GB", multiprocessors=108),
        FakeGpu("GPU-cccc", pci_bus_id="00000000:CB:00.0", minor=1, mig_uuids=("MIG-c1", "MIG-c2")),
        FakeGpu("GPU-dddd", pci_bus_id="00000000:9A:00.0", minor=3)]


def test_nvml_in_a_job_sees_its_gpus_in_pci_order_numbered_from_0() -> None:
    nv = make_fake_pynvml(node=NODE, visible=[1, 2, 3])  # the cgroup hides GPU-aaaa
    assert nv.nvmlDeviceGetCount() == 3
    order = [nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(3)]
    assert order == ["GPU-bbbb", "GPU-dddd", "GPU-cccc"]
    assert [nv.nvmlDeviceGetMinorNumber(f"h{i}") for i in range(3)] == [0, 3, 1]  # SLURM's numbers differ
    assert nv.nvmlDeviceGetHandleByUUID("GPU-cccc") == "h2"
    assert nv.nvmlDeviceGetHandleByPciBusId("00000000:9a:00.0") == "h1"
    with pytest.raises(nv.NVMLError_NotFound):
        nv.nvmlDeviceGetHandleByUUID("GPU-aaaa")


def test_cuda_numbers_fastest_first_unless_told_pci_order() -> None:
    job = [1, 2, 3]
    assert cuda_devices(NODE, job, {}) == ["GPU-dddd", "GPU-cccc", "GPU-bbbb"]  # the A100 (fewer SMs) last
    assert cuda_devices(NODE, job, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) == ["GPU-bbbb", "GPU-dddd", "GPU-cccc"]
    assert cuda_devices(NODE, job, {"CUDA_VISIBLE_DEVICES": "GPU-cccc"}) == ["GPU-cccc"]
    assert cuda_devices(NODE, job, {"CUDA_VISIBLE_DEVICES": "1,GPU-aaaa,0"}) == ["GPU-cccc"]  # stops at the unknown


def test_mig_instances_have_mig_uuids_and_no_sensors_of_their_own() -> None:
    nv = make_fake_pynvml(node=NODE)
    gpu, plain = nv.nvmlDeviceGetHandleByUUID("GPU-cccc"), nv.nvmlDeviceGetHandleByUUID("GPU-aaaa")
    assert nv.nvmlDeviceGetMigMode(gpu) == [1, 1] and nv.nvmlDeviceGetMigMode(plain) == [0, 0]
    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
    assert nv.nvmlDeviceGetUUID(mig) == "MIG-c2" and nv.nvmlDeviceGetHandleByUUID("MIG-c2") == mig
    assert nv.nvmlDeviceIsMigDeviceHandle(mig).value == 1 and not nv.nvmlDeviceIsMigDeviceHandle(gpu)
    assert nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig) == gpu
    with pytest.raises(nv.NVMLError_NotSupported):
        nv.nvmlDeviceGetPowerUsage(mig)


def test_the_subprocess_fake_is_set_up_from_the_environment(monkeypatch, tmp_path) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_NVML_NODE", json.dumps([{"uuid": "GPU-a", "pci_bus_id": "00000000:4E:00.0"},
                                                     {"uuid": "GPU-b", "pci_bus_id": "00000000:1B:00.0",
                                                      "mig_uuids": ["MIG-b1"]}]))
    monkeypatch.setenv("FAKE_NVML_VISIBLE", "0")
    monkeypatch.setenv("FAKE_NVML_USER", "nonroot")
    monkeypatch.setenv("FAKE_NVML_ACP", "0")
    monkeypatch.setenv("FAKE_NVML_SENSORS", "1")
    monkeypatch.setenv("FAKE_NVML_LOG", str(log))
    spec = importlib.util.spec_from_file_location("fake_pynvml_from_env", FAKE_NVML_MODULE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.nvmlDeviceGetCount() == 1 and mod.nvmlDeviceGetUUID("h0") == "GPU-a"
    with pytest.raises(mod.NVMLError_NoPermission):
        mod.nvmlDeviceSetGpuLockedClocks("h0", 1410, 1410)
    mod.nvmlDeviceSetApplicationsClocks("h0", 2619, 1410)
    assert mod.nvmlDeviceGetPowerUsage("h0") == 250_000
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"call": "nvmlDeviceSetApplicationsClocks", "uuid": "GPU-a", "args": [2619, 1410]} in logged
