"""What the launcher does with the sensors' artefacts when it turns samples into rows (issue 12).

Short windows take their energy from integrated instantaneous power, not a stepped counter; the
counter's period is measured; phase energies count no joule twice; throttle reasons are OR-ed over
the work window; clock order and temperature settling. Everything here runs on hand-made samples
or a small fake backend, so no test depends on the simulated GPU's timing or the host's speed.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from power_modeling.report import _leaf_energies
from profiling import driver
from profiling import monitor as mon
from profiling.backends.base import GpuBackend, GpuSample
from profiling.config import SweepConfig
from profiling.launch import main as launch_main
from profiling.planning import SweepPlan
from profiling.results import DeviceInfo, build_row, measurement_manifest
from profiling.run_sources import CallableWorkload
from sd_energy_contract.layout import RUNS_COLUMNS

INSTANT = mon.Sensors(power_source="instantaneous", counter_period_s=0.1, power_update_period_s=0.01)


def stepped_trace(busy: tuple[float, float], idle_w=100.0, busy_w=400.0, dt=0.01, period=0.1, t_end=3.0):
    """Samples every ``dt`` of a GPU at ``busy_w`` during ``busy`` and ``idle_w`` otherwise, whose energy
    counter (like NVML's) only advances every ``period``: each reading is the true total at the last step."""
    def power(t):
        return busy_w if busy[0] <= t < busy[1] else idle_w

    fine = np.arange(0.0, t_end + 1e-9, 1e-4)
    true_cum = np.concatenate([[0.0], np.cumsum([power(t) * 1e-4 for t in fine[:-1]])])

    def counter_mj(t):
        return 1000.0 * float(np.interp(math.floor(t / period + 1e-9) * period, fine, true_cum))

    times = np.round(np.arange(0.0, t_end + 1e-9, dt), 6)
    return [GpuSample(mono_s=float(t), power_w=power(t), energy_mj=counter_mj(t)) for t in times]


# --------------------------------------------------------------------------- which sensor a window uses

def test_a_40ms_phase_is_not_taken_from_a_100ms_counter():
    samples = stepped_trace(busy=(1.03, 1.07))
    trace = mon.EnergyTrace(samples, INSTANT)
    w = trace.energy(1.03, 1.07)
    true_j = 400.0 * 0.04
    assert w.source == mon.INTEGRATED_INSTANT and w.spans == 1
    assert w.energy_j == pytest.approx(true_j, rel=0.15)
    counter = float(trace.counter_j(1.03, 1.07))
    assert abs(counter - true_j) > 0.3 * true_j  # what the counter would have said: its steps, not the work
    # the same window with no sensor information keeps the old rule (the counter)
    assert mon.EnergyTrace(samples).window_j(1.03, 1.07) == pytest.approx(counter)


def test_a_window_of_many_counter_periods_uses_the_counter():
    trace = mon.EnergyTrace(stepped_trace(busy=(0.5, 2.5)), INSTANT)
    w = trace.energy(0.5, 2.5)
    assert (w.source, w.confidence) == (mon.COUNTER, mon.OK)
    assert w.energy_j == pytest.approx(400.0 * 2.0, rel=0.05)


@pytest.mark.parametrize("sensors, counter, source, confidence", [
    # instantaneous power, short window: integrated; low when the power sensor updates too rarely for it
    (mon.Sensors("instantaneous", 0.1, 0.1), True, mon.INTEGRATED_INSTANT, mon.LOW),
    (mon.Sensors("modelled", 0.1, 0.001), True, mon.INTEGRATED_INSTANT, mon.OK),
    # a 1 s moving average cannot resolve 200 ms: the counter stays, marked low
    (mon.Sensors("averaged", 0.1, 0.1, 1.0), True, mon.COUNTER, mon.LOW),
    (mon.Sensors("averaged", None, 0.1, 1.0), False, mon.INTEGRATED_AVERAGED, mon.LOW),
    # no counter, instantaneous, enough samples: integrated and trusted
    (mon.Sensors("instantaneous", None, 0.01), False, mon.INTEGRATED_INSTANT, mon.OK),
])
def test_source_and_confidence_of_a_200ms_window(sensors, counter, source, confidence):
    samples = stepped_trace(busy=(1.0, 1.2))
    if not counter:
        samples = [GpuSample(mono_s=s.mono_s, power_w=s.power_w) for s in samples]
    w = mon.EnergyTrace(samples, sensors).energy(1.0, 1.2)
    assert (w.source, w.confidence) == (source, confidence)


def test_too_few_power_samples_is_low_confidence():
    samples = [GpuSample(mono_s=float(t), power_w=100.0) for t in (0.0, 0.5, 1.0)]
    w = mon.EnergyTrace(samples, mon.Sensors("instantaneous")).energy(0.1, 0.9)
    assert w.source == mon.INTEGRATED_INSTANT and w.confidence == mon.LOW
    assert w.energy_j == pytest.approx(80.0)


# --------------------------------------------------------------------------- phases: disjoint leaves

def spans_of_a_run():
    """load, one warm-up batch (with its own phases), one measured batch of 4 steps, save."""
    sp = [mon.PhaseSpan("load", 0.0, 0.5), mon.PhaseSpan("warmup", 0.5, 1.0, batch=-1),
          mon.PhaseSpan("text_encode", 0.52, 0.55, batch=-1), mon.PhaseSpan("vae_decode", 0.9, 0.98, batch=-1),
          mon.PhaseSpan("batch", 1.0, 2.0, batch=0), mon.PhaseSpan("text_encode", 1.01, 1.05, batch=0),
          mon.PhaseSpan("vae_decode", 1.8, 1.95, batch=0), mon.PhaseSpan("save", 2.0, 2.2)]
    sp += [mon.PhaseSpan("denoise_step", 0.56 + 0.08 * i, 0.62 + 0.08 * i, step=i, batch=-1) for i in range(4)]
    sp += [mon.PhaseSpan("denoise_step", 1.06 + 0.18 * i, 1.22 + 0.18 * i, step=i, batch=0) for i in range(4)]
    return sorted(sp, key=lambda s: s.start_s)


def test_phase_energies_count_no_joule_twice_and_say_their_source():
    samples = [GpuSample(mono_s=round(t, 4), power_w=200.0, energy_mj=200_000.0 * math.floor(t * 10) / 10)
               for t in np.arange(0.0, 2.5, 0.01)]
    phases = mon.phase_energies(mon.EnergyTrace(samples, INSTANT), spans_of_a_run())
    leaves = {k: v for k, v in phases.items() if "contains" not in v}
    assert set(leaves) == {"load", "warmup", "text_encode", "denoise_step", "vae_decode", "save"}
    assert phases["batch"]["contains"] == ["denoise_step", "text_encode", "vae_decode"]
    # the warm-up's own text encode and steps are the warm-up's, not the measured work's
    assert leaves["text_encode"]["spans"] == 1 and leaves["denoise_step"]["steps"] == 4
    assert leaves["warmup"]["energy_j"] == pytest.approx(200.0 * 0.5, rel=0.01)
    # disjoint: the leaves add up to at most the run's energy (0 .. 2.2 s at 200 W)
    assert sum(v["energy_j"] for v in leaves.values()) <= 200.0 * 2.2 * 1.001
    # the denoising phase: its total and the per-step mean; no single step's energy anywhere
    d = leaves["denoise_step"]
    assert d["per_step_mean_j"] == pytest.approx(d["energy_j"] / 4) and d["energy_j"] == pytest.approx(200 * 0.64, rel=0.02)
    # each phase's source follows its spans: 40 ms text encode from power, the long load from the counter
    assert (leaves["text_encode"]["source"], leaves["load"]["source"]) == (mon.INTEGRATED_INSTANT, mon.COUNTER)
    assert leaves["denoise_step"]["source"] == mon.INTEGRATED_INSTANT and phases["batch"]["source"] == mon.COUNTER
    assert all(v["confidence"] in (mon.OK, mon.LOW) for v in phases.values())


def test_the_report_stacks_only_leaves_of_both_formats():
    samples = [GpuSample(mono_s=round(t, 4), power_w=200.0) for t in np.arange(0.0, 2.5, 0.01)]
    today = json.dumps(mon.phase_energies(mon.EnergyTrace(samples, INSTANT), spans_of_a_run()))
    leaves = _leaf_energies(today)
    assert "batch" not in leaves and set(leaves) >= {"text_encode", "denoise_step", "warmup"}
    assert all(isinstance(v, float) for v in leaves.values())
    assert _leaf_energies('{"batch": 10.0, "denoise_step": 6.0, "load": 2.0}') == {"denoise_step": 6.0, "load": 2.0}


# --------------------------------------------------------------------------- the counter's period, measured

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class CounterOnly(GpuBackend):
    """A counter that advances every ``period`` of the injected clock (None: no counter)."""

    name = "fake"

    def __init__(self, clock: FakeClock, period: float | None):
        super().__init__(0)
        self.clock, self.period = clock, period

    def energy_mj(self):
        return None if self.period is None else 50_000.0 * math.floor(self.clock.t / self.period)

    def device_name(self):
        return "fake"

    def uuid(self):
        return "fake"

    def supported_sm_clocks_mhz(self, mem_clock_mhz=None):
        return [1000]

    def lock_sm_clock(self, mhz, mem_mhz=None):
        raise AssertionError("not used")

    def reset_clocks(self):
        raise AssertionError("not used")

    def sample(self):
        return GpuSample(mono_s=self.clock.t, energy_mj=self.energy_mj())


@pytest.mark.parametrize("period, expected", [(0.1, 0.1), (0.02, 0.02), (None, None), (10.0, 1.0)])
def test_counter_period_is_measured(period, expected):
    clock = FakeClock()
    got = mon.measure_counter_period_s(CounterOnly(clock, period), clock=clock.now, sleep=clock.sleep)
    assert got == (None if expected is None else pytest.approx(expected, abs=0.003))
    assert clock.t <= 1.0 + 0.003  # never polls longer than max_s


# --------------------------------------------------------------------------- temperature settling

class Cooling(CounterOnly):
    """Temperature falling towards ``floor_c`` from ``start_c`` with time constant ``tau_s`` (injected time)."""

    def __init__(self, clock: FakeClock, start_c=80.0, floor_c=40.0, tau_s=10.0):
        super().__init__(clock, None)
        self.start_c, self.floor_c, self.tau_s, self.since = start_c, floor_c, tau_s, 0.0

    def temp(self) -> float:
        return self.floor_c + (self.start_c - self.floor_c) * math.exp(-(self.clock.t - self.since) / self.tau_s)

    def heat(self, by_c: float) -> None:
        self.start_c, self.since = self.temp() + by_c, self.clock.t

    def sample(self):
        return GpuSample(mono_s=self.clock.t, temp_c=round(self.temp(), 1))


def settle(target, timeout, clock, **kw):
    s = mon.TemperatureSettle(target, timeout, poll_s=0.5, **kw)
    s.clock, s.sleep = clock.now, clock.sleep
    return s


def test_settle_waits_until_the_target():
    clock = FakeClock()
    got = settle(50.0, 300, clock).wait(Cooling(clock))
    assert got.reason == "target" and got.temp_c <= 50.0
    assert got.wait_s == pytest.approx(10 * math.log(40 / 10), abs=0.51)  # 80 -> 50 C towards 40 C, tau 10 s


def test_settle_stops_when_the_gpu_stopped_cooling_or_at_the_timeout():
    clock = FakeClock()
    stable = settle(30.0, 300, clock).wait(Cooling(clock, tau_s=5.0))  # floor 40 C: 30 C is never reached
    assert stable.reason == "stable" and stable.temp_c < 41.5 and stable.wait_s < 60
    clock = FakeClock()
    timed_out = settle(30.0, 8.0, clock).wait(Cooling(clock, tau_s=100.0))
    assert timed_out.reason == "timeout" and timed_out.wait_s == pytest.approx(8.0, abs=0.51)


def test_settle_without_a_temperature_sensor_does_not_wait():
    clock = FakeClock()
    got = settle(50.0, 300, clock).wait(CounterOnly(clock, None))
    assert (got.reason, got.wait_s) == ("no sensor", 0.0)


# --------------------------------------------------------------------------- the row

DEVICE = DeviceInfo("fake", "NVIDIA H100 80GB HBM3", "H100", "GPU-1", gpu_sku="NVIDIA H100 80GB HBM3")


def row_for(samples, spans, **kw):
    args = dict(run_id="f1000_r00", clock=1000, index=0, warmup=False, status="ok", exit_code=0, t_start=0.0,
                t_end=3.0, samples=samples, spans=spans, metrics={"images": 2}, device=DEVICE, workload="w",
                mode="process", sensors=INSTANT, measured_period_s=0.1, clock_method="application")
    return build_row(**{**args, **kw})


def test_throttle_reasons_are_ored_over_the_work_window_not_read_after_the_run():
    masks = {0.5: 0x80, 1.2: 0x4, 1.5: 0x1, 1.8: 0x0, 2.6: 0x8}  # only 1.0-2.0 s is the work window
    samples = [GpuSample(mono_s=t, power_w=100.0, throttle_mask=m) for t, m in masks.items()]
    calls = []

    def after_exit():
        calls.append(1)
        return "0x40"

    row = row_for(samples, [mon.PhaseSpan("batch", 1.0, 2.0)], throttle_reasons=after_exit)
    assert row["throttle_reasons"] == "0x5" and not calls
    no_masks = [GpuSample(mono_s=t, power_w=100.0) for t in masks]
    assert row_for(no_masks, [mon.PhaseSpan("batch", 1.0, 2.0)], throttle_reasons=after_exit)["throttle_reasons"] == "0x40"
    assert calls == [1]  # the older API is the fallback only
    # masks read back from a samples file (replay) are floats, NaN where the column was empty
    replayed = [GpuSample(mono_s=1.2, throttle_mask=4.0), GpuSample(mono_s=1.5, throttle_mask=float("nan"))]
    assert mon.throttle_mask(replayed) == 0x4


def test_row_records_how_it_was_measured():
    samples = stepped_trace(busy=(1.0, 1.2))
    samples[0].temp_c, samples[1].temp_c = 41.0, 42.0
    row = row_for(samples, [mon.PhaseSpan("batch", 1.0, 1.2)], settle_wait_s=12.5)
    assert set(row) <= set(RUNS_COLUMNS)
    assert row["clock_method"] == "application" and row["power_source"] == "instantaneous"
    assert row["energy_source"] == mon.INTEGRATED_INSTANT and row["energy_confidence"] == mon.OK
    assert row["work_energy_j"] == pytest.approx(400 * 0.2, rel=0.1)
    # energy_j comes from the same source as the work window's, so the two stay comparable
    assert row["energy_j"] == pytest.approx(row["energy_integrated_j"])
    assert (row["energy_update_period_s"], row["temp_start_c"], row["settle_wait_s"]) == (0.1, 41.0, 12.5)
    assert (row["gpu_sku"], row["mig"]) == ("NVIDIA H100 80GB HBM3", 0)
    assert row_for(samples, [], clock=None)["clock_method"] == "unlocked"
    phases = json.loads(row["phase_energy_json"])
    assert phases["batch"]["source"] == mon.INTEGRATED_INSTANT and "contains" not in phases["batch"]


def test_manifest_says_which_source_each_energy_figure_used():
    m = measurement_manifest(INSTANT, 0.098, 0.1)
    assert m["energy_update_period_s"] == 0.098 and m["energy_update_period_declared_s"] == 0.1
    assert set(m["energy_sources"]) == {"energy_j", "energy_counter_j", "energy_integrated_j", "work_energy_j",
                                        "phase_energy_json"}
    assert "integrated-instantaneous" in m["energy_sources"]["energy_j"]
    assert "no energy figure subtracts it" in m["idle_power_w"]


# --------------------------------------------------------------------------- clock order

CLOCKS = [1500, 1200, 900]


def test_descending_is_todays_order_and_ascending_its_mirror():
    plan = SweepPlan(CLOCKS, 2, 1)
    assert [r.run_id for r in plan.runs] == ["f1500_w00", "f1500_r00", "f1500_r01", "f1200_w00", "f1200_r00",
                                             "f1200_r01", "f0900_w00", "f0900_r00", "f0900_r01"]
    asc = SweepPlan(CLOCKS, 2, 1, "ascending")
    assert [r.clock for r in asc.runs] == [900] * 3 + [1200] * 3 + [1500] * 3


def test_interleaved_visits_every_clock_per_repeat():
    plan = SweepPlan(CLOCKS, 3, 1, "interleaved")
    measured = [(r.index, r.clock) for r in plan.runs if not r.warmup]
    assert measured == [(i, c) for i in range(3) for c in CLOCKS]
    # a clock's warm-up comes right before its first measured run
    ids = [r.run_id for r in plan.runs]
    assert all(ids.index(f"f{c:04d}_w00") + 1 == ids.index(f"f{c:04d}_r00") for c in CLOCKS)


def test_random_order_is_per_repeat_reproducible_and_drawn_when_unseeded():
    a, b = SweepPlan(CLOCKS, 4, 0, "random", seed=7), SweepPlan(CLOCKS, 4, 0, "random", seed=7)
    assert a.runs == b.runs and a.seed == 7
    rounds = [[r.clock for r in a.runs if r.index == i] for i in range(4)]
    assert all(sorted(r) == sorted(CLOCKS) for r in rounds)
    orders = {tuple(r) for s in range(20) for r in [[x.clock for x in SweepPlan(CLOCKS, 1, 0, "random", s).runs]]}
    assert len(orders) > 1  # the seed changes the order
    unseeded = SweepPlan(CLOCKS, 2, 0, "random")
    assert isinstance(unseeded.seed, int) and SweepPlan(CLOCKS, 2, 0, "random", unseeded.seed).runs == unseeded.runs
    same = {r.run_id for r in SweepPlan(CLOCKS, 2, 1).runs}
    assert all({r.run_id for r in SweepPlan(CLOCKS, 2, 1, o, 3 if o == "random" else None).runs} == same
               for o in ("ascending", "random", "interleaved"))


# --------------------------------------------------------------------------- options: one line, exit 2

@pytest.mark.parametrize("args, option", [
    (["--clock-order", "sideways"], "--clock-order"),
    (["--clock-order-seed", "3"], "--clock-order-seed"),
    (["--settle-timeout", "10"], "--settle-timeout"),
    (["--settle-temp", "-5"], "--settle-temp"),
    (["--settle-temp", "nan"], "--settle-temp"),
    (["--settle-temp", "50", "--settle-timeout", "0"], "--settle-timeout"),
    (["--profiling-mode", "guided", "--clock-order", "interleaved"], "--clock-order"),
])
def test_bad_order_and_settle_options_are_one_line(tmp_path, capsys, args, option):
    out = tmp_path / "res"
    rc = launch_main(["--profiling-tool", "simulated", "--gpu-type", "H100", *args, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and option in err[0], err
    assert not out.exists()


# --------------------------------------------------------------------------- a sweep on a fake GPU

class FakeGpu(Cooling):
    """A GPU whose counter (optional) steps every 100 ms of real time, whose throttle mask is 0x4 while
    work runs, and whose temperature falls over injected time and rises with each run."""

    name = "fake"
    power_source = "instantaneous"
    power_update_period_s = 0.1
    energy_update_period_s = 0.1

    def __init__(self, clock: FakeClock, counter: bool):
        super().__init__(clock, start_c=70.0, floor_c=35.0, tau_s=10.0)
        self.counter, self.busy, self.locked, self.after_exit = counter, False, None, 0

    def device_name(self):
        return "NVIDIA H100 80GB HBM3 (fake)"

    def uuid(self):
        return "GPU-fake-0"

    def supported_sm_clocks_mhz(self, mem_clock_mhz=None):
        return list(CLOCKS)

    def lock_sm_clock(self, mhz, mem_mhz=None):
        self.locked = mhz

    def reset_clocks(self):
        self.locked = None

    def energy_mj(self):
        return 10_000.0 * math.floor(time.monotonic() / 0.1) if self.counter else None

    def throttle_reasons(self):
        self.after_exit += 1
        return "0x80"

    def sample(self):
        return GpuSample(mono_s=time.monotonic(), power_w=300.0 if self.busy else 100.0, energy_mj=self.energy_mj(),
                         sm_clock_mhz=self.locked or CLOCKS[0], temp_c=round(self.temp(), 1),
                         throttle_mask=0x4 if self.busy else 0x0)


def fake_sweep(tmp_path, gpu: FakeGpu, **options):
    def work():
        gpu.busy = True
        time.sleep(0.05)
        gpu.busy = False
        gpu.heat(15.0)
        return {"images": 1}

    cfg = SweepConfig(in_process=True, profiling_mode="custom", custom_frequencies="1500,900", num_runs=2,
                      idle_seconds=0, sleep_interval=0, sampling_interval=10, app_name="fake",
                      output_dir=str(tmp_path / "res"), **options).check()
    log: list[tuple[str, bool]] = []
    rc = driver._run(cfg, gpu, lambda m, err=False: log.append((m, err)), workload_obj=CallableWorkload(work, "fake"))
    assert rc == 0, log
    out = tmp_path / "res"
    return pd.read_csv(out / "runs.csv"), json.loads((out / "manifest.json").read_text()), log


def test_sweep_settles_orders_ors_throttles_and_warns_once(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(mon.TemperatureSettle, "clock", staticmethod(clock.now))
    monkeypatch.setattr(mon.TemperatureSettle, "sleep", staticmethod(clock.sleep))
    gpu = FakeGpu(clock, counter=False)
    rows, manifest, log = fake_sweep(tmp_path, gpu, clock_order="random", clock_order_seed=11, settle_temp=45.0)
    plan = SweepPlan([1500, 900], 2, 0, "random", 11)
    assert list(rows["run_id"]) == [r.run_id for r in plan.runs]
    assert manifest["measurement"]["clock_order"] == "random" and manifest["measurement"]["clock_order_seed"] == 11
    # every run waited (each run heats the GPU by 15 C) and started at or below the target
    assert (rows["settle_wait_s"] > 0).all() and (rows["temp_start_c"] <= 45.0).all()
    # the work window's masks, not the after-exit reading (0x80), which is never needed
    assert set(rows["throttle_reasons"]) == {"0x4"} and gpu.after_exit == 0
    assert set(rows["power_source"]) == {"instantaneous"} and set(rows["clock_method"]) == {"locked"}
    assert rows["energy_update_period_s"].isna().all() and manifest["measurement"]["energy_update_period_s"] is None
    assert rows["gpu_sku"].notna().all() and set(rows["mig"]) == {0}
    # 50 ms of work is too short for a 100 ms power sensor: low confidence, and one warning with the fix
    assert set(rows["energy_confidence"]) == {"low"} and set(rows["energy_source"]) == {mon.INTEGRATED_INSTANT}
    warnings = [m for m, err in log if "too short" in m]
    assert len(warnings) == 1 and "--num-images" in warnings[0] and "--warmup" in warnings[0]


def test_counter_period_is_measured_at_the_start_and_resume_works_in_another_order(tmp_path):
    gpu = FakeGpu(FakeClock(), counter=True)
    rows, manifest, _ = fake_sweep(tmp_path, gpu, clock_order="interleaved")
    period = manifest["measurement"]["energy_update_period_s"]
    assert period is not None and period > 0 and manifest["measurement"]["energy_update_period_declared_s"] == 0.1
    assert rows["energy_update_period_s"].tolist() == [round(period, 6)] * 4
    assert list(rows["run_id"]) == ["f1500_r00", "f0900_r00", "f1500_r01", "f0900_r01"]
    # cut the last two rows off, as if the sweep had been stopped, and continue in another order
    csv = tmp_path / "res" / "runs.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:3]))
    rows, _, log = fake_sweep(tmp_path, gpu, clock_order="descending")
    assert any("resuming: 2 of 4 runs already done" in m for m, _ in log)
    assert list(rows["run_id"]) == ["f1500_r00", "f0900_r00", "f1500_r01", "f0900_r01"]


def test_a_settle_timeout_runs_anyway_and_says_so(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(mon.TemperatureSettle, "clock", staticmethod(clock.now))
    monkeypatch.setattr(mon.TemperatureSettle, "sleep", staticmethod(clock.sleep))
    rows, manifest, log = fake_sweep(tmp_path, FakeGpu(clock, counter=False), settle_temp=20.0, settle_timeout=2.0)
    assert set(rows["status"]) == {"ok"} and rows["settle_wait_s"].tolist() == pytest.approx([2.0] * 4, abs=0.51)
    assert sum("running anyway" in m and err for m, err in log) == 4
    assert (manifest["measurement"]["settle_temp_c"], manifest["measurement"]["settle_timeout_s"]) == (20.0, 2.0)


def test_dry_run_shows_the_order_and_its_seed(tmp_path, capsys):
    rc = launch_main(["--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode", "custom",
                      "--custom-frequencies", "1785,990", "--clock-order", "random", "--clock-order-seed", "5",
                      "--dry-run", "--output-dir", str(tmp_path / "res")])
    assert rc == 0 and "order random (seed 5)" in capsys.readouterr().out
