"""The launcher's command line (``sample-collection-scripts/launch.sh``, ``python -m profiling.launch``).

Only the options live here: they are parsed into a ``SweepConfig`` (``profiling.config``), and
``profiling.driver.execute`` does the rest. The option names are the config's field names, so a
``--config`` YAML file, a SLURM experiment file and Python code describe a sweep the same way.
"""

from __future__ import annotations

import sys

import click

from .backends import BACKENDS
from .cli_support import config_option, run_cli
from .clocks import CLOCK_CONTROLS
from .config import DEFAULT_APP, MODES, SweepConfig
from .driver import execute
from .planning import CLOCK_ORDERS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@config_option
@click.option("--gpu-type", default=None, help="A family (V100, A100, H100, H200: its default SKU) or a SKU "
              "(e.g. H100-SXM5, configs/gpus.yaml). Default: detected from the GPU name.")
@click.option("--gpu-index", type=int, default=None, help="Which of the GPUs this job sees: the N-th entry of "
              "CUDA_VISIBLE_DEVICES when set, else NVML index N (default 0). Never SLURM's node numbers.")
@click.option("--allow-mig-whole-gpu", is_flag=True, help="Measure a GPU in MIG mode whole (its sensors and clocks "
              "are whole-GPU: every slice's work counts, a clock lock slows every slice); rows say mig=1.")
@click.option("--clock-control", default="lock", type=click.Choice(CLOCK_CONTROLS), show_default=True,
              help="lock: locked clocks (application clocks where locking is refused); application: application "
                   "clocks only; slurm: the site sets the clock (srun/sbatch --gpu-freq), the launcher only reads "
                   "it back and checks it (one clock per launch).")
@click.option("--all-gpus", is_flag=True, help="One sweep per visible GPU, in parallel, each in its own directory.")
@click.option("--profiling-tool", default="auto", type=click.Choice(BACKENDS), show_default=True)
@click.option("--profiling-mode", default="dvfs", type=click.Choice(MODES), show_default=True)
@click.option("--in-process", is_flag=True, help="Load the diffusion app once and run every clock x run in this "
              "process (no process start or model load per run); --app-params are the app's arguments.")
@click.option("--phase-clocks", default=None, metavar="PHASE=MHZ,...",
              help="With --in-process: the clock follows the app's phases, e.g. denoise=1755,vae_decode=1005,"
                   "text_encode=1005 (other phases run at the sweep's clock); switches are timed and recorded.")
@click.option("--custom-frequencies", default=None, help="Comma-separated SM clocks (MHz) for --profiling-mode custom.")
@click.option("--min-frequency", type=int, default=None, help="Lowest SM clock of a dvfs sweep (MHz).")
@click.option("--max-frequency", type=int, default=None, help="Highest SM clock of a dvfs sweep (MHz).")
@click.option("--frequency-step", type=int, default=None, help="MHz between swept clocks (default: every supported).")
@click.option("--memory-frequency", type=int, default=None, help="Also lock the memory clock (MHz).")
@click.option("--num-runs", type=int, default=3, show_default=True)
@click.option("--warmup-runs", type=int, default=0, show_default=True, help="Unmeasured runs before each clock's runs.")
@click.option("--sleep-interval", type=float, default=1.0, show_default=True, help="Cool-down between runs (s).")
@click.option("--sampling-interval", type=float, default=50.0, show_default=True, help="Power sampling period (ms, >= 10).")
@click.option("--idle-seconds", type=float, default=2.0, show_default=True, help="Idle power measured before the sweep (s).")
@click.option("--app-name", default="StableDiffusion", show_default=True)
@click.option("--app-executable", default=DEFAULT_APP, show_default=False,
              help="Any program; a .py file runs with this Python. Default: the diffusion app.")
@click.option("--app-params", default="", help="Arguments for the app, split with shell rules (no shell runs).")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Per-run limit (s).")
@click.option("--output-dir", default=None, help="Default: results/<app>_<gpu>_<mode>_<time>.")
@click.option("--resume", is_flag=True, help="Continue the newest results directory of this same sweep.")
@click.option("--dry-run", is_flag=True, help="Print the plan (clocks, runs, estimated time) and exit.")
@click.option("--wait-for-gpu", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="When another sweep holds the GPU, wait this long for it instead of refusing at once.")
@click.option("--reset-clocks", is_flag=True, help="Reset clocks (and any left locked by a killed sweep), then exit.")
@click.option("--guided-probes", type=int, default=5, show_default=True,
              help="guided mode: most clocks measured, the max clock included (>= 2); fewer when the model "
                   "predicts no further gain.")
@click.option("--guided-min-probes", type=int, default=4, show_default=True,
              help="guided mode: clocks measured before the search may stop early (1 to --guided-probes).")
@click.option("--guided-model", default=None, metavar="FILE",
              help="guided mode: a CrossWorkloadModel file (power_modeling.model_store.save_model). Default: the "
                   "shipped model trained on 24 reference V100 apps (with activity counters when the run has them).")
@click.option("--objective", default="edp", type=click.Choice(["energy", "edp", "ed2p"]), show_default=True,
              help="guided mode: what the chosen clock minimises.")
@click.option("--max-slowdown", type=float, default=0.05, show_default=True,
              help="guided mode: allowed slowdown vs the max clock (negative: none).")
@click.option("--clock-slice", default=None, help="K/N: run only the K-th of N contiguous slices of the clock list "
              "(one SLURM array task each; K from 0).")
@click.option("--clock-order", default="descending", type=click.Choice(CLOCK_ORDERS), show_default=True,
              help="descending/ascending: each clock's runs together; interleaved: each repeat visits every clock "
                   "before the next; random: each repeat in a fresh random clock order (so warming is no slope).")
@click.option("--clock-order-seed", type=int, default=None,
              help="--clock-order random: its seed (default: drawn, recorded in the manifest).")
@click.option("--settle-temp", type=float, default=None, metavar="C",
              help="Before each run, wait until the GPU is at most C °C or has stopped cooling (within 1 °C "
                   "over 5 s); the wait and the start temperature are in each row.")
@click.option("--settle-timeout", type=float, default=None, metavar="SECONDS",
              help="With --settle-temp: the longest wait before a run [default: 300].")
@click.option("--replay-source", default=None, help="replay: reference CSV or a results directory.")
@click.option("--replay-app", default=None, help="replay: application name in a reference CSV.")
def cli(**o):
    """Sweep GPU clocks while running an app; write power, energy and time per clock and run."""
    return execute(SweepConfig(**o), log=click.echo)


def main(args: list[str] | None = None) -> int:
    return run_cli(cli, args, prog_name="launch.sh")


if __name__ == "__main__":
    sys.exit(main())
