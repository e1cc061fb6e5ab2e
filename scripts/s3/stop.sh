#!/usr/bin/env bash
# Stop the SeaweedFS started by scripts/s3/start.sh (by pid file, with its children).
# Keeps the data and credentials in the state dir. Idempotent.
#
# Environment: VSRFLOW_S3_DIR (default /tmp/vsrflow-s3).
set -euo pipefail

COMPONENT=vsrflow-s3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

STATE="${VSRFLOW_S3_DIR:-/tmp/vsrflow-s3}"
PIDFILE="$STATE/weed.pid"

[[ -d "$STATE" ]] || exit 0
[[ "${VSRFLOW_S3_LOCK_HELD:-}" == 1 ]] || with_lock "$STATE/.lock"

pid="$(read_pidfile "$PIDFILE")"
if [[ -n "$pid" ]] && pid_alive "$pid"; then
  if [[ "$(pid_comm "$pid")" == weed* ]]; then
    mapfile -t kids < <(descendants "$pid")
    # weed mini needs ~1 s (volume.preStopSeconds) to shut down cleanly on SIGTERM.
    STOP_TIMEOUT=15 stop_pids weed "$pid" "${kids[@]}"
  else
    log "pid file names pid $pid which is '$(pid_comm "$pid")', not weed: not killing it"
  fi
fi
rm -f "$PIDFILE" "$STATE/running.port" "$STATE/s3.sock" "$STATE/filer.sock"
# weed leaves some of its gRPC unix sockets in /tmp (named by port): remove ours, unless a
# live process (say another instance that reuses a port since) listens there.
if [[ -s "$STATE/ports.env" ]] && ! { [[ -n "$pid" ]] && pid_alive "$pid"; }; then
  while IFS='=' read -r name port; do
    [[ "$port" =~ ^[0-9]+$ ]] || continue
    case "$name" in
      admin) port=$((port + 10000)) kind=admin ;;
      *_grpc) kind="${name%_grpc}" ;;
      *) continue ;;
    esac
    sock="/tmp/seaweedfs-$kind-grpc-$port.sock"
    [[ -S "$sock" ]] || continue
    port_in_use "$port" || rm -f "$sock"
  done <"$STATE/ports.env"
fi
report_stopped
