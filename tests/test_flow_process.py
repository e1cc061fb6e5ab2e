"""Issue 11: the flow process orchestrates and never runs the model, so it never imports torch
or spandrel (~6 s and ~900 MB each time a flow starts): planning learns a model's identity and
scale from the registry, or from a child process once per user file (then from a record kept
under the file's sha256); batches import the pipeline on the worker.

Each import check runs in a fresh interpreter: this test process imported torch long ago.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from spandrel.architectures.Compact import Compact

from vsrflow.errors import InvalidDenoiseStrengthError, ModelError, WeightsDownloadError
from vsrflow.models import facts, get_model, model_facts

REPO = Path(__file__).resolve().parents[1]

#: What a flow process imports: the flows, the tasks they submit, the CLI, the profiles.
FLOW_PROCESS_MODULES = [
    "flows.upscale_video",
    "flows.upscale_images",
    "flows.batches",
    "flows.archive",
    "flows.cli",
    "tasks.media",
    "tasks.upscale",
    "tasks.images",
    "tasks.artifacts",
    "deployments.profiles",
    "vsrflow.job",
    "vsrflow.models.facts",
]


def _fresh_python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter at the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _loaded(*modules: str) -> str:
    """Code that evaluates to which of ``modules`` the fresh interpreter has imported."""
    return f"sorted(m for m in {modules!r} if m in sys.modules)"


_LOADED = _loaded("torch", "spandrel")


@pytest.mark.parametrize("module", FLOW_PROCESS_MODULES)
def test_what_a_flow_process_imports_brings_no_torch(module: str) -> None:
    out = _fresh_python(f"import json, sys, {module}; print(json.dumps({_LOADED}))")
    assert json.loads(out) == [], f"importing {module} imported {out.strip()}"


#: What a control flow (backfill, watch) and parameter validation import: they list storage,
#: validate settings and start deployments; they never decode, encode or run a model.
CONTROL_MODULES = ["flows.archive", "flows.params", "vsrflow.settings"]
_MEDIA_LOADED = _loaded("torch", "spandrel", "av", "numpy")


@pytest.mark.parametrize("module", CONTROL_MODULES)
def test_control_flows_and_settings_validation_bring_no_media_stack(module: str) -> None:
    """PyAV and numpy are ~0.2 s of a control flow's import on this machine kind (and a
    watch run starts every minute): the settings model reads codec presets and deinterlace
    modes from modules that do not load FFmpeg."""
    code = (
        f"import json, sys, {module}; from vsrflow.settings import UpscaleSettings; "
        "UpscaleSettings.model_validate("
        "{'encoder': {'codec': 'hevc'}, 'deinterlace': {'mode': 'bwdif'}}); "
        f"print(json.dumps({_MEDIA_LOADED}))"
    )
    out = _fresh_python(code)
    assert json.loads(out) == [], f"importing {module} imported {out.strip()}"


def test_a_release_file_is_described_by_the_registry_without_torch(
    shared_model: Callable[[str], Path],
) -> None:
    """The same identity and scale as the loaded model, by path and by registry name (the
    search path holds the release file), and the planning process stays torch-free."""
    path = shared_model("realesr-animevideov3.pth")
    code = (
        "import json, sys; from vsrflow.models import model_facts; "
        f"by_path = model_facts({str(path)!r}); by_name = model_facts('realesr-animevideov3'); "
        "print(json.dumps([by_path.weights_sha256, by_path.scale, by_name.weights_sha256, "
        f"by_name.scale, by_name.name, {_LOADED}]))"
    )
    out = json.loads(_fresh_python(code, VSRFLOW_MODEL_PATH=str(path.parent)))
    loaded = get_model(str(path), progress=False)
    assert out == [
        loaded.weights_sha256,
        loaded.scale,
        loaded.weights_sha256,
        loaded.scale,
        "realesr-animevideov3",
        [],
    ]


def _compact_x2(path: Path) -> Path:
    """A small random SRVGGNetCompact x2 saved as a user ``.pth`` (no such release exists)."""
    torch.manual_seed(0)
    model = Compact(num_feat=8, num_conv=2, upscale=2)
    torch.save(model.state_dict(), path)
    return path


def test_a_user_file_is_inspected_in_a_child_once_then_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _compact_x2(tmp_path / "my-x2.pth")
    cache = tmp_path / "cache"
    first = model_facts(str(weights), cache_dir=cache)
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (first.name, first.weights_sha256, first.scale) == ("my-x2", sha256, 2)
    record = json.loads((cache / facts.FACTS_FOLDER / f"{sha256}.json").read_text())
    assert record["scale"] == 2 and record["architecture"] == "Compact"
    loaded = get_model(str(weights), progress=False)
    assert (loaded.weights_sha256, loaded.scale) == (first.weights_sha256, first.scale)

    def no_child(path: Path) -> dict[str, object]:
        raise AssertionError(f"{path} was inspected again")

    monkeypatch.setattr(facts, "inspect_in_child", no_child)
    assert model_facts(str(weights), cache_dir=cache) == first
    # The same bytes under another name: the record is keyed by content, not by path.
    renamed = tmp_path / "renamed.pth"
    renamed.write_bytes(weights.read_bytes())
    assert model_facts(str(renamed), cache_dir=cache).scale == 2


def test_a_user_file_that_is_no_model_is_refused_in_one_line(tmp_path: Path) -> None:
    weights = tmp_path / "not-a-model.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, weights)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="does not recognise this model") as caught:
        model_facts(str(weights), cache_dir=cache)
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message
    assert not (cache / facts.FACTS_FOLDER).exists() or not any(
        (cache / facts.FACTS_FOLDER).iterdir()
    )


def test_blending_a_model_without_a_denoise_partner_is_refused_as_the_loader_does(
    tmp_path: Path,
) -> None:
    weights = _compact_x2(tmp_path / "mine.pth")
    for resolve in (model_facts, get_model):
        with pytest.raises(InvalidDenoiseStrengthError, match="needs a model with a denoise"):
            resolve(str(weights), denoise_strength=0.5)  # type: ignore[operator]
    with pytest.raises(InvalidDenoiseStrengthError, match=r"must be in \[0, 1\]"):
        model_facts(str(weights), denoise_strength=1.5)


def test_profiles_say_whether_batches_run_in_the_flow_process() -> None:
    from deployments.profiles import get_profile

    assert get_profile("local").runs_batches_here
    assert not get_profile("local-gpus").runs_batches_here
    assert not get_profile("slurm").runs_batches_here


def test_preloading_leaves_the_model_for_the_first_batch(
    shared_model: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's preload (local profile) loads into get_model's memo, so the batch's own
    get_model call finds it; an absent registry model is not fetched by the preload."""
    from tasks.upscale import preload_model
    from vsrflow.job import UpscaleJob
    from vsrflow.models import clear_model_cache, loader

    path = str(shared_model("realesr-animevideov3.pth"))
    clear_model_cache()
    preload_model(UpscaleJob(model=path)).join(timeout=300)

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(loader, "load_model", no_load)
    assert get_model(path, progress=False).scale == 4

    downloads: list[object] = []

    def download(*args: object, **kwargs: object) -> None:
        downloads.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr("vsrflow.models.weights._download", download)
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", "")
    monkeypatch.setenv("VSRFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    thread = preload_model(UpscaleJob(model="RealESRGAN_x4plus"))
    thread.join(timeout=60)
    assert not thread.is_alive() and downloads == []


def test_registry_weights_out_of_reach_name_the_fetch_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning refuses in one line that gives the step for an offline machine."""
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", "http://127.0.0.1:9/closed/")  # never online
    with pytest.raises(WeightsDownloadError) as caught:
        model_facts("RealESRGAN_x4plus", cache_dir=tmp_path / "cache", search_path=[])
    message = str(caught.value)
    assert "\n" not in message and "downloading RealESRGAN_x4plus" in message
    assert "`vsrflow models fetch RealESRGAN_x4plus`" in message and "--weights" in message


def test_the_flows_peak_memory_is_its_own_not_a_large_parents() -> None:
    """``VideoResult.flow_peak_rss_mb`` comes from :func:`vsrflow.procmem.peak_rss_mb`. A
    process started by a 600 MB one (a benchmark, a notebook) must report its own peak: Linux
    carries ``ru_maxrss`` across fork+exec, which made the bench read 776 MB for a 178 MB flow."""
    import subprocess
    import sys

    child = "from vsrflow.procmem import peak_rss_mb; print(peak_rss_mb())"
    parent = (
        "import resource, subprocess, sys; ballast = b'x' * (600 << 20); "
        f"out = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
        "text=True, check=True).stdout; "
        "print(out.strip(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, check=True
    )
    reported, parents = (float(v) for v in done.stdout.split())
    assert parents > 600  # the ballast was resident
    assert 5 < reported < 200, done.stdout


_FRAGMENTING = """
import gc
from vsrflow.procmem import proc_status_mb, return_large_frees
took = return_large_frees() if {fixed} else None
warm = bytes(1 << 20); del warm  # glibc raises its threshold on this first free
before = proc_status_mb("VmRSS")
kept, blocks = [], []
for i in range(64):
    blocks.append(b"x" * (1 << 20))  # like one FFmpeg sample index: big, then freed
    kept.append(bytearray(600))  # a small long-lived allocation right after it
del blocks; gc.collect()
print(took, proc_status_mb("VmRSS") - before)
"""


def test_the_orchestrating_process_gives_freed_large_blocks_back() -> None:
    """``return_large_frees`` keeps big allocations in their own mappings: 64 MB of freed
    1 MB blocks, each followed by a small block still in use, are returned to the system
    (without it glibc serves them from its heap, and the holes stay resident)."""
    if os.environ.get("LD_PRELOAD"):
        pytest.skip("a preloaded allocator (LD_PRELOAD) is not the C library's malloc")
    _, default_mb = _fresh_python(_FRAGMENTING.format(fixed=False)).split()
    if float(default_mb) <= 48:
        pytest.skip(
            "this malloc returns the blocks by itself (not glibc's defaults: see "
            "GLIBC_TUNABLES / MALLOC_MMAP_THRESHOLD_)"
        )
    took, fixed_mb = _fresh_python(_FRAGMENTING.format(fixed=True)).split()
    assert took == "True"
    assert float(fixed_mb) < 8, fixed_mb
