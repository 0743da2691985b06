"""Environment variables of the toolkit, all named ``SD_ENERGY_*``.

The launcher sets the per-run ones in the app's environment; the app (or any program a user
sweeps) reads them. The rest are settings a user or a site may export. ``DOCUMENTED`` is the
list the README prints; a test keeps the two equal.
"""

from __future__ import annotations

PREFIX = "SD_ENERGY_"

# Set by the launcher for each run of the app.
EVENTS_FILE = "SD_ENERGY_EVENTS_FILE"        # where the app appends its phase events (JSON lines)
METRICS_FILE = "SD_ENERGY_METRICS_FILE"      # where the app writes its metrics JSON
RUN_ID = "SD_ENERGY_RUN_ID"                  # the run id (f1410_r00 ...)
SM_CLOCK_MHZ = "SD_ENERGY_SM_CLOCK_MHZ"      # the locked SM clock, empty at the default clock
SIMULATED_STATE = "SD_ENERGY_SIMULATED_STATE"  # the simulated GPU's state file (simulated backend only)

# Settings.
SIMULATED_DIR = "SD_ENERGY_SIMULATED_DIR"    # where simulated GPUs keep their clock state
FORCE_SIMULATED = "SD_ENERGY_FORCE_SIMULATED"  # 1: auto-detection picks the simulated GPU
SIMULATED_GPUS = "SD_ENERGY_SIMULATED_GPUS"  # how many simulated GPUs a node has (default 1)
SIMULATED_SENSORS = "SD_ENERGY_SIMULATED_SENSORS"  # real (default): the real sensors' artefacts; ideal: none
SIMULATED_USER = "SD_ENERGY_SIMULATED_USER"  # root (default) or nonroot: who the simulated GPU's clock calls run as
LOCK_DIR = "SD_ENERGY_LOCK_DIR"              # clock lock records
CACHE = "SD_ENERGY_CACHE"                    # built tiny/random weights, FLOP counts
PYTHON = "SD_ENERGY_PYTHON"                  # the Python launch.sh and SLURM jobs use
SITE = "SD_ENERGY_SITE"                      # a site's SLURM settings file
# Written into rendered SLURM scripts (slurm/site.yaml), read by slurm/job.sh.
ROOT = "SD_ENERGY_ROOT"
RESULTS = "SD_ENERGY_RESULTS"
REQUEUE = "SD_ENERGY_REQUEUE"
MODULES = "SD_ENERGY_MODULES"
SBATCH_OPTIONS = "SD_ENERGY_SBATCH_OPTIONS"

DOCUMENTED = {
    EVENTS_FILE: "set by the launcher: the app appends its phase events here (JSON lines)",
    METRICS_FILE: "set by the launcher: the app writes its metrics JSON here",
    RUN_ID: "set by the launcher: this run's id (`f1410_r00`)",
    SM_CLOCK_MHZ: "set by the launcher: the locked SM clock (empty at the default clock)",
    SIMULATED_STATE: "set by the launcher on the simulated GPU: its clock-state file",
    SIMULATED_DIR: "where simulated GPUs keep their clock state (default `~/.cache/sd-energy/simulated`)",
    FORCE_SIMULATED: "`1`: auto-detection uses the simulated GPU even where NVML answers",
    SIMULATED_GPUS: "how many simulated GPUs the node has (default 1; `--all-gpus` sweeps each)",
    SIMULATED_SENSORS: "`real` (default): the simulated GPU reports like a real one of its type (stepped energy "
                       "counter, partly sampled and averaged power); `ideal`: it reports its model's exact numbers",
    SIMULATED_USER: "`nonroot`: the simulated GPU refuses locked clocks, and application clocks unless its admin "
                    "allowed them (`nvidia-smi -acp 0`); default `root`",
    LOCK_DIR: "clock lock records (default `/var/tmp/sd-energy-$UID`, else `/dev/shm/sd-energy-$UID`: host-wide, "
              "kept after the job) and `owners/` (GPU ownership; default `/var/tmp/sd-energy-owners`)",
    CACHE: "built tiny/random weights and FLOP counts (default `~/.cache/sd-energy`)",
    PYTHON: "the Python `launch.sh` and SLURM jobs run (default `.venv/bin/python`)",
    SITE: "a site's SLURM settings file (default `slurm/site.yaml`)",
    ROOT: "SLURM jobs: the checkout to run from (default the submit directory)",
    RESULTS: "SLURM jobs: where results go (default `results`)",
    REQUEUE: "SLURM jobs: `1` requeues after the time-limit signal",
    MODULES: "SLURM jobs: environment modules to load first",
    SBATCH_OPTIONS: "SLURM jobs: the sbatch options rendered into the script (recorded in the manifest)",
}
