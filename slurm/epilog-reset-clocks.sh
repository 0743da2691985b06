#!/usr/bin/env bash
# For cluster admins: a SLURM Epilog that puts the clocks of a finished job's GPUs back to their defaults.
#
# The launcher restores clocks on every way out it can see (normal end, errors, SIGINT/SIGTERM/SIGUSR1/
# SIGHUP), and a later launch on the same host restores what a SIGKILLed one left (its lock record in
# /var/tmp/sd-energy-<uid>). Neither covers a node that the killed job's user never runs on again, nor
# another user's job landing on that GPU. The epilog does: it runs as root on the compute node after
# every job, whatever happened to it. Point slurm.conf's Epilog= at it, or call it from the site's existing
# epilog; the Epilog runs as SlurmdUser (normally root) on the compute node, outside the job's cgroup.
#
# The one line that matters, for sites that prefer to paste it into their own epilog:
#   [ -n "$SLURM_JOB_GPUS" ] && nvidia-smi -i "$SLURM_JOB_GPUS" -rgc && nvidia-smi -i "$SLURM_JOB_GPUS" -rac
#
# -rgc resets locked GPU clocks (nvidia-smi -lgc, nvmlDeviceSetGpuLockedClocks); -rac resets application
# clocks (nvidia-smi -ac, SLURM's own --gpu-freq, the launcher's non-root fallback). SLURM_JOB_GPUS holds
# the node's GPU ids as slurmd numbers them (NVML order with gres.conf AutoDetect=nvml); on a node whose
# gres.conf orders GPUs otherwise, or that runs one job at a time, reset every GPU (drop the -i).
set -u
[ -n "${SLURM_JOB_GPUS:-}" ] || exit 0
smi=$(command -v nvidia-smi || echo /usr/bin/nvidia-smi)
"$smi" -i "$SLURM_JOB_GPUS" -rgc >/dev/null 2>&1 || echo "epilog: nvidia-smi -rgc failed on GPUs $SLURM_JOB_GPUS" >&2
"$smi" -i "$SLURM_JOB_GPUS" -rac >/dev/null 2>&1 || echo "epilog: nvidia-smi -rac failed on GPUs $SLURM_JOB_GPUS" >&2
exit 0  # a failed reset must not drain the node
