"""The app as an in-process workload: one load, many runs, the same events and metrics as a process run."""

from __future__ import annotations

import json

import pytest

from app.inprocess import make_workload
from sd_energy_contract.errors import InputError
from sd_energy_contract.workload import RunContext, Workload

ARGS = ["--weights", "tiny", "--device", "cpu", "--steps", "2", "--height", "64", "--width", "64",
        "--num-images", "2", "--batch-size", "2", "--warmup", "1", "--scheduler", "euler"]


def events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_load_once_then_runs_with_events_metrics_and_phase_hooks(tmp_path, monkeypatch):
    wl = make_workload([*ARGS, "--output-dir", str(tmp_path / "img")])
    assert isinstance(wl, Workload) and wl.name == "stable-diffusion"
    config = wl.load()
    assert (config["model_variant"], config["weights"], config["steps"], config["height"]) == ("sd-v1.5", "tiny", 2, 64)

    # The simulated GPU's clock dilation is looked up at run time and runs once per denoising step.
    dilated: list[float] = []
    from profiling.backends import simulated

    monkeypatch.setenv("SD_ENERGY_SIMULATED_STATE", str(tmp_path / "h100-0.json"))
    monkeypatch.setattr(simulated.StepDilation, "from_env", classmethod(lambda cls, signature="default": dilated.append))

    for i in range(2):
        calls = []

        def on_phase(event, phase, calls=calls):
            import time

            calls.append((event, phase, time.monotonic()))

        ev, met = tmp_path / f"ev{i}.jsonl", tmp_path / f"m{i}.json"
        m = wl.run(RunContext(f"f1410_r{i:02d}", 1410, ev, met, on_phase=on_phase))
        assert json.loads(met.read_text()) == json.loads(json.dumps(m, default=str))
        assert m["images"] == 2 and m["config"]["batch_size"] == 2 and len(m["files"]) == 2
        assert len(m["per_step_s"]) == 1 and len(m["per_step_s"][0]) == 2  # one batch of two, two steps
        for phase in ("text_encode", "denoise", "vae_decode", "batch", "save"):
            assert m["phases_s"][phase] > 0, phase
        assert m["phases_s"]["load"] == 0.0  # loaded once, in load()
        assert ("warmup" in m["phases_s"]) == (i == 0)  # the configured warm-up: first run only

        lines = events(ev)
        names = {e["phase"] for e in lines}
        assert names == ({"warmup"} if i == 0 else set()) | {"batch", "text_encode", "denoise_step", "vae_decode",
                                                            "save"}
        # on_phase sees every boundary, in order: start before the start time is taken, end after the end time.
        assert [(c[0], c[1]) for c in calls] == [(e["event"], e["phase"]) for e in lines]
        for c, e in zip(calls, lines, strict=True):
            assert c[2] <= e["mono_s"] if c[0] == "start" else c[2] >= e["mono_s"]
    assert len(dilated) == 2 + 2 * 2 and all(s > 0 for s in dilated)  # the warm-up's 2 steps, then 2 runs x 2
    assert wl.cache.loads == 1  # the pipeline was loaded once for everything
    wl.close()
    assert wl.cache.pipeline is None


@pytest.mark.parametrize("argv, option", [
    (["--steps", "0"], "--steps"),
    (["--height", "65"], "--height"),
    (["--height", "sixty"], "--height"),
    (["--stepz", "2"], "--stepz"),
    (["--benchmark"], "--benchmark"),
    (["--weights", "huge"], "--weights"),
])
def test_bad_argument_is_an_input_error_naming_the_option(argv, option):
    with pytest.raises(InputError) as exc:
        make_workload([*argv, "--device", "cpu"])
    assert exc.value.option == option and "\n" not in str(exc.value)
