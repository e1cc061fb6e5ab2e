"""Turning the results into what a reader sees: the machine description, the summary table
(one row per number, with its target and status), the plot (drawn with Pillow) and the files
results.json, results.md and plot.png. Kept apart from the sections so that the report can be
rebuilt from a results dict without measuring anything."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    NOISE_MARGIN,
    TARGET_PIPELINE_RATIO,
    TARGET_SCRATCH_RATIO,
    TARGET_TASK_OVERHEAD_S,
)
from bench.sections.encoder import MAX_ENCODER_PSNR_LOSS_DB, REFERENCE_PRESET


def machine_info() -> dict[str, Any]:
    import av
    import prefect
    import torch

    from vsrflow.engine import cpu_has_native_bf16

    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu_model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name:")
            ),
            cpu_model,
        )
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        flags = cpuinfo.read()
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpu_features": [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "memory_gib": round(mem_kb / 2**20, 1),
        "native_bf16": cpu_has_native_bf16(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "numpy": np.__version__,
        "prefect": prefect.__version__,
        "kernel": platform.release(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


@dataclass
class Row:
    group: str
    metric: str
    value: str
    target: str = ""
    status: str = ""


def _check(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _fps(timing: dict[str, Any]) -> str:
    s = float(timing["best_s_per_frame"])
    return f"{s:.3f} s/frame ({1 / s:.1f} fps)"


def build_rows(r: dict[str, Any]) -> list[Row]:
    """The summary table: one row per number a reader needs, with its target if it has one."""
    rows: list[Row] = []

    def add(group: str, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append(Row(group, metric, value, target, "" if ok is None else _check(ok)))

    core, flow_r, base = r.get("core"), r.get("flow"), r.get("baseline")
    if core:
        m, e, p = core["model"], core["engine"], core["pipeline"]
        ratio, ratio_med = (
            core["ratio_pipeline_over_model"],
            core["ratio_pipeline_over_model_median"],
        )
        enc, floor = core["encode_only"], core["cpu_bound_floor_s_per_frame"]
        add("1 speed", f"model forward, tensors in memory ({core['precision']})", _fps(m))
        add("1 speed", "engine: uint8 frames in -> uint8 frames out", _fps(e))
        add("1 speed", "pipeline upscale_batch: decode+model+encode overlapped", _fps(p))
        target = f"<= {TARGET_PIPELINE_RATIO}"
        ok = ratio <= TARGET_PIPELINE_RATIO
        add(
            "1 speed",
            "pipeline / model (best; median)",
            f"{ratio:.2f}; {ratio_med:.2f}",
            target,
            ok,
        )
        enc_value = (
            f"{enc['best_s_per_frame']:.3f} s/frame, {enc['cpu_s_per_frame']:.3f} CPU-s/frame"
        )
        opts = core.get("encoder", {}).get("options", {})
        encoder_label = f"libx264 crf {opts.get('crf', '?')} {opts.get('preset', '?')}"
        add("1 speed", f"{encoder_label} (default) encode alone, 1280x720", enc_value)
        floor_value = f"{floor:.3f} s/frame = {core['ratio_floor_over_model']:.2f} x model"
        add("1 speed", "CPU-bound floor: (engine+decode+encode CPU) / cores", floor_value)
        add("1 speed", "pipeline / CPU-bound floor", f"{core['ratio_pipeline_over_cpu_floor']:.2f}")
    if flow_r:
        server, warm = flow_r["temporary_server_startup_s"], flow_r["warmup_flow_8_frames_s"]
        add("1 speed", "Prefect temporary server start (one-off, excluded)", f"{server:.1f} s")
        add("1 speed", "warm-up upscale flow, 8 frames (model load, excluded)", f"{warm:.1f} s")
        flow_value = f"{_fps(flow_r)}, {flow_r['best_total_s']:.1f} s in all"
        add("1 speed", f"flow upscale_video, local profile, {flow_r['frames']} frames", flow_value)
        fixed = flow_r.get("fixed_overhead_s")
        if fixed is not None:
            add("1 speed", "flow time - pipeline time (fixed cost per flow run)", f"{fixed:.1f} s")
        if core:
            flow_s = flow_r["best_s_per_frame"]
            add("1 speed", "flow / model", f"{flow_s / core['model']['best_s_per_frame']:.2f}")
            add(
                "1 speed", "flow / pipeline", f"{flow_s / core['pipeline']['best_s_per_frame']:.2f}"
            )
    enc_r = r.get("encoder")
    if enc_r:
        for preset, rec in enc_r["presets"].items():
            mark = " (default)" if preset == enc_r["default_preset"] else ""
            value = (
                f"encode {rec['encode_cpu_s_per_frame']:.4f} CPU-s/frame, "
                f"{rec['bytes'] / 1e3:.0f} kB, {rec['psnr_db_vs_model_frames']:.2f} dB; "
                f"pipeline / model {rec['pipeline_over_model']:.2f}"
            )
            add("1 encoder", f"x264 crf {enc_r['crf']} {preset}{mark}", value)
        add(
            "1 encoder",
            f"default preset = cheapest no larger than {REFERENCE_PRESET} and within "
            f"{MAX_ENCODER_PSNR_LOSS_DB} dB",
            f"{enc_r['default_preset']} (cheapest such: {enc_r['cheapest_eligible']})",
            "yes",
            enc_r["default_is_cheapest_eligible"],
        )
        spare = enc_r.get("spare_core", {})
        if "skipped" in spare:
            add("1 encoder", "pipeline / model with a core left to the codec", spare["skipped"])
        elif spare:
            ratio = spare["pipeline_over_model"]
            add(
                "1 encoder",
                f"pipeline / model, torch on {spare['torch_threads']} of {spare['cores']} cores "
                "(the codec gets its own core, as beside a GPU)",
                f"{ratio:.2f} ({spare['model']['best_s_per_frame']:.3f} vs "
                f"{spare['pipeline']['best_s_per_frame']:.3f} s/frame)",
                f"<= {TARGET_PIPELINE_RATIO}",
                ratio <= TARGET_PIPELINE_RATIO,
            )
    if base:
        add(
            "2 baseline",
            f"naive PNG baseline (fp32, 1 frame at a time, {base['frames']} frames)",
            _fps(base),
        )
        if core:
            pipe_disk, base_disk = core["pipeline_peak_disk_bytes"], base["peak_disk_bytes"]
            speed = base["best_s_per_frame"] / core["pipeline"]["best_s_per_frame"]
            add("2 baseline", "time: baseline / pipeline", f"{speed:.1f}x")
            mb_in, mb_out = base_disk / 2**20, pipe_disk / 2**20
            disk = f"{base_disk / pipe_disk:.0f}x ({mb_in:.1f} MB vs {mb_out:.2f} MB)"
            add("2 baseline", "peak disk written: baseline / pipeline", disk)
    if flow_r:
        scratch, written = flow_r["scratch_over_output"], flow_r["written_over_output"]
        add(
            "3 disk, memory",
            "flow: peak scratch (work dir) / output",
            f"{scratch:.2f}",
            f"<= {TARGET_SCRATCH_RATIO}",
            scratch <= TARGET_SCRATCH_RATIO,
        )
        add(
            "3 disk, memory",
            "flow: peak of all bytes written (incl. output) / output",
            f"{written:.2f}",
        )
    rss = r.get("rss")
    if rss:
        short, long = rss["short_run"]["peak_rss_mb"], rss["long_run"]["peak_rss_mb"]
        kept = rss["if_frames_were_kept_mb"]
        add(
            "3 disk, memory",
            f"worker peak RSS, {rss['short']} vs {rss['long']} frames, one batch",
            f"{short:.0f} MB vs {long:.0f} MB",
        )
        add(
            "3 disk, memory",
            "RSS growth (holding those frames would take)",
            f"{rss['growth_mb']:+.0f} MB ({kept} MB)",
            "flat",
            rss["growth_mb"] < 0.1 * kept,
        )
    sw = r.get("sweeps")
    if sw:
        for pt in sw["points"]:
            fid = f"{pt['psnr_db']} dB PSNR"
            if pt["precision"] == "fp32":
                fid = f"max diff {pt['max_abs_diff_levels']}/255"
            rows.append(
                Row(
                    "4 sweep",
                    pt["label"],
                    f"{pt['fps']:.2f} fps, {fid}",
                    "",
                    "ok" if pt["fidelity_ok"] else "FIDELITY",
                )
            )
        add("4 sweep", "fastest within the fidelity bounds", sw["fastest_within_bounds"])
        value = (
            f"{sw['default_over_fastest']:.2f} (same setting twice: {sw['noise_default_vs_twin']})"
        )
        add(
            "4 sweep",
            "defaults' time / fastest's (noise)",
            value,
            f"<= {NOISE_MARGIN}",
            sw["default_is_fastest_within_noise"],
        )
        c = sw["compile"]
        saving = f"{c['saving_s_per_frame'] * 1000:+.0f} ms/frame"
        for cache, first, even in (
            ("warm", c["first_call_s"], c["break_even_frames"]),
            ("cold", c["first_call_cold_cache_s"], c["break_even_frames_cold_cache"]),
        ):
            value = f"{first:.1f} s first call; {saving}; break-even {even or 'never'} frames"
            add("4 sweep", f"torch.compile, {cache} inductor cache", value)
    alloc = r.get("alloc")
    if alloc:
        for where in ("main_thread", "worker_thread"):
            off, on = alloc["off"][where], alloc["on"][where]
            add(
                "4 sweep",
                f"malloc tuning off -> on, model in {where.replace('_', ' ')}: "
                "CPU-s/frame (kernel); faults/frame",
                f"{off['cpu_s_per_frame']:.3f} ({off['system_s_per_frame']:.3f}) -> "
                f"{on['cpu_s_per_frame']:.3f} ({on['system_s_per_frame']:.3f}); "
                f"{off['minor_faults_per_frame']:.0f} -> {on['minor_faults_per_frame']:.0f}",
            )
    orch = r.get("orchestration")
    if orch:
        per_task, all_in = (
            orch["overhead_s_per_task"],
            orch["overhead_s_per_task_incl_flow_and_cluster_start"],
        )
        add(
            "5 orchestration",
            f"Prefect + local Dask overhead per task ({orch['tasks']} tasks)",
            f"{per_task:.3f} s",
            f"<= {TARGET_TASK_OVERHEAD_S}",
            per_task <= TARGET_TASK_OVERHEAD_S,
        )
        add("5 orchestration", "same, including flow run and Dask cluster start", f"{all_in:.3f} s")
    sl = r.get("slurm")
    if sl and "skipped" in sl:
        add("6 slurm", "1 vs 2 worker jobs", f"skipped: {sl['skipped']}")
    elif sl:
        for k, run in sl["runs"].items():
            value = f"failed: {run.get('error', '')[-160:]}"
            if "wall_s" in run:
                value = (
                    f"{run['wall_s']:.1f} s wall, upscale stage {run['upscale_stage_s']:.1f} s, "
                    f"busiest worker in batches {run['busiest_worker_s']:.1f} s"
                )
            label = f"{k} worker job(s) x 1 CPU (torch uses 1 thread), {sl['frames']} frames"
            add("6 slurm", label, value)
        if "speedup_wall" in sl:
            speedups = (
                f"{sl['speedup_wall']:.2f}x / {sl['speedup_upscale_stage']:.2f}x / "
                f"{sl['speedup_busiest_worker']:.2f}x"
            )
            add("6 slurm", "speedup 2 vs 1 workers: wall / upscale stage / in batches", speedups)
    st = r.get("startup")
    if st and "error" not in st:
        target = st["targets"]
        imported = st["control_flow_import_s"]
        add(
            "9 startup",
            "control flows: import time (torch/spandrel imported?)",
            f"{imported:.2f} s ({'yes' if st['control_flow_imports_torch'] else 'no'})",
            f"<= {target['import_s']} s, no",
            imported <= target["import_s"] and not st["control_flow_imports_torch"],
        )
        if "prefect_import_s" in st:
            add(
                "9 startup",
                "of which Prefect's own import (prefect.main, what `from prefect import flow` "
                "loads): the floor",
                f"{st['prefect_import_s']:.2f} s",
            )
        if "video_flow_import_s" in st:
            add(
                "9 startup",
                "upscale-video flow: import time (torch/spandrel imported?)",
                f"{st['video_flow_import_s']:.2f} s "
                f"({'yes' if st['video_flow_imports_torch'] else 'no'})",
                "no torch",
                not st["video_flow_imports_torch"],
            )
        for key, label in (
            ("cli_temporary_server", "CLI wall - upscale stage: temporary server per run"),
            ("cli_background_first", "same: first run, starts the background server"),
        ):
            add("9 startup", label, f"{st[key]['fixed_s']:.1f} s")
        later = st["cli_background_later"]["fixed_s"]
        if "cli_warm_runner" not in st:  # a run from before the warm runner
            add(
                "9 startup",
                "same: a later run, reusing the background server",
                f"{later:.1f} s",
                f"<= {target['cli_fixed_s']} s",
                later <= target["cli_fixed_s"],
            )
        else:
            add("9 startup", "same: a later run, reusing the server (cold)", f"{later:.1f} s")
            first = st["cli_launcher_first"]
            add(
                "9 startup",
                "`vsrflow` command, first run (cold; leaves a warm runner): fixed (wall)",
                f"{first['fixed_s']:.1f} s ({first['wall_s']:.1f} s)",
            )
            warm = st["cli_warm_runner"]
            add(
                "9 startup",
                "`vsrflow` command, a later run (a warm runner's child): fixed (wall)",
                f"{warm['fixed_s']:.1f} s ({warm['wall_s']:.1f} s)",
                f"<= {target['cli_fixed_s']} s",
                warm["fixed_s"] <= target["cli_fixed_s"],
            )
            rss = st["warm_runner_idle_rss_mb"]
            add("9 startup", "warm runner: resident memory while idle", f"{rss:.0f} MB")
    ft = r.get("feature")
    if ft and "error" not in ft:
        full, quarter = ft["runs"]["full"], ft["runs"]["quarter"]
        target = ft["targets"]
        label = f"{ft['minutes']} min film at {ft['size'][0]}x{ft['size'][1]}"
        add(
            "10 feature",
            f"{label}: flow-process peak RSS",
            f"{full['flow_peak_rss_mb']:.0f} MB",
            f"<= {target['flow_rss_mb']:.0f} MB",
            full["flow_peak_rss_mb"] <= target["flow_rss_mb"],
        )
        add(
            "10 feature",
            "same / a quarter of the film's",
            f"{ft['rss_growth']:.2f} ({quarter['flow_peak_rss_mb']:.0f} MB)",
            f"<= {target['rss_growth']}",
            ft["rss_growth"] <= target["rss_growth"],
        )
        add(
            "10 feature",
            f"{label}: batches, upscale stage, model seconds in batches",
            f"{full['batches']}, {full['upscale_stage_s']:.0f} s, {full['batch_model_s']:.0f} s",
        )
        add("10 feature", "output frames = source frames", "yes" if ft["frames_exact"] else "NO")
        sd = ft.get("sd")
        if sd:
            share = sd["outside_batches_share"]
            limit = target.get("outside_batches_share", 0.05)
            add(
                "10 feature",
                f"{sd['minutes']} min at {sd['size'][0]}x{sd['size'][1]}: upscale stage outside "
                f"batch tasks ({sd['batches']} batches)"
                + (f" [{sd['measured_in']}]" if "measured_in" in sd else ""),
                f"{share:.1%} ({sd['outside_batches_s']:.1f} of {sd['upscale_stage_s']:.0f} s)",
                f"<= {limit:.0%}",
                share <= limit,
            )
    wm = r.get("workermem")
    if wm and "error" not in wm:
        for key, label in (("peer", "the peer's settings"), ("defaults", "the defaults")):
            run = wm[key]
            plain, pipeline = run["plain"], run["pipeline"]
            add(
                "11 workermem",
                f"worker peak RSS - plain forward's, {wm['size'][0]}x{wm['size'][1]} x4, "
                f"{label} ({plain['precision']}, {run['frames_per_pass']}/pass)",
                f"{run['pipeline_over_plain_mb']:+.0f} MB "
                f"({pipeline['peak_rss_mb']:.0f} vs {plain['peak_rss_mb']:.0f} MB)",
                f"<= +{wm['target_over_plain_mb']:.0f} MB",
                run["pipeline_over_plain_mb"] <= wm["target_over_plain_mb"],
            )
    return rows


def render_table(rows: list[Row]) -> str:
    lines = ["| part | measurement | value | target | |", "|---|---|---|---|---|"]
    lines += [f"| {r.group} | {r.metric} | {r.value} | {r.target} | {r.status} |" for r in rows]
    return "\n".join(lines)


def render_plot(r: dict[str, Any], path: Path) -> None:
    """Two horizontal bar charts drawn with Pillow: seconds per frame of each layer on the same
    frames, and frames/s of each sweep setting (green: within the fidelity bounds; red:
    outside; grey: torch.compile, opt-in; the defaults are outlined)."""
    from PIL import Image, ImageDraw, ImageFont

    layers: list[tuple[str, float, str, bool]] = []
    core, flow_r, base, sw = r.get("core"), r.get("flow"), r.get("baseline"), r.get("sweeps")
    if core:
        layers += [
            ("model forward", core["model"]["best_s_per_frame"], "#4c72b0", False),
            ("engine (uint8 in/out)", core["engine"]["best_s_per_frame"], "#4c72b0", False),
            ("CPU-bound floor", core["cpu_bound_floor_s_per_frame"], "#8c8c8c", False),
            ("pipeline upscale_batch", core["pipeline"]["best_s_per_frame"], "#55a868", True),
        ]
    if flow_r:
        layers.append(("Prefect flow (local)", flow_r["best_s_per_frame"], "#55a868", False))
    if base:
        layers.append(("naive PNG baseline", base["best_s_per_frame"], "#c44e52", False))
    sweep: list[tuple[str, float, str, bool]] = []
    for pt in sw["points"] if sw else []:
        colour = "#55a868" if pt["fidelity_ok"] else "#c44e52"
        if pt["settings"].get("compile"):
            colour = "#8c8c8c"
        sweep.append((pt["label"], pt["fps"], colour, pt["label"] == "default"))
    encoders: list[tuple[str, float, str, bool]] = []
    enc_r = r.get("encoder")
    for preset, rec in enc_r["presets"].items() if enc_r else []:
        default = preset == enc_r["default_preset"]
        encoders.append((f"x264 {preset}", rec["pipeline_over_model"], "#55a868", default))
    spare = (enc_r or {}).get("spare_core", {})
    if "pipeline_over_model" in spare:
        label = f"default, torch {spare['torch_threads']} thread(s)"
        encoders.append((label, spare["pipeline_over_model"], "#4c72b0", False))

    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    width, label_w, bar_w, row_h = 1100, 250, 700, 24
    height = 70 + sum(50 + row_h * len(bars) for bars in (layers, sweep, encoders) if bars)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    mach = r["machine"]
    title = f"vsrflow bench ({r['mode']}, {r['started']}): {mach['cpu_model']}, {mach['cpus']} CPUs"
    draw.text((20, 14), f"{title}, torch {mach['torch']}", fill="black", font=font)

    def chart(top: int, heading: str, bars: list[tuple[str, float, str, bool]], unit: str) -> int:
        draw.text((20, top), heading, fill="black", font=font)
        top += 28
        peak = max((b[1] for b in bars), default=1.0) or 1.0
        for i, (label, value, colour, outline) in enumerate(bars):
            y = top + i * row_h
            draw.text((20, y + 4), label, fill="black", font=small)
            x1 = label_w + max(1, int(bar_w * value / peak))
            draw.rectangle(
                (label_w, y + 3, x1, y + row_h - 3),
                fill=colour,
                outline="black" if outline else None,
                width=2 if outline else 0,
            )
            shown = f"{value:.3f}" if unit == "s/frame" else f"{value:.2f}"
            draw.text((x1 + 6, y + 5), f"{shown} {unit}", fill="black", font=small)
        return top + len(bars) * row_h + 22

    top = 50
    if layers:
        frames = core["frames"] if core else (flow_r or base or {}).get("frames", "")
        heading = f"seconds per frame on the same {frames} frames, best of rounds (lower is better)"
        top = chart(top, heading, layers, "s/frame")
    if sweep and sw:
        h, w = sw["frame_size_hw"]
        top = chart(
            top, f"sweep: frames/s, {sw['frames']} frames {w}x{h} (higher is better)", sweep, "fps"
        )
    if encoders:
        heading = "pipeline / model by x264 preset (1.00 = the model's own speed; lower is better)"
        chart(top, heading, encoders, "x")
    image.save(path)


def write_reports(results: dict[str, Any], out_dir: Path) -> str:
    """Print and save the table, the JSON and the plot; return the text printed."""
    clean = {k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}
    rows = build_rows(clean)
    mach = results["machine"]
    header = (
        f"vsrflow bench ({results['mode']}), {results['started']}, {results['duration_s']:.0f} s; "
        f"{mach['cpu_model']}, {mach['cpus']} CPUs ({', '.join(mach['cpu_features'])}), "
        f"torch {mach['torch']}, av {mach['av']}; load average {mach['load_average_at_start']} "
        f"-> {mach['load_average_at_end']}"
    )
    errors = [
        f"section {k} failed: {v['error']}"
        for k, v in results.items()
        if isinstance(v, dict) and "error" in v
    ]
    merged = results.get("merged_sections") or {}
    if merged:
        runs: dict[str, list[str]] = {}
        for section, run in merged.items():
            runs.setdefault(run, []).append(section)
        header += "; from earlier runs: " + "; ".join(
            f"{', '.join(sections)} ({run})" for run, sections in runs.items()
        )
    text = "\n\n".join([header, render_table(rows), *errors])
    out_dir.mkdir(parents=True, exist_ok=True)
    results["table"] = [dataclasses.asdict(row) for row in rows]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(f"# vsrflow benchmark results\n\n{text}\n")
    render_plot(clean, out_dir / "plot.png")
    return text
