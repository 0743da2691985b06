"""The sweep core: every visible GPU with each backend, in-process runs, per-phase clocks, the Python API."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, SMI_CAPTURES, run_py

from profiling import sweep
from profiling.backends import open_backend
from profiling.backends.simulated import SimulatedGpu, state_path
from profiling.config import SweepConfig
from sd_energy_contract.errors import InputError
from sd_energy_contract.layout import RUNS_COLUMNS
from sd_energy_contract.workload import RunContext

FAKE = str(REPO / "tests" / "data" / "fake_app.py")
FAKE_NVML = REPO / "tests" / "data" / "fake_nvml"
ONE_RUN = ["-m", "profiling.launch", "--all-gpus", "--num-runs", "1", "--sleep-interval", "0", "--idle-seconds", "0",
           "--sampling-interval", "10", "--app-executable", FAKE, "--app-params", "ok 0.05"]


def _all_gpus(out: Path, *args: str, env: dict | None = None) -> list[dict]:
    p = run_py(*ONE_RUN, *args, "--output-dir", str(out), env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = []
    for d in sorted(out.glob("gpu*")):
        df = pd.read_csv(d / "runs.csv")
        app = json.loads(next((d / "apps").glob("*.json")).read_text())
        rows.append({"dir": d.name, "uuid": df["gpu_uuid"].iloc[0], "status": df["status"].iloc[0],
                     "visible": app["env"]["CUDA_VISIBLE_DEVICES"], "mode": df["mode"].iloc[0]})
    return rows


def test_all_gpus_sweeps_every_simulated_gpu(tmp_path):
    rows = _all_gpus(tmp_path / "res", "--profiling-tool", "simulated", "--gpu-type", "H100", "--profiling-mode",
                     "custom", "--custom-frequencies", "1395", env={"SD_ENERGY_SIMULATED_GPUS": "3"})
    assert [r["dir"] for r in rows] == ["gpu0", "gpu1", "gpu2"]
    assert [r["uuid"] for r in rows] == ["SIM-H100-0", "SIM-H100-1", "SIM-H100-2"]
    assert {r["status"] for r in rows} == {"ok"} and {r["mode"] for r in rows} == {"process"}


def test_all_gpus_with_nvml_gives_each_app_its_gpu_by_uuid(tmp_path):
    env = {"PYTHONPATH": f"{FAKE_NVML}{os.pathsep}{REPO}", "FAKE_NVML_COUNT": "2"}
    rows = _all_gpus(tmp_path / "res", "--profiling-tool", "nvml", "--profiling-mode", "custom",
                     "--custom-frequencies", "1410", env=env)
    assert [r["uuid"] for r in rows] == ["GPU-1234", "GPU-1234-1"]
    assert [r["visible"] for r in rows] == ["GPU-1234", "GPU-1234-1"]  # the app runs on exactly the GPU measured


def test_all_gpus_with_nvidia_smi_enumerates_what_it_lists(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"""#!{sys.executable}
import sys
args = sys.argv[1:]
i = args[args.index("-i") + 1] if "-i" in args else "0"
if "-q" in args:
    print(open({str(SMI_CAPTURES / 'supported_clocks_H100.txt')!r}).read())
elif "--query-gpu=index" in args:
    print("0\\n1")
elif any(a.startswith("--query-gpu=name") for a in args):
    print(f"NVIDIA H100 NVL, GPU-smi-{{i}}, 570.124.06")
elif any(a.startswith("--query-gpu=") for a in args):
    print("312.45, 1410, 2619, 98, 40960, 61, 0x0000000000000000")
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    rows = _all_gpus(tmp_path / "res", "--profiling-tool", "smi", "--profiling-mode", "custom",
                     "--custom-frequencies", "1410", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert [r["uuid"] for r in rows] == ["GPU-smi-0", "GPU-smi-1"]
    assert {r["status"] for r in rows} == {"ok"}


def test_dcgm_enumerates_through_its_clock_control():
    from profiling.backends.dcgm import DcgmGpu

    gpu = DcgmGpu.__new__(DcgmGpu)  # enumeration only: no dcgmi stream needed
    gpu.control = type("Control", (), {"visible_devices": lambda self: [0, 1, 2, 3]})()
    assert gpu.visible_devices() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- in-process, phase clocks

class PhasedWorkload:
    """A stand-in for the diffusion app: text encoding, 3 denoising steps and a VAE decode per run,
    recording its phases and calling the launcher's hook as ``app.timing.PhaseRecorder`` does."""

    name = "phased"

    def __init__(self, step_s: float = 0.12):
        self.step_s = step_s
        self.loads = 0

    def load(self) -> dict:
        self.loads += 1
        return {"model_variant": "phased"}

    def run(self, ctx: RunContext) -> dict:
        def mark(event, phase, **kw):
            if event == "start" and ctx.on_phase:
                ctx.on_phase(event, phase)
            with open(ctx.events_path, "a") as fh:
                fh.write(json.dumps({"event": event, "phase": phase, "mono_s": time.monotonic(), **kw}) + "\n")
            if event == "end" and ctx.on_phase:
                ctx.on_phase(event, phase)

        mark("start", "batch", batch=0)
        for phase, steps in (("text_encode", [None]), ("denoise_step", [0, 1, 2]), ("vae_decode", [None])):
            for step in steps:
                extra = {} if step is None else {"step": step}
                mark("start", phase, **extra)
                time.sleep(self.step_s)
                mark("end", phase, **extra)
        mark("end", "batch", batch=0)
        metrics = {"images": 1, "config": {"model_variant": "phased", "steps": 3}}
        ctx.metrics_path.write_text(json.dumps(metrics))
        return metrics

    def close(self) -> None:
        pass


def test_phase_clocks_follow_the_phases_seen_in_the_events_file(tmp_path):
    work = PhasedWorkload()
    res = sweep(work, clocks=[1785], runs=2, output_dir=tmp_path / "res", backend="simulated", gpu_type="H100",
                sampling_interval_ms=10, phase_clocks="denoise=1395,vae_decode=990,text_encode=1200", log=lambda *a, **k: None)
    assert work.loads == 1  # loaded once for both runs
    rows = pd.read_csv(res.runs_csv)
    assert list(rows.columns) == RUNS_COLUMNS and set(rows["mode"]) == {"in-process"}
    assert set(rows["clock_mismatch"]) == {0}  # the policy moves the clock on purpose
    summary = json.loads(rows["phase_clocks"].iloc[0])
    assert summary["policy"] == {"denoise_step": 1395, "vae_decode": 990, "text_encode": 1200}
    assert summary["switches"] >= 4 and summary["switch_latency_ms_max"] is not None
    events = [json.loads(line) for line in (res.path / "events" / "f1785_r00.jsonl").read_text().splitlines()]
    clock_events = [e for e in events if e["event"] == "clock"]
    # One switch per phase start whose clock differs (consecutive denoising steps share one), then back.
    assert [(e["phase"], e["mhz"]) for e in clock_events] == [
        ("text_encode", 1200), ("denoise_step", 1395), ("vae_decode", 990), ("end", 1785)]
    assert all(e["readback_mhz"] == e["mhz"] for e in clock_events)
    samples = pd.read_csv(res.path / "samples" / "f1785_r00.csv")
    by_phase = samples.groupby("phase")["sm_clock_mhz"].agg(lambda s: s.mode().iloc[0])
    assert by_phase["text_encode"] == 1200 and by_phase["denoise_step"] == 1395 and by_phase["vae_decode"] == 990
    assert SimulatedGpu("H100", 0).locked_sm_clock_mhz() is None  # restored after the sweep


def test_python_sweep_of_a_function(tmp_path):
    calls = []

    def work():
        calls.append(SimulatedGpu("H100", 0).current_sm_clock_mhz())
        time.sleep(0.05)
        return {"images": 2}

    res = sweep(work, clocks=[1785, 990], runs=2, output_dir=tmp_path / "res", backend="simulated",
                gpu_type="H100", sampling_interval_ms=10, log=lambda *a, **k: None)
    rows = pd.read_csv(res.runs_csv)
    assert calls == [1785, 1785, 990, 990]  # each call ran at its clock
    assert list(rows["run_id"]) == ["f1785_r00", "f1785_r01", "f0990_r00", "f0990_r01"]
    assert set(rows["mode"]) == {"in-process"} and set(rows["images"]) == {2}
    assert (rows["work_s"] > 0.04).all()  # the work window is the call
    assert not state_path("H100", 0).exists() or SimulatedGpu("H100", 0).locked_sm_clock_mhz() is None


@pytest.mark.parametrize("kwargs, option", [
    ({"runs": 0}, "runs"), ({"clocks": []}, "clocks"), ({"clocks": [1234]}, "--custom-frequencies"),
    ({"phase_clocks": "unet=1000"}, "--phase-clocks"), ({"sampling_interval_ms": 1}, "--sampling-interval"),
])
def test_python_sweep_bad_arguments_name_the_argument(tmp_path, kwargs, option):
    with pytest.raises(InputError) as err:
        sweep(lambda: None, **{"clocks": [1785], **kwargs}, output_dir=tmp_path / "res", backend="simulated",
              gpu_type="H100", log=lambda *a, **k: None)
    assert err.value.option == option
    assert not (tmp_path / "res").exists()  # nothing written


@pytest.mark.parametrize("args, option", [
    (["--phase-clocks", "denoise=1395"], "--phase-clocks"),                       # needs --in-process
    (["--in-process", "--phase-clocks", "denoise=abc"], "--phase-clocks"),
    (["--in-process", "--app-executable", FAKE], "--app-executable"),
    (["--sampling-interval", "nan"], "--sampling-interval"), (["--timeout", "inf"], "--timeout"),
    (["--idle-seconds", "-1"], "--idle-seconds"), (["--frequency-step", "0"], "--frequency-step"),
    (["--gpu-index", "-1"], "--gpu-index"), (["--profiling-mode", "custom", "--custom-frequencies", ",,,"],
                                             "--custom-frequencies"),
])
def test_launcher_refuses_bad_options_in_one_line(tmp_path, args, option):
    out = tmp_path / "res"
    p = run_py("-m", "profiling.launch", "--profiling-tool", "simulated", "--gpu-type", "H100", *args,
               "--output-dir", str(out))
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}") and "Traceback" not in p.stderr
    assert not out.exists()


def test_config_fields_are_the_launcher_options():
    from profiling.config import option_names
    from profiling.launch import cli

    params = {p.name for p in cli.params if p.name != "config"}
    assert params == set(option_names())
    assert SweepConfig().check().run_mode == "process"


def test_simulated_clock_change_is_seen_at_once_by_another_instance():
    a, b = SimulatedGpu("H100", 0), SimulatedGpu("H100", 0)
    assert b.current_sm_clock_mhz() == 1785
    a.lock_sm_clock(990)
    assert b.current_sm_clock_mhz() == 990  # no stale cache between processes sharing the state file
    a.reset_clocks()
    assert b.current_sm_clock_mhz() == 1785
    assert open_backend("simulated", 0, "H100", announce=lambda m: None).visible_devices() == [0]


def test_a_phase_policy_is_compared_with_the_best_single_clock_not_pooled_with_its_clock(tmp_path, monkeypatch):
    # 30 ms phases are below what the real sensors resolve (100 ms counter steps, 25 % sampled power):
    # this test is about the comparison, so the simulated GPU reports its exact power here.
    monkeypatch.setenv("SD_ENERGY_SIMULATED_SENSORS", "ideal")
    from power_modeling import compare_phase_policies, feature_table, load_runs
    from power_modeling.report import build_report

    quiet = {"backend": "simulated", "gpu_type": "H100", "sampling_interval_ms": 10, "log": lambda *a, **k: None}
    plain = sweep(PhasedWorkload(0.03), clocks=[1785, 1395, 990], runs=2, output_dir=tmp_path / "plain", **quiet)
    policy = sweep(PhasedWorkload(0.03), clocks=[1785], runs=2, output_dir=tmp_path / "policy",
                   phase_clocks="denoise=1395,vae_decode=990,text_encode=990", **quiet)
    runs = load_runs([plain.path, policy.path])
    runs["workload"] = "phased"  # the same work in both directories
    table = feature_table(runs)
    at_max = table[table["sm_clock_mhz"] == 1785].iloc[0]
    assert at_max["n_runs"] == 2 and "phase-clock policy:2" in at_max["excluded_runs"]  # not pooled with 1785 MHz
    cmp = compare_phase_policies(runs, table, objective="energy", max_slowdown=None)
    assert len(cmp) == 1
    r = cmp.iloc[0]
    assert r["policy"] == "denoise_step=1395,text_encode=990,vae_decode=990" and r["n_runs"] == 2
    best = table[table["sm_clock_mhz"] == r["best_clock_mhz"]].iloc[0]
    mine = runs[runs["phase_policy"] != ""]
    assert r["energy_vs_best_pct"] == pytest.approx(100 * (1 - mine["energy_j"].mean() / best["energy_j_mean"]))
    assert r["energy_vs_best_lo_pct"] <= r["energy_vs_best_pct"] <= r["energy_vs_best_hi_pct"]
    # The simulated work takes as long at any clock, so the lowest clock is cheapest; the policy runs part at 1785.
    assert r["best_clock_mhz"] == 990 and r["verdict"] == "worse than the best single clock"
    assert r["energy_vs_max_pct"] > 0  # but it beats the max clock
    files = build_report(runs, table, tmp_path / "report", objective="energy", max_slowdown=None)
    assert "Per-phase clocks vs the best single clock" in files["markdown"].read_text()
    assert files["phase_policies"].exists()


TINY = "--weights tiny --height 64 --width 64 --steps 4 --num-images 2 --batch-size 2 --no-save-images"
IN_PROCESS = ["--in-process", "--profiling-tool", "simulated", "--gpu-type", "A100", "--profiling-mode", "custom",
              "--num-runs", "1", "--sleep-interval", "0", "--idle-seconds", "0", "--sampling-interval", "10",
              "--app-params", TINY]


def _launch_here(*args: str) -> int:
    """The launcher's command line in this process: torch and the tiny weights are loaded already by
    the app tests, so an in-process sweep costs its runs, not another interpreter start."""
    from profiling import launch

    return launch.main([*IN_PROCESS, *args])


def test_in_process_sweep_of_the_tiny_app_writes_the_process_mode_rows(tmp_path):
    out = tmp_path / "res"
    assert "SD_ENERGY_SIMULATED_STATE" not in os.environ
    assert _launch_here("--custom-frequencies", "1410,705", "--warmup-runs", "1", "--output-dir", str(out)) == 0
    assert "SD_ENERGY_SIMULATED_STATE" not in os.environ  # the GPU's environment was set for the sweep only
    df = pd.read_csv(out / "runs.csv")
    assert list(df.columns) == RUNS_COLUMNS  # the same columns as process mode (test_launcher)
    assert set(df["mode"]) == {"in-process"} and set(df["status"]) == {"ok"} and len(df) == 4
    assert list(df["run_id"]) == ["f1410_w00", "f1410_r00", "f0705_w00", "f0705_r00"] and df["warmup"].sum() == 2
    measured = df[df["warmup"] == 0].set_index("sm_clock_target_mhz")
    assert (measured["images"] == 2).all() and set(measured["app_model_variant"]) == {"sd-v1.5"}
    assert measured.loc[705, "work_avg_power_w"] < measured.loc[1410, "work_avg_power_w"]
    phases = json.loads(measured.loc[1410, "phase_energy_json"])
    assert {"text_encode", "denoise_step", "vae_decode"} <= set(phases) and "load" not in phases  # loaded once, before
    for rid in df["run_id"]:
        for sub, ext in (("samples", "csv"), ("apps", "json"), ("events", "jsonl")):
            assert (out / sub / f"{rid}.{ext}").exists(), (sub, rid)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_mode"] == "in-process" and manifest["app_command"][0] == "in-process:stable-diffusion"


def test_phase_clocks_with_the_tiny_app(tmp_path):
    out = tmp_path / "res"
    assert _launch_here("--custom-frequencies", "1410", "--phase-clocks", "denoise=1005,vae_decode=705",
                        "--output-dir", str(out)) == 0
    events = [json.loads(x) for x in (out / "events" / "f1410_r00.jsonl").read_text().splitlines()]
    switches = [(e["phase"], e["mhz"]) for e in events if e["event"] == "clock"]
    assert ("denoise_step", 1005) in switches and ("vae_decode", 705) in switches
    assert switches[-1][1] == 1410  # back at the run's clock (at 'save', or at the run's end)
    # Each switch comes right before its phase starts: the next event is that phase's start.
    for i, e in enumerate(events):
        if e["event"] == "clock" and e["phase"] != "end":
            assert events[i + 1]["event"] == "start" and events[i + 1]["phase"] == e["phase"]
    row = pd.read_csv(out / "runs.csv").iloc[0]
    assert json.loads(row["phase_clocks"])["policy"] == {"denoise_step": 1005, "vae_decode": 705}


def test_no_profiling_submodule_shadows_an_exported_name():
    """``profiling.<name>`` as a module would replace the exported function once anything imports it."""
    import profiling

    clashes = [n for n in profiling.__all__ if (REPO / "profiling" / f"{n}.py").exists()
               or (REPO / "profiling" / n).is_dir()]
    assert clashes == []
    import profiling.driver  # noqa: F401 - importing the module must not change the export
    from profiling import sweep as exported

    assert callable(exported) and not isinstance(exported, type(profiling))
