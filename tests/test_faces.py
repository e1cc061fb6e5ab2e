"""Face restoration core (vsrflow.faces): detection, alignment, restoration wiring, tracking.

Detection runs the real BlazeFace weights from ``$VSRFLOW_SHARED_DIR/models/face`` on the real
photos in ``$VSRFLOW_SHARED_DIR/images/faces``; the expected boxes below were measured once with
this code and written down (they also match what a person sees in the photos). The real GFPGAN
weights cannot be had offline, so restoration runs a GFPGAN-architecture state dict with random
weights that the test builds: that proves detection -> alignment -> restoration -> paste-back
wiring and which pixels change, not how a restored face looks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_models import ReleaseServer, release_server  # noqa: F401  (fixture)

from vsrflow.errors import (
    UnknownModelError,
    UnsupportedArchitectureError,
    WeightsHashMismatchError,
    WeightsNotFoundError,
)
from vsrflow.faces import align
from vsrflow.faces.blazeface import (
    FaceDetector,
    anchors_for,
    weighted_nms,
)
from vsrflow.faces.detections import Detection, box_iou, scale_detections
from vsrflow.faces.registry import (
    get_detector_spec,
    list_detectors,
    resolve_detector_weights,
)
from vsrflow.faces.restore import (
    FaceRestorer,
    clear_face_model_cache,
    get_face_model,
)
from vsrflow.faces.track import TrackSettings, stabilize
from vsrflow.hashing import clear_hash_memo, file_sha256
from vsrflow.models import download_url, get_spec, list_specs
from vsrflow.models import registry as registry_module

FRONT, BACK = "blazeface-front", "blazeface-back"

#: Measured once (this code, both detectors): boxes (x0, y0, x1, y1) in image pixels, sorted
#: by x0. Blake_Lively.jpg is a side-by-side of two photos (child, adult): two faces.
MEASURED: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {
    "3faces.png": {  # 128x128, three faces ~17-19 px wide
        FRONT: [(10.9, 44.1, 28.7, 61.9), (53.4, 44.2, 70.7, 61.5), (99.4, 41.9, 118.5, 61.0)],
        BACK: [(11.6, 43.4, 28.8, 60.6), (55.0, 44.9, 71.3, 61.2), (99.9, 42.7, 116.6, 59.4)],
    },
    "Blake_Lively.jpg": {  # 700x464
        FRONT: [(99.9, 154.1, 244.9, 299.1), (414.4, 127.7, 604.2, 317.5)],
        BACK: [(105.6, 156.9, 249.3, 300.5), (414.7, 123.0, 606.2, 314.5)],
    },
    "Adele_crop.png": {  # 512x512, already aligned to the FFHQ template
        FRONT: [(117.4, 171.3, 417.2, 471.1)],
        BACK: [(106.5, 165.3, 407.1, 466.0)],
    },
}
#: Position tolerance in pixels: ~15 % of the face size for the tiny faces, 8 px otherwise.
TOLERANCE = {"3faces.png": 3.0, "Blake_Lively.jpg": 8.0, "Adele_crop.png": 8.0}


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def face_models_dir(shared_dir: Path) -> Path:
    """``$VSRFLOW_SHARED_DIR/models`` (its ``face`` folder holds the detectors)."""
    face = shared_dir / "models" / "face"
    if not (face / "blazefaceback.pth").is_file():
        pytest.skip(f"BlazeFace weights not found in {face}")
    return shared_dir / "models"


@pytest.fixture(scope="session")
def detectors(face_models_dir: Path) -> dict[str, FaceDetector]:
    return {n: FaceDetector.from_name(n, search_path=[face_models_dir]) for n in (FRONT, BACK)}


@pytest.fixture(scope="session")
def face_photo(shared_dir: Path) -> Callable[[str], np.ndarray]:
    def get(name: str) -> np.ndarray:
        path = shared_dir / "images" / "faces" / name
        if not path.is_file():
            pytest.skip(f"face photo not found: {path}")
        return np.asarray(Image.open(path).convert("RGB"))

    return get


@pytest.fixture(scope="session")
def random_gfpgan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GFPGAN-architecture state dict with random weights (spandrel's own GFPGAN class,
    seeded), saved like the release files (``params_ema``); ~350 MB in a session temp dir."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("gfpgan") / "gfpgan-random.pth"
    torch.save({"params_ema": GFPGAN().state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def restorer(random_gfpgan: Path) -> FaceRestorer:
    return FaceRestorer(get_face_model(random_gfpgan, progress=False), device="cpu")


@pytest.fixture(autouse=True)
def _isolated_model_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSRFLOW_MODEL_PATH", raising=False)
    monkeypatch.setenv("VSRFLOW_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VSRFLOW_MODEL_BASE_URL", "http://127.0.0.1:9/closed/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """A stand-in for the SR model's output (bicubic)."""
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.BICUBIC))


# --- detector weights and anchors --------------------------------------------------------


def test_anchors_generated_from_the_ssd_settings_match_the_published_tables(
    face_models_dir: Path,
) -> None:
    face = face_models_dir / "face"
    for table in ("anchors.npy", "anchorsback.npy"):
        digest = hashlib.sha256((face / table).read_bytes()).hexdigest()
        assert digest == "a10bb2fb93ab54ca426d6c750bfc3aad685028a16dcf231357d03694f261fd95"
        published = np.load(face / table)
        for spec in list_detectors():
            generated = anchors_for(spec)
            assert generated.shape == (896, 4)
            np.testing.assert_array_equal(generated, published)


def test_detector_weights_are_found_under_face_and_verified(
    face_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSRFLOW_MODEL_PATH", str(face_models_dir))
    resolved = resolve_detector_weights(BACK)
    assert resolved.path == face_models_dir / "face" / "blazefaceback.pth"
    assert get_detector_spec(BACK).url is None  # no download exists; the record says so

    wrong = tmp_path / "face" / "blazeface.pth"
    wrong.parent.mkdir()
    wrong.write_bytes(b"not the weights")
    with pytest.raises(WeightsHashMismatchError, match=get_detector_spec(FRONT).sha256):
        resolve_detector_weights(FRONT, search_path=[tmp_path])
    with pytest.raises(WeightsHashMismatchError, match="blazeface-front"):
        resolve_detector_weights(FRONT, path=wrong)
    with pytest.raises(WeightsNotFoundError, match="no download") as info:
        resolve_detector_weights(BACK, search_path=[tmp_path / "empty"])
    assert str(tmp_path / "empty" / "face") in str(info.value)
    with pytest.raises(UnknownModelError, match="blazeface-back"):
        get_detector_spec("blazeface-bak")


# --- detection on the real photos --------------------------------------------------------


@pytest.mark.parametrize("photo", sorted(MEASURED))
@pytest.mark.parametrize("name", [FRONT, BACK])
def test_detection_on_real_photos_matches_the_measured_boxes(
    detectors: dict[str, FaceDetector],
    face_photo: Callable[[str], np.ndarray],
    photo: str,
    name: str,
) -> None:
    image = face_photo(photo)
    faces = detectors[name].detect(image[None])[0]
    expected = MEASURED[photo][name]
    assert len(faces) == len(expected), faces
    found = sorted(faces, key=lambda d: d.box[0])
    for face, box in zip(found, expected, strict=True):
        np.testing.assert_allclose(face.box, box, atol=TOLERANCE[photo])
        assert face.score >= get_detector_spec(name).min_score
        kp = face.keypoints
        # Person's right eye is on the image's left; nose below the eyes; mouth below the nose.
        assert kp[0, 0] < kp[1, 0]
        assert kp[2, 1] > (kp[0, 1] + kp[1, 1]) / 2
        assert kp[3, 1] > kp[2, 1]
        assert face.box[0] <= kp[2, 0] <= face.box[2]


def test_back_model_finds_small_faces_the_front_model_misses(
    detectors: dict[str, FaceDetector], face_photo: Callable[[str], np.ndarray]
) -> None:
    """Measured: the photo shrunk to 20 % on a grey canvas of the original size (faces ~35-40
    px in 700 px): back finds both, front none (it is made for faces over ~20 % of the image)."""
    photo = Image.fromarray(face_photo("Blake_Lively.jpg"))
    small = photo.resize((photo.width // 5, photo.height // 5), Image.LANCZOS)
    canvas = Image.new("RGB", photo.size, (128, 128, 128))
    canvas.paste(small, ((photo.width - small.width) // 2, (photo.height - small.height) // 2))
    frame = np.asarray(canvas)[None]
    assert detectors[FRONT].detect(frame) == [[]]
    faces = detectors[BACK].detect(frame)[0]
    assert len(faces) == 2
    assert all(30 <= f.width <= 45 for f in faces)


def test_batched_letterboxed_detection_equals_single_frames(
    detectors: dict[str, FaceDetector], face_photo: Callable[[str], np.ndarray]
) -> None:
    image = face_photo("Blake_Lively.jpg")
    flipped = image[:, ::-1]
    batch = detectors[BACK].detect(np.stack([image, flipped, np.zeros_like(image)]))
    assert len(batch) == 3 and batch[2] == []
    for frame, faces in zip((image, flipped), batch[:2], strict=True):
        alone = detectors[BACK].detect(frame[None])[0]
        assert len(alone) == len(faces) == 2
        for a, b in zip(alone, faces, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
    # The mirrored photo's faces are the mirror images of the original's (within 6 px).
    width = image.shape[1]
    mirrored = sorted(width - (f.box[0] + f.box[2]) / 2 for f in batch[1])
    original = sorted((f.box[0] + f.box[2]) / 2 for f in batch[0])
    np.testing.assert_allclose(mirrored, original, atol=6)


def test_weighted_nms_blends_overlapping_boxes_by_score() -> None:
    decoded = np.zeros((3, 16))
    decoded[:, :4] = [[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [5.0, 5.0, 6.0, 6.0]]
    kept = weighted_nms(decoded, np.array([0.9, 0.3, 0.8]), iou_threshold=0.3)
    assert len(kept) == 2
    blended, score = kept[0]
    assert score == pytest.approx(0.9)
    assert blended[0] == pytest.approx(0.3 * 0.1 / 1.2)  # (0.9 * 0 + 0.3 * 0.1) / 1.2
    np.testing.assert_allclose(kept[1][0][:4], [5, 5, 6, 6])


# --- alignment ---------------------------------------------------------------------------


def test_similarity_fit_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, size=(4, 2))
    angle, scale = math.radians(17), 1.7
    truth = np.array(
        [
            [scale * math.cos(angle), -scale * math.sin(angle), 12.5],
            [scale * math.sin(angle), scale * math.cos(angle), -40.0],
        ]
    )
    fitted = align.similarity_transform(points, align.apply_affine(truth, points))
    np.testing.assert_allclose(fitted, truth, atol=1e-9)
    np.testing.assert_allclose(
        align.apply_affine(align.invert_affine(fitted), align.apply_affine(fitted, points)),
        points,
        atol=1e-9,
    )


def test_an_aligned_crop_aligns_to_about_the_identity(
    detectors: dict[str, FaceDetector], face_photo: Callable[[str], np.ndarray]
) -> None:
    """Adele_crop.png is already an FFHQ-aligned 512 crop: our transform must be near identity
    (measured: scale 0.98, rotation -2.6 degrees, shift (-3, 15) px with the back model)."""
    face = detectors[BACK].detect(face_photo("Adele_crop.png")[None])[0][0]
    matrix = align.alignment_matrix(face)
    assert 0.93 <= align.affine_scale(matrix) <= 1.05
    assert abs(math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))) < 5
    assert np.abs(matrix[:, 2]).max() < 25


def _blob_frame(height: int, width: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width))
    for x, y in centres:
        frame += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return frame


def _centroids(image: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    out = []
    for x, y in near:
        w = image * (((xs - x) ** 2 + (ys - y) ** 2) <= radius**2)
        out.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    return np.array(out)


def test_face_warped_to_the_template_and_back_lands_within_a_pixel(
    detectors: dict[str, FaceDetector], face_photo: Callable[[str], np.ndarray]
) -> None:
    """Bright dots on a real detection's landmarks (the child's face: rotated ~23 degrees,
    ~1.9 template pixels per frame pixel) land where the transform says in the template, and
    back where they started in the frame, each within a pixel."""
    image = face_photo("Blake_Lively.jpg")
    face = min(detectors[BACK].detect(image[None])[0], key=lambda d: d.box[0])
    matrix = align.alignment_matrix(face)
    landmarks = align.landmark_points(face)  # index coordinates
    frame = _blob_frame(image.shape[0], image.shape[1], landmarks, sigma=2.5)
    tensor = torch.from_numpy(frame).float()[None]

    crop = align.warp_to_template(tensor, matrix)[0].numpy()
    expected = align.apply_affine(matrix, landmarks)
    assert np.abs(expected - align.template_points()).max() < 15  # the fit itself is close
    np.testing.assert_allclose(_centroids(crop, expected, 12), expected, atol=1.0)

    region = align.template_footprint(matrix, *image.shape[:2])
    back = align.warp_from_template(torch.from_numpy(crop)[None], matrix, region)[0].numpy()
    local = landmarks - [region.x0, region.y0]
    np.testing.assert_allclose(_centroids(back, local, 7), local, atol=1.0)

    # And the photo itself comes back close to where it was (bilinear both ways).
    photo = torch.from_numpy(image.copy()).permute(2, 0, 1).float()
    there = align.warp_to_template(photo, matrix)
    again = align.warp_from_template(there, matrix, region, padding="border")
    inside = align.warp_from_template(align.soft_mask()[None], matrix, region)[0] >= 1.0
    original = photo[:, region.y0 : region.y1, region.x0 : region.x1]
    assert (again - original).abs().mean(0)[inside].mean() < 12  # halftone print: fine texture


def test_soft_mask_is_zero_at_the_crop_edge_and_one_on_the_face() -> None:
    mask = align.soft_mask()
    assert mask.shape == (512, 512)
    assert float(mask[:2].abs().max()) == 0.0 and float(mask[:, -2:].abs().max()) == 0.0
    template = align.template_points()
    x0, y0 = template.min(axis=0) - 40
    x1, y1 = template.max(axis=0) + 40
    assert float(mask[int(y0) : int(y1), int(x0) : int(x1)].min()) == 1.0
    row = mask[256].numpy()
    assert (np.diff(row[:256]) >= 0).all()  # rises monotonically


# --- registry ----------------------------------------------------------------------------


def test_gfpgan_registry_entry() -> None:
    spec = get_spec("GFPGANv1.4")
    assert (
        spec.url == "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth"
    )
    assert spec.sha256 == "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad"
    assert spec.purpose == "face" and spec.scale == 1 and spec.filename == "GFPGANv1.4.pth"
    assert spec.release_path == "v1.3.0/GFPGANv1.4.pth"
    # The SR choices (settings dropdown, `models list`) do not offer the face restorer.
    assert spec not in list_specs()
    assert list_specs("face") == (spec,)
    assert all(s.purpose == "sr" for s in list_specs())
    assert len(list_specs(None)) == len(list_specs()) + 1


def test_models_fetch_gfpgan_downloads_through_the_release_mirror(
    release_server: ReleaseServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`vsrflow models fetch GFPGANv1.4` through the real download code. The real file is
    not obtainable offline: the entry is pointed at stand-in bytes for this test, and the
    unpatched entry refuses them."""
    from flows.cli import main

    body = b"stand-in for GFPGANv1.4.pth " * 1000
    release_server.serve("v1.3.0/GFPGANv1.4.pth", body)
    real = get_spec("GFPGANv1.4")
    assert download_url(real) == release_server.base_url + "v1.3.0/GFPGANv1.4.pth"

    assert main(["models", "fetch", "GFPGANv1.4"]) == 2  # the real hash refuses the stand-in
    assert real.sha256 in capsys.readouterr().err
    cache = tmp_path / "cache"
    assert not (cache / real.filename).exists()

    digest = hashlib.sha256(body).hexdigest()
    standin = registry_module.ModelSpec(**{
        **{f: getattr(real, f) for f in real.__dataclass_fields__},
        "sha256": digest,
        "size_bytes": len(body),
    })  # fmt: skip
    monkeypatch.setitem(registry_module._REGISTRY, "GFPGANv1.4", standin)
    assert main(["models", "fetch", "GFPGANv1.4"]) == 0
    assert (cache / "GFPGANv1.4.pth").read_bytes() == body
    assert digest in capsys.readouterr().out
    assert release_server.requests == ["/mirror/v1.3.0/GFPGANv1.4.pth"] * 2


# --- restoration -------------------------------------------------------------------------


def test_restorer_weights_are_resolved_by_name_and_verified(
    random_gfpgan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "GFPGANv1.4.pth").symlink_to(random_gfpgan)
    clear_hash_memo()
    clear_face_model_cache()
    # The registry's hash is the real release's: random weights under that name are refused.
    with pytest.raises(WeightsHashMismatchError, match=r"not the GFPGANv1\.4 release file"):
        get_face_model("GFPGANv1.4", search_path=[directory], allow_download=False)
    # With the entry pointed at them, the name resolves through the search path and loads.
    real = get_spec("GFPGANv1.4")
    digest = file_sha256(random_gfpgan)
    standin = registry_module.ModelSpec(**{
        **{f: getattr(real, f) for f in real.__dataclass_fields__}, "sha256": digest,
    })  # fmt: skip
    monkeypatch.setitem(registry_module._REGISTRY, "GFPGANv1.4", standin)
    model = get_face_model("GFPGANv1.4", search_path=[directory], allow_download=False)
    assert model.architecture == "GFPGAN" and model.name == "GFPGANv1.4"
    assert model.weights_sha256 == digest and model.size == 512


def test_bad_restorer_weights_are_refused_in_words(shared_model, tmp_path: Path) -> None:
    sr = shared_model("realesr-animevideov3.pth")
    with pytest.raises(UnsupportedArchitectureError, match="not a face restorer"):
        get_face_model(sr, progress=False)
    junk = tmp_path / "junk.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, junk)
    with pytest.raises(UnsupportedArchitectureError, match="GFPGAN or RestoreFormer"):
        get_face_model(junk, progress=False)
    with pytest.raises(UnsupportedArchitectureError, match="not a face restorer"):
        from vsrflow.faces.restore import load_face_model
        from vsrflow.models import ResolvedWeights

        load_face_model(ResolvedWeights(sr, "0" * 64, get_spec("realesr-animevideov3")))


def test_restoration_changes_only_the_face_regions(
    restorer: FaceRestorer,
    detectors: dict[str, FaceDetector],
    face_photo: Callable[[str], np.ndarray],
) -> None:
    """Three faces of one frame and a frame without faces, as the pipeline will call it:
    detections on the source frames, scaled to the 4x upscaled frames; one forward pass."""
    source = face_photo("3faces.png")
    blank = np.full_like(source, 90)
    found = detectors[BACK].detect(np.stack([source, blank]))
    assert [len(f) for f in found] == [3, 0]
    frames = np.stack([_upscale(source, 4), _upscale(blank, 4)])
    faces = scale_detections(found, 4)
    before = frames.copy()

    out = restorer.restore(frames, faces, strength=1.0)
    np.testing.assert_array_equal(frames, before)  # the input is not modified
    assert restorer.last_passes == 1 and len(restorer.last_pasted) == 3
    np.testing.assert_array_equal(out[1], frames[1])  # no face: byte-identical

    changed = (out[0] != frames[0]).any(axis=-1)
    allowed = np.zeros_like(changed)
    for pasted in restorer.last_pasted:
        x0, y0, x1, y1 = pasted.region
        allowed[y0:y1, x0:x1] = True
        box = np.round(pasted.detection.box).astype(int)
        assert changed[box[1] : box[3], box[0] : box[2]].mean() > 0.9  # the face is restored
    assert not (changed & ~allowed).any()  # background outside the pasted regions: identical
    assert 0.1 < changed.mean() < 0.95
    corners = np.r_[out[0, :40, :40].ravel(), out[0, -40:, -40:].ravel()]
    np.testing.assert_array_equal(
        corners, np.r_[frames[0, :40, :40].ravel(), frames[0, -40:, -40:].ravel()]
    )


def test_strength_blends_and_restoration_is_deterministic(
    restorer: FaceRestorer,
    detectors: dict[str, FaceDetector],
    face_photo: Callable[[str], np.ndarray],
) -> None:
    source = face_photo("3faces.png")[:, 40:80]  # the middle face only
    faces = scale_detections(detectors[BACK].detect(source[None]), 4)
    assert len(faces[0]) == 1
    frames = _upscale(source, 4)[None]
    full = restorer.restore(frames, faces, 1.0).astype(np.int32)
    half = restorer.restore(frames, faces, 0.5).astype(np.int32)
    again = restorer.restore(frames, faces, 1.0).astype(np.int32)
    np.testing.assert_array_equal(again, full)  # stored noise: same bytes every run
    x0, y0, x1, y1 = np.round(faces[0][0].box).astype(int)
    mid = (frames[0].astype(np.int32) + full[0])[y0:y1, x0:x1] / 2
    assert np.abs(half[0, y0:y1, x0:x1] - mid).max() <= 1.0
    np.testing.assert_array_equal(restorer.restore(frames, faces, 0.0), frames)


def test_no_face_means_identical_frames_and_no_model_call(restorer: FaceRestorer) -> None:
    frames = np.random.default_rng(3).integers(0, 255, size=(3, 64, 96, 3), dtype=np.uint8)
    out = restorer.restore(frames, [[], [], []], strength=1.0)
    np.testing.assert_array_equal(out, frames)
    assert restorer.last_passes == 0 and restorer.last_pasted == []
    # A face entirely outside the frame is no face either, nor one without usable landmarks.
    box, keypoints = _moving_face(0)
    outside = Detection(box + 400, keypoints + 400, 0.9)
    degenerate = Detection([10, 10, 50, 50], np.full((6, 2), 30.0), 0.9)
    out = restorer.restore(frames, [[outside], [degenerate], []])
    np.testing.assert_array_equal(out, frames)
    assert restorer.last_passes == 0
    with pytest.raises(ValueError, match="strength"):
        restorer.restore(frames, [[], [], []], strength=1.5)


# --- tracking ----------------------------------------------------------------------------


def _moving_face(frame: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: a 60 px face moving 1.5 px/frame right and 0.5 px/frame down."""
    x, y = 100 + 1.5 * frame + offset, 80 + 0.5 * frame
    box = np.array([x, y, x + 60, y + 60])
    keypoints = np.array([[x + 18, y + 22], [x + 42, y + 22], [x + 30, y + 35],
                          [x + 30, y + 47], [x + 2, y + 28], [x + 58, y + 28]])  # fmt: skip
    return box, keypoints


def _jittered(frames: int, sigma: float, seed: int, offset: float = 0.0) -> list[Detection]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        box, kp = _moving_face(t, offset)
        noisy_kp = kp + rng.normal(0, sigma, kp.shape)
        out.append(Detection(box + rng.normal(0, sigma, 4), noisy_kp, 0.9))
    return out


def _error(per_frame: list[list[Detection]], offset: float = 0.0) -> float:
    errors = [
        np.abs(faces[0].keypoints - _moving_face(t, offset)[1]).mean()
        for t, faces in enumerate(per_frame)
    ]
    return float(np.sqrt(np.mean(np.square(errors))))


def test_smoothing_reduces_jitter_of_a_moving_face() -> None:
    raw = [[d] for d in _jittered(40, sigma=2.0, seed=7)]
    smooth = stabilize(raw, settings=TrackSettings(window=5))
    assert [len(f) for f in smooth] == [1] * 40
    assert _error(smooth) < 0.65 * _error(raw)

    # Frame-to-frame jitter (second difference of the landmarks) drops too.
    def jitter(seq: list[list[Detection]]) -> float:
        pts = np.stack([f[0].keypoints for f in seq])
        return float(np.abs(np.diff(pts, n=2, axis=0)).mean())

    assert jitter(smooth) < 0.4 * jitter(raw)
    # No lag: on a jitter-free face moving at constant speed the average is exact.
    clean = [[Detection(*_moving_face(t), 0.9)] for t in range(12)]
    for t, faces in enumerate(stabilize(clean)):
        np.testing.assert_allclose(faces[0].keypoints, _moving_face(t)[1], atol=1e-9)


def test_missed_frames_are_bridged_and_faces_are_tracked_apart() -> None:
    a = _jittered(12, sigma=0.5, seed=1)
    b = _jittered(12, sigma=0.5, seed=2, offset=300.0)
    raw: list[list[Detection]] = [[a[t], b[t]] for t in range(12)]
    raw[5] = [b[5]]  # face A missed for two frames
    raw[6] = [b[6]]
    out = stabilize(raw)
    assert [len(f) for f in out] == [2] * 12
    left = [[min(f, key=lambda d: d.box[0])] for f in out]
    right = [[max(f, key=lambda d: d.box[0])] for f in out]
    assert _error(left) < 1.0 and _error(right, offset=300.0) < 1.0
    assert box_iou(left[5][0].box, right[5][0].box)[0, 0] == 0.0


def test_batch_edges_do_not_jump_given_context_frames() -> None:
    """Cutting a clip into batches and stabilising each with its neighbours as context gives
    exactly the whole-clip result; without context the edge frames move."""
    settings = TrackSettings(window=7)
    raw = [[d] for d in _jittered(48, sigma=2.0, seed=11)]
    whole = stabilize(raw, settings=settings)
    c = settings.context
    batched: list[list[Detection]] = []
    alone: list[list[Detection]] = []
    for start in range(0, 48, 16):
        batch = raw[start : start + 16]
        batched += stabilize(
            batch, before=raw[max(0, start - c) : start], after=raw[start + 16 : start + 16 + c],
            settings=settings,
        )  # fmt: skip
        alone += stabilize(batch, settings=settings)
    for w, b in zip(whole, batched, strict=True):
        np.testing.assert_allclose(b[0].keypoints, w[0].keypoints, atol=1e-9)
        np.testing.assert_allclose(b[0].box, w[0].box, atol=1e-9)
    edges = [15, 16, 31, 32]
    moved = max(np.abs(alone[t][0].keypoints - whole[t][0].keypoints).max() for t in edges)
    assert moved > 0.5


# --- the face step of a pipeline batch ---------------------------------------------------


class _GreyFaceRestorer(FaceRestorer):
    """The real restorer's alignment and paste-back with a flat grey "restored" face, so the
    wiring is tested without spending seconds per face in GFPGAN."""

    def restore_crops(self, crops: torch.Tensor) -> torch.Tensor:
        self.last_passes = 1
        return torch.full_like(crops, 0.5)


def test_processor_restores_every_frame_of_a_batch_with_a_face(
    restorer: FaceRestorer, detectors: dict[str, FaceDetector], shared_media
) -> None:
    from vsrflow.faces.processor import FaceProcessor
    from vsrflow.media.decode import decode_range
    from vsrflow.media.probe import probe

    clip = shared_media("carphone_176x144_2997fps_noaudio.mp4")
    video = probe(clip).video
    decoded = decode_range(
        clip, video.index, video.pts[0], video.pts[20],
        colour=video.colour.resolved(video.height), bit_depth=video.bit_depth,
    )  # fmt: skip
    source = np.stack([f.rgb for f in decoded])
    assert source.shape[0] == 20

    processor = FaceProcessor(detectors[BACK], _GreyFaceRestorer(restorer.model), strength=0.8)
    c = processor.context
    assert c == 5
    found = processor.detect(source)
    assert all(len(f) == 1 for f in found)  # the man is in every frame
    start, end = 8, 16  # the batch; 3..7 and 16..20 are its context
    planned = processor.plan(
        found[start:end], before=found[start - c : start], after=found[end : end + c],
        scale=(2.0, 2.0),
    )  # fmt: skip
    whole = processor.plan(found, scale=(2.0, 2.0))[start:end]
    for a, b in zip(planned, whole, strict=True):
        np.testing.assert_allclose(a[0].keypoints, b[0].keypoints, atol=1e-9)

    upscaled = np.stack([_upscale(f, 2) for f in source[start:end]])
    out = np.concatenate([processor.apply(upscaled[i : i + 4], planned[i : i + 4]) for i in (0, 4)])
    assert out.shape == upscaled.shape
    stats = processor.stats
    assert (stats.frames, stats.frames_with_faces, stats.faces) == (8, 8, 8)
    assert stats.restored_frames == list(range(8))
    for t in range(8):
        x0, y0, x1, y1 = np.round(planned[t][0].box).astype(int)
        assert (out[t, y0:y1, x0:x1] != upscaled[t, y0:y1, x0:x1]).mean() > 0.9
    sample = stats.sample
    assert sample is not None and sample.before.shape == sample.after.shape
    assert sample.before.shape[0] > 100 and (sample.before != sample.after).any()
    assert stats.as_dict() == {"frames": 8, "frames_with_faces": 8, "faces": 8}
