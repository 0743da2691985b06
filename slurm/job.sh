#!/usr/bin/env bash
# The body of every SLURM job of this toolkit; the rendered slurm/submit_*.sh scripts exec it.
#   job.sh GPU_TYPE EXPERIMENT
# Runs the launcher with the experiment file, forwards SLURM's signals to it (it restores clocks and
# stops cleanly), and requeues the job when the time limit's warning signal stopped it.
set -uo pipefail
gpu_type="$1"
experiment="$2"
root="${SD_ENERGY_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$root" || exit 2

# Split into words without glob expansion (an unquoted $SD_ENERGY_MODULES would expand `*`), and refuse
# anything that is not a module name: the variable may come from the job's environment, not only from
# the rendered script, whose values profiling/slurm.py has checked.
if [ -n "${SD_ENERGY_MODULES:-}" ]; then
  read -r -a modules <<< "$SD_ENERGY_MODULES"
  for m in "${modules[@]}"; do
    case "$m" in
      *[!A-Za-z0-9_.+@%=:/~-]*)
        echo "error: SD_ENERGY_MODULES $m: not a module name (letters, digits and _ . + / @ % = : ~ - only)" >&2
        exit 2 ;;
    esac
  done
  for m in "${modules[@]}"; do module load "$m" || exit 2; done
fi
case "$experiment" in
  */*|*.yaml|*.yml) exp_file="$experiment" ;;
  *) exp_file="configs/experiments/$experiment.yaml" ;;
esac
if [ ! -f "$exp_file" ]; then
  echo "error: EXPERIMENT $experiment: no experiment file $exp_file" >&2
  exit 2
fi
name="$(basename "${exp_file%.*}")"
out="${SD_ENERGY_RESULTS:-results}/${name}_$(echo "$gpu_type" | tr '[:upper:]' '[:lower:]')"
args=(--config "$exp_file" --gpu-type "$gpu_type")
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_COUNT:-}" ]; then
  k=$(( SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} ))
  out="${out}_array/task$(printf %03d "$k")"
  args+=(--clock-slice "$k/$SLURM_ARRAY_TASK_COUNT")
fi
args+=(--output-dir "$out")
echo "job ${SLURM_JOB_ID:-local} task ${SLURM_ARRAY_TASK_ID:--} on $(hostname): $exp_file -> $out"

"${SD_ENERGY_PYTHON:-.venv/bin/python}" -m profiling.launch "${args[@]}" &
pid=$!
forward() { kill "-$1" "$pid" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
wait "$pid"
rc=$?
if [ "$rc" -eq 138 ] && [ "${SD_ENERGY_REQUEUE:-0}" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "time limit near: sweep stopped cleanly; requeueing job $SLURM_JOB_ID to finish it"
  scontrol requeue "$SLURM_JOB_ID" || true
fi
exit "$rc"
