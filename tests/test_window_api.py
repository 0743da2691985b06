"""The window API (issue 13): energy of named windows of the caller's code, and clock locks put back.

On the simulated GPU the load is known: with a ``denoise_step`` phase open in its run's events
file it draws ``SimulatedGpu.power_w(f, 1.0)``, so a window's energy must be that power times the
window's length. Windows here are 0.2-0.6 s and the sampling interval 20 ms: long enough to be
exact on a constant load, short enough to keep the file fast.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import make_fake_pynvml

from profiling import ClockLock, EnergyMonitor, Measurement, ShortWindowWarning, locked_clock
from profiling.backends.simulated import SimulatedGpu
from profiling.clocks import Interrupted, lock_dir
from profiling.errors import ClockError
from sd_energy_contract.errors import InputError
from sd_energy_contract.layout import SAMPLE_COLUMNS

INTERVAL_S = 0.02
# Windows made short on purpose (errors, sync order) would fill the report; the tests that are about
# the warning catch it themselves (pytest.warns and an "error" filter override this).
pytestmark = pytest.mark.filterwarnings("ignore::profiling.window.ShortWindowWarning")


@pytest.fixture(autouse=True)
def ideal_sensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the API's arithmetic against the model's exact power, so the simulated GPU's
    sensor artefacts (a counter stepping every 100 ms, 25 % sampled power: tests/test_sensor_artefacts.py)
    are off here; with them a 0.25 s window is off by up to one counter step, which is the point of those tests."""
    monkeypatch.setenv("SD_ENERGY_SIMULATED_SENSORS", "ideal")


@pytest.fixture
def busy_gpu(tmp_path: Path) -> Iterator[SimulatedGpu]:
    """The simulated H100 inside a run whose denoising step is open: full activity until the test ends."""
    gpu = SimulatedGpu("H100", 0)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "start", "phase": "denoise_step", "mono_s": time.monotonic(),
                                  "step": 0, "batch": 0}) + "\n")
    gpu.begin_run(events)
    yield gpu
    gpu.end_run()


def _window(mon: EnergyMonitor, name: str, seconds: float) -> Measurement:
    mon.begin_window(name)
    time.sleep(seconds)
    return mon.end_window(name)


def _settle(mon: EnergyMonitor) -> None:
    """Let two samples pass, so a window starts between readings taken at the current clock and load."""
    time.sleep(2.5 * mon.interval_s)


def test_known_load_gives_the_models_energy(busy_gpu: SimulatedGpu) -> None:
    with locked_clock(1410, backend=busy_gpu) as clk, \
            EnergyMonitor(backend=busy_gpu, sampling_interval_s=INTERVAL_S) as mon:
        _settle(mon)
        m = _window(mon, "denoise", 0.6)
    assert isinstance(clk, ClockLock) and clk.readback_mhz == 1410 and clk.synthetic
    power = busy_gpu.power_w(1410, 1.0)
    assert power > busy_gpu.power_w(1410, 0.0) + 50  # the load is visible, not idle power
    assert m.energy_j == pytest.approx(power * m.time_s, rel=0.02)
    assert m.avg_power_w == pytest.approx(power, rel=0.02)
    assert m.time_s == pytest.approx(m.end_s - m.start_s) and m.time_s >= 0.6
    assert m.energy_source == "counter" and m.synthetic and m.gpus == (0,) and m.backend == "simulated"
    g = m.per_gpu[0]
    assert g["energy_j"] == m.energy_j and g["energy_source"] == "counter" and g["synthetic"]
    assert g["energy_integrated_j"] == pytest.approx(g["energy_counter_j"], rel=0.02)
    assert g["samples"] >= 0.6 / INTERVAL_S / 2
    assert not m.warnings
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.energy_j = 0.0  # type: ignore[misc]
    assert busy_gpu.locked_sm_clock_mhz() is None  # the block ended: default clock again


def test_a_lower_clock_lowers_the_measured_power_as_the_model_says(busy_gpu: SimulatedGpu) -> None:
    measured = {}
    with EnergyMonitor(backend=busy_gpu, sampling_interval_s=INTERVAL_S) as mon:
        for f in (1785, 795):
            with locked_clock(f, backend=busy_gpu):
                _settle(mon)
                measured[f] = _window(mon, f"at {f}", 0.35)
    for f, m in measured.items():
        assert m.avg_power_w == pytest.approx(busy_gpu.power_w(f, 1.0), rel=0.02), f
    assert measured[795].avg_power_w < 0.8 * measured[1785].avg_power_w


def test_nested_and_overlapping_windows_agree(busy_gpu: SimulatedGpu) -> None:
    with EnergyMonitor(backend=busy_gpu, sampling_interval_s=INTERVAL_S) as mon:
        _settle(mon)
        mon.begin_window("outer")
        first = _window(mon, "first", 0.15)
        mon.begin_window("overlap")                 # opens inside "second", ends after it
        second = _window(mon, "second", 0.15)
        time.sleep(0.05)
        overlap = mon.end_window("overlap")
        outer = mon.end_window("outer")
        frame = mon.samples_frame()
    power = busy_gpu.power_w(busy_gpu.spec["sm_clock_max_mhz"], 1.0)
    for m in (outer, first, second, overlap):
        assert m.energy_j == pytest.approx(power * m.time_s, rel=0.02), m.name
    assert outer.energy_j >= first.energy_j + second.energy_j
    assert outer.energy_j - first.energy_j - second.energy_j == pytest.approx(
        power * (outer.time_s - first.time_s - second.time_s), rel=0.05, abs=0.5)
    assert overlap.start_s < second.start_s < second.end_s < overlap.end_s
    both = frame[frame["windows"].map(lambda w: "second" in w)]
    assert len(both) and all(w == ("outer", "overlap", "second") for w in both["windows"])


def test_short_window_warns_and_long_window_does_not() -> None:
    with EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S) as mon:
        assert mon.min_window_s >= 10 * INTERVAL_S
        with pytest.warns(ShortWindowWarning, match="'blip'"):
            short = _window(mon, "blip", 0.0)
        assert len(short.warnings) == 1 and "blip" in short.warnings[0] and "ms" in short.warnings[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error", ShortWindowWarning)
            long = _window(mon, "long", mon.min_window_s * 1.2)
    assert not [w for w in long.warnings if "resolution" in w]
    assert long.avg_power_w == pytest.approx(SimulatedGpu("H100").model["idle_w"], rel=0.02)  # no run: idle


def test_sync_is_called_before_each_stamp() -> None:
    calls: list[tuple[str, float]] = []
    with EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S,
                       sync=lambda: calls.append(("default", time.monotonic()))) as mon:
        mon.begin_window("w", sync=lambda: calls.append(("begin", time.monotonic())))
        m = mon.end_window("w")
    assert [c for c, _ in calls] == ["begin", "default"]
    assert calls[0][1] <= m.start_s and calls[1][1] <= m.end_s and calls[1][1] >= m.start_s


def test_two_gpus_are_summed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_ENERGY_SIMULATED_GPUS", "2")
    with EnergyMonitor(gpus=[0, 1], sampling_interval_s=INTERVAL_S) as mon:
        m = _window(mon, "both", 0.25)
        frame = mon.samples_frame("both")
    idle = SimulatedGpu("H100").model["idle_w"]
    assert set(m.per_gpu) == {0, 1} and m.gpus == (0, 1)
    assert m.energy_j == pytest.approx(m.per_gpu[0]["energy_j"] + m.per_gpu[1]["energy_j"])
    assert m.energy_j == pytest.approx(2 * idle * m.time_s, rel=0.02)
    assert set(frame["gpu"]) == {0, 1}


def test_samples_frame_columns_and_one_window() -> None:
    with EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S) as mon:
        time.sleep(0.05)
        m = _window(mon, "w", 0.15)
        time.sleep(0.05)
        whole, only = mon.samples_frame(), mon.samples_frame(window="w")
        with pytest.raises(InputError) as exc:
            mon.samples_frame(window="nope")
    assert exc.value.option == "window" and "nope" in str(exc.value)
    assert list(whole.columns[: len(SAMPLE_COLUMNS) + 2]) == [*SAMPLE_COLUMNS, "gpu", "windows"]
    assert list(only.columns) == list(whole.columns)
    assert len(only) == m.per_gpu[0]["samples"] and 0 < len(only) < len(whole)
    assert only["mono_s"].between(m.start_s, m.end_s).all() and all(w == ("w",) for w in only["windows"])
    assert whole["mono_s"].is_monotonic_increasing and (whole["windows"] == ()).any()


def test_window_errors_name_the_window() -> None:
    with EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S) as mon:
        mon.begin_window("denoise")
        with pytest.raises(InputError) as twice:
            mon.begin_window("denoise")
        with pytest.raises(InputError) as unknown:
            mon.end_window("decode")
        mon.end_window("denoise")
        with pytest.raises(InputError) as ended:
            mon.end_window("denoise")
    for exc, name in ((twice, "denoise"), (unknown, "decode"), (ended, "denoise")):
        assert exc.value.option == "window" and exc.value.value == name and name in str(exc.value)
    assert "already open" in str(twice.value) and "not open" in str(unknown.value)
    with pytest.raises(RuntimeError, match="closed"):
        mon.begin_window("late")


@pytest.mark.parametrize("kwargs, option", [
    ({"gpus": []}, "gpus"), ({"gpus": [-1]}, "gpus"), ({"gpus": [3]}, "gpus"), ({"gpus": [0, 0]}, "gpus"),
    ({"gpus": ["0"]}, "gpus"), ({"sampling_interval_s": 0.005}, "sampling_interval_s"),
    ({"backend": "bogus"}, "backend"), ({"backend": "replay"}, "backend"), ({"gpu_type": "Z9"}, "gpu_type"),
])
def test_constructor_errors_name_the_argument(kwargs: dict, option: str) -> None:
    with pytest.raises(InputError) as exc:
        EnergyMonitor(**kwargs)
    assert exc.value.option == option


def test_locked_clock_rejects_an_unsupported_clock_naming_the_nearest() -> None:
    with pytest.raises(InputError) as exc, locked_clock(1400, gpu=0):
        pass
    assert exc.value.option == "mhz" and exc.value.value == 1400
    assert "not a supported SM clock; nearest: 1395, 1410" in str(exc.value)
    with pytest.raises(InputError) as gpu_exc, locked_clock(1410, gpu=2):
        pass
    assert gpu_exc.value.option == "gpu"
    assert SimulatedGpu("H100", 0).locked_sm_clock_mhz() is None


def test_locked_clock_restores_after_an_exception_and_refuses_nesting() -> None:
    gpu = SimulatedGpu("H100", 0)
    with pytest.raises(ZeroDivisionError), locked_clock(1410, gpu=0) as clk:
        assert gpu.locked_sm_clock_mhz() == 1410 and clk.readback_mhz == 1410 and clk.gpu == 0
        assert list(lock_dir().glob("*.json"))  # the lock record is there while locked
        with pytest.raises(ClockError, match="already locked at 1410"), locked_clock(795, backend=gpu):
            pass
        assert gpu.locked_sm_clock_mhz() == 1410  # the refused inner block left the outer lock alone
        raise ZeroDivisionError("inside the block")
    assert gpu.locked_sm_clock_mhz() is None and not list(lock_dir().glob("*.json"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_locked_clock_restores_on_a_signal() -> None:
    gpu = SimulatedGpu("H100", 0)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted), locked_clock(990, backend=gpu):
        assert gpu.locked_sm_clock_mhz() == 990
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises before this ends
    assert gpu.locked_sm_clock_mhz() is None and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("energy_supported, source", [(True, "counter"), (False, "integrated power")])
def test_nvml_uses_the_hardware_counter_where_there_is_one(monkeypatch: pytest.MonkeyPatch,
                                                           energy_supported: bool, source: str) -> None:
    nv = make_fake_pynvml(energy_supported=energy_supported)
    nv.state["power_mw"] = 100_000  # 100 W; the fake's counter advances 12.5 J per read, whatever the time
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with EnergyMonitor(gpus=[0], backend="nvml", sampling_interval_s=INTERVAL_S) as mon:
        m = _window(mon, "w", 0.2)
        with pytest.raises(InputError) as exc:
            EnergyMonitor(gpus=[5], backend="nvml")  # the fake node has 2 GPUs
    assert exc.value.option == "gpus" and "GPU 5" in str(exc.value)
    g = m.per_gpu[0]
    assert m.energy_source == source == g["energy_source"] and not m.synthetic and m.backend == "nvml"
    assert g["energy_integrated_j"] == pytest.approx(100.0 * m.time_s, rel=1e-6)
    if energy_supported:
        assert m.energy_j == g["energy_counter_j"] and abs(m.energy_j - g["energy_integrated_j"]) > 1.0
    else:
        assert g["energy_counter_j"] is None and m.energy_j == g["energy_integrated_j"]


def test_close_stops_sampling_and_a_dropped_monitor_stops_too() -> None:
    def samplers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "power-monitor"}

    before = samplers()
    mon = EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S)
    mine = samplers() - before
    assert len(mine) == 1
    mon.close()
    mon.close()  # idempotent
    assert not any(t.is_alive() for t in mine)
    n = len(mon.samples_frame())
    time.sleep(3 * INTERVAL_S)
    assert len(mon.samples_frame()) == n > 0  # the trace stays readable, and no longer grows

    dropped = EnergyMonitor(gpus=[0], sampling_interval_s=INTERVAL_S)
    mine = samplers() - before
    del dropped
    gc.collect()
    assert mine and not any(t.is_alive() for t in mine)
