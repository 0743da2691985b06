"""Command line of the workload (``python app/StableDiffusionViaHF.py`` / ``sd-energy-app``).

Thin by design: parse, turn options into a ``GenerationRequest``, hand it to the runner or a
suite. Every check lives in ``runner.check_inputs`` so the Python API validates the same way.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import click

from profiling.cli_support import config_option, run_cli
from sd_energy_contract.errors import InputError

from . import models, schedulers
from .models import ModelVariant
from .pipeline import ATTENTION_CHOICES, EXIT_NON_FINITE, ExecutionOptions, NonFiniteError, PipelineCache
from .runner import GenerationRequest
from .timing import PhaseRecorder

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _list_variants() -> None:
    click.echo(f"{'variant':<20} {'family':<13} {'size':>5} {'steps':>5} {'sched':<11} {'cfg':>4} {'GiB':>5}  hub id")
    for v in models.VARIANTS.values():
        click.echo(f"{v.key:<20} {v.family:<13} {v.native_size:>5} {v.default_steps:>5} {v.default_scheduler:<11} "
                   f"{v.default_guidance:>4} {v.approx_memory_gib:>5}  {v.hub_id}  ({v.notes})")


def _list_schedulers() -> None:
    for s in schedulers.SCHEDULERS.values():
        kind = "flow" if s.flow else "noise-pred"
        click.echo(f"{s.name:<14} {s.class_name:<34} {kind:<10} {s.description}")


def _expects(param: click.Parameter) -> str:
    """What a value of ``param``'s type must be, in the words of the one-line error."""
    t = param.type
    if isinstance(t, click.Choice):
        return f"must be one of {', '.join(map(str, t.choices))}"
    for kind, words in ((click.types.BoolParamType, "must be true or false"), (click.types.IntParamType,
                        "must be an integer"), (click.types.FloatParamType, "must be a number"),
                        (click.types.StringParamType, "must be a string")):
        if isinstance(t, kind):
            return words
    return f"must be a {t.name}"


# The Python types a --config (YAML) value may have for each click type; anything else is refused
# rather than converted: int() of a list raised TypeError (a traceback), str() of a list became a
# prompt such as "['a', 'b']", int(2.5) silently ran 2 steps and `seed: true` ran seed 1.
_CONFIG_TYPES: tuple[tuple[type[click.ParamType], tuple[type, ...]], ...] = (
    (click.types.BoolParamType, (bool,)), (click.types.IntParamType, (int,)),
    (click.types.FloatParamType, (int, float)), (click.types.StringParamType, (str, int, float)))


class AppOption(click.Option):
    """An option whose bad value, typed or from ``--config``, is an ``InputError`` naming the option
    and the value (``error: --steps abc: must be an integer``) instead of click's differently worded
    message or, for a wrongly typed config value, a traceback."""

    def handle_parse_result(self, ctx: click.Context, opts, args):
        if opts.get("config"):  # remembered so a config value's error can name its file
            ctx.meta["app.config_file"] = opts["config"]
        return super().handle_parse_result(ctx, opts, args)

    def type_cast_value(self, ctx: click.Context, value):
        from click.core import ParameterSource

        name = max(self.opts, key=len)
        if value is None or ctx.get_parameter_source(self.name) is not ParameterSource.DEFAULT_MAP:
            try:
                return super().type_cast_value(ctx, value)
            except (click.BadParameter, TypeError, ValueError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(name, value, _expects(self)) from None
        where = f"(key {self.name!r} in --config {ctx.meta.get('app.config_file', '')})".replace(" )", ")")
        allowed = next((ok for kind, ok in _CONFIG_TYPES if isinstance(self.type, kind)), (str,))
        items = value if self.multiple else [value]
        if self.multiple and isinstance(value, str):
            items = value = [value]  # one prompt: a string is a list of one
        elif self.multiple and not isinstance(value, list):
            raise InputError(name, value, f"must be a list of values {where}")
        for item in items:
            if isinstance(item, list | dict):
                raise InputError(name, value, f"{_expects(self)}, not a {type(item).__name__} {where}")
            if not isinstance(item, allowed) or (bool not in allowed and isinstance(item, bool)):
                raise InputError(name, value, f"{_expects(self)}, not {type(item).__name__} {where}")
        try:
            return super().type_cast_value(ctx, value)
        except (click.BadParameter, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(name, value, f"{_expects(self)} {where}") from None


class AppCommand(click.Command):
    """A command whose usage errors (an unknown option, an option without its value, a stray argument)
    are ``InputError`` lines that start with the option, like every other bad input, instead of click's
    ``No such option '--stepz'.`` wording."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            close = f" (did you mean {', '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
            raise InputError(exc.option_name, None, f"no such option{close}") from None
        except click.BadOptionUsage as exc:
            raise InputError(exc.option_name, None, exc.message.replace(f"Option {exc.option_name!r} ", "")
                             .rstrip(".")) from None
        except click.UsageError as exc:
            message = exc.format_message().rstrip(".").replace("Got unexpected", "unexpected")
            raise InputError("arguments", None, f"{message}; every value follows its --option") from None


def option(*decls: str, **kwargs):
    """``click.option`` with ``AppOption``: every option of this command line reports errors alike."""
    return click.option(*decls, cls=AppOption, **kwargs)


def _batch_size(ctx, param, value):
    if value is None or value == "auto":
        return value or 1
    try:
        return int(value)
    except ValueError:
        raise InputError("--batch-size", value, "must be an integer or 'auto'") from None


def _prompts(prompt: tuple[str, ...], prompt_file: str | None) -> list[str]:
    prompts = list(prompt)
    if prompt_file:
        try:
            lines = Path(prompt_file).read_text().splitlines()
        except OSError as exc:
            raise InputError("--prompt-file", prompt_file, exc.strerror or "cannot read") from None
        except UnicodeDecodeError as exc:  # a binary file was a traceback
            raise InputError("--prompt-file", prompt_file, f"not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise InputError("--prompt-file", prompt_file, "holds no prompt")
    return prompts


@click.command(cls=AppCommand, context_settings=CONTEXT)
@config_option
@option("--model-variant", default="sd-v1.5", show_default=True, help="Registered variant (--list-variants).")
@option("--custom-model", default=None, help="Any hub id or local directory of a diffusers pipeline.")
@option("--model-family", default="sd1", type=click.Choice(sorted(models.FAMILY_PIPELINES)),
              show_default=True, help="Family of --custom-model.")
@option("--weights", default="auto", type=click.Choice(["auto", "pretrained", "random", "tiny"]),
              show_default=True, help="auto: real weights if on disk (or a GPU can fetch them), else tiny.")
@option("--allow-pickle", is_flag=True, help="Also load .bin/.ckpt pickle weights (unsafe for untrusted files).")
@option("--scheduler", default=None, help="Sampler (--list-schedulers); default: the variant's own.")
@option("--device", default="auto", type=click.Choice(["auto", "cuda", "mps", "cpu"]), show_default=True)
@option("--dtype", default="auto", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), show_default=True,
        help="auto: bf16 on GPUs with bf16 tensor cores (compute capability >= 8.0), fp16 on older ones, fp32 on CPU.")
@option("--attention", default="sdpa", type=click.Choice(ATTENTION_CHOICES), show_default=True)
@option("--cpu-offload", default="none", type=click.Choice(["none", "model", "sequential"]), show_default=True)
@option("--vae-slicing", is_flag=True)
@option("--vae-tiling", is_flag=True)
@option("--channels-last", is_flag=True)
@option("--cpu-threads", type=int, default=None,
        help="CPU runs: torch threads (default: one per core). 1 keeps its pace on a busy shared host.")
@option("--compile", "compile_", is_flag=True,
        help="torch.compile the UNet/transformer, compiled for the measured shapes before measuring.")
@option("--prompt", multiple=True, help="Prompt (repeatable).")
@option("--prompt-file", default=None, help="One prompt per line (# comments).")
@option("--negative-prompt", default=None)
@option("--height", type=int, default=None, help="Default: the variant's native size.")
@option("--width", type=int, default=None)
@option("--steps", type=int, default=None, help="Denoising steps; default: the variant's own.")
@option("--guidance-scale", type=float, default=None)
@option("--seed", type=int, default=0, show_default=True)
@option("--num-images", type=int, default=None, help="Default: prompts x images-per-prompt.")
@option("--batch-size", default="1", callback=_batch_size, show_default=True,
        help="N, or auto: the largest that fits, found before measuring.")
@option("--images-per-prompt", type=int, default=1, show_default=True)
@option("--warmup", type=int, default=None,
        help="Unmeasured rounds at every measured batch shape before measuring; default 1 under the launcher, else 0.")
@option("--style", default=None, help="Prompt prefix preset (icon, photo, ...).")
@option("--style-file", default=None, help="YAML of name: prefix, adding to configs/styles.yaml.")
@option("--init-image", default=None, help="Input image for img2img (sdxl-refiner).")
@option("--strength", type=float, default=0.3, show_default=True, help="img2img strength.")
@option("--output-dir", default="outputs", show_default=True)
@option("--output-prefix", default="")
@option("--save-images/--no-save-images", default=True, show_default=True)
@option("--export-metrics", default=None, help="Write the metrics JSON here (atomically).")
@option("--clip-model", default=None, help="Local CLIP directory: add the CLIP score of each image to the metrics.")
@option("--benchmark", is_flag=True, help="Run --benchmark-type instead of one generation.")
@option("--benchmark-type", default="speed",
              type=click.Choice(["speed", "quality", "memory_stress", "artistic_styles", "energy_research", "icons"]))
@option("--benchmark-runs", type=int, default=3, show_default=True, help="Repeats per case (mean/std/CV).")
@option("--scheduler-comparison", is_flag=True, help="Every scheduler that fits the model, same seed.")
@option("--multi-resolution", is_flag=True, help="0.5x to 1.25x the native size.")
@option("--compare-models", default=None, help="Comma-separated variants: same prompts and seeds, one after another.")
@option("--keep-loaded", is_flag=True, help="Compare in dev mode: keep every model resident.")
@option("--quick", is_flag=True, help="Icon benchmark: one model, two prompts.")
@option("--harness", is_flag=True, help="Throughput/latency harness on this pipeline (or --url) at --concurrency levels.")
@option("--concurrency", default="1,2,4", show_default=True, help="Harness concurrency levels.")
@option("--iterations", type=int, default=3, show_default=True, help="Harness requests per worker per level.")
@option("--harness-warmup", type=int, default=1, show_default=True, help="Unrecorded requests per level.")
@option("--request-timeout", type=float, default=300.0, show_default=True, help="Harness per-request limit (s).")
@option("--url", default=None, help="Benchmark this HTTP image service instead of the local pipeline.")
@option("--prompt-set", default="default", type=click.Choice(["default", "icons"]), show_default=True,
              help="Built-in harness prompts when no --prompt/--prompt-file is given.")
@option("--profile-compute", is_flag=True,
              help="Print FLOPs and parameters per component for the variant at --height/--width/--steps, and exit.")
@option("--list-variants", is_flag=True)
@option("--list-schedulers", is_flag=True)
@option("-q", "--quiet", is_flag=True)
def cli(**o):
    """Generate images with a diffusion model and measure time, memory and throughput."""
    if o["list_variants"]:
        return _list_variants()
    if o["list_schedulers"]:
        return _list_schedulers()
    check_mode_options(o)
    req = request_from_options(o)
    log = (lambda *_: None) if o["quiet"] else click.echo
    warnings.filterwarnings("ignore")
    quiet_libraries()
    from .runner import check_inputs, run_generation

    resolved, variant = check_inputs(req)
    if o["profile_compute"]:
        from .flops import variant_table

        rows = variant_table(variant, resolved.height, resolved.width, resolved.steps, resolved.guidance_scale)
        for r in rows:
            log(f"{r['component']:<15} params {r['params'] / 1e6:9.1f} M  {r['flops_per_call'] / 1e12:9.4f} TFLOPs/call "
                f"({r['attention_flops_per_call'] / 1e12:.4f} attention) x {r['calls_per_image']:g} = "
                f"{r['flops_per_image'] / 1e12:.4f} TFLOPs/image")
        log(f"{variant.key} {resolved.height}x{resolved.width}, {resolved.steps} steps, guidance "
            f"{resolved.guidance_scale}: {sum(r['flops_per_image'] for r in rows) / 1e12:.3f} TFLOPs per image")
        return 0
    if any(o[k] for k in MODE_OPTIONS):  # the informational ones have returned above
        return _run_mode(o, req, resolved, variant, log)
    m = run_generation(req, log=log)
    c = m["config"]
    log(f"{c['model_variant']} ({c['weights']} weights, {c['dtype']}, {c['device']}), {c['scheduler_class']}: "
        f"{m['images']} image(s) {c['height']}x{c['width']} x {c['steps']} steps in {m['generation_s']:.3f} s = "
        f"{m['images_per_s']:.3f} img/s, {m['steps_per_s']:.2f} steps/s, peak {m['peak_memory_mib']:.0f} MiB")
    log("phases: " + json.dumps({k: round(v, 4) for k, v in m["phases_s"].items()}))
    if "clip_score" in m:
        log(f"CLIP score: mean {m['clip_score']['mean']:.2f} over {len(m['clip_score']['per_image'])} image(s)")
    if o["export_metrics"]:
        log(f"metrics: {o['export_metrics']}")
    return 0


MAX_REPEATS = 1000  # --benchmark-runs, --iterations: repeats per case / requests per worker
MAX_CONCURRENCY = 256  # harness workers: each is a thread with a request in flight


def _count(o: dict, key: str, low: int, high: int) -> None:
    option = "--" + key.replace("_", "-")
    if o[key] < low:
        raise InputError(option, o[key], f"must be at least {low}" if low else "must be >= 0")
    if o[key] > high:
        raise InputError(option, o[key], f"must be at most {high}")


def concurrency_levels(text: str) -> list[int]:
    """``--concurrency 1,2,4`` as a list of levels, each between 1 and ``MAX_CONCURRENCY``."""
    try:
        levels = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise InputError("--concurrency", text, "must be comma-separated integers, e.g. 1,2,4") from None
    if not levels or not all(1 <= c <= MAX_CONCURRENCY for c in levels):
        raise InputError("--concurrency", text, f"levels must be integers between 1 and {MAX_CONCURRENCY}")
    return levels


def check_mode_options(o: dict) -> None:
    """The options of the suites and the harness that ``check_inputs`` does not see, checked before
    any work whatever mode runs (the harness's used to be checked only once the harness started)."""
    _count(o, "benchmark_runs", 1, MAX_REPEATS)
    _count(o, "iterations", 1, MAX_REPEATS)
    _count(o, "harness_warmup", 0, MAX_REPEATS)
    timeout = o["request_timeout"]
    if not (math.isfinite(timeout) and timeout > 0):
        raise InputError("--request-timeout", timeout, "must be a positive, finite number of seconds")
    concurrency_levels(o["concurrency"])


# Options that pick a mode other than one generation run.
MODE_OPTIONS = ("compare_models", "harness", "benchmark", "scheduler_comparison", "multi_resolution",
                "profile_compute", "list_variants", "list_schedulers")


def request_from_options(o: dict) -> GenerationRequest:
    """The parsed options as a ``GenerationRequest``: the one translation, shared by the command line
    and the in-process workload, so both accept exactly the same arguments."""
    return GenerationRequest(
        model_variant=o["model_variant"], custom_model=o["custom_model"], model_family=o["model_family"],
        weights=o["weights"], allow_pickle=o["allow_pickle"], scheduler=o["scheduler"],
        execution=ExecutionOptions(o["device"], o["dtype"], o["attention"], o["cpu_offload"], o["vae_slicing"],
                                   o["vae_tiling"], o["channels_last"], o["compile_"], o["cpu_threads"]),
        prompts=_prompts(o["prompt"], o["prompt_file"]), negative_prompt=o["negative_prompt"],
        height=o["height"], width=o["width"], steps=o["steps"], guidance_scale=o["guidance_scale"], seed=o["seed"],
        num_images=o["num_images"], batch_size=o["batch_size"], images_per_prompt=o["images_per_prompt"],
        warmup=o["warmup"], style=o["style"], style_file=o["style_file"], init_image=o["init_image"],
        strength=o["strength"], output_dir=o["output_dir"], output_prefix=o["output_prefix"],
        save_images=o["save_images"], export_metrics=o["export_metrics"], clip_model=o["clip_model"])


def parse_options(argv: list[str]) -> dict:
    """``argv`` parsed by this command line (``--config`` included) without running it; a bad
    argument is an ``InputError`` naming it."""
    asks = [a for a in argv if a in CONTEXT["help_option_names"]]
    if asks:
        raise InputError(asks[0], None, "asks for help, not for a generation run")
    try:
        with cli.make_context("StableDiffusionViaHF.py", list(argv), resilient_parsing=False) as ctx:
            return dict(ctx.params)
    except click.NoSuchOption as exc:
        close = f" (did you mean {', '.join(sorted(exc.possibilities))}?)" if exc.possibilities else ""
        raise InputError(exc.option_name, None, f"no such option{close}") from None
    except click.BadParameter as exc:
        name = exc.param.opts[0] if exc.param is not None and exc.param.opts else (exc.param_hint or "argument")
        raise InputError(str(name), None, exc.message) from None
    except click.UsageError as exc:
        raise InputError("arguments", " ".join(argv), exc.format_message()) from None


def _run_mode(o: dict, req: GenerationRequest, resolved: GenerationRequest, variant: ModelVariant, log) -> int:
    """Model comparison, the icon benchmark, the harness, the suites: one events file (the launcher's,
    if any) and one pipeline cache for the whole invocation."""
    from . import suites
    from .runner import launcher_metrics_file, metrics_targets

    out = Path(o["output_dir"])
    explicit = frozenset(_given(("height", "width", "steps", "guidance_scale", "scheduler")))
    targets = metrics_targets(req.export_metrics, launcher_metrics_file())
    recorder = PhaseRecorder.from_env(resolved.execution.device)
    cache = PipelineCache()
    try:
        if o["compare_models"]:
            from .compare import compare_models, parse_models, timestamped

            names = parse_models(o["compare_models"])
            root = timestamped(out)
            compare_models(names, req, root, o["keep_loaded"], explicit=explicit, log=log, recorder=recorder,
                           metrics=targets)
            log(f"comparison: {root}/comparison.csv, {root}/generation_config.json")
        elif o["benchmark"] and o["benchmark_type"] == "icons":
            from .compare import icon_benchmark

            icon_benchmark(req, out, o["quick"], explicit=explicit, log=log, recorder=recorder, metrics=targets)
        elif o["harness"]:
            return _run_harness(o, req, resolved, variant, out / "harness", log, recorder, cache)
        else:
            kinds = [(o["benchmark_type"], suites.suite_cases(o["benchmark_type"], req))] if o["benchmark"] else []
            if o["scheduler_comparison"]:
                kinds.append(("scheduler_comparison", suites.scheduler_cases(req)))
            if o["multi_resolution"]:
                kinds.append(("multi_resolution", suites.resolution_cases(req)))
            suites.run_suites(kinds, req, o["benchmark_runs"], out, log, recorder, cache, targets)
    finally:
        recorder.close()
        cache.clear()
    return 0


def _given(names: tuple[str, ...]) -> list[str]:
    """Options the user set (command line or --config), as opposed to left at their defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [n for n in names if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP)]


def _run_harness(o: dict, req: GenerationRequest, resolved: GenerationRequest, variant: ModelVariant, out: Path, log,
                 recorder: PhaseRecorder, cache: PipelineCache) -> int:
    from . import harness
    from .runner import load, request_generator

    levels = concurrency_levels(o["concurrency"])
    cfg = harness.HarnessConfig(prompts=req.prompts or harness.PROMPT_SETS[o["prompt_set"]], levels=levels,
                                iterations=o["iterations"], warmup=o["harness_warmup"], timeout_s=o["request_timeout"],
                                width=resolved.width, height=resolved.height, num_images=1, steps=resolved.steps,
                                guidance_scale=resolved.guidance_scale)
    harness.check_config(cfg)
    if o["url"]:
        target = harness.HttpTarget(o["url"], o["request_timeout"])
        why = target.probe()
        if why:
            raise InputError("--url", o["url"], f"unreachable ({why})")
    else:
        load(resolved, variant, recorder, cache)  # loaded before the clock starts, not by the first request
        target = harness.CallableTarget(request_generator(resolved, recorder, cache))
    harness.run_harness(target, cfg, out, log)
    log(f"harness results: {out}/summary.csv, requests.csv, raw.json, throughput.png, latency.png")
    return 0


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(args: list[str] | None = None) -> int:
    """The command line's exit code: 0, 2 for a user error, ``EXIT_NON_FINITE`` (3) when the run
    produced NaN/inf (the measurement is meaningless; nothing more is measured)."""
    try:
        return run_cli(cli, args, prog_name="StableDiffusionViaHF.py")
    except NonFiniteError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_NON_FINITE
