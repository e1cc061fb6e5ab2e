"""Tests for vsrflow.models: registry, weights resolution/download, safe loading, blending.

Real Real-ESRGAN weights come from the shared directory (env ``VSRFLOW_SHARED_DIR``, default
``<repo>/../shared``) through conftest's ``shared_model``; a missing file skips with its path.
Downloads go to a real HTTP server on 127.0.0.1; every other test points the download base URL
at a closed local port, so nothing can reach the internet by accident.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vsrflow import hashing as hashing_module
from vsrflow.errors import (
    CorruptWeightsError,
    InvalidDenoiseStrengthError,
    ModelError,
    UnknownModelError,
    UnsafeWeightsError,
    UnsupportedArchitectureError,
    WeightsDownloadError,
    WeightsHashMismatchError,
    WeightsNotFoundError,
)
from vsrflow.models import (
    LoadedModel,
    blend_state_dicts,
    blended_digest,
    clear_hash_memo,
    clear_model_cache,
    descriptor_from_state_dict,
    download_url,
    fetch_weights,
    get_model,
    get_spec,
    list_specs,
    load_model,
    model_for_content,
    read_state_dict,
    resolve_weights,
)
from vsrflow.models import registry as registry_module

ANIME = "realesr-animevideov3"
ANIME_RELEASE_PATH = "v0.2.5.0/realesr-animevideov3.pth"
GENERAL_NCNN = "realesr-general-x4v3.from-ncnn-fp16.pth"
X4PLUS_NCNN = "RealESRGAN_x4plus.from-ncnn-fp16.pth"
ANIME6B_NCNN = "RealESRGAN_x4plus_anime_6B.from-ncnn-fp16.pth"


# --- isolation -------------------------------------------------------------------------------
# Shared weights come from the conftest fixture ``shared_model(filename)``, which skips and
# names the path when ``$VSRFLOW_SHARED_DIR/models/<filename>`` is absent.


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _isolated_model_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user search path, a private cache, downloads aimed at a closed local port."""
    monkeypatch.delenv("VSRFLOW_MODEL_PATH", raising=False)
    monkeypatch.setenv("VSRFLOW_MODEL_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", f"http://127.0.0.1:{_closed_port()}/closed/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    clear_hash_memo()
    clear_model_cache()
    yield
    clear_hash_memo()
    clear_model_cache()


# --- a real release mirror on 127.0.0.1 ----------------------------------------------------


@dataclasses.dataclass
class ReleaseServer:
    base_url: str
    #: URL path -> (body, Content-Length to announce or None for len(body)).
    routes: dict[str, tuple[bytes, int | None]]
    requests: list[str]

    def serve(self, release_path: str, body: bytes, announce: int | None = None) -> None:
        self.routes["/mirror/" + release_path] = (body, announce)


@pytest.fixture
def release_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReleaseServer]:
    """An http.server thread on 127.0.0.1, with VSRFLOW_MODEL_BASE_URL pointing at /mirror/."""
    routes: dict[str, tuple[bytes, int | None]] = {}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path not in routes:
                self.send_error(404, "Not Found")
                return
            body, announce = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if announce is None else announce))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/mirror/"
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", base)
    try:
        yield ReleaseServer(base, routes, requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _files_under(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*")) if directory.exists() else []


# --- registry ----------------------------------------------------------------------------


def test_registry_has_the_official_release_files() -> None:
    names = {spec.name for spec in list_specs()}
    assert names == {
        "realesr-animevideov3",
        "realesr-general-x4v3",
        "realesr-general-wdn-x4v3",
        "RealESRGAN_x4plus",
        "RealESRGAN_x4plus_anime_6B",
        "RealESRGAN_x2plus",
    }
    for spec in list_specs():
        assert len(spec.sha256) == 64 and all(c in "0123456789abcdef" for c in spec.sha256)
        assert spec.url.startswith("https://github.com/xinntao/Real-ESRGAN/releases/download/")
        assert spec.url.endswith("/" + spec.filename)
        assert spec.filename == spec.name + ".pth"
        assert spec.scale in {2, 4}
        assert spec.size_bytes > 1_000_000
        assert spec.content in {"anime", "real", "general"}
        if spec.denoise_partner is not None:
            assert get_spec(spec.denoise_partner).scale == spec.scale
    assert get_spec("RealESRGAN_x2plus").scale == 2
    assert get_spec("realesr-general-x4v3").denoise_partner == "realesr-general-wdn-x4v3"
    assert get_spec(ANIME).release_path == ANIME_RELEASE_PATH


def test_registry_entry_matches_the_real_official_file(shared_model) -> None:
    path = shared_model("realesr-animevideov3.pth")
    spec = get_spec(ANIME)
    assert path.stat().st_size == spec.size_bytes
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_unknown_name_lists_known_models_and_suggests_close_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("realesr-animevideo3")
    message = str(info.value)
    assert "Did you mean 'realesr-animevideov3'" in message
    assert "Known models:" in message and "RealESRGAN_x2plus" in message
    with pytest.raises(UnknownModelError, match="Did you mean 'RealESRGAN_x4plus'"):
        get_spec("realesrgan_x4plus")  # case differs
    with pytest.raises(UnknownModelError) as info:
        resolve_weights("zzzz")  # not path-like either: goes through the registry
    assert "Did you mean" not in str(info.value) and "Known models:" in str(info.value)


def test_content_presets() -> None:
    assert model_for_content("anime") == "realesr-animevideov3"
    assert model_for_content("real") == "RealESRGAN_x4plus"
    assert model_for_content("general") == "realesr-general-x4v3"
    for content in ("anime", "real", "general"):
        assert get_spec(model_for_content(content)).content == content
    with pytest.raises(UnknownModelError, match="anime, real, general"):
        model_for_content("cartoon")


# --- download ----------------------------------------------------------------------------


def test_download_lands_verified_in_cache_and_is_reused(
    shared_model, release_server: ReleaseServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    body = shared_model("realesr-animevideov3.pth").read_bytes()
    release_server.serve(ANIME_RELEASE_PATH, body)
    cache = tmp_path / "cache"
    assert download_url(get_spec(ANIME)) == release_server.base_url + ANIME_RELEASE_PATH

    first = resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=True)
    assert release_server.requests == ["/mirror/" + ANIME_RELEASE_PATH]
    assert first.path == cache / "realesr-animevideov3.pth"
    assert first.spec == get_spec(ANIME)
    assert first.sha256 == get_spec(ANIME).sha256
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert _files_under(cache) == [first.path]  # no temp file left behind
    assert "realesr-animevideov3.pth" in capsys.readouterr().err  # tqdm bar

    clear_hash_memo()  # force a real re-verification, not just a memo hit
    second = resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
    assert second == first
    assert len(release_server.requests) == 1


def test_wrong_bytes_from_server_leave_nothing_in_cache(
    release_server: ReleaseServer, tmp_path: Path
) -> None:
    wrong = b"definitely not a model " * 5000
    release_server.serve(ANIME_RELEASE_PATH, wrong)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsHashMismatchError) as info:
        resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
    message = str(info.value)
    assert get_spec(ANIME).sha256 in message
    assert hashlib.sha256(wrong).hexdigest() in message
    assert len(release_server.requests) == 1
    assert _files_under(cache) == []


def test_interrupted_download_leaves_nothing_in_cache(
    shared_model, release_server: ReleaseServer, tmp_path: Path
) -> None:
    body = shared_model("realesr-animevideov3.pth").read_bytes()
    release_server.serve(ANIME_RELEASE_PATH, body[:100_000], announce=len(body))
    cache = tmp_path / "cache"
    with pytest.raises(WeightsDownloadError, match=ANIME):
        resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
    assert _files_under(cache) == []


def test_http_404_names_the_url(release_server: ReleaseServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(WeightsDownloadError) as info:
        resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
    assert isinstance(info.value, ModelError)
    assert release_server.base_url + ANIME_RELEASE_PATH in str(info.value)
    assert "404" in str(info.value)
    assert _files_under(cache) == []


def test_unreachable_mirror_is_a_clear_error(tmp_path: Path) -> None:
    url = os.environ["VSRFLOW_MODEL_BASE_URL"] + ANIME_RELEASE_PATH  # closed port
    with pytest.raises(WeightsDownloadError, match=url.replace(".", r"\.")):
        resolve_weights(ANIME, cache_dir=tmp_path / "cache", search_path=[], progress=False)


@contextlib.contextmanager
def _mirror(
    handler: type[BaseHTTPRequestHandler], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Serve ``handler`` on 127.0.0.1 as the weights mirror while the block runs."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _slow_handler(release: threading.Event, *, drip_s: float | None) -> type:
    """Headers and 1000 bytes, then nothing (``drip_s`` None) or 10 bytes every ``drip_s``."""

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            while drip_s is not None and not release.wait(drip_s):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
            release.wait(30)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Slow


def test_stalled_mirror_times_out_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror that sends headers and a few bytes, then nothing: the download gives up after
    the read timeout instead of holding a worker forever (torch.hub.download_url_to_file has
    no timeout, one reason vsrflow.models.weights keeps its own download)."""
    from vsrflow.models import weights as weights_module

    release = threading.Event()
    monkeypatch.setattr(weights_module, "_DOWNLOAD_TIMEOUT_S", 0.5)
    cache = tmp_path / "cache"
    with _mirror(_slow_handler(release, drip_s=None), monkeypatch):
        try:
            started = time.monotonic()
            with pytest.raises(WeightsDownloadError, match="timed out"):
                resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
            assert time.monotonic() - started < 10
            assert _files_under(cache) == []
        finally:
            release.set()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"VSRFLOW_DOWNLOAD_SPEED_WINDOW_S": "1.5"}, "stalled at"),
        ({"VSRFLOW_DOWNLOAD_DEADLINE_S": "2", "VSRFLOW_DOWNLOAD_MIN_SPEED": "0"}, "not finished"),
    ],
)
def test_a_dripping_mirror_is_given_up_within_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    """10 bytes every 0.1 s never trips the per-read timeout; the speed floor over a window
    and the overall deadline do, and nothing is left in the cache."""
    release = threading.Event()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    with _mirror(_slow_handler(release, drip_s=0.1), monkeypatch):
        try:
            started = time.monotonic()
            with pytest.raises(WeightsDownloadError, match=words):
                resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
            assert time.monotonic() - started < 8
            assert _files_under(cache) == []
        finally:
            release.set()


def test_no_download_allowed_and_nothing_cached(
    release_server: ReleaseServer, tmp_path: Path
) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(ANIME, cache_dir=tmp_path / "cache", search_path=[], allow_download=False)
    assert "realesr-animevideov3.pth" in str(info.value)
    assert "vsrflow models fetch realesr-animevideov3" in str(info.value)
    assert release_server.requests == []


def test_corrupt_cached_file_is_downloaded_again(
    shared_model, release_server: ReleaseServer, tmp_path: Path
) -> None:
    body = shared_model("realesr-animevideov3.pth").read_bytes()
    release_server.serve(ANIME_RELEASE_PATH, body)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "realesr-animevideov3.pth").write_bytes(body[:-10] + b"0123456789")

    with pytest.raises(WeightsHashMismatchError, match="downloads are disabled"):
        resolve_weights(ANIME, cache_dir=cache, search_path=[], allow_download=False)
    assert release_server.requests == []

    resolved = resolve_weights(ANIME, cache_dir=cache, search_path=[], progress=False)
    assert len(release_server.requests) == 1
    assert resolved.path.read_bytes() == body
    assert _files_under(cache) == [resolved.path]


def test_fetch_weights_fills_the_cache_once_unless_forced(
    shared_model, release_server: ReleaseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = shared_model("realesr-animevideov3.pth")
    release_server.serve(ANIME_RELEASE_PATH, official.read_bytes())
    search = tmp_path / "search"
    search.mkdir()
    (search / "realesr-animevideov3.pth").symlink_to(official)
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", str(search))  # fetch ignores the search path
    cache = tmp_path / "cache"

    fetched = fetch_weights(ANIME, cache_dir=cache, progress=False)
    assert fetched.path == cache / "realesr-animevideov3.pth"
    assert len(release_server.requests) == 1
    assert fetch_weights(ANIME, cache_dir=cache, progress=False) == fetched
    assert len(release_server.requests) == 1
    fetch_weights(ANIME, cache_dir=cache, progress=False, force=True)
    assert len(release_server.requests) == 2
    with pytest.raises(UnknownModelError):
        fetch_weights("not-a-model", cache_dir=cache)


# --- search path and user files -----------------------------------------------------------


def test_search_path_from_env_finds_symlinked_official_file(
    shared_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    official = shared_model("realesr-animevideov3.pth")
    empty, models = tmp_path / "empty", tmp_path / "models"
    empty.mkdir()
    models.mkdir()
    (models / "realesr-animevideov3.pth").symlink_to(official)
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", f"{empty}{os.pathsep}{models}")

    # Downloads would go to a closed port, so success proves the search path was used.
    resolved = resolve_weights(ANIME, cache_dir=tmp_path / "cache")
    assert resolved.path == models / "realesr-animevideov3.pth"
    assert resolved.sha256 == get_spec(ANIME).sha256
    assert resolved.spec is not None and resolved.spec.name == ANIME
    assert _files_under(tmp_path / "cache") == []


def test_wrong_hash_on_search_path_is_refused_not_replaced(
    shared_model, release_server: ReleaseServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = shared_model("realesr-animevideov3.pth").read_bytes()
    release_server.serve(ANIME_RELEASE_PATH, body)
    models = tmp_path / "models"
    models.mkdir()
    bad = models / "realesr-animevideov3.pth"
    bad.write_bytes(body[: len(body) // 2])
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", str(models))

    with pytest.raises(WeightsHashMismatchError) as info:
        resolve_weights(ANIME, cache_dir=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert str(bad) in message
    assert get_spec(ANIME).sha256 in message
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in message
    assert release_server.requests == []
    assert bad.read_bytes() == body[: len(body) // 2]


def test_user_file_is_hashed_without_spec(shared_model, tmp_path: Path) -> None:
    path = shared_model(GENERAL_NCNN)
    resolved = resolve_weights(str(path))
    assert resolved.spec is None
    assert resolved.name == "realesr-general-x4v3.from-ncnn-fp16"
    assert resolved.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve_weights(path) == resolved  # os.PathLike works too

    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_weights(str(tmp_path / "missing.pth"))
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"unsupported weights file type '\.bin'"):
        resolve_weights(str(other))


def test_hash_memo_avoids_rehashing_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = hashing_module._sha256_of_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(hashing_module, "_sha256_of_file", counting)
    path = tmp_path / "user.pth"
    path.write_bytes(b"a" * 1000)
    first = resolve_weights(str(path))
    assert resolve_weights(str(path)) == first
    assert len(calls) == 1
    path.write_bytes(b"b" * 1000)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert resolve_weights(str(path)).sha256 == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(calls) == 2


# --- loading real weights ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "architecture", "half"),
    [
        ("realesr-animevideov3.pth", "Compact", True),
        (GENERAL_NCNN, "Compact", True),
        (X4PLUS_NCNN, "ESRGAN", True),
        (ANIME6B_NCNN, "ESRGAN", True),
    ],
)
def test_shared_models_load_with_detected_architecture(
    shared_model, filename: str, architecture: str, half: bool
) -> None:
    loaded = load_model(resolve_weights(str(shared_model(filename))))
    assert isinstance(loaded, LoadedModel)
    assert loaded.architecture == architecture
    assert loaded.scale == 4
    assert loaded.supports_half is half
    assert loaded.supports_bfloat16 is True
    assert loaded.device == torch.device("cpu")
    assert not loaded.descriptor.model.training
    assert not any(p.requires_grad for p in loaded.descriptor.model.parameters())
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y = loaded.descriptor(x)
    assert y.shape == (1, 3, 32, 32)


def test_animevideov3_output_is_deterministic(shared_model) -> None:
    weights = resolve_weights(str(shared_model("realesr-animevideov3.pth")))
    x = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    a, b = load_model(weights), load_model(weights)
    assert a.descriptor is not b.descriptor
    with torch.inference_mode():
        y1, y2, y3 = a.descriptor(x), a.descriptor(x), b.descriptor(x)
    assert y1.shape == (1, 3, 48, 80)
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    assert float(y1.std()) > 0.01  # a real picture, not a constant


def test_registry_name_loads_through_search_path(shared_model, tmp_path: Path) -> None:
    (tmp_path / "realesr-animevideov3.pth").symlink_to(shared_model("realesr-animevideov3.pth"))
    loaded = get_model(ANIME, search_path=[tmp_path], progress=False)
    assert loaded.name == ANIME
    assert loaded.weights_sha256 == get_spec(ANIME).sha256
    assert loaded.architecture == "Compact"


def test_get_model_loads_once_per_key(shared_model) -> None:
    path = str(shared_model("realesr-animevideov3.pth"))
    first = get_model(path)
    assert get_model(path, device=torch.device("cpu")) is first
    clear_model_cache()
    assert get_model(path) is not first
    with pytest.raises(InvalidDenoiseStrengthError, match="has none"):
        get_model(path, denoise_strength=0.5)


def test_safetensors_file_loads_like_the_pth(shared_model, tmp_path: Path) -> None:
    pth = shared_model("realesr-animevideov3.pth")
    st = tmp_path / "anime.safetensors"
    save_file({k: v.contiguous() for k, v in read_state_dict(pth).items()}, str(st))
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = load_model(resolve_weights(str(pth))).descriptor(x)
        actual = load_model(resolve_weights(str(st))).descriptor(x)
    assert torch.equal(actual, expected)


# --- refusing bad files ------------------------------------------------------------------


class _Payload:
    """An arbitrary class instance, as a hostile or careless checkpoint might pickle."""

    def __init__(self) -> None:
        self.note = "not a tensor"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_class_instance_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "instance.pth"
    torch.save({"params": {"body.0.weight": torch.zeros(1), "meta": _Payload()}}, path)
    with pytest.raises(UnsafeWeightsError) as info:
        load_model(resolve_weights(str(path)))
    assert str(path) in str(info.value)
    assert "arbitrary Python objects" in str(info.value) and "refused" in str(info.value)


def test_pickle_that_would_run_code_is_refused_before_running(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pth", tmp_path / "code-ran"
    torch.save({"params": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeWeightsError):
        read_state_dict(path)
    assert not marker.exists()
    # Premise check: an unsafe load of the same file really would have run the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_parameter_state_dict_loads_where_spandrels_file_loader_refuses_it(
    tmp_path: Path,
) -> None:
    """Why .pth files are read with torch.load(weights_only=True) and not with spandrel's
    loader (see vsrflow.models.loader): a state dict of nn.Parameter values is a legitimate,
    code-free checkpoint that weights_only reads and spandrel 0.4.2's allowlist refuses."""
    import pickle

    from spandrel import ModelLoader

    net = torch.nn.Conv2d(3, 3, 3)
    path = tmp_path / "parameters.pth"
    torch.save({"params": dict(net.named_parameters())}, path)
    state = read_state_dict(path)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], net.weight.detach())
    with pytest.raises(pickle.UnpicklingError, match="_rebuild_parameter"):
        ModelLoader(device="cpu").load_state_dict_from_file(path)


def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    data = random.Random(1234).randbytes(4096)
    assert data[:1] != b"\x80" and data[:2] != b"PK"  # neither pickle nor zip
    path = tmp_path / "random.pth"
    path.write_bytes(data)
    with pytest.raises(CorruptWeightsError, match="not a PyTorch checkpoint") as info:
        load_model(resolve_weights(str(path)))
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafeWeightsError)


@pytest.mark.parametrize("kind", ["empty", "truncated", "bad-safetensors"])
def test_damaged_files_give_corrupt_weights_error(shared_model, tmp_path: Path, kind: str) -> None:
    if kind == "empty":
        path = tmp_path / "empty.pth"
        path.write_bytes(b"")
    elif kind == "truncated":
        body = shared_model("realesr-animevideov3.pth").read_bytes()
        path = tmp_path / "truncated.pth"
        path.write_bytes(body[: len(body) // 2])
    else:
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"garbage" * 100)
    with pytest.raises(CorruptWeightsError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_unrelated_state_dict_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pth"
    torch.save({"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.randn(8)}, path)
    with pytest.raises(UnsupportedArchitectureError, match="does not recognise") as info:
        load_model(resolve_weights(str(path)))
    assert str(path) in str(info.value)


def test_non_dict_checkpoint_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UnsupportedArchitectureError, match="not a state dict"):
        read_state_dict(path)


def test_detected_but_inconsistent_state_dict_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "half-compact.pth"
    torch.save({"body.0.weight": torch.randn(64, 3, 3, 3), "body.1.weight": torch.randn(64)}, path)
    with pytest.raises(UnsupportedArchitectureError, match="could not be built"):
        load_model(resolve_weights(str(path)))


def test_inpainting_model_is_not_an_image_to_image_model() -> None:
    from spandrel.architectures.LaMa import LaMa

    state = LaMa(in_nc=4, out_nc=3).state_dict()
    with pytest.raises(UnsupportedArchitectureError, match="Inpainting") as info:
        descriptor_from_state_dict(state, source="lama-weights")
    assert "lama-weights" in str(info.value)


# --- blending ----------------------------------------------------------------------------


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "act.weight": torch.rand(4, generator=g),
    }


def test_blend_with_itself_is_itself() -> None:
    a = _random_state(0)
    for weight in (0.0, 0.3, 0.5, 1.0):
        blended = blend_state_dicts(a, a, weight)
        assert blended.keys() == a.keys()
        for key in a:
            torch.testing.assert_close(blended[key], a[key], rtol=1e-6, atol=1e-7)


def test_blend_is_the_weighted_sum_per_key() -> None:
    a, b = _random_state(0), _random_state(1)
    blended = blend_state_dicts(a, b, 0.3)
    for key in a:
        expected = 0.3 * a[key].double() + 0.7 * b[key].double()
        torch.testing.assert_close(blended[key], expected.float(), rtol=1e-6, atol=1e-7)
        assert not torch.allclose(blended[key], a[key])
    one, zero = blend_state_dicts(a, b, 1.0), blend_state_dicts(a, b, 0.0)
    assert all(torch.equal(one[k], a[k]) and torch.equal(zero[k], b[k]) for k in a)


def test_blend_rejects_mismatches() -> None:
    a = _random_state(0)
    with pytest.raises(ValueError, match="differ in keys"):
        blend_state_dicts(a, {**a, "extra.weight": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        blend_state_dicts(a, {**a, "conv.bias": torch.zeros(5)}, 0.5)
    for weight in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError):
            blend_state_dicts(a, a, weight)
    counts = {"n": torch.tensor([3])}
    assert torch.equal(blend_state_dicts(counts, counts, 0.5)["n"], torch.tensor([3]))
    with pytest.raises(ValueError, match="non-float"):
        blend_state_dicts(counts, {"n": torch.tensor([4])}, 0.5)


@pytest.fixture
def general_pair(shared_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A search dir with general-x4v3 (shared ncnn conversion) and a perturbed 'wdn' copy.

    The registry hashes of both names are replaced by the hashes of these stand-ins, so the
    loader runs its real resolve -> verify -> blend path.
    """
    source = shared_model(GENERAL_NCNN)
    models = tmp_path / "general-models"
    models.mkdir()
    general_path = models / "realesr-general-x4v3.pth"
    general_path.symlink_to(source)
    general = read_state_dict(source)
    g = torch.Generator().manual_seed(7)
    wdn = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in general.items()}
    wdn_path = models / "realesr-general-wdn-x4v3.pth"
    torch.save({"params": wdn}, wdn_path)

    shas = {}
    for name, path in (
        ("realesr-general-x4v3", general_path),
        ("realesr-general-wdn-x4v3", wdn_path),
    ):
        shas[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        patched = dataclasses.replace(get_spec(name), sha256=shas[name])
        monkeypatch.setitem(registry_module._REGISTRY, name, patched)
    return models, general, wdn, shas


def test_denoise_strength_blends_general_with_its_wdn_partner(general_pair) -> None:
    models, general, wdn, shas = general_pair
    weights = resolve_weights("realesr-general-x4v3", search_path=[models])
    loaded = load_model(weights, denoise_strength=0.3, search_path=[models], allow_download=False)
    assert loaded.architecture == "Compact" and loaded.scale == 4
    assert loaded.denoise_strength == 0.3
    params = loaded.descriptor.model.state_dict()
    assert params.keys() == general.keys()
    for key in general:
        expected = 0.3 * general[key].double() + 0.7 * wdn[key].double()
        torch.testing.assert_close(params[key], expected.float(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(params["body.0.weight"], general["body.0.weight"])
    assert not torch.allclose(params["body.0.weight"], wdn["body.0.weight"])

    sha_g, sha_w = shas["realesr-general-x4v3"], shas["realesr-general-wdn-x4v3"]
    assert loaded.weights_sha256 == blended_digest(sha_g, sha_w, 0.3)
    assert loaded.weights_sha256 not in {sha_g, sha_w}
    other = load_model(weights, denoise_strength=0.6, search_path=[models], allow_download=False)
    assert other.weights_sha256 != loaded.weights_sha256

    zero = load_model(weights, denoise_strength=0.0, search_path=[models], allow_download=False)
    assert all(torch.equal(zero.descriptor.model.state_dict()[k], wdn[k]) for k in wdn)


def test_full_strength_needs_no_partner(general_pair) -> None:
    models, general, _wdn, shas = general_pair
    (models / "realesr-general-wdn-x4v3.pth").unlink()
    weights = resolve_weights("realesr-general-x4v3", search_path=[models])
    loaded = load_model(weights, denoise_strength=1.0, search_path=[models], allow_download=False)
    assert loaded.weights_sha256 == shas["realesr-general-x4v3"]
    assert all(torch.equal(loaded.descriptor.model.state_dict()[k], general[k]) for k in general)
    with pytest.raises(WeightsNotFoundError, match="realesr-general-wdn-x4v3") as caught:
        load_model(weights, denoise_strength=0.5, search_path=[models], allow_download=False)
    message = str(caught.value)  # downloads off: the partner named, the fetch step, the way out
    assert message.startswith("denoise_strength=0.5 blends realesr-general-x4v3 with")
    assert "vsrflow models fetch realesr-general-wdn-x4v3" in message
    assert message.endswith("Or use denoise_strength 1 (no blend, no second file).")


def test_a_partner_out_of_reach_is_named_with_the_step_that_fetches_it(
    general_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user asks for realesr-general-x4v3 at denoise strength 0.5 on an offline machine that
    has that file: planning (model_facts) and the loader both say the second file is the
    partner, how to fetch it, and that strength 1 needs none."""
    from vsrflow.models.facts import model_facts

    models, *_ = general_pair
    (models / "realesr-general-wdn-x4v3.pth").unlink()
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", "http://127.0.0.1:9/closed/")  # never online
    cache = tmp_path / "empty-cache"
    weights = resolve_weights("realesr-general-x4v3", search_path=[models])
    with pytest.raises(WeightsDownloadError) as planned:
        model_facts(
            "realesr-general-x4v3", denoise_strength=0.5, search_path=[models], cache_dir=cache
        )
    with pytest.raises(WeightsDownloadError) as loading:
        load_model(weights, denoise_strength=0.5, search_path=[models], cache_dir=cache)
    for caught in (planned, loading):
        message = str(caught.value)
        assert "\n" not in message, message
        assert message.startswith(
            "denoise_strength=0.5 blends realesr-general-x4v3 with realesr-general-wdn-x4v3:"
        ), message
        assert "`vsrflow models fetch realesr-general-wdn-x4v3`" in message
        assert "denoise_strength 1 (no blend" in message
    assert not (cache / "realesr-general-wdn-x4v3.pth").exists()
    # The model's own file was never the problem: full strength still plans without it.
    facts = model_facts(
        "realesr-general-x4v3", denoise_strength=1.0, search_path=[models], cache_dir=cache
    )
    assert facts.scale == 4


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True])
def test_denoise_strength_out_of_range(general_pair, strength: float) -> None:
    models, *_ = general_pair
    weights = resolve_weights("realesr-general-x4v3", search_path=[models])
    with pytest.raises(InvalidDenoiseStrengthError):
        load_model(weights, denoise_strength=strength, search_path=[models])
