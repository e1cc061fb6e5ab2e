"""One settings model, many surfaces: every setting reaches the form, the CLI, the manifest,
the archive's up-to-date check and the batch cache key, and none of them can drift.

Adding a field to :class:`vsrflow.settings.UpscaleSettings` without a description, a CLI
flag or a declared effect on the cache key fails here; so does a surface that drops it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import media_fixtures as mf
import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.archive import archive_backfill, watch_arrivals
from flows.cli import _build_parser, _settings
from flows.upscale_images import upscale_images
from flows.upscale_video import upscale_video
from vsrflow.job import UpscaleJob, make_plan
from vsrflow.media.probe import probe
from vsrflow.settings import (
    DEFAULT_MODEL,
    Affects,
    UpscaleSettings,
    affects_of,
    choices_of,
    cli_flag_of,
    leaf_fields,
    settings_from_flat,
)
from vsrflow.settings_cli import describe

LEAVES = leaf_fields()
#: A valid non-default value for each setting (defaults + 1 would break some rules).
OTHER_VALUES: dict[str, Any] = {
    "model.name": "realesr-animevideov3",
    "model.weights_path": "my/weights.pth",
    "model.denoise_strength": 0.5,
    "size.outscale": 2.0,
    "size.target_height": 720,
    "size.square_pixels": True,
    "engine.precision": "fp32",
    "engine.tile": 64,
    "engine.tile_pad": 8,
    "engine.micro_batch": 2,
    "engine.compile_model": True,
    "engine.max_memory_gb": 6.0,
    "encoder.codec": "hevc",
    "encoder.crf": 22,
    "encoder.preset": "medium",
    "encoder.alpha": "flatten",
    "batching.seconds": 2.0,
    "batching.frames": 8,
    "deinterlace.mode": "bwdif",
    "deinterlace.rate": "frame",
    "batching.max_batches": 5,
    "faces.enhance": True,
    "faces.strength": 0.5,
    "faces.model": "GFPGANv1.4",  # the only face restorer in the registry: one choice
    "faces.weights_path": "my/face.pth",
    "faces.detector": "blazeface-front",
    "faces.smoothing": 3,
    "faces.faces_per_pass": 2,
    "alpha_mode": "bicubic",
}
#: Settings that act only while their group is switched on (and enter the cache identity and
#: the archive check only then): they are tested with the switch on.
SWITCHES = {"faces.": "faces.enhance"}
FLOWS = [upscale_video, upscale_images, archive_backfill, watch_arrivals]


def _switch(path: str) -> dict[str, Any]:
    """The group switch ``path`` needs on ({} for settings that always act)."""
    for prefix, switch in SWITCHES.items():
        if path.startswith(prefix) and path != switch:
            return {switch: True}
    return {}


def _changed(path: str) -> UpscaleSettings:
    return settings_from_flat({**_switch(path), path: OTHER_VALUES[path]})


def _one_choice(path: str) -> bool:
    """A dropdown with a single entry (the face restorer): no other value to set."""
    return choices_of(dict(LEAVES)[path]) == (OTHER_VALUES[path],)


CHANGEABLE = [p for p, _ in LEAVES if not _one_choice(p)]


def _batch_keys(info: Any, settings: UpscaleSettings, face_sha: str | None) -> list[str]:
    """The batch keys a job with ``settings`` gets for the probed source ``info``."""
    plan = make_plan(
        info,
        UpscaleJob.from_settings(settings),
        weights_sha256="0" * 64,
        model_scale=4,
        source_sha256="sha256:x",
        settings_identity=settings.output_identity(),
        face_weights_sha256=face_sha,
        frames_per_batch=8,
    )
    return [b.key for b in plan.batches]


def test_every_setting_has_a_description_a_flag_an_effect_and_a_test_value() -> None:
    names = [path for path, _ in LEAVES]
    assert sorted(names) == sorted(OTHER_VALUES), "add the new field to OTHER_VALUES"
    flags = [cli_flag_of(info) for _, info in LEAVES]
    assert len(set(flags)) == len(flags), "two settings share a CLI flag"
    for path, info in LEAVES:
        assert info.description and len(info.description) > 30, path
        assert isinstance(affects_of(info), Affects), path
        assert _one_choice(path) or OTHER_VALUES[path] != info.get_default(
            call_default_factory=True
        ), path


@pytest.mark.parametrize("path", CHANGEABLE)
def test_each_setting_reaches_the_cli_the_manifest_the_archive_check_and_the_cache_key(
    path: str, no_audio_clip: mf.FixtureInfo
) -> None:
    info = dict(LEAVES)[path]
    value = OTHER_VALUES[path]
    changed = _changed(path)
    default = settings_from_flat(_switch(path))

    # CLI: the option exists and sets exactly this setting.
    flag = cli_flag_of(info)
    argv = ["upscale", "in.mp4", "-o", "out.mp4"]
    argv += [cli_flag_of(dict(LEAVES)[s]) for s in _switch(path)]
    argv += [flag] if isinstance(value, bool) else [flag, str(value)]
    assert _settings(_build_parser().parse_args(argv)) == changed

    # Manifest parameters: recorded under the dotted name.
    assert changed.parameters()[path] == value
    assert default.parameters()[path] != value

    # Archive check: decisive unless it cannot change an output byte.
    affects = affects_of(info)
    assert (path in changed.decisive_parameters()) is (affects is not Affects.NOTHING)

    # Cache identity: a VALUE setting changes every batch key; a NOTHING setting does not
    # enter the identity; a WEIGHTS setting changes the weights the job resolves.
    assert (path in changed.output_identity()) is (affects is Affects.VALUE)
    if affects is Affects.WEIGHTS:
        job, default_job = UpscaleJob.from_settings(changed), UpscaleJob.from_settings(default)
        if path.startswith("faces."):
            assert job.faces is not None and default_job.faces is not None
            assert job.faces.model != default_job.faces.model
        else:
            assert job.model != default_job.model
    if affects is Affects.VALUE:
        info_ = probe(no_audio_clip.path)

        def keys(settings: UpscaleSettings) -> set[str]:
            face_sha = "1" * 64 if settings.faces.enhance else None
            return set(_batch_keys(info_, settings, face_sha))

        assert keys(changed).isdisjoint(keys(default))


def _schema(fn: Any) -> dict[str, Any]:
    return parameter_schema(fn).model_dump()


@pytest.mark.parametrize("fn", FLOWS, ids=lambda f: f.name)
def test_the_form_schema_has_no_none_toggles_and_shows_bounds_and_choices(fn: Any) -> None:
    schema = _schema(fn)
    text = json.dumps(schema)
    assert '"type": "null"' not in text, "an optional (None) field makes a toggle in the form"
    assert "settings" in schema["properties"]
    definitions = schema["definitions"]
    for path, info in LEAVES:
        group, _, name = path.rpartition(".")
        model = definitions[
            {
                "": "UpscaleSettings",
                "model": "ModelSettings",
                "size": "SizeSettings",
                "engine": "EngineOptions",
                "encoder": "EncoderOptions",
                "batching": "BatchOptions",
                "deinterlace": "DeinterlaceOptions",
                "faces": "FaceOptions",
            }[group]
        ]
        prop = model["properties"][name]
        assert prop["description"] == info.description, path
        if choices_of(info):
            assert prop["enum"] == list(choices_of(info)), path
        if prop.get("type") in ("integer", "number") and path != "engine.compile_model":
            assert "minimum" in prop and "maximum" in prop, f"{path}: bounds not in the form"
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{fn.name}.{name} has no description"


def test_model_is_a_dropdown_of_the_registry_with_a_live_action_default() -> None:
    prop = _schema(upscale_video)["definitions"]["ModelSettings"]["properties"]["name"]
    assert "realesr-animevideov3" in prop["enum"] and "RealESRGAN_x4plus" in prop["enum"]
    assert prop["default"] == DEFAULT_MODEL == "realesr-general-x4v3"


def test_face_model_is_a_dropdown_of_the_face_restorers_only() -> None:
    props = _schema(upscale_video)["definitions"]["FaceOptions"]["properties"]
    assert props["model"]["enum"] == ["GFPGANv1.4"] == list(choices_of(dict(LEAVES)["faces.model"]))
    assert props["detector"]["enum"] == ["blazeface-front", "blazeface-back"]
    assert props["enhance"]["default"] is False
    argv = ["upscale", "in.mp4", "-o", "o.mp4", "--face-enhance", "--face-model", "GFPGANv1.4"]
    chosen = _settings(_build_parser().parse_args(argv))
    assert chosen.faces.enhance and chosen.parameters()["faces.model"] == "GFPGANv1.4"
    job = UpscaleJob.from_settings(chosen).faces
    assert job is not None and job.model == "GFPGANv1.4" and job.detector == "blazeface-back"
    assert UpscaleJob.from_settings(UpscaleSettings()).faces is None


def test_faces_switched_off_keep_the_batch_keys_and_archive_check_of_before(
    no_audio_clip: mf.FixtureInfo,
) -> None:
    """Adding the faces group changed no key of a run without it: with faces off, none of its
    settings (whatever their values) enters the identity, the archive check or the plan."""
    info_ = probe(no_audio_clip.path)

    def keys(settings: UpscaleSettings, face_sha: str | None = None) -> list[str]:
        return _batch_keys(info_, settings, face_sha)

    plain = UpscaleSettings()
    off = settings_from_flat({
        "faces.strength": 0.2, "faces.weights_path": "x/face.pth", "faces.detector":
        "blazeface-front", "faces.smoothing": 9, "faces.faces_per_pass": 3,
    })  # fmt: skip
    assert not any(k.startswith("faces.") for k in plain.output_identity())
    assert not any(k.startswith("faces.") for k in plain.decisive_parameters())
    assert off.output_identity() == plain.output_identity()
    assert off.decisive_parameters() == plain.decisive_parameters()
    assert keys(off) == keys(plain)
    # The manifest still records them (what the user set), and the switch changes every key.
    assert off.parameters()["faces.smoothing"] == 9 and plain.parameters()["faces.enhance"] is False
    on = settings_from_flat({"faces.enhance": True})
    assert "faces.enhance" in on.decisive_parameters()
    assert set(keys(on, "1" * 64)).isdisjoint(keys(plain))
    # The restorer's weights enter the key through their sha256.
    assert set(keys(on, "1" * 64)).isdisjoint(keys(on, "2" * 64))
    with pytest.raises(ValueError, match="sha256"):
        keys(on, None)


def test_cli_and_form_give_the_same_manifest_parameters() -> None:
    argv = ["upscale", "in.mp4", "-o", "out.mkv", "--content", "anime", "--crf", "20"]
    argv += ["--preset", "slow", "--tile", "256", "--target-height", "1080", "--fp32"]
    from_cli = _settings(_build_parser().parse_args(argv))
    # What the UI form submits: the nested JSON of the settings parameter.
    form = {
        "model": {"name": "realesr-animevideov3"},
        "size": {"target_height": 1080},
        "engine": {"tile": 256, "precision": "fp32"},
        "encoder": {"crf": 20, "preset": "slow"},
    }
    from_form = UpscaleSettings.model_validate(json.loads(json.dumps(form)))
    assert from_cli.parameters() == from_form.parameters()


@pytest.mark.parametrize(
    ("groups", "words"),
    [
        ({"size": {"outscale": 2, "target_height": 720}}, "not both"),
        ({"engine": {"tile": 3}}, "at least 32"),
        ({"encoder": {"codec": "prores", "crf": 18}}, "crf does not apply to prores"),
        ({"encoder": {"codec": "av1", "preset": "slow"}}, "does not fit codec av1"),
        ({"encoder": {"codec": "h264", "crf": 60}}, "0-51"),
        ({"model": {"weights_path": "model.bin"}}, ".pth or .safetensors"),
        ({"faces": {"smoothing": 4}}, "odd number of frames"),
        ({"faces": {"weights_path": "face.bin"}}, ".pth or .safetensors"),
        ({"faces": {"model": "realesr-animevideov3"}}, "GFPGANv1.4"),
    ],
)
def test_bad_combinations_are_refused_in_words_naming_the_option(
    groups: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        UpscaleSettings.model_validate(groups)
    line = describe(caught.value)
    assert words in line and "\n" not in line, line


def test_cli_refuses_contradicting_shortcuts() -> None:
    parser = _build_parser()
    args = parser.parse_args(["upscale", "a.mp4", "-o", "b.mp4", "--content", "anime"])
    assert _settings(args).model.name == "realesr-animevideov3"
    both = parser.parse_args(
        ["upscale", "a.mp4", "-o", "b.mp4", "--content", "anime", "--model", "RealESRGAN_x4plus"]
    )
    with pytest.raises(ValueError, match="--content picks a model"):
        _settings(both)
    path = parser.parse_args(["upscale", "a.mp4", "-o", "b.mp4", "--model", "w/SwinIR.pth"])
    assert _settings(path).model.weights_path == "w/SwinIR.pth"
    assert isinstance(parser, argparse.ArgumentParser)


def test_the_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for path, info in LEAVES:
        assert f"`{cli_flag_of(info)}" in readme and f"`{path}`" in readme, path
