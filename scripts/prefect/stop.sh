#!/usr/bin/env bash
# Stop the Prefect server started by scripts/prefect/start.sh (its whole process tree, by pid
# file). Keeps PREFECT_HOME (database) in the state dir. Idempotent.
#
# Environment: VSRFLOW_PREFECT_DIR (default /tmp/vsrflow-prefect).
set -euo pipefail

COMPONENT=vsrflow-prefect
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

STATE="${VSRFLOW_PREFECT_DIR:-/tmp/vsrflow-prefect}"
PIDFILE="$STATE/server.pid"

[[ -d "$STATE" ]] || exit 0
[[ "${VSRFLOW_PREFECT_LOCK_HELD:-}" == 1 ]] || with_lock "$STATE/.lock"

pid="$(read_pidfile "$PIDFILE")"
if [[ -n "$pid" ]] && pid_alive "$pid"; then
  # Only kill it if it is still the server we started (guards against pid reuse).
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'prefect server start'; then
    mapfile -t kids < <(descendants "$pid")
    # Same process group too (setsid made the server its leader), for anything reparented.
    mapfile -t -O "${#kids[@]}" kids < <(pgrep -g "$pid" 2>/dev/null | grep -vx "$pid" || true)
    STOP_TIMEOUT=20 stop_pids "prefect server" "$pid" "${kids[@]}"
  else
    log "pid file names pid $pid which is not 'prefect server start': not killing it"
  fi
fi
rm -f "$PIDFILE" "$STATE/running.port"
report_stopped
