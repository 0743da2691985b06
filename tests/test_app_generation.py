"""The workload on tiny weights: every option shows in what is produced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from app import schedulers
from app.pipeline import ExecutionOptions, PipelineCache, backoff_batches
from app.runner import GenerationRequest, expand_jobs, run_generation

CPU = ExecutionOptions(device="cpu")
CACHE = PipelineCache()  # one resident tiny pipeline for the whole file: tests reuse it as suites do


def gen(tmp_path, **kw):
    base = dict(weights="tiny", execution=CPU, height=64, width=64, steps=3, output_dir=str(tmp_path / "out"),
                prompts=["a red fox"], export_metrics=str(tmp_path / "m.json"))
    base.update(kw)
    return run_generation(GenerationRequest(**base), log=lambda *_: None, cache=CACHE)


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.float32)


NOISE_SCHEDULERS = [n for n, s in schedulers.SCHEDULERS.items() if not s.flow]


@pytest.fixture(scope="module")
def euler_image(tmp_path_factory):
    """The image every other scheduler's must differ from, generated once."""
    return pixels(gen(tmp_path_factory.mktemp("euler"), scheduler="euler", steps=4)["files"][0])


@pytest.mark.parametrize("name", NOISE_SCHEDULERS)
def test_each_scheduler_is_applied_and_changes_the_image(tmp_path, name, euler_image):
    m = gen(tmp_path / name, scheduler=name, steps=4)
    spec = schedulers.SCHEDULERS[name]
    assert m["config"]["scheduler_class"] == spec.class_name
    if name == "euler":
        assert np.abs(pixels(m["files"][0]) - euler_image).max() <= 2  # same scheduler, same seed: same image
        return
    assert np.abs(pixels(m["files"][0]) - euler_image).mean() > 0.01


def test_scheduler_kwargs_reach_the_scheduler(tmp_path):
    gen(tmp_path, scheduler="dpm++-karras")
    assert CACHE.pipeline.scheduler.config.use_karras_sigmas is True
    gen(tmp_path, scheduler="dpm-sde")
    assert CACHE.pipeline.scheduler.config.algorithm_type == "sde-dpmsolver++"


def test_flow_scheduler_on_transformer_family(tmp_path):
    m = gen(tmp_path, model_variant="sd3-medium", scheduler="flow-euler")
    assert m["config"]["scheduler_class"] == "FlowMatchEulerDiscreteScheduler"
    assert m["config"]["family"] == "sd3" and Image.open(m["files"][0]).size == (64, 64)


@pytest.mark.parametrize("variant", ["sd-v2.1", "sdxl", "sdxl-turbo", "pixart-alpha", "pixart-sigma"])
def test_other_families_generate(tmp_path, variant):
    m = gen(tmp_path, model_variant=variant)
    assert m["images"] == 1 and Image.open(m["files"][0]).size == (64, 64)
    assert m["config"]["family"] in ("sd2", "sdxl", "pixart-alpha", "pixart-sigma")
    if variant.startswith("pixart"):  # T5 text encoder fed by the locally built tokenizer
        assert type(CACHE.pipeline.text_encoder).__name__ == "T5EncoderModel"
    # Every family is timed step by step and phase by phase (PixArt through diffusers' older callback).
    assert len(m["per_step_s"][0]) >= 3 and all(m["phases_s"][p] > 0 for p in ("text_encode", "denoise", "vae_decode"))


def test_refiner_uses_init_image(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    m = gen(tmp_path, model_variant="sdxl-refiner", init_image=str(init), steps=4, strength=0.5)
    assert m["images"] == 1


def test_size_steps_batch_seed_show_in_outputs(tmp_path):
    m = gen(tmp_path, height=96, width=64, steps=5, num_images=4, batch_size=2, seed=7,
            prompts=["one", "two"], scheduler="euler")
    assert [Image.open(f).size for f in m["files"]] == [(64, 96)] * 4
    assert len(m["per_batch_latency_s"]) == 2 and all(len(s) == 5 for s in m["per_step_s"])
    assert m["config"]["batch_size"] == 2 and m["config"]["seed"] == 7
    assert [f.split("_s")[-1] for f in m["files"]] == ["7.png", "8.png", "9.png", "10.png"]
    meta = json.loads(Image.open(m["files"][1]).text["parameters"])
    assert meta["prompt"] == "two" and meta["seed"] == 8 and meta["steps"] == 5


def test_seed_is_reproducible_and_independent_of_batching(tmp_path):
    a = gen(tmp_path / "a", num_images=2, batch_size=1, seed=3)
    b = gen(tmp_path / "b", num_images=2, batch_size=2, seed=3)
    c = gen(tmp_path / "c", num_images=2, batch_size=1, seed=4)
    assert np.abs(pixels(a["files"][1]) - pixels(b["files"][1])).max() <= 2
    assert np.abs(pixels(a["files"][0]) - pixels(c["files"][0])).mean() > 0.01


def test_images_per_prompt_and_cycling():
    r = GenerationRequest(prompts=["a", "b"], images_per_prompt=2, num_images=5, seed=10)
    assert expand_jobs(r) == [("a", 10), ("a", 11), ("b", 12), ("b", 13), ("a", 14)]


def test_metrics_json_contract(tmp_path):
    m = gen(tmp_path, warmup=1)
    on_disk = json.loads((tmp_path / "m.json").read_text())
    assert on_disk["config"] == m["config"]
    for key in ("per_image_latency_s", "per_batch_latency_s", "per_step_s", "phases_s", "peak_memory_mib",
                "images_per_s", "pixels_per_s", "steps_per_s", "environment"):
        assert on_disk[key] is not None
    for phase in ("load", "text_encode", "denoise", "vae_decode", "save", "warmup"):
        assert phase in on_disk["phases_s"], phase
    assert on_disk["config"]["weights"] == "tiny" and on_disk["environment"]["diffusers"]
    gc = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gc["images"] == m["files"]


def test_phase_events_file(tmp_path, monkeypatch):
    events = tmp_path / "ev.jsonl"
    monkeypatch.setenv("SD_ENERGY_EVENTS_FILE", str(events))
    gen(tmp_path, steps=3, scheduler="euler")
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    phases = {(e["phase"], e["event"]) for e in lines}
    assert {("text_encode", "start"), ("vae_decode", "end"), ("denoise_step", "end"), ("save", "end")} <= phases
    assert sum(1 for e in lines if e["phase"] == "denoise_step" and e["event"] == "end") == 3
    # One span per phase and step, none overlapping, though guidance calls the text encoder twice.
    leaves = [(e["event"], e["phase"]) for e in lines if e["phase"] in ("text_encode", "denoise_step", "vae_decode")]
    assert leaves == [("start", "text_encode"), ("end", "text_encode"), *[("start", "denoise_step"),
                      ("end", "denoise_step")] * 3, ("start", "vae_decode"), ("end", "vae_decode")]
    assert all(b["mono_s"] >= a["mono_s"] for a, b in zip(lines, lines[1:], strict=False))


def test_style_prefix_reaches_the_prompt(tmp_path):
    m = gen(tmp_path, style="icon")
    meta = json.loads(Image.open(m["files"][0]).text["parameters"])
    assert meta["prompt"].startswith("flat vector icon, minimal,") and meta["prompt"].endswith("a red fox")


def test_custom_style_file(tmp_path):
    styles = tmp_path / "s.yaml"
    styles.write_text("neon: 'neon glow, '\n")
    m = gen(tmp_path, style="neon", style_file=str(styles))
    assert json.loads(Image.open(m["files"][0]).text["parameters"])["prompt"] == "neon glow, a red fox"


def test_no_save_images_and_prefix(tmp_path):
    m = gen(tmp_path, save_images=False)
    assert m["files"] == [] and not (tmp_path / "out").exists()
    m = gen(tmp_path, output_prefix="run1_")
    assert all(f.split("/")[-1].startswith("run1_") for f in m["files"])


def test_prompt_slug_cannot_escape_output_dir(tmp_path):
    m = gen(tmp_path, prompts=["../../etc/passwd"])
    assert all(str(tmp_path / "out") in f for f in m["files"]) and "etc-passwd" in m["files"][0]


def test_batch_size_auto_backs_off_on_oom():
    import torch

    tried = []

    def run(b):
        tried.append(b)
        if b > 3:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert backoff_batches(run, 16) == 2 and tried == [16, 8, 4, 2]


def test_batch_size_auto_runs(tmp_path):
    m = gen(tmp_path, batch_size="auto", num_images=3)
    assert m["config"]["batch_size"] == 3 and m["images"] == 3


def test_execution_options_are_applied(tmp_path):
    m = gen(tmp_path, execution=ExecutionOptions(device="cpu", attention="slicing", vae_slicing=True,
                                                 vae_tiling=True, channels_last=True))
    pipe = CACHE.pipeline
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=__import__("torch").channels_last)
    assert m["config"]["attention"] == "slicing"
    m = gen(tmp_path, execution=ExecutionOptions(device="cpu", attention="math", dtype="bf16"))
    assert m["config"]["dtype"] == "bf16" and m["config"]["attention"] == "math"


def test_default_weights_on_cpu_are_tiny_and_say_so(tmp_path):
    notes = []
    run_generation(GenerationRequest(execution=CPU, height=64, width=64, steps=1, save_images=False,
                                     output_dir=str(tmp_path)), log=notes.append)
    assert any("using tiny weights" in n for n in notes)


def test_summary_line_and_metrics_file(tmp_path, capsys):
    # The script itself (app/StableDiffusionViaHF.py, run from anywhere) is run in test_harness.py.
    from app.cli import main

    assert main(["--weights", "tiny", "--device", "cpu", "--height", "64", "--width", "64", "--steps", "2",
                 "--output-dir", str(tmp_path), "--export-metrics", str(tmp_path / "m.json")]) == 0
    assert "img/s" in capsys.readouterr().out and json.loads((tmp_path / "m.json").read_text())["images"] == 1


# --------------------------------------------------------------------------- options that need their own proof

def test_clip_score_with_a_tiny_random_clip(tmp_path):
    from app.quality import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    m = gen(tmp_path, clip_model=str(clip), num_images=2, prompts=["a red fox", "a blue car"])
    scores = m["clip_score"]["per_image"]
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)
    assert json.loads((tmp_path / "m.json").read_text())["clip_score"]["mean"] == pytest.approx(sum(scores) / 2)


def test_clip_model_path_must_exist(capsys, tmp_path):
    from app.cli import main

    assert main(["--clip-model", str(tmp_path / "none"), "--height", "64", "--width", "64"]) == 2
    assert "--clip-model" in capsys.readouterr().err


def test_negative_prompt_changes_the_image(tmp_path):
    a = gen(tmp_path / "a", guidance_scale=7.5)
    b = gen(tmp_path / "b", guidance_scale=7.5, negative_prompt="blurry, low quality")
    assert np.abs(pixels(a["files"][0]) - pixels(b["files"][0])).mean() > 0.01
    assert b["config"]["negative_prompt"] == "blurry, low quality"


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    from app.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 3\nheight: 96\nwidth: 64\nweights: tiny\nseed: 5\n")
    out = tmp_path / "m.json"
    assert main(["--config", str(cfg), "--steps", "2", "--no-save-images", "-q", "--export-metrics", str(out),
                 "--output-dir", str(tmp_path)]) == 0
    c = json.loads(out.read_text())["config"]
    assert (c["steps"], c["height"], c["width"], c["seed"], c["scheduler"]) == (2, 96, 64, 5, "pndm")


def test_xformers_missing_is_a_clear_error(capsys, monkeypatch):
    import sys

    from app.cli import main

    monkeypatch.setitem(sys.modules, "xformers", None)  # importing it raises ImportError
    assert main(["--attention", "xformers", "--height", "64", "--width", "64"]) == 2
    assert "--attention xformers: xformers is not installed" in capsys.readouterr().err


def test_allow_pickle_and_multi_gpu_reach_from_pretrained(monkeypatch):
    import diffusers
    import torch

    from app import weights
    from app.models import get_variant

    seen = {}

    def fake_from_pretrained(model_id, **kw):
        seen.update(kw, model_id=model_id)
        raise OSError("stop here")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(weights.WeightsError):
        weights.load_pretrained(get_variant("sd-v1.5"), torch.float16, allow_pickle=True,
                                device_map=weights.multi_gpu_device_map())
    assert seen["use_safetensors"] is False and seen["device_map"] == "balanced" and seen["safety_checker"] is None
    seen.clear()
    with pytest.raises(weights.WeightsError):
        weights.load_pretrained(get_variant("sd-v1.5"), torch.float16)
    assert seen["use_safetensors"] is True and "device_map" not in seen


def test_compile_compiles_the_denoiser():
    from app.models import get_variant
    from app.pipeline import load_workload

    wl = load_workload(get_variant("sd-v1.5"), "tiny", "euler", ExecutionOptions(device="cpu", compile=True))
    assert getattr(wl.pipe.unet, "_compiled_call_impl", None) is not None  # torch.compile wraps forward


def test_cpu_offload_without_a_gpu_is_a_clear_error(capsys):
    from app.cli import main

    assert main(["--cpu-offload", "model", "--device", "cpu", "--height", "64", "--width", "64"]) == 2
    assert "--cpu-offload model: moves weights between the CPU and a GPU" in capsys.readouterr().err


def test_prompt_file(tmp_path):
    from app.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("# a comment\nfirst prompt\n\nsecond prompt\n")
    out = tmp_path / "m.json"
    assert main(["--prompt-file", str(prompts), "--weights", "tiny", "--height", "64", "--width", "64", "--steps", "1",
                 "--no-save-images", "-q", "--export-metrics", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["prompts"] == ["first prompt", "second prompt"]
