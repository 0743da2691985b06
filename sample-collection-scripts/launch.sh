#!/usr/bin/env bash
# DVFS launcher: wraps any app with clock sweeps and power sampling.
#   ./launch.sh --profiling-mode dvfs --gpu-type H100 --app-params "--steps 30" --num-runs 3
# All options: ./launch.sh --help. Same options as `python -m profiling.launch`.
# Node check before a campaign: ./launch.sh --validate [--gpu-index N] [--skip-sweep] ...
#   (the options of `python -m profiling.validate`; ./launch.sh --validate --help lists them).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${SD_ENERGY_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# --validate anywhere on the line runs the node check with the other arguments.
module=profiling.launch
args=()
for arg in "$@"; do
  if [ "$arg" = "--validate" ]; then module=profiling.validate; else args+=("$arg"); fi
done
exec "$py" -m "$module" ${args[@]+"${args[@]}"}
