#!/usr/bin/env bash
# Stop the test cluster started by scripts/slurm/start.sh: cancel its jobs, then stop slurmd
# (and any slurmstepd it left), slurmctld and the private munged. Idempotent; keeps the state
# dir (munge key, logs) so a later start.sh reuses it.
#
# Environment: VSRFLOW_SLURM_DIR (default /tmp/vsrflow-slurm).
set -euo pipefail

COMPONENT=vsrflow-slurm
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

STATE="${VSRFLOW_SLURM_DIR:-/tmp/vsrflow-slurm}"
CONF="$STATE/slurm.conf"
MUNGE_PID="$STATE/munge/munged.pid"
CTLD_PID="$STATE/run/slurmctld.pid"
SLURMD_PID="$STATE/run/slurmd.pid"

[[ -d "$STATE" ]] || exit 0
# start.sh calls us while holding the lock.
[[ "${VSRFLOW_SLURM_LOCK_HELD:-}" == 1 ]] || with_lock "$STATE/.lock"

# our_procs COMM...: live pids with one of these command names whose command line or
# environment mentions this state dir (finds daemons whose pid file was lost, and the
# slurmstepd processes slurmd forked, which inherit SLURM_CONF from it).
our_procs() {
  local d pid comm want
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    comm="$(cat "$d/comm" 2>/dev/null)" || continue
    for want in "$@"; do
      [[ "$comm" == "$want" ]] || continue
      pid_alive "$pid" || continue
      if tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qF -- "$STATE/" ||
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qxF -- "SLURM_CONF=$CONF"; then
        printf '%s\n' "$pid"
      fi
    done
  done
}

# 1. Cancel jobs while the controller still runs, so slurmstepd cleans up job processes.
if pidfile_alive "$CTLD_PID" slurmctld && pidfile_alive "$MUNGE_PID" munged; then
  jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o %i 2>/dev/null || true)"
  if [[ -n "$jobs" ]]; then
    log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one id per word
    SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while ((SECONDS < deadline)); do
      left="$(SLURM_CONF="$CONF" timeout 10 squeue -h -t R,CG,PD,CF -o %i 2>/dev/null || true)"
      [[ -z "$left" ]] && break
      sleep 0.3
    done
  fi
fi

# 2. Daemons, by pid file (checking the command name against pid reuse).
stop_pidfile slurmd "$SLURMD_PID" slurmd

# 3. Leftover job steps (and their process trees) of this cluster.
mapfile -t steps < <(our_procs slurmstepd)
if ((${#steps[@]})); then
  kids=()
  for s in "${steps[@]}"; do mapfile -t -O "${#kids[@]}" kids < <(descendants "$s"); done
  ((${#kids[@]})) && stop_pids "job processes" "${kids[@]}"
  stop_pids slurmstepd "${steps[@]}"
fi

stop_pidfile slurmctld "$CTLD_PID" slurmctld
stop_pidfile munged "$MUNGE_PID" munged

# 4. Anything of ours that lost its pid file.
mapfile -t strays < <(our_procs slurmd slurmctld munged slurmstepd)
((${#strays[@]})) && stop_pids "stray daemons" "${strays[@]}"

report_stopped
