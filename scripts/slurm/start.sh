#!/usr/bin/env bash
# Start a single-node Slurm 22.05 test cluster (private munged + slurmctld + slurmd, all as root)
# whose whole state lives in one directory. Idempotent: exits 0 quickly if it is already up.
#
# Environment (all optional):
#   VSRFLOW_SLURM_DIR          state dir (default /tmp/vsrflow-slurm)
#   VSRFLOW_SLURMCTLD_PORT     slurmctld port (default 6817)
#   VSRFLOW_SLURMD_PORT        slurmd port (default 6818)
#   VSRFLOW_SLURM_GPUS         fake GPUs on the node (default 2)
#   VSRFLOW_SLURM_MEM_MARGIN_MB  RealMemory = detected memory minus this (default 1024)
#   VSRFLOW_SLURM_DEF_MEM_PER_CPU  DefMemPerCPU in MB (default 1024; 0 = unlimited, which
#                              makes every job without --mem take the whole node)
#   VSRFLOW_SLURM_TIMEOUT      seconds to wait for the node to be idle (default 60)
# Output: $STATE/env.sh (export SLURM_CONF=... etc.; `source` it); progress on stderr; the
# last stdout line is "vsrflow-slurm: started" or "vsrflow-slurm: already running".
# Exit codes: 0 up; 3 Slurm cannot be provided here (not root / no apt / apt has no slurm);
# anything else is a real failure (the log tails are printed).
set -euo pipefail

COMPONENT=vsrflow-slurm
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../lib/common.sh
source "$HERE/../lib/common.sh"

STATE="${VSRFLOW_SLURM_DIR:-/tmp/vsrflow-slurm}"
CTLD_PORT="${VSRFLOW_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${VSRFLOW_SLURMD_PORT:-6818}"
GPUS="${VSRFLOW_SLURM_GPUS:-2}"
MEM_MARGIN_MB="${VSRFLOW_SLURM_MEM_MARGIN_MB:-1024}"
DEF_MEM_PER_CPU="${VSRFLOW_SLURM_DEF_MEM_PER_CPU:-1024}"
TIMEOUT="${VSRFLOW_SLURM_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client munge)

# ---------------------------------------------------------------- packages
pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

binaries_present() {
  local b
  for b in slurmctld slurmd sinfo sbatch squeue scontrol munged munge unmunge; do
    command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || return 1
  done
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]} == 0)) && binaries_present; then return 0; fi
  ((${#missing[@]} == 0)) && missing=("${PACKAGES[@]}")
  if [[ "$(id -u)" != 0 ]]; then
    log "Slurm packages missing (${missing[*]}) and not root: cannot apt-get install them"
    exit 3
  fi
  command -v apt-get >/dev/null 2>&1 || {
    log "Slurm packages missing (${missing[*]}) and no apt-get on this machine"
    exit 3
  }
  log "installing ${missing[*]} with apt-get (log: $STATE/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting the system-wide munge/slurm services: we run our own.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  local apt_opts=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef
    -o Dpkg::Options::=--force-confold --no-install-recommends)
  local ok=0
  if apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null >>"$STATE/apt.log" 2>&1; then
    ok=1
  else
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update -q -o DPkg::Lock::Timeout=600 </dev/null >>"$STATE/apt.log" 2>&1 || true
    apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null >>"$STATE/apt.log" 2>&1 && ok=1
  fi
  ((made_policy)) && rm -f "$policy"
  if ((ok == 0)); then
    show_log_tail "$STATE/apt.log" 20
    if apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: (none)' ||
      ! apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate:'; then
      log "apt cannot provide slurmctld on this machine"
      exit 3
    fi
    die "apt-get install ${missing[*]} failed (see $STATE/apt.log)"
  fi
  binaries_present || die "packages installed but Slurm/munge binaries are still missing"
}

# ---------------------------------------------------------------- config
NODE="$(hostname -s 2>/dev/null || true)"
[[ "$NODE" =~ ^[A-Za-z0-9][A-Za-z0-9-]*$ ]] || NODE=localhost
CONF="$STATE/slurm.conf"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
MUNGE_PID="$MUNGE_DIR/munged.pid"
CTLD_PID="$STATE/run/slurmctld.pid"
SLURMD_PID="$STATE/run/slurmd.pid"
CTLD_LOG="$STATE/log/slurmctld.log"
SLURMD_LOG="$STATE/log/slurmd.log"
MUNGE_LOG="$MUNGE_DIR/munged.log"

node_hw() {
  # `slurmd -C` prints the real topology, e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1
  # CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"; keep everything but the name.
  local line word out=() mem=""
  line="$(slurmd -C 2>/dev/null | head -n1)" || true
  for word in $line; do
    case "$word" in
      NodeName=*) ;;
      RealMemory=*) mem="${word#RealMemory=}" ;;
      CPUs=* | Boards=* | SocketsPerBoard=* | CoresPerSocket=* | ThreadsPerCore=*) out+=("$word") ;;
    esac
  done
  if ((${#out[@]} == 0)); then
    out=("CPUs=$(nproc)")
  fi
  if [[ -z "$mem" ]]; then
    mem=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
  fi
  mem=$((mem - MEM_MARGIN_MB))
  ((mem >= 512)) || mem=512
  printf '%s RealMemory=%s' "${out[*]}" "$mem"
}

write_configs() {
  local hw i
  hw="$(node_hw)"
  cat >"$CONF.new" <<EOF
# Generated by scripts/slurm/start.sh: single-node test cluster, everything under $STATE
ClusterName=vsrflow
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=2
DefMemPerCPU=$DEF_MEM_PER_CPU
MailProg=/bin/true
GresTypes=gpu
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=300
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$SLURMD_LOG
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $hw Gres=gpu:$GPUS State=UNKNOWN
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$STATE/gres.conf.new" <<EOF
# Generated by scripts/slurm/start.sh: fake GPUs are character devices (plain files are rejected)
AutoDetect=off
EOF
  for ((i = 0; i < GPUS; i++)); do
    echo "Name=gpu File=$STATE/dev/gpu$i" >>"$STATE/gres.conf.new"
  done
}

# configs_unchanged: true if the freshly generated configs equal the ones in use.
configs_unchanged() {
  cmp -s "$CONF.new" "$CONF" && cmp -s "$STATE/gres.conf.new" "$STATE/gres.conf"
}

write_env() {
  local tmp="$STATE/env.sh.tmp"
  cat >"$tmp" <<EOF
# Generated by scripts/slurm/start.sh; source it to use the test cluster.
export SLURM_CONF='$CONF'
export VSRFLOW_SLURM_DIR='$STATE'
export VSRFLOW_SLURM_PARTITION='gpu'
export VSRFLOW_SLURM_NODE='$NODE'
export VSRFLOW_SLURM_GPUS='$GPUS'
EOF
  chmod 644 "$tmp"
  mv -f "$tmp" "$STATE/env.sh"
}

node_state() {
  SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1
}

healthy() {
  pidfile_alive "$MUNGE_PID" munged || return 1
  pidfile_alive "$CTLD_PID" slurmctld || return 1
  pidfile_alive "$SLURMD_PID" slurmd || return 1
  case "$(node_state)" in
    idle | mixed | allocated | completing | planned) return 0 ;;
    *) return 1 ;;
  esac
}

fail_with_logs() {
  log "ERROR: $*"
  show_log_tail "$MUNGE_LOG" 15
  show_log_tail "$CTLD_LOG" 30
  show_log_tail "$SLURMD_LOG" 30
  log "stopping the half-started cluster"
  VSRFLOW_SLURM_LOCK_HELD=1 VSRFLOW_SLURM_DIR="$STATE" "$HERE/stop.sh" >&2 || true
  exit 1
}

# ---------------------------------------------------------------- main
if [[ "$(id -u)" != 0 ]]; then
  log "must run as root: slurmd (SlurmdUser=root) and munged run here as root"
  exit 3
fi
umask 022
mkdir -p "$STATE"
chmod 755 "$STATE"
with_lock "$STATE/.lock"
install_packages
write_configs

if configs_unchanged && healthy; then
  rm -f "$CONF.new" "$STATE/gres.conf.new"
  write_env
  log "already running (SLURM_CONF=$CONF)"
  echo "vsrflow-slurm: already running"
  exit 0
fi

# Something is missing, unhealthy or reconfigured: stop whatever is left and start clean.
VSRFLOW_SLURM_LOCK_HELD=1 VSRFLOW_SLURM_DIR="$STATE" "$HERE/stop.sh" >&2
mv -f "$CONF.new" "$CONF"
mv -f "$STATE/gres.conf.new" "$STATE/gres.conf"
chmod 644 "$CONF" "$STATE/gres.conf"

for p in "$CTLD_PORT" "$SLURMD_PORT"; do
  port_in_use "$p" && die "TCP port $p is already in use (another Slurm?); set VSRFLOW_SLURMCTLD_PORT / VSRFLOW_SLURMD_PORT"
done

mkdir -p "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/log" "$STATE/run" "$STATE/dev"
# munged wants its dirs not group/world writable, the socket dir world-executable, key private.
install -d -m 755 "$MUNGE_DIR"
chmod 755 "$MUNGE_DIR"
for ((i = 0; i < GPUS; i++)); do
  dev="$STATE/dev/gpu$i"
  if [[ ! -c "$dev" ]]; then
    rm -f "$dev"
    mknod -m 666 "$dev" c 1 3
  fi
done

# ---- munged (private key, socket, pid, log, seed)
if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
  (umask 077 && dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none)
fi
chmod 400 "$MUNGE_DIR/munge.key"
rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
munged_bin="$(command -v munged || echo /usr/sbin/munged)"
"$munged_bin" --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" \
  --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" --seed-file="$MUNGE_DIR/munged.seed" \
  </dev/null >>"$MUNGE_LOG" 2>&1 9>&- || fail_with_logs "munged failed to start"
deadline=$((SECONDS + 15))
until munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || fail_with_logs "munged does not answer on $MUNGE_SOCKET"
  sleep 0.2
done

# ---- slurmctld and slurmd (they daemonize; -c starts from a clean job/node state)
export SLURM_CONF="$CONF"
rm -f "$CTLD_PID" "$SLURMD_PID"
slurmctld -c -f "$CONF" </dev/null >>"$CTLD_LOG" 2>&1 9>&- || fail_with_logs "slurmctld failed to start"
started=$SECONDS
deadline=$((SECONDS + TIMEOUT))
until SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; do
  ((SECONDS < deadline)) || fail_with_logs "slurmctld did not answer within ${TIMEOUT} s"
  # The daemon writes its pid file a moment after the launcher returns.
  if [[ -s "$CTLD_PID" ]] || ((SECONDS >= started + 10)); then
    pidfile_alive "$CTLD_PID" slurmctld || fail_with_logs "slurmctld exited during startup"
  fi
  sleep 0.2
done
slurmd -c -f "$CONF" -N "$NODE" </dev/null >>"$SLURMD_LOG" 2>&1 9>&- || fail_with_logs "slurmd failed to start"

state=""
until [[ "$state" == idle ]]; do
  if ((SECONDS >= deadline)); then
    fail_with_logs "node $NODE not idle within ${TIMEOUT} s (sinfo state: '${state:-none}')"
  fi
  sleep 0.2
  state="$(node_state || true)"
  case "$state" in
    down* | drain* | fail* | inval*)
      # A node left DOWN by a previous incarnation: slurmd is registered, so resume it.
      SLURM_CONF="$CONF" scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
      ;;
  esac
done
pidfile_alive "$SLURMD_PID" slurmd || fail_with_logs "slurmd is not running"

write_env
log "started: node $NODE idle (SLURM_CONF=$CONF)"
echo "vsrflow-slurm: started"
