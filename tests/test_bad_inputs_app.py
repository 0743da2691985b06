"""Issue 14: every bad input to the app and its HTTP service is a clean error.

Command line: one stderr line ``error: <option> <value>: <problem>``, exit code 2, no traceback,
nothing created (no output directory, metrics file or events file). The command line runs in this
process (``app.cli.main``), one case per row; only two cases start real processes, to prove the
entry scripts print the same one line. Service: Flask's test client, no port; every refusal is
JSON ``{"error": ..., "field": <name>}`` with a 4xx status, never a 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from conftest import REPO
from PIL import Image

from app import runner
from app.cli import main
from app.pipeline import ExecutionOptions, PipelineCache
from app.runner import GenerationRequest, check_inputs, memory_problem, request_generator
from app.serve import MAX_BODY_BYTES, create_app
from app.timing import PhaseRecorder
from sd_energy_contract import env
from sd_energy_contract.errors import InputError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present here")
NO_MPS = pytest.mark.skipif(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                            reason="an MPS device is present here")

# Config and style files the rows refer to as {name}: file name -> content (bytes for non-text).
FILES: dict[str, str | bytes] = {
    "text.txt": "not an image\n",
    "cfg_steps_str.yaml": "steps: abc\n",
    "cfg_steps_list.yaml": "steps: [1, 2]\n",
    "cfg_steps_float.yaml": "steps: 2.5\n",
    "cfg_guidance_dict.yaml": "guidance_scale: {a: 1}\n",
    "cfg_guidance_nan.yaml": "guidance_scale: .nan\n",
    "cfg_seed_bool.yaml": "seed: true\n",
    "cfg_negative_list.yaml": "negative_prompt: [a, b]\n",
    "cfg_save_maybe.yaml": "save_images: maybe\n",
    "cfg_device_int.yaml": "device: 3\n",
    "cfg_prompt_dict.yaml": "prompt: {a: b}\n",
    "cfg_strength_str.yaml": "strength: high\n",
    "cfg_height_huge.yaml": "height: 1000000\n",
    "style_broken.yaml": "icon2: [unclosed,\n",
    "style_list.yaml": "- a\n- b\n",
    "style_number.yaml": "fancy: 3\n",
    "style_nested.yaml": "fancy: {a: b}\n",
    "style_binary.yaml": b"\xff\xfe\x00bad",
    "style_ok.yaml": "fancy: 'fancy, '\n",
    "prompts_binary.txt": b"\xff\xfe\x00 a cat",
    "prompts_comments.txt": "# only a comment\n\n",
}

# (id, arguments, the option the line must start with, a phrase it must hold). {name} is a file
# from FILES, {dir} an existing directory, {missing} a path that does not exist.
CLI_CASES = [
    pytest.param(["--device", "cuda"], "--device cuda", "no CUDA GPU", id="device-cuda-absent", marks=NO_CUDA),
    pytest.param(["--device", "mps"], "--device mps", "no Apple MPS", id="device-mps-absent", marks=NO_MPS),
    pytest.param(["--device", "tpu"], "--device tpu", "must be one of", id="device-unknown"),
    pytest.param(["--seed", "-1"], "--seed -1", "must be >= 0", id="seed-negative"),
    pytest.param(["--seed", str(2**64)], f"--seed {2**64}", "must be at most", id="seed-over-64-bits"),
    pytest.param(["--seed", str(2**70)], f"--seed {2**70}", "64-bit", id="seed-way-over-64-bits"),
    pytest.param(["--seed", str(2**64 - 1), "--num-images", "2"], "--seed", "image i uses seed + i",
                 id="seed-plus-index-overflows"),
    pytest.param(["--seed", "1.5"], "--seed 1.5", "must be an integer", id="seed-float"),
    pytest.param(["--strength", "0"], "--strength 0.0", "(0, 1]", id="strength-zero"),
    pytest.param(["--strength", "-0.5"], "--strength -0.5", "(0, 1]", id="strength-negative"),
    pytest.param(["--strength", "1.5"], "--strength 1.5", "(0, 1]", id="strength-over-one"),
    pytest.param(["--strength", "nan"], "--strength nan", "finite", id="strength-nan"),
    pytest.param(["--strength", "inf"], "--strength inf", "finite", id="strength-inf"),
    pytest.param(["--model-variant", "sdxl-refiner", "--init-image", "{text.txt}"], "--init-image",
                 "not an image", id="init-image-text-file"),
    pytest.param(["--model-variant", "sdxl-refiner", "--init-image", "{missing}"], "--init-image", "no such file",
                 id="init-image-missing"),
    pytest.param(["--model-variant", "sdxl-refiner", "--init-image", "{dir}"], "--init-image", "is a directory",
                 id="init-image-directory"),
    pytest.param(["--init-image", "{text.txt}"], "--init-image", "not an image", id="init-image-text-any-variant"),
    pytest.param(["--export-metrics", "{dir}"], "--export-metrics", "is a directory", id="export-metrics-dir"),
    pytest.param(["--export-metrics", "{missing}/"], "--export-metrics", "is a directory",
                 id="export-metrics-trailing-slash"),
    pytest.param(["--export-metrics", "{text.txt}/m.json"], "--export-metrics", "not a directory",
                 id="export-metrics-under-a-file"),
    pytest.param(["--output-dir", "{text.txt}"], "--output-dir", "not a directory", id="output-dir-is-a-file"),
    pytest.param(["--output-prefix", "../up"], "--output-prefix ../up", "path separators", id="prefix-parent"),
    pytest.param(["--output-prefix", "a/b"], "--output-prefix a/b", "path separators", id="prefix-slash"),
    pytest.param(["--output-prefix", "a\\b"], "--output-prefix a\\b", "path separators", id="prefix-backslash"),
    pytest.param(["--output-prefix", ".."], "--output-prefix ..", "'..'", id="prefix-dotdot"),
    pytest.param(["--output-prefix", "a\tb"], "--output-prefix", "control characters", id="prefix-control-char"),
    pytest.param(["--num-images", "100000000"], "--num-images 100000000", "at most 10000", id="num-images-huge"),
    pytest.param(["--num-images", "-5"], "--num-images -5", "at least 1", id="num-images-negative"),
    pytest.param(["--images-per-prompt", "100000"], "--images-per-prompt 100000", "at most", id="ipp-huge"),
    pytest.param(["--images-per-prompt", "-1"], "--images-per-prompt -1", "at least 1", id="ipp-negative"),
    pytest.param(["--steps", "1000000"], "--steps 1000000", "at most 1000", id="steps-huge"),
    pytest.param(["--steps", "1001"], "--steps 1001", "at most 1000", id="steps-just-over"),
    pytest.param(["--steps", "-1"], "--steps -1", "at least 1", id="steps-negative"),
    pytest.param(["--steps", "abc"], "--steps abc", "must be an integer", id="steps-not-a-number"),
    pytest.param(["--height", "100000"], "--height 100000", "4x the native 512", id="height-huge"),
    pytest.param(["--width", "4096"], "--width 4096", "at most 2048", id="width-over-4x-native"),
    pytest.param(["--model-variant", "sdxl", "--width", "8192"], "--width 8192", "at most 4096",
                 id="width-over-4x-native-sdxl"),
    pytest.param(["--height", "0"], "--height 0", "at least 1", id="height-zero"),
    pytest.param(["--height", "-64"], "--height -64", "at least 1", id="height-negative"),
    pytest.param(["--width", "0"], "--width 0", "at least 1", id="width-zero"),
    pytest.param(["--height", "nan"], "--height nan", "must be an integer", id="height-nan"),
    pytest.param(["--batch-size", "100000"], "--batch-size 100000", "at most", id="batch-huge"),
    pytest.param(["--batch-size", "-3"], "--batch-size -3", "at least 1", id="batch-negative"),
    pytest.param(["--batch-size", "nan"], "--batch-size nan", "integer or 'auto'", id="batch-nan"),
    pytest.param(["--guidance-scale", "nan"], "--guidance-scale nan", "finite", id="guidance-nan"),
    pytest.param(["--guidance-scale", "inf"], "--guidance-scale inf", "finite", id="guidance-inf"),
    pytest.param(["--guidance-scale", "-inf"], "--guidance-scale -inf", "finite", id="guidance-minus-inf"),
    pytest.param(["--warmup", "-1"], "--warmup -1", ">= 0", id="warmup-negative"),
    pytest.param(["--warmup", "1000000"], "--warmup 1000000", "at most 100", id="warmup-huge"),
    pytest.param(["--benchmark", "--benchmark-runs", "-1"], "--benchmark-runs -1", "at least 1", id="repeats-neg"),
    pytest.param(["--benchmark", "--benchmark-runs", "1000000"], "--benchmark-runs 1000000", "at most",
                 id="repeats-huge"),
    pytest.param(["--harness", "--iterations", "0"], "--iterations 0", "at least 1", id="iterations-zero"),
    pytest.param(["--harness", "--iterations", "1000000"], "--iterations 1000000", "at most", id="iterations-huge"),
    pytest.param(["--harness", "--harness-warmup", "-1"], "--harness-warmup -1", ">= 0", id="harness-warmup-neg"),
    pytest.param(["--harness", "--request-timeout", "nan"], "--request-timeout nan", "finite", id="timeout-nan"),
    pytest.param(["--harness", "--request-timeout", "inf"], "--request-timeout inf", "finite", id="timeout-inf"),
    pytest.param(["--harness", "--request-timeout", "0"], "--request-timeout 0.0", "positive", id="timeout-zero"),
    pytest.param(["--harness", "--request-timeout", "-1"], "--request-timeout -1.0", "positive", id="timeout-neg"),
    pytest.param(["--harness", "--concurrency", "0"], "--concurrency 0", "between 1 and", id="concurrency-zero"),
    pytest.param(["--harness", "--concurrency", "1,100000"], "--concurrency 1,100000", "between 1 and 256",
                 id="concurrency-huge"),
    pytest.param(["--harness", "--concurrency", "a,b"], "--concurrency a,b", "comma-separated", id="concurrency-text"),
    pytest.param(["--config", "{cfg_steps_str.yaml}"], "--steps abc", "key 'steps' in --config", id="cfg-str-for-int"),
    pytest.param(["--config", "{cfg_steps_list.yaml}"], "--steps [1, 2]", "not a list", id="cfg-list-for-int"),
    pytest.param(["--config", "{cfg_steps_float.yaml}"], "--steps 2.5", "not float", id="cfg-float-for-int"),
    pytest.param(["--config", "{cfg_guidance_dict.yaml}"], "--guidance-scale", "key 'guidance_scale'",
                 id="cfg-dict-for-float"),
    pytest.param(["--config", "{cfg_guidance_nan.yaml}"], "--guidance-scale nan", "finite", id="cfg-nan"),
    pytest.param(["--config", "{cfg_seed_bool.yaml}"], "--seed True", "not bool", id="cfg-bool-for-int"),
    pytest.param(["--config", "{cfg_negative_list.yaml}"], "--negative-prompt", "not a list",
                 id="cfg-list-for-string"),
    pytest.param(["--config", "{cfg_save_maybe.yaml}"], "--save-images maybe", "true or false", id="cfg-bad-flag"),
    pytest.param(["--config", "{cfg_device_int.yaml}"], "--device 3", "must be one of", id="cfg-int-for-choice"),
    pytest.param(["--config", "{cfg_prompt_dict.yaml}"], "--prompt", "list", id="cfg-dict-for-list"),
    pytest.param(["--config", "{cfg_strength_str.yaml}"], "--strength high", "must be a number", id="cfg-str-for-float"),
    pytest.param(["--config", "{cfg_height_huge.yaml}"], "--height 1000000", "at most", id="cfg-height-huge"),
    pytest.param(["--style-file", "{missing}"], "--style-file", "cannot read", id="style-file-missing"),
    pytest.param(["--style-file", "{dir}"], "--style-file", "cannot read", id="style-file-directory"),
    pytest.param(["--style-file", "{style_broken.yaml}"], "--style-file", "not valid YAML", id="style-file-broken"),
    pytest.param(["--style-file", "{style_binary.yaml}"], "--style-file", "not valid YAML", id="style-file-binary"),
    pytest.param(["--style-file", "{style_list.yaml}"], "--style-file", "must be a mapping", id="style-file-list"),
    pytest.param(["--style-file", "{style_number.yaml}", "--style", "fancy"], "--style-file", "style 'fancy'",
                 id="style-file-number-value"),
    pytest.param(["--style-file", "{style_nested.yaml}"], "--style-file", "not dict", id="style-file-nested"),
    pytest.param(["--style-file", "{style_ok.yaml}", "--style", "plain"], "--style plain", "unknown style",
                 id="style-not-in-file"),
    pytest.param(["--prompt-file", "{prompts_binary.txt}"], "--prompt-file", "not UTF-8 text", id="prompt-file-binary"),
    pytest.param(["--prompt-file", "{dir}"], "--prompt-file", "Is a directory", id="prompt-file-directory"),
    pytest.param(["--prompt-file", "{prompts_comments.txt}"], "--prompt-file", "holds no prompt",
                 id="prompt-file-no-prompt"),
    pytest.param(["--compare-models", ",,"], "--compare-models ,,", "names no model", id="compare-models-empty"),
    pytest.param(["--compare-models", "sd-v15,sd-v1.5"], "--compare-models sd-v15", "unknown model variant",
                 id="compare-models-typo"),
    pytest.param(["--model-family", "sd9", "--custom-model", "x"], "--model-family sd9", "must be one of",
                 id="model-family-unknown"),
    # Moved from tests/test_app_inputs.py (same phrases, now also: the line starts with the option).
    pytest.param(["--model-variant", "sd-v15"], "--model-variant sd-v15",
                 "unknown model variant 'sd-v15' (did you mean sd-v1.5", id="variant-typo"),
    pytest.param(["--scheduler", "eulr"], "--scheduler eulr", "unknown scheduler 'eulr' (did you mean euler",
                 id="scheduler-typo"),
    pytest.param(["--scheduler", "flow-euler"], "--scheduler flow-euler",
                 "does not fit the noise-prediction model family 'sd1'", id="scheduler-flow-on-sd1"),
    pytest.param(["--model-variant", "sd3-medium", "--scheduler", "ddim"], "--scheduler ddim",
                 "does not fit the flow-matching model family 'sd3'", id="scheduler-ddim-on-sd3"),
    pytest.param(["--steps", "0"], "--steps 0", "must be at least 1", id="steps-zero"),
    pytest.param(["--height", "65"], "--height 65", "must be a positive multiple of 8", id="height-not-multiple"),
    pytest.param(["--model-variant", "sd3-medium", "--width", "520"], "--width 520", "must be a positive multiple of 16",
                 id="width-not-multiple-sd3"),
    pytest.param(["--batch-size", "0"], "--batch-size 0", "must be at least 1", id="batch-zero"),
    pytest.param(["--batch-size", "many"], "--batch-size many", "must be an integer or 'auto'", id="batch-text"),
    pytest.param(["--guidance-scale", "-1"], "--guidance-scale -1.0", "must be >= 0", id="guidance-negative"),
    pytest.param(["--prompt-file", "/no/such/prompts.txt"], "--prompt-file /no/such/prompts.txt", "No such file",
                 id="prompt-file-missing"),
    pytest.param(["--model-variant", "sdxl-refiner"], "--init-image",
                 "sdxl-refiner is an img2img refiner and needs --init-image", id="refiner-without-init-image"),
    pytest.param(["--model-variant", "sdxl-lightning", "--steps", "3"], "--steps 3",
                 "ships checkpoints for (2, 4, 8) steps only", id="lightning-steps"),
    pytest.param(["--style", "cubist"], "--style cubist", "unknown style", id="style-unknown"),
    pytest.param(["--num-images", "0"], "--num-images 0", "must be at least 1", id="num-images-zero"),
    pytest.param(["--benchmark-runs", "0"], "--benchmark-runs 0", "must be at least 1", id="repeats-zero"),
    pytest.param(["--nonsense-flag"], "--nonsense-flag", "no such option", id="unknown-option"),
    pytest.param(["--steps"], "--steps", "requires an argument", id="option-without-value"),
    pytest.param(["stray"], "arguments", "unexpected extra argument (stray)", id="stray-argument"),
]


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """The rows' placeholders: FILES written under tmp_path, plus {dir} and {missing}."""
    for name, content in FILES.items():
        target = tmp_path / name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    (tmp_path / "adir").mkdir()
    return {**{name: str(tmp_path / name) for name in FILES}, "dir": str(tmp_path / "adir"),
            "missing": str(tmp_path / "missing" / "nothing")}


def _fill(arg: str, files: dict[str, str]) -> str:
    """``{name}`` placeholders replaced (not str.format: file names hold dots)."""
    for name, path in files.items():
        arg = arg.replace("{" + name + "}", path)
    return arg


@pytest.mark.parametrize("args, option, phrase", CLI_CASES)
def test_cli_bad_input(args, option, phrase, files, tmp_path, monkeypatch, capsys):
    out, metrics = tmp_path / "out", tmp_path / "metrics.json"
    events, launcher_metrics = tmp_path / "events.jsonl", tmp_path / "launcher.json"
    monkeypatch.setenv(env.EVENTS_FILE, str(events))
    monkeypatch.setenv(env.METRICS_FILE, str(launcher_metrics))
    argv = [_fill(a, files) for a in args]
    first = ["--weights", "tiny", "-q"]  # before the row's own, so a row may end with an option missing its value
    if "--output-dir" not in argv:
        first += ["--output-dir", str(out)]
    if "--export-metrics" not in argv:
        first += ["--export-metrics", str(metrics)]
    rc = main([*first, *argv])
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {option}"), lines[0]
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    for path in (out, metrics, events, launcher_metrics):
        assert not path.exists(), f"{path} was created"


def test_checks_create_no_missing_output_dir(tmp_path, capsys):
    """A deep, missing --output-dir is checked by its nearest existing parent: a refusal by a later
    check (here the metrics path) leaves none of it behind (it used to be created by the check)."""
    out = tmp_path / "a" / "b" / "c"
    rc = main(["--output-dir", str(out), "--export-metrics", str(tmp_path), "--weights", "tiny", "-q"])
    assert rc == 2 and "--export-metrics" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_memory_bound_on_a_gpu(monkeypatch, capsys, tmp_path):
    """On CUDA a batch that can never fit in the GPU's memory is refused before loading; tiling lifts it."""
    r = GenerationRequest(height=2048, width=2048, batch_size=8, num_images=8)
    option, value, problem = memory_problem(r, total_bytes=8 * 2**30)
    assert (option, value) == ("--batch-size", 8) and "the GPU has 8.0 GiB" in problem
    assert memory_problem(GenerationRequest(height=2048, width=2048, batch_size=1, num_images=1), 2**30)[0] == "--height"
    assert memory_problem(r, total_bytes=80 * 2**30) is None
    tiled = GenerationRequest(height=2048, width=2048, batch_size=8, num_images=8,
                              execution=ExecutionOptions(vae_tiling=True))
    assert memory_problem(tiled, total_bytes=2**30) is None
    monkeypatch.setattr(runner, "_cuda_total_bytes", lambda: 8 * 2**30)  # a small GPU, as seen by check_inputs
    rc = main(["--device", "cuda", "--height", "2048", "--width", "2048", "--batch-size", "8", "--num-images", "8",
               "--weights", "tiny", "--output-dir", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --batch-size 8:") and "GiB" in err
    assert not (tmp_path / "out").exists()


def test_python_api_types_are_checked():
    """The Python API refuses what the command line cannot produce: a string for steps, a bool seed."""
    for kwargs, option in (({"steps": "4"}, "--steps"), ({"seed": True}, "--seed"), ({"guidance_scale": "7"},
                           "--guidance-scale"), ({"prompts": "a cat"}, "--prompt"), ({"batch_size": 2.0}, "--batch-size"),
                           ({"custom_model": "x", "model_family": "nope"}, "--model-family")):
        with pytest.raises(InputError) as exc:
            check_inputs(GenerationRequest(weights="tiny", save_images=False, **kwargs))
        assert exc.value.option == option, (kwargs, exc.value)


def test_good_edge_values_pass(files, tmp_path):
    """The bounds are bounds, not bans: the largest seed, strength 1, steps 1000, 4x native, a style file."""
    r, _ = check_inputs(GenerationRequest(
        seed=2**64 - 1, strength=1.0, steps=1000, height=2048, width=8, weights="tiny", style_file=files["style_ok.yaml"],
        style="fancy", output_prefix="run1_", export_metrics=str(tmp_path / "new" / "m.json"),
        output_dir=str(tmp_path / "deep" / "out")))
    assert r.seed == 2**64 - 1 and not (tmp_path / "deep").exists() and not (tmp_path / "new").exists()


def test_entry_scripts_print_one_line():
    """The real entry points, as users run them: the app script and the service print one line, exit 2.
    Both start at once, so the file pays for one interpreter start-up rather than two."""
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
             for args in ([str(REPO / "app" / "StableDiffusionViaHF.py"), "--steps", "100000", "--weights", "tiny"],
                          ["-m", "app.serve", "--weights", "tiny", "--steps-typo"])]
    (app_out, app_err), (srv_out, srv_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 2 and app_err == "error: --steps 100000: must be at most 1000 " \
                                                   "(schedulers are trained on 1000 timesteps)\n", app_err
    assert procs[1].returncode == 2 and srv_err.splitlines() == ["error: --steps-typo: no such option"], srv_err
    assert "Traceback" not in app_err + srv_err


# ---------------------------------------------------------------------------------------------- service

@pytest.fixture(scope="module")
def service():
    """The service on the real ``request_generator`` (every request goes through ``check_inputs``) over a
    tiny model that is never loaded: a refused request must not reach the pipeline."""
    base, _ = check_inputs(GenerationRequest(weights="tiny", execution=ExecutionOptions(device="cpu"),
                                             save_images=False))
    cache = PipelineCache()
    app = create_app(request_generator(base, PhaseRecorder("cpu"), cache), {"model_variant": "sd-v1.5"})
    return app.test_client(), cache


OK = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}

# (id, body: bytes sent as is, or an object sent as JSON, or a dict of changes to OK; status; field; phrase)
SERVER_CASES = [
    pytest.param(b"not json", 400, "body", "not JSON", id="not-json"),
    pytest.param(b"\xff\xfe\x00", 400, "body", "not JSON", id="not-utf8"),
    pytest.param(b"", 400, "body", "not JSON", id="empty-body"),
    pytest.param(b"[1, 2]", 400, "body", "JSON object, not list", id="json-list"),
    pytest.param(b'"a cat"', 400, "body", "JSON object, not str", id="json-string"),
    pytest.param(b"null", 400, "body", "JSON object", id="json-null"),
    pytest.param(b"{}", 400, "prompt", "'prompt' is required", id="prompt-missing"),
    pytest.param({"prompt": ["a", "b"]}, 400, "prompt", "must be a string, not list", id="prompt-list"),
    pytest.param({"prompt": 5}, 400, "prompt", "must be a string, not int", id="prompt-number"),
    pytest.param({"prompt": None}, 400, "prompt", "must be a string", id="prompt-null"),
    pytest.param({"num_inference_steps": "4"}, 400, "num_inference_steps", "integer, not str", id="steps-string"),
    pytest.param({"num_inference_steps": 4.5}, 400, "num_inference_steps", "integer, not float", id="steps-float"),
    pytest.param({"num_inference_steps": True}, 400, "num_inference_steps", "not bool", id="steps-bool"),
    pytest.param({"num_inference_steps": 0}, 400, "num_inference_steps", "--steps 0", id="steps-zero"),
    pytest.param({"num_inference_steps": 100000}, 400, "num_inference_steps", "at most 1000", id="steps-huge"),
    pytest.param({"width": "64"}, 400, "width", "integer, not str", id="width-string"),
    pytest.param({"width": 100000}, 400, "width", "at most 2048", id="width-huge"),
    pytest.param({"width": 65}, 400, "width", "multiple of 8", id="width-not-multiple"),
    pytest.param({"height": [64]}, 400, "height", "integer, not list", id="height-list"),
    pytest.param({"height": -64}, 400, "height", "at least 1", id="height-negative"),
    pytest.param({"guidance_scale": "7"}, 400, "guidance_scale", "number, not str", id="guidance-string"),
    pytest.param(b'{"prompt": "a", "guidance_scale": NaN}', 400, "guidance_scale", "finite", id="guidance-nan"),
    pytest.param(b'{"prompt": "a", "guidance_scale": Infinity}', 400, "guidance_scale", "finite", id="guidance-inf"),
    pytest.param({"guidance_scale": -1}, 400, "guidance_scale", ">= 0", id="guidance-negative"),
    pytest.param({"seed": 1.5}, 400, "seed", "integer, not float", id="seed-float"),
    pytest.param({"seed": -1}, 400, "seed", ">= 0", id="seed-negative"),
    pytest.param({"seed": 2**70}, 400, "seed", "64-bit", id="seed-over-64-bits"),
    pytest.param({"num_images": 0}, 400, "num_images", "between 1 and 16", id="images-zero"),
    pytest.param({"num_images": 100000}, 400, "num_images", "between 1 and 16", id="images-huge"),
    pytest.param({"num_images": "2"}, 400, "num_images", "integer, not str", id="images-string"),
    pytest.param({"steps": 4}, 400, "steps", "did you mean 'num_inference_steps'", id="unknown-field"),
    pytest.param(b'{"prompt": "' + b"a" * (MAX_BODY_BYTES + 1) + b'"}', 413, "body", "over 1048576 bytes",
                 id="body-over-1MiB"),
]


@pytest.mark.parametrize("body, status, field, phrase", SERVER_CASES)
def test_service_bad_request(service, body, status, field, phrase):
    client, cache = service
    if isinstance(body, dict):
        body = json.dumps({**OK, **body})
    resp = client.post("/generate", data=body, content_type="application/json")
    assert resp.status_code == status, resp.get_data(as_text=True)
    data = resp.get_json()
    assert data["field"] == field and phrase in data["error"], data
    assert "Traceback" not in resp.get_data(as_text=True)
    assert cache.loads == 0  # refused before the pipeline


def test_service_other_errors_are_json(service):
    client, _ = service
    resp = client.get("/generate")
    assert resp.status_code == 405 and "Method Not Allowed" in resp.get_json()["error"]
    resp = client.get("/nothing-here")
    assert resp.status_code == 404 and resp.get_json()["field"] is None


def test_service_passes_typed_fields_and_failure_is_json_500():
    """A valid request reaches ``generate`` with its defaults; a failure inside generation is a JSON 500."""
    calls = []

    def fake(prompt, width, height, num_images, steps, guidance, seed=0):
        calls.append((prompt, width, height, num_images, steps, guidance, seed))
        if prompt == "boom":
            raise RuntimeError("device lost")
        return [Image.new("RGB", (8, 8))]

    client = create_app(fake, {}).test_client()
    resp = client.post("/generate", json={"prompt": "a cat", "guidance_scale": 3})
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    assert calls == [("a cat", 512, 512, 1, 25, 3, 0)]
    resp = client.post("/generate", json={"prompt": "boom"})
    assert resp.status_code == 500 and resp.get_json()["error"] == "internal error: RuntimeError: device lost"


def test_health_answers_while_a_generation_runs():
    """``/health`` takes no generation lock: it answers while a request is inside ``generate``."""
    inside, release = threading.Event(), threading.Event()
    lock = threading.Lock()  # what request_generator holds around a generation

    def slow(prompt, width, height, num_images, steps, guidance, seed=0):
        with lock:
            inside.set()
            assert release.wait(30)
            return [Image.new("RGB", (8, 8))]

    app = create_app(slow, {"model_variant": "tiny"})
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "gen", app.test_client().post("/generate", json={"prompt": "a"}).status_code))
    worker.start()
    try:
        assert inside.wait(30)
        assert lock.locked()
        health = app.test_client().get("/health")
        assert health.status_code == 200 and health.get_json()["status"] == "ok"
        assert "gen" not in result  # still generating when /health answered
    finally:
        release.set()
        worker.join(30)
    assert result["gen"] == 200


def test_service_on_a_busy_port_is_one_line_before_any_model_loads(capsys, monkeypatch):
    import socket

    from app import serve

    monkeypatch.setattr(runner, "load", lambda *a, **k: pytest.fail("the model must not load for a busy port"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert serve.main(["--weights", "tiny", "--device", "cpu", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
    assert serve.main(["--weights", "tiny", "--host", "no.such.host.invalid", "--port", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --host no.such.host.invalid: not an address to listen on")
