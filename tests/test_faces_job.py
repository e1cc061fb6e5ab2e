"""Face restoration inside a job (issue 12 phase 2): the real upscale_video and upscale_images
flows, in-process, with the real SR model, the real BlazeFace detector and a GFPGAN-architecture
restorer with random weights built here (the real GFPGAN weights cannot be downloaded on the
machines these tests run on; random weights prove the wiring and which pixels change, not how a
restored face looks).

Exactness: the test clips are lossless FFV1 4:4:4 and the outputs FFV1 too; the output keeps
4:4:4, so RGB -> YUV -> RGB is per pixel and a pixel the face step did not touch decodes to the
same bytes with and without faces. Which pixels the step may touch is recomputed here from the
detector's own faces (the whole clip planned at once equals batches planned with context, as
tests/test_faces.py shows) and the template footprint the restorer pastes into.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from prefect.artifacts import Artifact

from vsrflow.errors import UnsupportedArchitectureError, WeightsDownloadError
from vsrflow.faces.align import TEMPLATE_SIZE, alignment_matrix, template_footprint
from vsrflow.faces.blazeface import FaceDetector
from vsrflow.faces.detections import Detection
from vsrflow.faces.processor import FaceProcessor
from vsrflow.faces.restore import FaceRestorer, get_face_model
from vsrflow.faces.track import TrackSettings
from vsrflow.settings import UpscaleSettings

SCALE = 4  # realesr-animevideov3
FRAMES = 8
WIDTH, HEIGHT = 160, 128  # source frames of the face clip
PAN = 2  # px per frame


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_dir(shared_dir: Path) -> Path:
    """``$VSRFLOW_SHARED_DIR/models``: the SR weights, and the detectors in ``face/``."""
    if not (shared_dir / "models" / "face" / "blazefaceback.pth").is_file():
        pytest.skip("BlazeFace weights not found in the shared models dir")
    return shared_dir / "models"


@pytest.fixture(autouse=True)
def _model_env(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Detectors found where the shared dir keeps them; no download can happen."""
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", str(models_dir))
    monkeypatch.setenv("VSRFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", "http://127.0.0.1:9/closed/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def random_gfpgan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GFPGAN-architecture state dict with random weights (spandrel's GFPGAN class, seeded),
    saved like the release files (``params_ema``)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("gfpgan") / "gfpgan-random.pth"
    torch.save({"params_ema": GFPGAN().state_dict()}, path)
    return path


def _write_ffv1_444(path: Path, frames: list[np.ndarray], rate: int = 25) -> None:
    """Lossless 4:4:4 clip (pts 0, 1, 2... in 1/rate; 10-bit for uint16 frames): makes the
    output keep 4:4:4, so colour conversion is per pixel."""
    deep = frames[0].dtype == np.uint16
    pix_fmt = "yuv444p10le" if deep else "yuv444p"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, rate)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if deep else "rgb24")
            frame.pts = i
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _face_frames(photo: Path) -> list[np.ndarray]:
    """The photo's face (Adele_crop.png at 72 px: a ~43 px face) moving PAN px per frame over
    a still colour gradient, WIDTH x HEIGHT: about two thirds of each upscaled frame lies
    outside the face's paste footprint, a background to compare."""
    face = np.asarray(Image.open(photo).convert("RGB").resize((72, 72), Image.LANCZOS))
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = np.stack([(x * 1.5 + 40) % 256, (y * 2) % 256, (x + y) % 256], -1)
    frames = []
    for t in range(FRAMES):
        frame = background.astype(np.uint8)
        frame[28:100, 20 + PAN * t : 92 + PAN * t] = face
        frames.append(frame)
    return frames


def _photo(shared_dir: Path) -> Path:
    photo = shared_dir / "images" / "faces" / "Adele_crop.png"
    if not photo.is_file():
        pytest.skip(f"face photo not found: {photo}")
    return photo


@pytest.fixture(scope="module")
def face_clip(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "face.mkv"
    _write_ffv1_444(path, _face_frames(_photo(shared_dir)))
    return path


@pytest.fixture(scope="module")
def plain_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six frames of moving colour gradients: nothing face-like in them."""
    y, x = np.mgrid[0:96, 0:96]
    frames = [
        np.stack([(x * 2 + 9 * t) % 256, (y * 2) % 256, ((x + y + 5 * t) % 256)], -1).astype(
            np.uint8
        )
        for t in range(6)
    ]
    path = tmp_path_factory.mktemp("clips") / "plain.mkv"
    _write_ffv1_444(path, frames)
    return path


def _settings(weights: str, faces: dict | None = None, **batching: int) -> UpscaleSettings:
    return UpscaleSettings.model_validate(
        {
            "model": {"weights_path": weights},
            "encoder": {"codec": "ffv1"},
            "batching": batching or {"frames": 4},
            "faces": faces or {},
        }
    )


def _decode(path: Path, fmt: str = "rgb24") -> tuple[np.ndarray, list[Fraction]]:
    """RGB frames and their timestamps in seconds (Matroska stores milliseconds)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    times = [f.pts * f.time_base for f in frames]
    return np.stack([f.to_ndarray(format=fmt) for f in frames]), times


def _manifest(output: Path) -> dict:
    return json.loads(Path(f"{output}.manifest.json").read_text())


def _allowed_regions(
    source: np.ndarray, models_dir: Path, restorer: Path, window: int
) -> tuple[np.ndarray, list[list[Detection]]]:
    """Where the face step may change pixels in each upscaled frame (the template footprint
    of each planned face), and the planned faces themselves (output coordinates)."""
    detector = FaceDetector.from_name("blazeface-back", search_path=[models_dir])
    processor = FaceProcessor(
        detector,
        FaceRestorer(get_face_model(restorer, progress=False), device="cpu"),
        tracking=TrackSettings(window=window),
    )
    planned = processor.plan(processor.detect(source), scale=(SCALE, SCALE))
    n, h, w = source.shape[0], source.shape[1] * SCALE, source.shape[2] * SCALE
    allowed = np.zeros((n, h, w), dtype=bool)
    for t, faces in enumerate(planned):
        for face in faces:
            box = template_footprint(alignment_matrix(face, TEMPLATE_SIZE), h, w, TEMPLATE_SIZE)
            allowed[t, box.y0 : box.y1, box.x0 : box.x1] = True
    return allowed, planned


# --- videos ------------------------------------------------------------------------------


def test_video_faces_restored_on_every_frame_background_identical_and_keyed(
    face_clip: Path,
    random_gfpgan: Path,
    models_dir: Path,
    shared_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """Faces off (chunks kept); faces on (new keys: every batch computed; chunks kept); faces
    on again (every batch reused, face counts and samples from the cache records; samples and
    chunks cleaned after publishing); faces off again (the first run's batches reused)."""
    from flows.upscale_video import upscale_video

    weights = str(shared_model("realesr-animevideov3.pth"))
    work = tmp_path / "work"
    faces = {"enhance": True, "weights_path": str(random_gfpgan)}

    def run(name: str, face_options: dict | None, keep: bool):
        output = tmp_path / f"{name}.mkv"
        result = upscale_video(
            input_path=str(face_clip),
            output_path=str(output),
            settings=_settings(weights, face_options),
            work_dir=str(work),
            keep_chunks=keep,
        )
        return output, result

    plain_out, plain = run("plain", None, keep=True)
    assert (plain.batches, plain.batches_computed) == (2, 2)
    first_out, first = run("first", faces, keep=True)
    assert (first.batches_computed, first.batches_cached) == (2, 0)  # faces on: new keys
    assert len(list(work.rglob("*.face.png"))) == 2  # one sample per batch, beside its chunk
    faces_out, restored = run("faces", faces, keep=False)
    assert (restored.batches_cached, restored.batches_computed) == (2, 0)
    again_out, again = run("again", None, keep=True)
    assert (again.batches_cached, again.batches_computed) == (2, 0)  # the faces-off keys
    np.testing.assert_array_equal(_decode(first_out)[0], _decode(faces_out)[0])
    assert _manifest(first_out)["faces"]["faces"] == FRAMES

    source, source_pts = _decode(face_clip)
    base, base_pts = _decode(plain_out)
    out, out_pts = _decode(faces_out)
    repeat, _ = _decode(again_out)
    assert base.shape == out.shape == (FRAMES, HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert out_pts == base_pts == source_pts == [Fraction(i, 25) for i in range(FRAMES)]
    np.testing.assert_array_equal(repeat, base)

    allowed, planned = _allowed_regions(source, models_dir, random_gfpgan, window=5)
    assert all(len(f) == 1 for f in planned)  # the face is on every frame
    changed = (out != base).any(axis=-1)
    assert not (changed & ~allowed).any(), "pixels outside the face footprints changed"
    assert (~allowed).mean() > 0.5  # and there is a real background to compare
    for t, (face,) in enumerate(planned):
        x0, y0, x1, y1 = np.round(face.box).astype(int)
        assert changed[t, y0:y1, x0:x1].mean() > 0.9, f"frame {t}: face not restored"

    manifest = _manifest(faces_out)
    crop = Path(f"{faces_out}.face.png")
    assert manifest["faces"] == {
        "restorer": "gfpgan-random",
        "frames_with_faces": FRAMES,
        "faces": FRAMES,
        "crop": str(crop),
    }
    assert "faces" not in _manifest(plain_out)
    assert restored.batch_results and all(r.face_frames == 4 for r in restored.batch_results)
    image = np.asarray(Image.open(crop).convert("RGB"))
    half = image.shape[1] // 2
    assert image.shape[0] > 200 and (image[:, :half] != image[:, half:]).any()  # before/after
    assert not list(work.rglob("*.face.png"))  # batch samples gone with the chunks
    summary = Artifact.get(restored.artifacts["summary_artifact"])
    assert summary is not None and isinstance(summary.data, str)
    section = summary.data.split("## Faces", 1)[1]
    assert f"**{FRAMES}** faces restored in **{FRAMES}** of {FRAMES} frames" in section
    assert "](data:image/png;base64," in section and str(crop) in section
    assert restored.chunks_removed and not plain.chunks_removed


def test_batch_faces_see_their_neighbours_across_batch_edges(
    face_clip: Path, random_gfpgan: Path, models_dir: Path
) -> None:
    """A batch's faces are planned from its own source frames plus up to ``context`` frames
    decoded before and after it (found by decoding from an estimated earlier time): the same
    smoothed faces as planning the whole clip at once, so batch edges do not jump."""
    from vsrflow.faces.step import plan_batch_faces
    from vsrflow.media.decode import decode_range
    from vsrflow.media.probe import probe

    video = probe(face_clip).video.params(str(face_clip))
    processor = FaceProcessor(
        FaceDetector.from_name("blazeface-back", search_path=[models_dir]),
        FaceRestorer(get_face_model(random_gfpgan, progress=False), device="cpu"),
        tracking=TrackSettings(window=5),
    )
    decoded = decode_range(
        face_clip, video.index, 0, None, colour=video.colour, bit_depth=video.bit_depth
    )
    frames = [f for f in decoded]
    pts = [f.pts for f in frames]
    assert len(pts) == FRAMES
    out_size = (WIDTH * SCALE, HEIGHT * SCALE)
    whole = processor.plan(processor.detect(np.stack([f.rgb for f in frames])), scale=(4, 4))
    for start, end in ((0, 3), (3, 6), (6, None), (2, 5)):
        batch = plan_batch_faces(processor, video, pts[start], pts[end] if end else None, out_size)
        expected = whole[start:end]
        assert [len(f) for f in batch] == [len(f) for f in expected] == [1] * len(expected)
        for got, want in zip(batch, expected, strict=True):
            np.testing.assert_allclose(got[0].keypoints, want[0].keypoints, atol=1e-6)
            np.testing.assert_allclose(got[0].box, want[0].box, atol=1e-6)


def test_ten_bit_video_faces_restored_in_ten_bits(
    shared_dir: Path,
    random_gfpgan: Path,
    models_dir: Path,
    shared_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    """A 10-bit source: faces found on and restored in 16-bit frames, the output stays 10-bit
    and only the face footprints differ from a run without faces."""

    frames = [f.astype(np.uint16) * 257 for f in _face_frames(_photo(shared_dir))[:3]]
    clip = tmp_path / "deep.mkv"
    _write_ffv1_444(clip, frames)
    outputs = _off_and_on(clip, shared_model, random_gfpgan, tmp_path)
    with av.open(str(outputs["on"])) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p10le"
    off, _ = _decode(outputs["off"], "rgb48le")
    on, _ = _decode(outputs["on"], "rgb48le")
    source, _ = _decode(clip, "rgb48le")
    allowed, planned = _allowed_regions(source, models_dir, random_gfpgan, window=5)
    assert [len(f) for f in planned] == [1, 1, 1]
    changed = (on != off).any(axis=-1)
    assert not (changed & ~allowed).any() and (~allowed).mean() > 0.5
    for t, (face,) in enumerate(planned):
        x0, y0, x1, y1 = np.round(face.box).astype(int)
        assert changed[t, y0:y1, x0:x1].mean() > 0.9
        assert (on[t, y0:y1, x0:x1] % 257 != 0).any()  # not 8-bit values widened
    assert _manifest(outputs["on"])["faces"]["frames_with_faces"] == 3


def _off_and_on(
    clip: Path, shared_model: Callable[[str], Path], random_gfpgan: Path, tmp_path: Path
) -> dict[str, Path]:
    """``clip`` upscaled in 3-frame batches without and with faces (random GFPGAN weights)."""
    from flows.upscale_video import upscale_video

    weights = str(shared_model("realesr-animevideov3.pth"))
    outputs = {}
    for name, faces in (
        ("off", None),
        ("on", {"enhance": True, "weights_path": str(random_gfpgan)}),
    ):
        outputs[name] = tmp_path / f"{name}.mkv"
        upscale_video(
            input_path=str(clip),
            output_path=str(outputs[name]),
            settings=_settings(weights, faces, frames=3),
            work_dir=str(tmp_path / "work"),
        )
    return outputs


def test_video_without_faces_is_identical_with_faces_on(
    plain_clip: Path, random_gfpgan: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:

    outputs = _off_and_on(plain_clip, shared_model, random_gfpgan, tmp_path)
    off, off_pts = _decode(outputs["off"])
    on, on_pts = _decode(outputs["on"])
    assert on.shape[0] == 6 and on_pts == off_pts
    np.testing.assert_array_equal(on, off)
    faces = _manifest(outputs["on"])["faces"]
    assert faces["frames_with_faces"] == 0 and faces["faces"] == 0 and faces["crop"] is None
    assert not Path(f"{outputs['on']}.face.png").exists()


def test_bad_face_weights_are_refused_at_planning_in_one_line(
    plain_clip: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """An SR model given as the face restorer: refused before any batch runs (no chunk, no
    output), in one line that says what is wrong."""
    from flows.upscale_video import upscale_video

    weights = str(shared_model("realesr-animevideov3.pth"))
    output = tmp_path / "out.mkv"
    work = tmp_path / "work"
    with pytest.raises(UnsupportedArchitectureError) as caught:
        upscale_video(
            input_path=str(plain_clip),
            output_path=str(output),
            settings=_settings(weights, {"enhance": True, "weights_path": weights}),
            work_dir=str(work),
        )
    message = str(caught.value)
    assert "\n" not in message and "not a face restorer" in message
    assert not output.exists() and not list(work.rglob("*.mkv"))


def test_planning_a_face_job_verifies_the_restorer_without_torch(
    random_gfpgan: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """The flow process plans (issue 11: it orchestrates, small and torch-free): a user's
    restorer file is loaded once in a child, which says it is GFPGAN, and recorded per
    sha256 in the model cache; a file that is no face restorer gets the loader's own
    refusal class and line from that child."""
    import hashlib
    import os
    import subprocess
    import sys

    cache = tmp_path / "facts-cache"
    code = (
        "import json, sys; from vsrflow.faces.facts import check_face_job;"
        " from vsrflow.faces.job import FaceJob; from vsrflow.errors import VsrflowError\n"
        "try:\n"
        "    out = check_face_job(FaceJob(model=sys.argv[1], detector='blazeface-back',"
        " strength=0.5, window=5, faces_per_pass=4))\n"
        "except VsrflowError as exc:\n"
        "    out = [type(exc).__name__, str(exc)]\n"
        "print(json.dumps([out, sorted(m for m in ('torch', 'spandrel') if m in sys.modules)]))"
    )

    def plan(weights: Path) -> list:
        env = {**os.environ, "VSRFLOW_MODEL_CACHE": str(cache)}
        done = subprocess.run(
            [sys.executable, "-c", code, str(weights)], env=env, capture_output=True,
            text=True, timeout=600, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)

    sha = hashlib.sha256(random_gfpgan.read_bytes()).hexdigest()
    assert plan(random_gfpgan) == [sha, []]
    record = json.loads((cache / "facts" / f"{sha}.face.json").read_text())
    assert record["architecture"] == "GFPGAN"

    not_a_face = tmp_path / "not-a-face.pth"  # an SR network no release has the bytes of
    state = torch.load(
        shared_model("realesr-animevideov3.pth"), map_location="cpu", weights_only=True
    )
    state = {k: v + 1e-3 for k, v in state["params"].items()}
    torch.save({"params": state}, not_a_face)
    (kind, message), loaded = plan(not_a_face)
    assert kind == "UnsupportedArchitectureError" and loaded == []
    assert "\n" not in message and "not a face restorer" in message and "Compact" in message
    records = sorted((cache / "facts").glob("*.face.json"))
    assert records == [cache / "facts" / f"{sha}.face.json"]  # refusals are not recorded


def test_registry_face_weights_out_of_reach_name_the_fetch_command(
    plain_clip: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """GFPGANv1.4 (the default) with no copy found and its release unreachable (as on every
    machine these tests run on): refused at planning in one line that gives the one-command
    step for the real weights."""
    from flows.upscale_video import upscale_video

    weights = str(shared_model("realesr-animevideov3.pth"))
    output = tmp_path / "out.mkv"
    with pytest.raises(WeightsDownloadError) as caught:
        upscale_video(
            input_path=str(plain_clip),
            output_path=str(output),
            settings=_settings(weights, {"enhance": True}),
            work_dir=str(tmp_path / "work"),
        )
    message = str(caught.value)
    assert "\n" not in message and "downloading GFPGANv1.4" in message
    assert "`vsrflow models fetch GFPGANv1.4`" in message and not output.exists()
    # The manifest and summary name a registry restorer as is, a weights file by its stem.
    job = UpscaleSettings(faces={"enhance": True}).faces.job()
    assert job is not None and job.label == "GFPGANv1.4"


# --- images ------------------------------------------------------------------------------


def test_image_faces_restored_background_unchanged_strength_blends(
    shared_dir: Path,
    random_gfpgan: Path,
    models_dir: Path,
    shared_model: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    from flows.upscale_images import upscale_images

    photo = shared_dir / "images" / "faces" / "Adele_crop.png"
    if not photo.is_file():
        pytest.skip(f"face photo not found: {photo}")
    source = tmp_path / "adele.png"
    pixels = _face_frames(photo)[3]
    Image.fromarray(pixels).save(source)
    weights = str(shared_model("realesr-animevideov3.pth"))
    outputs = {}
    for name, faces in (
        ("off", None),
        ("on", {"enhance": True, "weights_path": str(random_gfpgan)}),
        ("half", {"enhance": True, "weights_path": str(random_gfpgan), "strength": 0.5}),
    ):
        outputs[name] = tmp_path / f"{name}.png"
        upscale_images(
            input_path=str(source),
            output_path=str(outputs[name]),
            settings=_settings(weights, faces),
            work_dir=str(tmp_path / "work"),
        )
    off = np.asarray(Image.open(outputs["off"]).convert("RGB"))
    on = np.asarray(Image.open(outputs["on"]).convert("RGB"))
    assert on.shape == off.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)

    allowed, planned = _allowed_regions(pixels[None], models_dir, random_gfpgan, window=1)
    assert len(planned[0]) == 1
    changed = (on != off).any(axis=-1)
    assert not (changed & ~allowed[0]).any() and (~allowed[0]).mean() > 0.5
    x0, y0, x1, y1 = np.round(planned[0][0].box).astype(int)
    assert changed[y0:y1, x0:x1].mean() > 0.9
    # --face-strength 0.5: half way between the upscaled and the restored face (rounding).
    half = np.asarray(Image.open(outputs["half"]).convert("RGB")).astype(np.int32)
    middle = (off.astype(np.int32) + on) / 2
    assert np.abs(half - middle).max() <= 1.0
    np.testing.assert_array_equal(half[~allowed[0]], off[~allowed[0]])

    manifest = json.loads(Path(f"{outputs['on']}.manifest.json").read_text())
    assert manifest["faces"]["faces"] == 1 and manifest["faces"]["images_with_faces"] == 1
