"""The run's artifacts as people see them: the real Prefect UI in headless Chromium.

A real ``prefect server`` (``scripts/prefect/start.sh``), the ``vsrflow upscale`` command in a
subprocess reporting to it, then Chromium loads the UI pages of that run and the rendered DOM
must show the summary (with the before/after image embedded as a data: URI) and the progress
at 100 %. Both UIs are served: V2 (React, the default: ``/`` redirects to ``/v2``) and V1
(Vue, at ``/``). Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import infra
import media_fixtures as mf
import pytest
from cdp import HEADLESS_FLAGS

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [*HEADLESS_FLAGS, "--virtual-time-budget=20000"]


def _apt_install_chromium() -> str | None:
    """Install Debian's chromium; None when apt cannot (no root, no apt, no package)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    for commands in ([install], [["apt-get", "update"], install]):  # stale lists: update once
        for command in commands:
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or _apt_install_chromium()
    if found is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` cannot provide it")
    return found


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    env = {**os.environ, **infra.ensure_prefect()}
    env.pop("PREFECT_HOME", None)  # the real server, never a temporary one
    return env


def _api(env: dict[str, str], path: str, body: Any | None = None) -> Any:
    request = urllib.request.Request(
        env["PREFECT_API_URL"].rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def finished_run(
    server_env: dict[str, str],
    no_audio_clip: mf.FixtureInfo,
    shared_model: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """``vsrflow upscale`` against the real server; its flow run id and artifacts by type."""
    out = tmp_path_factory.mktemp("ui-run") / "ui_clip_x4.mp4"
    env = {
        **server_env,
        "VSRFLOW_MODEL_PATH": str(shared_model("realesr-animevideov3.pth").parent),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "flows.cli", "upscale", str(no_audio_clip.path), "-o", str(out)]
    cmd += ["--content", "anime", "--batch-frames", "8", "--no-progress"]
    result = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    summary_id = summary["artifacts"]["summary_artifact_id"]
    run_id = _api(server_env, f"/artifacts/{summary_id}")["flow_run_id"]
    artifacts = _api(
        server_env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    )
    return {
        "output": out,
        "run_id": run_id,
        "base": server_env["PREFECT_API_URL"].rstrip("/").removesuffix("/api"),
        "artifacts": {a["type"]: a for a in artifacts},
    }


def _dom(chromium: str, url: str, profile: Path) -> str:
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _screenshot(chromium: str, url: str, profile: Path, target: Path) -> None:
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1280,2200",
            f"--screenshot={target}",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert target.is_file() and target.stat().st_size > 10_000, f"no screenshot of {url}"


def test_flow_run_page_lists_the_artifacts_with_progress(
    chromium: str, finished_run: dict[str, Any], tmp_path: Path
) -> None:
    artifacts = finished_run["artifacts"]
    assert set(artifacts) == {"markdown", "progress", "image"}
    url = f"{finished_run['base']}/v2/runs/flow-run/{finished_run['run_id']}?tab=Artifacts"
    text = _text(_dom(chromium, url, tmp_path / "profile"))
    for artifact in artifacts.values():
        assert artifact["key"] in text
    assert "3 of 3 batches done (0 cached, 3 computed, 0 resubmitted)" in text
    _screenshot(chromium, url, tmp_path / "profile", tmp_path / "flow-run-artifacts.png")


@pytest.mark.parametrize("ui", ["v2", "v1"])
def test_summary_page_renders_the_markdown_and_the_embedded_image(
    chromium: str, finished_run: dict[str, Any], tmp_path: Path, ui: str
) -> None:
    summary = finished_run["artifacts"]["markdown"]
    prefix = "/v2" if ui == "v2" else ""
    url = f"{finished_run['base']}{prefix}/artifacts/artifact/{summary['id']}"
    dom = _dom(chromium, url, tmp_path / "profile")
    text = _text(dom)
    assert "Upscaled ui_clip_x4.mp4" in text
    assert str(finished_run["output"]) in text
    assert "frames 24 24" in text
    assert "realesr-animevideov3" in text and "b8a837681107" in text
    assert "3 3 0 0" in text  # batches, computed, cached, resubmitted
    images = re.findall(r'<img[^>]*src="(data:image/png;base64,[^"]+)"', dom)
    assert images == [finished_run["artifacts"]["image"]["data"]]
    _screenshot(chromium, url, tmp_path / "profile", tmp_path / f"summary-{ui}.png")


def test_progress_page_shows_100_percent(
    chromium: str, finished_run: dict[str, Any], tmp_path: Path
) -> None:
    progress = finished_run["artifacts"]["progress"]
    url = f"{finished_run['base']}/v2/artifacts/artifact/{progress['id']}"
    text = _text(_dom(chromium, url, tmp_path / "profile"))
    assert "Progress: 100%" in text
    assert "3 of 3 batches done" in text
