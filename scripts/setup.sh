#!/usr/bin/env bash
# Install everything vsrflow needs into ./.venv (idempotent; safe to run again).
#   VSRFLOW_VENV   where the virtualenv lives (default: <repo>/.venv)
#   VSRFLOW_PYTHON which python creates it (default: python3)
#   VSRFLOW_EXTRAS pip extras to install (default: dev)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VSRFLOW_VENV:-$repo/.venv}"
python="${VSRFLOW_PYTHON:-python3}"
extras="${VSRFLOW_EXTRAS:-dev}"
stamp="$venv/.vsrflow-installed"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)-$extras"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating $venv" >&2
  "$python" -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing vsrflow[$extras] into $venv (first time: a few minutes)" >&2
  # pip's exit status matters, not grep's: run pip, then filter its noise.
  set +o pipefail
  { "$venv/bin/python" -m pip install --quiet -e "$repo[$extras]" 2>&1; echo "pip-exit=$?"; } |
    grep -v '^WARNING: Location' | tee "$venv/.pip-install.log" >&2
  set -o pipefail
  grep -q '^pip-exit=0$' "$venv/.pip-install.log" || { echo "setup: pip install failed" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
