"""The workload measured fairly (issue 12, section 3): what runs in the work window is steady-state
generation at the measured shapes, in the dtype the GPU is built for, timed step by step in every family.

On this CPU-only machine the GPU decisions are tested with fakes (a monkeypatched compute
capability, injected out-of-memory and NaN), and the real path on the tiny models at 64 px.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from app import pipeline, runner, schedulers, warmup
from app.models import get_variant
from app.pipeline import (
    ExecutionOptions,
    Generator,
    NonFiniteError,
    PipelineCache,
    backoff_batches,
    dtype_choice,
    is_out_of_memory,
    load_workload,
)
from app.runner import GenerationRequest, run_generation
from app.timing import DenoiserCalls, PhaseRecorder, timestep_value

CPU = ExecutionOptions(device="cpu")
CACHE = PipelineCache()  # one resident tiny pipeline for the file; a test that hooks it removes its hook
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core host: one thread is ~100x faster than two fighting for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(tmp_path, cache=CACHE, **kw) -> dict:
    base = dict(weights="tiny", execution=CPU, height=64, width=64, steps=2, scheduler="euler", warmup=0,
                prompts=["a red fox"], save_images=False, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return run_generation(GenerationRequest(**base), log=lambda *_: None, cache=cache)


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def spans(lines: list[dict], phase: str) -> list[tuple[dict, dict]]:
    """(start, end) event pairs of ``phase``, in order (phases of one name never nest)."""
    starts = [e for e in lines if e["phase"] == phase and e["event"] == "start"]
    ends = [e for e in lines if e["phase"] == phase and e["event"] == "end"]
    assert len(starts) == len(ends)
    return list(zip(starts, ends, strict=True))


@pytest.fixture
def events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("SD_ENERGY_EVENTS_FILE", str(path))
    return path


@pytest.fixture
def batch_calls(monkeypatch):
    """Every ``Generator.run_batch`` call as (phase, images, event fields), passed through unchanged."""
    calls: list[tuple[str, int, dict]] = []
    original = Generator.run_batch
    signature = inspect.signature(original)

    def spy(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        calls.append((a["phase"], len(a["prompts"]), dict(a["event"])))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Generator, "run_batch", spy)
    return calls


def resident(variant: str = "sd-v1.5"):
    """The pipeline ``gen`` will use for ``variant``, loaded into the cache now so a test can hook it."""
    r, v = runner.check_inputs(GenerationRequest(model_variant=variant, weights="tiny", execution=CPU, height=64,
                                                 width=64, save_images=False))
    return runner.load(r, v, PhaseRecorder("cpu"), CACHE).pipe


# --------------------------------------------------------------------------- 1. dtype auto

@pytest.mark.parametrize("capability, dtype", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                               ((8, 6), "bf16"), ((9, 0), "bf16")])
def test_dtype_auto_follows_the_gpus_tensor_cores(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # torch says bf16 is "supported" on a V100 (emulated): that must not decide.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    chosen, why = dtype_choice("auto", "cuda")
    assert chosen == dtype and why.startswith(f"auto: compute capability {capability[0]}.{capability[1]}")


def test_dtype_auto_off_the_gpu_and_explicit_choices(monkeypatch):
    assert dtype_choice("auto", "cpu")[0] == "fp32"
    assert dtype_choice("auto", "mps")[0] == "fp16"
    assert dtype_choice("fp32", "cpu") == ("fp32", "requested")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    chosen, why = dtype_choice("bf16", "cuda")  # asked for: honoured, with the reason it is slow there
    assert chosen == "bf16" and "no bf16 tensor cores" in why and "emulated" in why


def test_dtype_choice_is_recorded_in_the_metrics(tmp_path):
    m = gen(tmp_path)
    c = m["config"]
    assert (c["dtype"], c["dtype_requested"]) == ("fp32", "auto") and c["dtype_reason"].startswith("auto: cpu")
    m = gen(tmp_path, execution=ExecutionOptions(device="cpu", dtype="bf16"))
    assert (m["config"]["dtype"], m["config"]["dtype_requested"], m["config"]["dtype_reason"]) == \
        ("bf16", "bf16", "requested")


@pytest.mark.parametrize("experiment", sorted((REPO / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_experiments_let_the_gpu_choose_the_dtype(experiment):
    """A fixed bf16 would run emulated on a V100 sweep; every experiment leaves the choice to --dtype auto."""
    args = shlex.split(yaml.safe_load(experiment.read_text()).get("app-params", ""))
    if "--dtype" in args:
        assert args[args.index("--dtype") + 1] == "auto", experiment.name


# --------------------------------------------------------------------------- 2. warm-up and compile

def test_measured_shapes_are_the_batch_and_the_last_partial_one():
    assert warmup.measured_batches(5, 2) == [2, 2, 1] and warmup.measured_shapes(5, 2) == [2, 1]
    assert warmup.measured_shapes(4, 2) == [2]
    assert warmup.measured_shapes(3, 8) == [3]  # one batch, smaller than asked


def test_warmup_runs_every_measured_shape_before_the_first_batch(tmp_path, events, batch_calls):
    m = gen(tmp_path, num_images=3, batch_size=2, warmup=2)
    assert [(phase, n) for phase, n, _ in batch_calls] == [("warmup", 2), ("warmup", 1)] * 2 + \
        [("batch", 2), ("batch", 1)]
    assert m["unmeasured_passes"]["warmup"] == 4 and m["phases_s"]["warmup"] > 0
    lines = read_events(events)
    first_batch = next(i for i, e in enumerate(lines) if e["phase"] == "batch")
    assert all(e["batch"] < 0 for e in lines[:first_batch] if "batch" in e)  # unmeasured passes: batches -1, -2...
    assert not any(e["phase"] == "warmup" for e in lines[first_batch:])


def test_one_warmup_by_default_under_the_launcher_none_alone(monkeypatch):
    monkeypatch.delenv("SD_ENERGY_RUN_ID", raising=False)
    assert GenerationRequest().resolved().warmup == 0
    monkeypatch.setenv("SD_ENERGY_RUN_ID", "f1410_r00")  # what the launcher sets for each run
    assert GenerationRequest().resolved().warmup == runner.DEFAULT_WARMUP == 1
    assert GenerationRequest(warmup=0).resolved().warmup == 0  # an explicit --warmup 0 still wins
    from app.cli import parse_options

    assert parse_options([])["warmup"] is None


def test_in_process_workload_warms_up_by_default():
    from app.inprocess import make_workload

    args = ["--weights", "tiny", "--device", "cpu", "--height", "64", "--width", "64"]
    assert make_workload(args).request.warmup == 1
    assert make_workload([*args, "--warmup", "0"]).request.warmup == 0


def test_compile_passes_run_once_per_new_shape_and_report_their_time(monkeypatch):
    """The orchestration with a fake pass and fake torch.compile counters: compile passes only for
    shapes the denoiser has not been compiled for, compile time from the counters, warm-ups after."""
    runs: list[tuple[int, dict]] = []
    counters = iter([(5, 10.0), (7, 12.5)])
    monkeypatch.setattr(warmup, "dynamo_totals", lambda: next(counters))
    compiled: set = set()
    prep = warmup.prepare(lambda n, **ev: runs.append((n, ev)), 5, 2, 1, "cuda", compiled=compiled)
    assert runs == [(2, {"compile": True}), (1, {"compile": True}), (2, {}), (1, {})]
    assert prep.compile_s == 2.5 and prep.compile_source == "torch.compile counters"
    assert set(prep.compile_passes_s) == {2, 1} and compiled == {2, 1}
    runs.clear()
    prep = warmup.prepare(lambda n, **ev: runs.append((n, ev)), 5, 2, 0, "cuda", compiled=compiled)
    assert runs == [] and prep.compile_s is None  # every shape compiled already: nothing to do
    monkeypatch.setattr(warmup, "dynamo_totals", lambda: None)  # a torch without those counters
    prep = warmup.prepare(lambda n, **ev: None, 4, 4, 0, "cuda", compiled=set())
    assert prep.compile_source == "pass wall time" and prep.compile_s == prep.compile_passes_s[4]


def test_batch_size_search_starts_at_64_on_a_gpu_at_every_image_on_the_cpu(monkeypatch):
    monkeypatch.setattr(pipeline, "free_cached_memory", lambda: None)
    tried: list[int] = []

    def run(n, **event):
        tried.append(n)
        if n > 20:
            raise torch.OutOfMemoryError("CUDA out of memory")

    assert warmup.prepare(run, 100, "auto", 0, "cuda").batch_size == 16 and tried == [64, 32, 16]
    tried.clear()
    assert warmup.prepare(run, 30, "auto", 0, "cpu").batch_size == 15 and tried == [30, 15]


def test_compile_compiles_before_the_measured_batches(tmp_path, monkeypatch, events):
    """The real torch.compile (its eager backend: no C++ toolchain needed) on tiny PixArt: the passes
    at both measured shapes compile, the measured batches compile nothing, compile time is reported apart."""
    monkeypatch.setattr(pipeline, "compile_options", lambda device: {"backend": "eager"})
    cache = PipelineCache()
    m = gen(tmp_path, cache=cache, model_variant="pixart-alpha", scheduler=None, steps=2, num_images=3, batch_size=2,
            execution=ExecutionOptions(device="cpu", compile=True))
    c = m["compile"]
    assert c["enabled"] and set(c["compile_passes_s"]) == {"2", "1"} and c["recompiles_in_measured_batches"] == 0
    assert m["compile_s"] > 0 and m["compile_s"] == c["compile_s"]
    assert not any("inside measured batches" in n for n in m["notes"])
    compile_events = [e for e in read_events(events) if e.get("compile")]
    assert compile_events and all(e["phase"] == "warmup" and e["batch"] < 0 for e in compile_events)
    m = gen(tmp_path, cache=cache, model_variant="pixart-alpha", scheduler=None, steps=2, num_images=3, batch_size=2,
            execution=ExecutionOptions(device="cpu", compile=True))
    assert m["compile"]["compile_passes_s"] == {} and m["compile"]["recompiles_in_measured_batches"] == 0
    # Were a shape to skip its compile pass, the measured batch would compile, and the metrics say so.
    monkeypatch.setattr(warmup, "measured_shapes", lambda n_images, batch_size: [])
    m = gen(tmp_path, cache=cache, model_variant="pixart-alpha", scheduler=None, steps=2, height=96, width=96,
            execution=ExecutionOptions(device="cpu", compile=True))
    assert m["compile"]["recompiles_in_measured_batches"] > 0
    assert any("inside measured batches" in n for n in m["notes"])
    cache.clear()


# --------------------------------------------------------------------------- 3. --batch-size auto

@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("CUDA error: out of memory"),
                                 RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
                                 RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
                                 RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)")])
def test_allocation_failures_are_recognised(exc, monkeypatch):
    freed = []
    monkeypatch.setattr(pipeline, "free_cached_memory", lambda: freed.append(1))
    assert is_out_of_memory(exc)
    tried = []

    def run(b):
        tried.append(b)
        if b > 2:
            raise exc

    assert backoff_batches(run, 8) == 2 and tried == [8, 4, 2]
    assert len(freed) == 2  # the cache emptied after each failure, before the next attempt


def test_other_errors_are_not_taken_for_out_of_memory():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error type
    tried = []

    def run(b):
        tried.append(b)
        raise RuntimeError("Expected all tensors to be on the same device")

    with pytest.raises(RuntimeError, match="same device"):
        backoff_batches(run, 8)
    assert tried == [8]


def test_batch_size_auto_searches_before_the_work_window(tmp_path, events, batch_calls):
    """A denoiser that fails to allocate above two images (four with guidance): the failed attempt is an
    unmeasured pass, closed and outside every `batch`; the measured batches use the size found."""
    pipe = resident()

    def allocate(module, args):
        if args[0].shape[0] > 4:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    handle = pipe.unet.register_forward_pre_hook(allocate)
    try:
        m = gen(tmp_path, num_images=4, batch_size="auto", guidance_scale=7.5)
        again = gen(tmp_path, num_images=4, batch_size="auto", guidance_scale=7.5)
    finally:
        handle.remove()
    assert m["config"]["batch_size"] == 2 and m["config"]["batch_size_requested"] == "auto"
    assert m["unmeasured_passes"]["batch_size_search"] == [4, 2] and m["per_batch_latency_s"] and m["images"] == 4
    assert again["unmeasured_passes"]["batch_size_search"] == []  # found once per pipeline, not per run
    assert [c for c in batch_calls if c[2].get("search")] == [("warmup", 4, {"search": 4}), ("warmup", 2, {"search": 2})]
    lines = read_events(events)
    first_save = next(i for i, e in enumerate(lines) if e["phase"] == "save" and e["event"] == "end")
    batch_spans = spans(lines[:first_save], "batch")  # the first generation's
    assert len(batch_spans) == 2
    window = (batch_spans[0][0]["mono_s"], batch_spans[-1][1]["mono_s"])
    search = [e for e in lines if e.get("search")]
    assert {e["phase"] for e in search} == {"warmup"} and len(search) == 4  # two attempts, each closed
    assert all(e["mono_s"] < window[0] for e in search)


# --------------------------------------------------------------------------- 4. weights, memory, NaN

class DtypeCount(TorchDispatchMode):
    """Elements of every tensor any operation produces, per dtype (an fp32 copy would show here)."""

    def __init__(self):
        super().__init__()
        self.numel: dict[torch.dtype, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, list | tuple) else [out]:
            if isinstance(t, torch.Tensor):
                self.numel[t.dtype] = self.numel.get(t.dtype, 0) + t.numel()
        return out


def test_random_flux_is_built_in_bf16_without_an_fp32_copy():
    from app.weights import load_random

    with DtypeCount() as seen:
        pipe = load_random(get_variant("flux.1-schnell"), torch.bfloat16, "meta")
    params = sum(p.numel() for p in pipe.transformer.parameters())
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    # Before: every parameter was made (and initialised) in fp32, then copied: ~34 G fp32 elements.
    assert seen.numel.get(torch.float32, 0) < 0.01 * params


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_weights_initialise_in_half_precision_on_the_cpu(dtype):
    from app.weights import build_component

    cfg = {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64], "layers_per_block": 1,
           "sample_size": 8, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
           "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "cross_attention_dim": 32, "norm_num_groups": 32}
    before = torch.get_default_dtype()
    unet = build_component(cfg, "cpu", dtype)
    assert torch.get_default_dtype() == before  # restored
    assert {p.dtype for p in unet.parameters()} == {dtype}
    assert all(torch.isfinite(p).all() for p in unet.parameters())


def test_peak_memory_is_reset_after_the_warmup_before_the_batches(tmp_path, monkeypatch, events):
    reset_at: list[list[dict]] = []
    monkeypatch.setattr(runner, "reset_peak_memory", lambda device: reset_at.append(read_events(events)))
    gen(tmp_path, warmup=1)
    (seen,) = reset_at
    assert seen[-1]["phase"] == "warmup" and seen[-1]["event"] == "end"
    assert not any(e["phase"] == "batch" for e in seen)


def test_reset_peak_memory_resets_every_visible_gpu(monkeypatch):
    reset = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset.append)
    pipeline.reset_peak_memory("cpu")
    assert reset == []
    pipeline.reset_peak_memory("cuda")
    assert reset == [0, 1]


def nan_output(module, args, output):
    """A forward hook that makes a model's output NaN (the fp16 overflow of a real run, on demand)."""
    if isinstance(output, tuple):
        return (torch.full_like(output[0], float("nan")), *output[1:])
    return torch.full_like(output, float("nan"))


def test_non_finite_latents_after_warmup_stop_the_run(tmp_path, events):
    pipe = resident()
    handle = pipe.unet.register_forward_hook(nan_output)
    try:
        with pytest.raises(NonFiniteError, match=r"the latents .* after warmup -1 .*meaningless"):
            gen(tmp_path, warmup=1)
    finally:
        handle.remove()
    assert not any(e["phase"] == "batch" for e in read_events(events))  # stopped before the work window


def test_non_finite_images_from_a_finite_latent_are_named_as_such(tmp_path):
    pipe = resident()
    handle = pipe.vae.decoder.register_forward_hook(nan_output)
    try:
        with pytest.raises(NonFiniteError, match=r"the decoded images \(the latents were finite\)"):
            gen(tmp_path)
    finally:
        handle.remove()


def test_non_finite_run_exits_3_with_one_line(tmp_path, monkeypatch, capsys):
    from app import weights
    from app.cli import main

    load_tiny = weights.load_tiny

    def nan_unet(variant, dtype):
        pipe = load_tiny(variant, dtype)
        pipe.unet.register_forward_hook(nan_output)
        return pipe

    monkeypatch.setattr(weights, "load_tiny", nan_unet)
    code = main(["--weights", "tiny", "--device", "cpu", "--height", "64", "--width", "64", "--steps", "1",
                 "--warmup", "1", "--no-save-images", "-q", "--output-dir", str(tmp_path)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == pipeline.EXIT_NON_FINITE == 3
    assert len(errors) == 1 and errors[0].startswith("error: the latents")


# --------------------------------------------------------------------------- 5. conversion outside the batch

def test_pil_conversion_and_saving_happen_after_the_last_batch(tmp_path, monkeypatch, events):
    from PIL import Image

    converted: list[float] = []
    fromarray = Image.fromarray

    def timed_fromarray(*args, **kwargs):
        converted.append(time.monotonic())
        return fromarray(*args, **kwargs)

    monkeypatch.setattr(Image, "fromarray", timed_fromarray)
    m = gen(tmp_path, num_images=2, batch_size=1, save_images=True)
    lines = read_events(events)
    last_batch_end = spans(lines, "batch")[-1][1]["mono_s"]
    (save_start, _), = spans(lines, "save")
    assert len(converted) == 2 and min(converted) > last_batch_end and min(converted) >= save_start["mono_s"]
    assert [Image.open(f).size for f in m["files"]] == [(64, 64)] * 2


def test_batch_pixels_match_diffusers_own_pil_output():
    """The batch returns uint8 pixels on the host; they are what diffusers' output_type="pil" gives."""
    wl = load_workload(get_variant("sd-v1.5"), "tiny", "euler", CPU)
    res = Generator(wl, PhaseRecorder("cpu")).run_batch(["a red fox"], None, 64, 64, 2, 7.5, [3])
    assert res.pixels.dtype == torch.uint8 and tuple(res.pixels.shape) == (1, 64, 64, 3)
    with torch.inference_mode():
        ref = wl.pipe(prompt=["a red fox"], num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
                      generator=[torch.Generator("cpu").manual_seed(3)]).images[0]
    assert np.abs(np.asarray(res.images[0], dtype=int) - np.asarray(ref, dtype=int)).max() <= 1


# --------------------------------------------------------------------------- 6. per-step timing, every family

def loop_calls(scheduler, steps: int, calls_per_iteration: int = 1, begin: int = 0) -> list[int]:
    """Drive ``DenoiserCalls`` as a pipeline's loop would: the step of each denoiser call."""
    scheduler.set_timesteps(steps)
    if begin:
        scheduler.set_begin_index(begin)
    calls = DenoiserCalls(scheduler)
    out = []
    for t in scheduler.timesteps[begin:]:
        for _ in range(calls_per_iteration):
            out.append(calls.step_of_call(float(t) if calls.needs_timestep else None))
    return out


@functools.cache
def _built(name: str):
    from app.weights import CONFIG_ROOT, _read

    return schedulers.build(name, "sd1", _read(CONFIG_ROOT / "sd1" / "scheduler.json"))


def _scheduler(name: str):
    """A fresh SD1.5 scheduler of ``name`` (built once: some take 0.3 s to construct)."""
    return copy.deepcopy(_built(name))


@pytest.mark.parametrize("name", [n for n, s in schedulers.SCHEDULERS.items() if not s.flow])
@pytest.mark.parametrize("calls_per_iteration", [1, 2])
def test_every_scheduler_counts_its_denoising_steps(name, calls_per_iteration):
    steps = loop_calls(_scheduler(name), 5, calls_per_iteration)
    assert sorted(set(steps)) == list(range(5)) and steps == sorted(steps)


def test_pndm_startup_call_and_heun_second_call_are_not_steps():
    # PNDM (SD1.5's default): 6 loop iterations for 5 steps, the first two at one step.
    assert loop_calls(_scheduler("pndm"), 5) == [0, 0, 1, 2, 3, 4]
    # Heun: a step is its predictor and corrector calls (diffusers' own grouping), the last one alone.
    assert loop_calls(_scheduler("heun"), 3) == [0, 0, 1, 1, 2]
    # img2img runs the last part of the schedule: strength 0.4 of 5 steps = 2 steps.
    assert loop_calls(_scheduler("euler"), 5, begin=3) == [0, 1]
    assert loop_calls(_scheduler("heun"), 5, begin=6) == [0, 0, 1]


def test_flow_scheduler_counts_its_steps():
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert loop_calls(FlowMatchEulerDiscreteScheduler(shift=3.0), 4, calls_per_iteration=2) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_timestep_is_read_positionally_or_by_name():
    t = torch.tensor([981.0, 981.0])
    assert timestep_value((None, t), {}) == 981.0 and timestep_value((None,), {"timestep": 0.5}) == 0.5
    assert timestep_value((None,), {}) is None


@pytest.mark.parametrize("variant, scheduler", [("pixart-alpha", None), ("pixart-sigma", None),
                                                ("sd-v1.5", "pndm"), ("sd-v1.5", "heun"), ("sd3-medium", None)])
def test_each_family_is_timed_per_denoising_step(tmp_path, events, variant, scheduler):
    """PixArt ignores step callbacks, PNDM and Heun call the denoiser more often than they step: the
    denoiser's hooks give every one of them one denoise_step per step, and the step hook runs once each."""
    wl = load_workload(get_variant(variant), "tiny", scheduler or get_variant(variant).default_scheduler, CPU)
    paced: list[float] = []
    recorder = PhaseRecorder("cpu", events)
    res = Generator(wl, recorder, step_hook=paced.append).run_batch(["a lighthouse"], None, 64, 64, 3, 4.5, [0])
    recorder.close()
    assert len(res.step_times_s) == 3 and len(paced) == 3 and res.phases_s["denoise"] > 0
    steps = spans(read_events(events), "denoise_step")
    assert [s["step"] for s, _ in steps] == [0, 1, 2]
    assert all(t > 0 for t in paced)


def test_refiner_img2img_counts_the_steps_it_runs(tmp_path):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    m = gen(tmp_path, model_variant="sdxl-refiner", init_image=str(init), steps=5, strength=0.4)
    assert [len(s) for s in m["per_step_s"]] == [2]  # int(5 * 0.4) steps of the schedule's end


def test_cpu_threads_sets_torch_threads_on_the_cpu_and_refuses_nonsense(tmp_path, capsys):
    from app.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = tmp_path / "m.json"
        assert main(["--weights", "tiny", "--height", "64", "--width", "64", "--steps", "2", "--no-save-images", "-q",
                     "--device", "cpu", "--cpu-threads", "1", "--output-dir", str(tmp_path),
                     "--export-metrics", str(m)]) == 0
        assert torch.get_num_threads() == 1 and json.loads(m.read_text())["config"]["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "-2"):
        assert main(["--weights", "tiny", "--cpu-threads", bad, "--output-dir", str(tmp_path / "x")]) == 2
        assert "--cpu-threads" in capsys.readouterr().err and not (tmp_path / "x").exists()
