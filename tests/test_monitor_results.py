"""Energy over windows, phase attribution, sampling, and the results directory's write/read guarantees."""

from __future__ import annotations

import json
import time

import pytest

from profiling import monitor as mon
from profiling.backends import open_backend
from profiling.backends.base import GpuSample
from profiling.results import RUNS_COLUMNS, ResultsDir, run_id


def trace(power=(100, 100, 200, 200), counter=True):
    return [GpuSample(mono_s=float(i), power_w=p, energy_mj=(1000.0 * sum(power[:i]) if counter else None))
            for i, p in enumerate(power)]


def test_integrated_and_counter_energy():
    s = trace((100, 100, 200, 200))
    assert mon.integrate_power_j(s) == pytest.approx(100 + 150 + 200)
    assert mon.counter_energy_j(s) == pytest.approx(400)  # counter says what the hardware summed
    assert mon.integrate_power_j(s, 0.5, 2.5) == pytest.approx(50 + 150 + 100)  # edges interpolated
    assert mon.window_energy_j(trace(counter=False)) == mon.integrate_power_j(trace(counter=False))
    assert mon.counter_energy_j(trace(counter=False)) is None


def test_window_integral_exact_on_linear_power():
    s = [GpuSample(mono_s=float(t), power_w=100.0 + 10 * t) for t in range(11)]
    assert mon.integrate_power_j(s, 2.0, 7.0) == pytest.approx(sum(100 + 10 * t for t in (2, 7)) / 2 * 5)


def test_events_pairing_drops_half_written_lines(tmp_path):
    ev = tmp_path / "e.jsonl"
    ev.write_text("\n".join(json.dumps(e) for e in [
        {"event": "start", "phase": "load", "mono_s": 0.0}, {"event": "end", "phase": "load", "mono_s": 1.0},
        {"event": "start", "phase": "batch", "batch": 0, "mono_s": 1.0},
        {"event": "start", "phase": "denoise_step", "step": 0, "batch": 0, "mono_s": 1.5},
        {"event": "end", "phase": "denoise_step", "step": 0, "batch": 0, "mono_s": 2.5},
        {"event": "end", "phase": "batch", "batch": 0, "mono_s": 3.0}]) + '\n{"event": "sta')
    spans = mon.read_events(ev)
    assert [(s.phase, s.start_s, s.end_s) for s in spans] == [("load", 0, 1), ("batch", 1, 3), ("denoise_step", 1.5, 2.5)]
    assert mon.work_window(spans) == (1.0, 3.0)
    samples = [GpuSample(mono_s=t, power_w=100.0) for t in (0.5, 1.2, 2.0, 3.5)]
    assert mon.label_samples(samples, spans) == ["load", "batch", "denoise_step", "process"]
    energy = mon.phase_energy_j(samples, spans)
    assert energy["denoise_step"] == pytest.approx(100.0)


def test_sampling_interval_minimum_and_schedule():
    gpu = open_backend("simulated", 0, "H100", announce=lambda m: None)
    with pytest.raises(ValueError, match="10 ms minimum"):
        mon.PowerMonitor(gpu, 0.005)
    m = mon.PowerMonitor(gpu, 0.02).start()
    time.sleep(0.5)
    samples = m.stop()
    gaps = [b.mono_s - a.mono_s for a, b in zip(samples, samples[1:-1], strict=False)]
    assert 18 <= len(samples) <= 30
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.005)


def test_simulated_power_follows_app_phases(tmp_path, monkeypatch):
    # The activity model itself: with the real sensors on, a reading lags by up to a 100 ms update period.
    monkeypatch.setenv("SD_ENERGY_SIMULATED_SENSORS", "ideal")
    gpu = open_backend("simulated", 0, "H100", announce=lambda m: None)
    ev = tmp_path / "ev.jsonl"
    ev.write_text("")
    gpu.begin_run(ev)
    idle_run = gpu.sample().power_w
    with open(ev, "a") as fh:
        fh.write(json.dumps({"event": "start", "phase": "denoise_step", "mono_s": 0}) + "\n")
    busy = gpu.sample().power_w
    gpu.end_run()
    assert gpu.sample().power_w == gpu.model["idle_w"] < idle_run < busy


def test_results_rows_are_atomic_and_partial_lines_ignored(tmp_path):
    res = ResultsDir(tmp_path / "r")
    res.create({"x": 1})
    row = dict.fromkeys(RUNS_COLUMNS, "")
    res.append_row({**row, "run_id": run_id(1410, 0, False), "status": "ok"})
    with open(res.runs_csv, "a") as fh:  # a crash in the middle of a write
        fh.write("f1200_r00,1200,0,0,o")
    assert [r["run_id"] for r in res.read_rows()] == ["f1410_r00"]
    res.append_row({**row, "run_id": "f1200_r00", "status": "interrupted"})
    assert [r["run_id"] for r in res.read_rows()] == ["f1410_r00", "f1200_r00"]
    assert res.runs_csv.read_text().count("f1200_r00") == 1  # the torn line is gone, not kept as a row
    assert res.done_run_ids() == {"f1410_r00"}  # interrupted runs are redone
    with pytest.raises(KeyError):
        res.append_row({"nonsense": 1})


def test_run_ids():
    assert run_id(990, 2, False) == "f0990_r02" and run_id(None, 0, True) == "fdefault_w00"
