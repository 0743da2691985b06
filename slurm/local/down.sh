#!/usr/bin/env bash
# Stop the single-node SLURM started by up.sh (jobs cancelled, daemons stopped). Idempotent.
D="${SD_SLURM_DIR:-/tmp/sd-energy-slurm}"
export SLURM_CONF="$D/slurm.conf"
if [ -f "$SLURM_CONF" ]; then scancel --user "$(id -un)" >/dev/null 2>&1 || true; fi
for pidfile in "$D/slurmd.pid" "$D/slurmctld.pid"; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
sleep 0.5
pkill -x slurmd 2>/dev/null
pkill -x slurmctld 2>/dev/null
rm -rf "$D/state" "$D/spool"
echo "slurm/local/down.sh: stopped; logs kept in $D/log" >&2
exit 0
