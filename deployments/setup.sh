#!/usr/bin/env bash
# Create or update everything prefect.yaml deploys onto, then deploy all four deployments.
# Idempotent: run it again after changing prefect.yaml or a limit.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
#   bash deployments/setup.sh
#
# Environment (optional):
#   VSRFLOW_CONCURRENT_VIDEOS  videos running at once on the pool (queue `videos`; default 1)
#   VSRFLOW_GPU_SLOTS          global concurrency limit vsrflow-gpu (default 1)
#   PREFECT                    the prefect command (default: the repo's .venv, else PATH)
# It runs the same commands deployments/README.md lists, so either way gives the same result.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [[ -z "${PREFECT:-}" ]]; then
  if [[ -x "$repo/.venv/bin/prefect" ]]; then PREFECT="$repo/.venv/bin/prefect"; else PREFECT=prefect; fi
fi
POOL=vsrflow-local # named in prefect.yaml
VIDEOS="${VSRFLOW_CONCURRENT_VIDEOS:-1}"
GPU_SLOTS="${VSRFLOW_GPU_SLOTS:-1}"

die() {
  echo "deployments/setup.sh: $*" >&2
  exit 1
}
[[ -n "${PREFECT_API_URL:-}" ]] || die "set PREFECT_API_URL to your server (e.g. http://127.0.0.1:4200/api)"
[[ "$VIDEOS" =~ ^[1-9][0-9]*$ ]] || die "VSRFLOW_CONCURRENT_VIDEOS must be a positive integer"
[[ "$GPU_SLOTS" =~ ^[1-9][0-9]*$ ]] || die "VSRFLOW_GPU_SLOTS must be a positive integer"

quiet() { "$@" >/dev/null 2>&1; }

if ! quiet "$PREFECT" work-pool inspect "$POOL"; then
  "$PREFECT" work-pool create "$POOL" --type process
fi
if quiet "$PREFECT" work-queue inspect videos --pool "$POOL"; then
  "$PREFECT" work-queue set-concurrency-limit videos "$VIDEOS" --pool "$POOL"
else
  "$PREFECT" work-queue create videos --pool "$POOL" --limit "$VIDEOS"
fi
if ! quiet "$PREFECT" work-queue inspect control --pool "$POOL"; then
  "$PREFECT" work-queue create control --pool "$POOL"
fi
if quiet "$PREFECT" gcl inspect vsrflow-gpu; then
  "$PREFECT" gcl update vsrflow-gpu --limit "$GPU_SLOTS"
else
  "$PREFECT" gcl create vsrflow-gpu --limit "$GPU_SLOTS"
fi
# Unset here so the pull step keeps "{{ $VSRFLOW_REPO }}" and every run resolves it from its
# worker's environment (prefect deploy would otherwise bake in this shell's value).
env -u VSRFLOW_REPO "$PREFECT" --no-prompt deploy --all
