#!/usr/bin/env bash
# DVFS launcher: wraps any app with clock sweeps and power sampling.
#   ./launch.sh --profiling-mode dvfs --gpu-type H100 --app-params "--steps 30" --num-runs 3
# All options: ./launch.sh --help. Same options as `python -m profiling.launch`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${SD_ENERGY_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m profiling.launch "$@"
