#!/usr/bin/env bash
# The main job, offline: upscale a sample clip 4x on the embedded defaults (local compute,
# local files, Prefect's own SQLite). Weights come from ../shared/models (sha256-verified
# through VSRFLOW_MODEL_PATH); nothing is downloaded.
#   usage: bash scripts/demo.sh [INPUT [OUTPUT]]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${VSRFLOW_SHARED_DIR:-$repo/../shared}"
bash "$repo/scripts/setup.sh"
input="${1:-$shared/media/realshort_320x240_aac_mono.mp4}"
output="${2:-$repo/out/$(basename "${input%.*}")_x4.mp4}"
[[ -f "$input" ]] || { echo "demo: input not found: $input (set VSRFLOW_SHARED_DIR)" >&2; exit 1; }
export VSRFLOW_MODEL_PATH="${VSRFLOW_MODEL_PATH:-$shared/models}"
export PREFECT_HOME="${PREFECT_HOME:-$repo/.vsrflow/prefect}"
mkdir -p "$PREFECT_HOME"
# The default model for live action is realesr-general-x4v3; ../shared holds it as a
# conversion of the official release (same network, other bytes than the registry's sha256),
# so it is given as a weights file. Without it, the registry name (downloaded and verified).
general="$shared/models/realesr-general-x4v3.from-ncnn-fp16.pth"
model=(--model realesr-general-x4v3)
[[ -f "$general" ]] && model=(--weights "$general")
"${VSRFLOW_VENV:-$repo/.venv}/bin/vsrflow" upscale "$input" -o "$output" "${model[@]}"
"${VSRFLOW_VENV:-$repo/.venv}/bin/vsrflow" probe "$output" | head -30
echo "demo: wrote $output" >&2
