"""SLURM: render sbatch scripts from one site-settings file, validate, and submit.

The committed ``slurm/submit_{v100,a100,h100,h200}.sh`` and ``slurm/submit_array.sh`` are this
renderer's output for the documented defaults in ``slurm/site.yaml`` (a test keeps them equal).
A site edits ``slurm/site.yaml`` (or points ``SD_ENERGY_SITE`` at its own copy), then either
runs ``python -m profiling.slurm render`` to refresh the scripts for ``sbatch slurm/submit_a100.sh``,
or submits through ``python -m profiling.slurm submit``, which checks the experiment file and the
partition first, so bad settings fail at submission, not inside the job.

Every site value is checked (``check_site``) before it is rendered, because it lands in a shell
script: a newline would start a new command under the ``#SBATCH`` comment, and ``$(...)`` or a
backtick inside the double-quoted defaults would run at job start. Names (partition, account,
modules, ...) must look like SLURM and module names; paths may hold spaces but none of the
characters double quotes still expand. An experiment is checked as the launcher will read it:
each value converted by its launcher option's type, then ``SweepConfig.check()``.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import yaml

from sd_energy_contract.errors import InputError

from .cli_support import run_cli
from .planning import select_clocks, slice_clocks

REPO_ROOT = Path(__file__).resolve().parent.parent
SITE_FILE = REPO_ROOT / "slurm" / "site.yaml"
SUBMIT_DIR = REPO_ROOT / "results" / "slurm"  # what `submit` renders and writes before calling sbatch
GPU_TYPES = ("V100", "A100", "H100", "H200")
SITE_KEYS = {"partition", "account", "qos", "time", "gpus", "gpu_option", "constraint", "cpus_per_task", "mem",
             "modules", "python", "signal_seconds", "requeue", "results_dir", "extra_sbatch"}


# What each kind of site value may hold. SLURM names (partition lists, accounts, QoS) and module
# names have no shell metacharacters or spaces; a constraint adds SLURM's operators (&|[]*!), which
# are harmless here: #SBATCH lines are comments to bash, and the options' copy is single-quoted.
NAME = re.compile(r"[A-Za-z0-9_.+,-]+")
MODULE = re.compile(r"[A-Za-z0-9_.+@%=:/~-]+")
CONSTRAINT = re.compile(r"[A-Za-z0-9_.,&|*!\[\]()=:+-]+")
TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|infinite|unlimited|UNLIMITED")
MEMORY = re.compile(r"\d+[KMGTkmgt]?[Bb]?")
# Inside the rendered script's double quotes these still expand ($, `), end the string (") or
# escape (\\); control characters (a newline) end the line. A path needs none of them.
PATH_UNSAFE = re.compile(r"[$`\"\\\x00-\x1f\x7f]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad(where: str, key: str, value: object, problem: str) -> InputError:
    """One line naming the site file, the key and the value (repr: a newline shows as \\n)."""
    return InputError(f"{where}: {key}", repr(value), problem)


def _int_setting(where: str, site: dict, key: str, low: int, high: int | None = None) -> None:
    value = site.get(key)
    if value in (None, ""):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise _bad(where, key, value, f"must be a whole number {bound}")


def check_site(site: object, where: str = "site settings") -> dict:
    """Every site value checked before it is rendered into a script; returns the settings.

    A value that could become shell (``;``, a backtick, ``$(...)``, a newline) is refused with one
    line naming the key, never escaped silently: it is a typo or an attack, and either way the
    job would not do what the file says.
    """
    if not isinstance(site, dict):
        raise InputError("SD_ENERGY_SITE", where, f"must be a mapping of setting: value, not a {type(site).__name__}")
    unknown = set(map(str, site)) - SITE_KEYS
    if unknown:
        raise InputError("SD_ENERGY_SITE", where, f"unknown setting(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(SITE_KEYS))}")
    for key in ("partition", "account", "qos"):
        value = site.get(key)
        if value not in (None, "") and not (isinstance(value, str) and NAME.fullmatch(value)):
            raise _bad(where, key, value, "must be a SLURM name (letters, digits and _ . + , - only)")
    value = site.get("time")
    if value not in (None, "") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0
                                        or isinstance(value, str) and TIME.fullmatch(value)):
        raise _bad(where, "time", value, "must be a SLURM time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    value = site.get("mem")
    if value not in (None, "") and not (isinstance(value, int) and not isinstance(value, bool) and value > 0
                                        or isinstance(value, str) and MEMORY.fullmatch(value)):
        raise _bad(where, "mem", value, "must be a SLURM memory size (e.g. 64G, 120000M)")
    _int_setting(where, site, "gpus", 0)
    _int_setting(where, site, "cpus_per_task", 1)
    _int_setting(where, site, "signal_seconds", 1, 65535)
    if site.get("gpu_option") not in (None, "", "gpus", "gres"):
        raise _bad(where, "gpu_option", site["gpu_option"], "must be gpus (--gpus=N) or gres (--gres=gpu:N)")
    if not isinstance(site.get("requeue", True), bool):
        raise _bad(where, "requeue", site["requeue"], "must be true or false")
    constraint = site.get("constraint")
    per_gpu = constraint if isinstance(constraint, dict) else {None: constraint}
    for gpu, value in per_gpu.items():
        key = "constraint" if gpu is None else f"constraint.{gpu}"
        if gpu is not None and gpu not in GPU_TYPES:
            raise _bad(where, "constraint", gpu, f"not a GPU type; constraints are given per {', '.join(GPU_TYPES)}")
        if value not in (None, "") and not (isinstance(value, str) and CONSTRAINT.fullmatch(value)):
            raise _bad(where, key, value, "must be a SLURM constraint (names and & | , [ ] * ! only)")
    modules = site.get("modules")
    if modules not in (None, "") and not isinstance(modules, (list, str)):
        raise _bad(where, "modules", modules, "must be a list of module names")
    for m in (modules.split() if isinstance(modules, str) else modules or []):
        if not (isinstance(m, str) and MODULE.fullmatch(m)):
            raise _bad(where, "modules", m, "not a module name (letters, digits and _ . + / @ % = : ~ - only)")
    for key in ("python", "results_dir"):
        value = site.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or PATH_UNSAFE.search(value):
            raise _bad(where, key, value, "must be a plain path (no $, `, \", \\ or control characters: the job "
                       "script would expand them); set SD_ENERGY_" + ("PYTHON" if key == "python" else "RESULTS")
                       + " in the job's environment for anything computed")
    extra = site.get("extra_sbatch")
    if extra not in (None, "") and not isinstance(extra, list):
        raise _bad(where, "extra_sbatch", extra, "must be a list of sbatch options")
    for opt in extra or []:
        if not (isinstance(opt, str) and opt.startswith("-") and not CONTROL.search(opt)):
            raise _bad(where, "extra_sbatch", opt, "must be an sbatch option on one line (starting with -)")
    return site


def load_site(path: str | Path | None = None) -> dict:
    path = Path(path or os.environ.get("SD_ENERGY_SITE") or SITE_FILE)
    try:
        site = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InputError("SD_ENERGY_SITE", str(path), f"cannot read site settings: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError("SD_ENERGY_SITE", str(path), f"not valid YAML ({str(exc).splitlines()[0]})") from None
    return check_site(site, str(path))


def sbatch_options(site: dict, gpu_type: str, array: str | None = None) -> list[str]:
    """The #SBATCH options, in a fixed order so the rendered text is stable (golden files)."""
    opts = [f"--job-name=sd-energy-{gpu_type.lower()}", "--output=slurm-%x-%j.out"]
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                      ("cpus_per_task", "cpus-per-task"), ("mem", "mem")):
        if site.get(key) not in (None, ""):
            opts.append(f"--{flag}={site[key]}")
    gpus = int(site.get("gpus", 1) or 0)
    if gpus:
        opts.append(f"--gres=gpu:{gpus}" if site.get("gpu_option") == "gres" else f"--gpus={gpus}")
    constraint = site.get("constraint")
    if isinstance(constraint, dict):
        constraint = constraint.get(gpu_type)
    if constraint:
        opts.append(f"--constraint={constraint}")
    # SLURM signals the batch shell this long before the time limit; the job script passes it to the
    # launcher, which stops cleanly (clocks restored) and leaves a resumable sweep.
    opts.append(f"--signal=B:USR1@{int(site.get('signal_seconds', 120))}")
    if site.get("requeue", True):
        opts.append("--requeue")
    if array:
        opts.append(f"--array={array}")
    opts += list(site.get("extra_sbatch") or [])
    return opts


def render(gpu_type: str, site: dict, array_tasks: int | None = None) -> str:
    """The sbatch script of ``gpu_type``; ``site`` is checked again here, so no caller can render an unchecked value."""
    check_site(site)
    array = f"0-{array_tasks - 1}" if array_tasks else None
    opts = sbatch_options(site, gpu_type, array)
    header = "\n".join(f"#SBATCH {o}" for o in opts)
    modules = site.get("modules") or ""
    modules = modules if isinstance(modules, str) else " ".join(modules)
    kind = f"an array sweep: {array_tasks} tasks, one slice of the clock list each" if array_tasks else "one sweep"
    usage = (f"sbatch slurm/submit_array.sh [EXPERIMENT]   (GPU_TYPE={gpu_type} by default)" if array_tasks
             else f"sbatch slurm/submit_{gpu_type.lower()}.sh [EXPERIMENT]")
    gpu_line = (f'GPU_TYPE="${{GPU_TYPE:-{gpu_type}}}"' if array_tasks else f'GPU_TYPE="{gpu_type}"')
    return f"""#!/usr/bin/env bash
# Generated by `python -m profiling.slurm render` from slurm/site.yaml: edit that file, not this one.
# Runs {kind} of the launcher on {gpu_type if not array_tasks else 'the GPU type given'} nodes.
#   {usage}
# EXPERIMENT names configs/experiments/<name>.yaml (or is a path); default: demo.
{header}
set -euo pipefail
export SD_ENERGY_SBATCH_OPTIONS={shlex.quote(' '.join(opts))}
export SD_ENERGY_MODULES={shlex.quote(modules)}
export SD_ENERGY_PYTHON="${{SD_ENERGY_PYTHON:-{site.get('python') or '.venv/bin/python'}}}"
export SD_ENERGY_RESULTS="${{SD_ENERGY_RESULTS:-{site.get('results_dir') or 'results'}}}"
export SD_ENERGY_REQUEUE="${{SD_ENERGY_REQUEUE:-{1 if site.get('requeue', True) else 0}}}"
{gpu_line}
ROOT="${{SD_ENERGY_ROOT:-${{SLURM_SUBMIT_DIR:-$PWD}}}}"
exec bash "$ROOT/slurm/job.sh" "$GPU_TYPE" "${{1:-${{EXPERIMENT:-demo}}}}"
"""


def experiment_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or "/" in name:
        return p
    return REPO_ROOT / "configs" / "experiments" / f"{name}.yaml"


def check_experiment(name: str, gpu_type: str | None = None, array_tasks: int | None = None) -> Path:
    """The experiment file checked as the job's launcher will read it; returns its path.

    Names first (``load_config_file``: unknown keys, with the close match), then each value through
    its launcher option's click type (``num-runs: abc``), then ``SweepConfig.check()`` with what the
    job adds: the GPU type, and a clock slice for an array (guided mode cannot be sliced).
    """
    path = experiment_path(name)
    if not path.is_file():
        known = sorted(q.stem for q in (REPO_ROOT / "configs" / "experiments").glob("*.yaml"))
        raise InputError("EXPERIMENT", name, f"no experiment file {path}; known: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError("EXPERIMENT", name, f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise InputError("EXPERIMENT", name, f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise InputError("EXPERIMENT", name, f"{path} must be a mapping of launcher options")
    from .cli_support import load_config_file
    from .launch import cli as launch_cli

    try:
        values = load_config_file(str(path), launch_cli)  # unknown launcher options fail here, at submission
    except InputError as exc:  # it names --config, which the job passes; the user wrote EXPERIMENT
        raise InputError("EXPERIMENT", name, exc.problem if str(path) == name else f"{path}: {exc.problem}") from None
    try:
        _check_values(values, launch_cli, gpu_type, array_tasks)
    except InputError as exc:
        raise InputError("EXPERIMENT", name, str(exc) if str(path) == name else f"{path}: {exc}") from None
    return path


def _check_values(values: dict, command: click.Command, gpu_type: str | None, array_tasks: int | None) -> None:
    """Each value converted as click converts the option on a command line, then the sweep's own check."""
    from .config import SweepConfig

    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    ctx = click.Context(command)
    typed = {}
    for key, value in values.items():
        param = params[key]
        option = max(param.opts, key=len)
        if value is None:
            raise InputError(option, None, "has no value (leave the key out for the default)")
        if isinstance(value, (list, dict)):
            raise InputError(option, repr(value), "must be a single value, as on the command line")
        if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
            # click would take 2.5 as 2 and true as 1: a number in a YAML file is exactly what is meant
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number or isinstance(value, str)) or (isinstance(param.type, click.types.IntParamType)
                                                          and isinstance(value, float) and not value.is_integer()):
                raise InputError(option, repr(value), f"must be {'a whole number' if param.type.name == 'integer' else 'a number'}")
        try:
            typed[key] = param.type.convert(value, param, ctx)
        except click.BadParameter as exc:
            raise InputError(option, None, exc.message.rstrip(".")) from None
    if gpu_type:
        typed["gpu_type"] = gpu_type  # job.sh passes --gpu-type, which beats the file
    exe = typed.get("app_executable")
    if exe and not Path(exe).is_absolute():  # the job runs from the checkout (SD_ENERGY_ROOT)
        typed["app_executable"] = str(REPO_ROOT / exe)
    if array_tasks:
        typed["clock_slice"] = f"0/{array_tasks}"
    cfg = SweepConfig(**typed).check()
    # What check() leaves to the GPU, but that needs no GPU to be refused.
    for key in ("timeout", "sleep_interval", "sampling_interval", "idle_seconds", "max_slowdown"):
        if not math.isfinite(getattr(cfg, key)):
            raise InputError("--" + key.replace("_", "-"), getattr(cfg, key), "must be a finite number")
    if cfg.custom_frequencies is not None:
        items = cfg.custom_frequencies.replace(" ", "").split(",")
        if not all(x.isdigit() and int(x) > 0 for x in items if x) or not any(items):
            raise InputError("--custom-frequencies", cfg.custom_frequencies, "must be comma-separated MHz integers")
    if cfg.clock_slice and not array_tasks:
        slice_clocks(list(range(1 << 16)), cfg.clock_slice)  # K/N syntax only: the clock count needs the GPU


def per_clock_experiments(name: str, gpu_type: str, out_dir: Path) -> list[tuple[int, Path]]:
    """One experiment file per clock of experiment ``name``, for sites where SLURM sets the clock.

    Each runs ``--clock-control slurm`` at one clock (``profiling-mode: custom``), to be submitted with
    ``sbatch --gpu-freq=MHZ``: SLURM sets that clock for the job's step and the launcher only checks it.
    The clocks are the experiment's own (custom), or its dvfs range over the clock list of the SKU it
    names (``gpu-type``), else of the family's default SKU (``configs/gpus.yaml``).
    """
    from sd_energy_contract.gpus import load_gpu_specs

    from .cli_support import load_config_file
    from .launch import cli as launch_cli

    path = check_experiment(name, gpu_type)
    values = load_config_file(str(path), launch_cli)
    mode = values.get("profiling_mode", "dvfs")
    if mode in ("baseline", "guided") or values.get("clock_slice"):
        what = f"profiling-mode {mode}" if mode in ("baseline", "guided") else "clock-slice"
        raise InputError("--per-clock", name, f"needs a fixed clock list (custom or dvfs), not {what}")
    specs = load_gpu_specs()
    spec = specs.get(values.get("gpu_type") or gpu_type) or specs[gpu_type]
    if spec["family"] != specs[gpu_type]["family"]:
        spec = specs[gpu_type]
    if mode == "custom":  # check_experiment has checked they are MHz integers
        items = str(values.get("custom_frequencies", "")).replace(" ", "").split(",")
        clocks = sorted({int(x) for x in items if x}, reverse=True)
    else:
        clocks = select_clocks("dvfs", spec["sm_clocks_mhz"], None, values.get("min_frequency"),
                               values.get("max_frequency"), values.get("frequency_step"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for mhz in clocks:
        one = {k: v for k, v in values.items() if k not in ("min_frequency", "max_frequency", "frequency_step")}
        one.update(profiling_mode="custom", custom_frequencies=str(mhz), clock_control="slurm")
        target = out_dir / f"{path.stem}_f{mhz}.yaml"
        target.write_text(f"# {path.name} at {mhz} MHz only: submitted with sbatch --gpu-freq={mhz} "
                          f"(python -m profiling.slurm submit {gpu_type} {name} --per-clock); SLURM sets the "
                          f"clock, the launcher checks it. SKU clock list: {spec['sku']}.\n"
                          + yaml.safe_dump(one, sort_keys=False))
        check_experiment(str(target), gpu_type)
        out.append((mhz, target))
    return out


def check_partition(site: dict) -> None:
    part = site.get("partition")
    if not part or not shutil.which("sinfo"):
        return
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    known = sorted(set(out.stdout.split()))
    if out.returncode == 0 and part not in known:
        raise InputError("partition", part, f"not a partition of this cluster (sinfo lists: {', '.join(known)}); "
                        "fix slurm/site.yaml")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Render and submit the SLURM scripts from slurm/site.yaml."""


@cli.command("render")
@click.option("--site", default=None, help="Site settings YAML (default: slurm/site.yaml or $SD_ENERGY_SITE).")
@click.option("--out-dir", default=str(REPO_ROOT / "slurm"), show_default=True)
@click.option("--array-tasks", default=4, show_default=True, help="Tasks of submit_array.sh.")
def render_cmd(site, out_dir, array_tasks):
    """Write submit_{v100,a100,h100,h200}.sh and submit_array.sh."""
    if array_tasks < 1:
        raise InputError("--array-tasks", array_tasks, "must be at least 1")
    settings = load_site(site)
    out = Path(out_dir)
    for gpu in GPU_TYPES:
        _write_script(out / f"submit_{gpu.lower()}.sh", render(gpu, settings))
    _write_script(out / "submit_array.sh", render("H100", settings, array_tasks))
    click.echo(f"rendered 5 scripts into {out}")


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@cli.command("submit")
@click.argument("gpu_type", type=click.Choice(GPU_TYPES, case_sensitive=False))
@click.argument("experiment", default="demo")
@click.option("--site", default=None)
@click.option("--array-tasks", type=int, default=None, help="Submit as an array sweep with this many tasks.")
@click.option("--dependency", default=None, help="Passed to sbatch --dependency.")
@click.option("--per-clock", is_flag=True, help="One job per clock, each submitted with sbatch --gpu-freq=MHZ: for "
              "sites where SLURM sets the clock (the launcher runs --clock-control slurm and checks it).")
def submit_cmd(gpu_type, experiment, site, array_tasks, dependency, per_clock):
    """Validate the experiment and site settings, then sbatch the rendered script. Prints the job id(s)."""
    gpu_type = gpu_type.upper()
    settings = load_site(site)
    if array_tasks is not None and array_tasks < 1:
        raise InputError("--array-tasks", array_tasks, "must be at least 1")
    if per_clock and array_tasks:
        raise InputError("--per-clock", True, "not with --array-tasks: each clock is its own job already")
    check_experiment(experiment, gpu_type, array_tasks)
    jobs = per_clock_experiments(experiment, gpu_type, SUBMIT_DIR) if per_clock else [(None, experiment)]
    check_partition(settings)
    if not shutil.which("sbatch"):
        raise InputError("sbatch", None, "not found on PATH: is this a SLURM login node?")
    script = SUBMIT_DIR / f"submit_{gpu_type.lower()}{'_array' if array_tasks else ''}.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    _write_script(script, render(gpu_type, settings, array_tasks))
    for mhz, exp in jobs:
        cmd = (["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else [])
               + ([f"--gpu-freq={mhz}"] if mhz else []) + [str(script), str(exp)])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                              env={**os.environ, "GPU_TYPE": gpu_type, "SD_ENERGY_ROOT": str(REPO_ROOT)})
        if proc.returncode != 0:
            raise InputError("sbatch", None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
        job = proc.stdout.strip().split(";")[0]
        click.echo(f"{job} {mhz} MHz" if mhz else job)


def main(args: list[str] | None = None) -> int:
    return run_cli(cli, args, prog_name="python -m profiling.slurm")


if __name__ == "__main__":
    sys.exit(main())
