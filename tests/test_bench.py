"""bench/run.py keeps working: a quick run of its speed and encoder parts writes the table, the
JSON and the plot, with real measurements in them. No timing target is asserted here (those
live in the benchmark's own table); only that every number was measured and is plausible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_quick_bench_of_speed_and_encoder_writes_its_reports(
    shared_dir: Path, tmp_path: Path
) -> None:
    weights = shared_dir / "models" / "realesr-animevideov3.pth"
    if not weights.is_file():
        pytest.skip(f"shared model not found: {weights}")
    out = tmp_path / "results"
    env = {**os.environ, "VSRFLOW_SHARED_DIR": str(shared_dir)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "core,encoder",
         "--results-dir", str(out)],
        # A hang guard, not a speed target: on a 2-core AVX2-only CPU (fp32, ~0.6 s a frame)
        # the two sections took about 600 s, so 600 s timed out there.
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())

    core = results["core"]
    assert core["frames"] == 24
    assert core["encoder"]["options"]["preset"] == "veryfast"  # the measured default
    for layer in ("model", "engine", "pipeline"):
        assert 0 < core[layer]["best_s_per_frame"] < 10
    # The pipeline wrote every frame in every round (decoded back from its chunks), so its
    # speed is for the model's whole work; then it cannot be much faster than the model alone
    # (0.79 and, in a fresh-clone CI, 0.616 were measured on a noisy 2-core AVX2 CPU, where the
    # model-only loop ran slower than usual): a plausibility bound, not a speed target.
    assert core["pipeline_output_frames"] == [24]
    assert core["ratio_pipeline_over_model"] > 0.5
    assert core["pipeline_output_bytes"] > 0

    encoder = results["encoder"]
    assert set(encoder["presets"]) == {"medium", "faster", "veryfast", "superfast", "ultrafast"}
    for name, preset in encoder["presets"].items():
        assert preset["bytes"] > 10_000, name
        # The chunk decodes back to the model's frames (crf 18 keeps > 35 dB on them).
        assert preset["psnr_db_vs_model_frames"] > 35, name
        assert preset["encode_cpu_s_per_frame"] > 0, name
    assert encoder["default_preset"] == "veryfast"
    spare = encoder["spare_core"]
    assert "skipped" in spare or spare["torch_threads"] == (os.cpu_count() or 1) - 1

    table = (out / "results.md").read_text()
    assert "pipeline / model (best; median)" in table
    assert "x264 crf 18 veryfast (default)" in table
    with Image.open(out / "plot.png") as plot:
        assert plot.format == "PNG" and plot.width == 1100 and plot.height > 400


def test_a_films_only_run_keeps_the_earlier_320x180_row_labelled(tmp_path: Path) -> None:
    """``--feature-films-only --merge``: section 10's two films are this run's, its 320x180
    orchestration row the earlier run's, named as such in the JSON and the table."""
    sys.path.insert(0, str(REPO))
    try:
        from bench.report import build_rows
        from bench.run import merge_earlier
    finally:
        sys.path.remove(str(REPO))
    film = {
        "flow_peak_rss_mb": 195.0,
        "batches": 300,
        "upscale_stage_s": 1900.0,
        "batch_model_s": 1800.0,
        "source_frames": 9,
        "output_frames": 9,
    }
    sd = {
        "minutes": 3,
        "size": [320, 180],
        "batches": 45,
        "outside_batches_share": 0.009,
        "outside_batches_s": 22.7,
        "upscale_stage_s": 2453.0,
    }
    targets = {"flow_rss_mb": 500, "rss_growth": 1.1, "outside_batches_share": 0.05}
    earlier = {
        "mode": "full",
        "started": "2026-12-03 10:09 UTC",
        "feature": {"runs": {}, "sd": sd, "targets": targets},
    }
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    now = {
        "mode": "full",
        "started": "2026-12-03 14:24 UTC",
        "machine": {},
        "feature": {
            "minutes": 120,
            "size": [32, 18],
            "rss_growth": 1.06,
            "frames_exact": True,
            "targets": targets,
            "runs": {"full": film, "quarter": {**film, "flow_peak_rss_mb": 184.0}},
        },
    }
    merge_earlier(now, tmp_path / "results.json")
    assert now["feature"]["sd"] == {"measured_in": "full run of 2026-12-03 10:09 UTC", **sd}
    metrics = [row.metric for row in build_rows(now)]
    assert any(m.endswith("(45 batches) [full run of 2026-12-03 10:09 UTC]") for m in metrics)
