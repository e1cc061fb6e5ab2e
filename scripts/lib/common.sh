# shellcheck shell=bash
# Shared helpers for scripts/{slurm,s3,prefect}/{start,stop}.sh. Source it; do not run it.

# log MSG...: progress messages go to stderr, prefixed with the component name.
log() { printf '%s: %s\n' "${COMPONENT:-vsrflow}" "$*" >&2; }

die() {
  log "ERROR: $*"
  exit 1
}

# pid_alive PID: true if PID exists and is not a zombie/dead. A killed daemon whose parent
# (here PID 1 may not reap) has not waited for it stays a zombie and still passes `kill -0`.
pid_alive() {
  local pid="$1" stat state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  # Field 3 follows the ")" that closes the command name (which may contain spaces).
  state="${stat##*) }"
  state="${state%% *}"
  [[ "$state" != Z && "$state" != X && "$state" != x ]]
}

# pid_comm PID: the kernel's command name (first 15 chars of the executable name).
pid_comm() { cat "/proc/$1/comm" 2>/dev/null || true; }

# read_pidfile FILE: print the pid stored in FILE (empty if missing/garbage).
read_pidfile() {
  local pid=""
  if [[ -r "$1" ]]; then read -r pid <"$1" 2>/dev/null || true; fi
  [[ "$pid" =~ ^[0-9]+$ ]] && printf '%s' "$pid"
  return 0
}

# pidfile_alive FILE [COMM]: true if FILE names a live process (whose comm starts with COMM).
pidfile_alive() {
  local pid
  pid="$(read_pidfile "$1")"
  [[ -n "$pid" ]] && pid_alive "$pid" || return 1
  [[ -z "${2:-}" ]] && return 0
  [[ "$(pid_comm "$pid")" == "$2"* ]]
}

# wait_dead TIMEOUT_S PID...: wait until all PIDs are gone (or zombies); false on timeout.
wait_dead() {
  local timeout="$1" deadline p any
  shift
  deadline=$((SECONDS + timeout))
  while :; do
    any=0
    for p in "$@"; do pid_alive "$p" && any=1; done
    ((any == 0)) && return 0
    ((SECONDS >= deadline)) && return 1
    sleep 0.1
  done
}

# stop_pids NAME PID...: SIGTERM, wait up to STOP_TIMEOUT (default 10 s), then SIGKILL.
stop_pids() {
  local name="$1" p
  shift
  local live=()
  for p in "$@"; do pid_alive "$p" && live+=("$p"); done
  ((${#live[@]} == 0)) && return 0
  log "stopping $name (pid ${live[*]})"
  kill -TERM "${live[@]}" 2>/dev/null || true
  if ! wait_dead "${STOP_TIMEOUT:-10}" "${live[@]}"; then
    log "$name did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "${live[@]}" 2>/dev/null || true
    wait_dead 5 "${live[@]}" || die "$name (pid ${live[*]}) survived SIGKILL"
  fi
  STOPPED_PIDS+=("${live[@]}")
}

# Pids stopped by stop_pids, for a final wait_reaped "${STOPPED_PIDS[@]}".
STOPPED_PIDS=()

# wait_reaped PID...: give PID 1 up to REAP_TIMEOUT (5 s) to reap dead orphans, so that
# `pgrep` right after a stop shows no <defunct> entries. Never fails (zombies hold nothing).
wait_reaped() {
  local deadline p any
  deadline=$((SECONDS + ${REAP_TIMEOUT:-5}))
  while ((SECONDS < deadline)); do
    any=0
    for p in "$@"; do [[ -e "/proc/$p" ]] && any=1; done
    ((any == 0)) && return 0
    sleep 0.1
  done
  return 0
}

# await_ready PID NAME DEADLINE WHAT CMD...: run CMD every 0.3 s until it succeeds. Calls the
# script's own `abort MSG` (which shows the log and stops what was started) when PID, the
# daemon NAME, exits first, or when SECONDS reaches DEADLINE ("WHAT did not succeed ...").
await_ready() {
  local pid="$1" name="$2" deadline="$3" what="$4"
  shift 4
  until "$@"; do
    pid_alive "$pid" || abort "$name exited during startup"
    ((SECONDS < deadline)) || abort "$what did not succeed within ${TIMEOUT} s"
    sleep 0.3
  done
}

# report_stopped: the last step of a stop script: wait for what it stopped to be reaped, then
# say whether anything was running.
report_stopped() {
  if ((${#STOPPED_PIDS[@]})); then
    wait_reaped "${STOPPED_PIDS[@]}"
    log "stopped"
  else
    log "not running"
  fi
}

# stop_pidfile NAME FILE [COMM]: stop the process named by a pid file (if it is still ours).
stop_pidfile() {
  local name="$1" file="$2" comm="${3:-}" pid
  pid="$(read_pidfile "$file")"
  if [[ -n "$pid" ]] && pid_alive "$pid"; then
    if [[ -n "$comm" && "$(pid_comm "$pid")" != "$comm"* ]]; then
      log "pid file $file names pid $pid which is '$(pid_comm "$pid")', not $comm: not killing it"
    else
      stop_pids "$name" "$pid"
    fi
  fi
  rm -f "$file"
}

# descendants PID: print PID's descendants (children first-level, then deeper), one per line.
descendants() {
  local kids k
  kids="$(cat /proc/"$1"/task/*/children 2>/dev/null || true)"
  for k in $kids; do
    printf '%s\n' "$k"
    descendants "$k"
  done
}

# show_log_tail FILE [N]: print the last N lines of FILE to stderr, framed.
show_log_tail() {
  local f="$1" n="${2:-30}"
  [[ -f "$f" ]] || return 0
  printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
  tail -n "$n" "$f" >&2 || true
  printf -- '-----\n' >&2
}

# port_in_use PORT: true if something listens on TCP PORT (any address).
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# repo_root: the repository containing this script.
repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd; }

# with_lock FILE: take an exclusive lock for the rest of the script (fd 9).
# The lock is on fd 9: start long-running daemons with `9>&-` or they keep it held forever.
with_lock() {
  exec 9>"$1"
  flock -w "${LOCK_TIMEOUT:-300}" 9 || die "could not lock $1 within ${LOCK_TIMEOUT:-300} s"
}
