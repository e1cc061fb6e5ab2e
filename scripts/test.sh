#!/usr/bin/env bash
# Install everything the tests need and run them (fresh machine: apt + pip + servers).
# The suite starts its own real services (Prefect server, single-node Slurm, SeaweedFS S3)
# through scripts/{prefect,slurm,s3}/start.sh and stops them at the end.
#   usage: bash scripts/test.sh [PYTEST_ARGS...]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
venv="${VSRFLOW_VENV:-$repo/.venv}"
export VSRFLOW_SHARED_DIR="${VSRFLOW_SHARED_DIR:-$repo/../shared}"
"$venv/bin/ruff" check vsrflow tasks flows deployments tests bench
"$venv/bin/ruff" format --check vsrflow tasks flows deployments tests bench
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
