#!/usr/bin/env bash
# `make test`: install the system packages the tests use (root + apt only), bring the local SLURM up,
# run the command given (pytest), and take SLURM down again even when the tests fail.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SD_SLURM_DIR="${SD_SLURM_DIR:-/tmp/sd-energy-slurm}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${SD_NO_APT:-0}" != 1 ]; then
  missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v slurmctld >/dev/null || missing+=(slurm-wlm)
  command -v munged >/dev/null || missing+=(munge)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    (apt-get update -qq && apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
      || echo "could not install ${missing[*]}; the tests that need them are skipped" >&2
  fi
fi
up=0
if out="$(bash "$here/up.sh")"; then
  eval "$out"
  export SD_SLURM_UP=1
  up=1
else
  echo "local SLURM not started: the SLURM tests will be skipped" >&2
fi
"$@"
rc=$?
[ "$up" = 1 ] && bash "$here/down.sh"
exit $rc
