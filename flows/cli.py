"""The ``vsrflow`` command: upscale a video or images, list/fetch models, probe a file.

``vsrflow upscale`` runs the same Prefect flows as deployments do (in-process, against
PREFECT_API_URL if set, else a background Prefect server the first run starts and later runs
reuse: :mod:`vsrflow.background_server`; ``--server temporary`` for one that lives only as
long as the command). Its progress bar shows the run's batch
progress artifact, read back from the Prefect API (the numbers the UI shows, whatever the work
directory: local or s3://), plus frames done when the work directory is local.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import contextvars
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

from pydantic import ValidationError

from vsrflow.errors import VsrflowError
from vsrflow.images import IMAGE_SUFFIXES
from vsrflow.models.registry import CONTENT_PRESETS, model_for_content
from vsrflow.results import as_json
from vsrflow.settings import UpscaleSettings
from vsrflow.settings_cli import add_settings_options, describe, given_settings, settings_from_args

#: Default of ``--server`` (background or temporary) when the option is not given.
SERVER_ENV = "VSRFLOW_SERVER"
#: Exit status of an image folder where some images failed and the others were published
#: (0: everything published; 2: an expected failure, nothing published; 1: a bug).
EXIT_PARTIAL = 3

#: Defaults that make the embedded Prefect server work offline on small machines.
PREFECT_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def _is_image_job(source: str | Path) -> bool:
    """An image or a folder of images: a local directory or image file, or an s3:// key
    ending in an image suffix or a prefix ending in '/' (or the bucket itself)."""
    text = os.fspath(source)
    if text.startswith("s3://"):
        key = text[len("s3://") :].partition("/")[2]
        return not key or key.endswith("/") or PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES
    path = Path(text)
    return path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsrflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale a video, an image or a folder of images")
    up.add_argument("input", help="video file, image file or folder of images")
    up.add_argument("-o", "--output", required=True, help="output file (or folder for images)")
    add_settings_options(up)
    shortcuts = up.add_argument_group("shortcuts")
    shortcuts.add_argument(
        "--content",
        choices=list(CONTENT_PRESETS),
        help="pick the model by content instead of --model: anime -> realesr-animevideov3, "
        "real -> RealESRGAN_x4plus, general -> realesr-general-x4v3",
    )
    shortcuts.add_argument("--fp32", action="store_true", help="same as --precision fp32")
    up.add_argument("--profile", default="local", help="compute profile (default: local)")
    up.add_argument("--work-dir", help="chunks/cache/progress (default: beside the output)")
    up.add_argument("--keep-chunks", action="store_true", help="keep chunks after publishing")
    up.add_argument(
        "--credentials-block",
        help="saved prefect-aws AwsCredentials block for s3:// locations (default: AWS_* env)",
    )
    up.add_argument("--no-progress", action="store_true", help="no progress bar")
    up.add_argument(
        "--server",
        choices=["background", "temporary"],
        default=os.environ.get(SERVER_ENV) or "background",
        help="without PREFECT_API_URL: reuse (or start) a background Prefect server shared by "
        "later runs (default), or a temporary one for this run only "
        f"(default from ${SERVER_ENV})",
    )
    up.add_argument("-v", "--verbose", action="store_true", help="show Prefect's logs")

    models = sub.add_parser("models", help="list or fetch model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="registry models and whether they are cached")
    fetch = models_sub.add_parser("fetch", help="download and verify weights into the cache")
    fetch.add_argument("names", nargs="+")

    probe = sub.add_parser("probe", help="describe a media file (JSON)")
    probe.add_argument("input")

    server = sub.add_parser("server", help="the background Prefect server runs share")
    server.add_argument("server_command", choices=["status", "stop"])
    return parser


def _settings(args: argparse.Namespace) -> UpscaleSettings:
    """The settings from the options, with the --content/--fp32 shortcuts applied."""
    given = given_settings(args)
    shortcuts: dict[str, str] = {}
    if args.content:
        if "model.name" in given or "model.weights_path" in given:
            raise ValueError("--content picks a model: give --content or --model/--weights")
        shortcuts["model.name"] = model_for_content(args.content)
    if args.fp32:
        if given.get("engine.precision", "fp32") != "fp32":
            raise ValueError("--fp32 and --precision disagree: give one of them")
        shortcuts["engine.precision"] = "fp32"
    try:
        return settings_from_args(args, **shortcuts)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def _server_starts_with_the_run(server: str) -> bool:
    """Whether Prefect's temporary server will start when the flow run is created (no API
    URL, ``--server temporary``). Only then does a refusal found by probing here save time:
    with a running server the flow's plan task refuses the same output just as early."""
    from prefect.settings import PREFECT_API_URL

    return server == "temporary" and not PREFECT_API_URL.value()


def _runs_batches_here(profile: str) -> bool:
    """Whether ``profile`` runs batches in this process (then the model is preloaded)."""
    from deployments.profiles import get_profile

    try:
        return get_profile(profile).runs_batches_here
    except ValueError:  # unknown profile or variable: the flow refuses it in one line
        return False


def _placement(args: argparse.Namespace) -> dict[str, Any]:
    return {"profile": args.profile, "work_dir": args.work_dir or ""}


def _watch_progress(run_name: str, work_dir: str, output: str, done: threading.Event) -> None:
    """Show the batch progress artifact of the flow run ``run_name`` (polled from the Prefect
    API) in a tqdm bar until ``done``; frames done from the work directory when it is local."""
    from prefect.client.orchestration import get_client
    from tqdm import tqdm

    from tasks.artifacts import read_progress_artifact
    from vsrflow.progress import Snapshot, read_progress

    local = "://" not in work_dir
    bar = tqdm(total=None, unit="batch", desc="starting", dynamic_ncols=True)
    # The flow removes the progress files with the rest of a published job's work dir, so
    # the last frames seen are kept (and complete once every batch is done).
    last_frames: list[Snapshot] = []

    def refresh(client: Any) -> None:
        try:
            counts = read_progress_artifact(client, run_name)
        except Exception:  # the API is busy or restarting: keep the bar, try again
            return
        if counts is None:
            return
        if bar.total != counts.total:
            bar.reset(total=counts.total)
            bar.set_description("upscaling")
        postfix: dict[str, Any] = {"cached": counts.cached, "computed": counts.computed}
        frames = read_progress(work_dir, output) if local else None
        if frames is not None:
            last_frames[:] = [frames]
        elif last_frames and counts.done == counts.total:
            frames = Snapshot(done=last_frames[0].total, total=last_frames[0].total)
        if frames is not None:
            postfix["frames"] = f"{frames.done}/{frames.total}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(counts.done - bar.n)

    try:
        with get_client(sync_client=True) as client:
            while not done.wait(1.0):
                refresh(client)
            refresh(client)
    finally:
        bar.close()


def _check_prefect_api() -> None:
    """A configured API that does not answer fails here in seconds, in one line."""
    from prefect.settings import PREFECT_API_URL

    from vsrflow.service_check import check_api

    if PREFECT_API_URL.value():
        check_api(PREFECT_API_URL.value())


def _prepare_prefect(verbose: bool, server: str, stack: contextlib.ExitStack) -> None:
    """Prefect for a command line. With PREFECT_API_URL set, that server. Otherwise, as
    ``server`` says: "background" (default) reuses the server an earlier run started in the
    background, or starts one (:mod:`vsrflow.background_server`: 8.8-13.6 s of temporary
    server per run become ~3 s), for as long as ``stack`` is open; "temporary" starts
    Prefect's own temporary server, stopped when this process dies, even by SIGKILL.
    Unless ``verbose``, Prefect's failure records stay off the console (the run's logs in
    the API keep them): an expected failure then reads as the one ``vsrflow: error:`` line."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from tasks import run_logging

    if not PREFECT_API_URL.value():
        if server == "temporary":
            from flows.temporary_server import guard

            guard()
        else:
            from vsrflow import background_server

            home = Path(PREFECT_HOME.value())
            state, started = background_server.ensure(home)
            # Kept alive from now on: a short idle timeout must not stop it while it starts.
            stack.enter_context(background_server.keepalive(home, state.idle_minutes))
            background_server.wait_healthy(home, state)
            if started and (verbose or sys.stderr.isatty()):  # errors stay one line
                print(
                    f"vsrflow: started a Prefect server for this and later runs at "
                    f"{state.api_url.removesuffix('/api')} (stops after "
                    f"{state.idle_minutes:g} idle minutes; `vsrflow server stop`)",
                    file=sys.stderr,
                )
            # Child processes (Dask workers) read the environment; this process's
            # settings were read at import and are updated for the run. Both only for as
            # long as ``stack`` is open: an in-process caller must not keep pointing at a
            # server that stops itself once idle.
            os.environ["PREFECT_API_URL"] = state.api_url
            stack.callback(os.environ.pop, "PREFECT_API_URL", None)
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: state.api_url}))
    if not verbose:
        run_logging.quiet_failures_on_console()


def _adopt_prefect_settings() -> None:
    """Re-read Prefect's settings and log levels from this command's environment and working
    directory. Only a warm runner's child needs it (:mod:`vsrflow.warm_runner`): Prefect
    read them when the runner imported it, before the command's environment, the defaults
    set above (``PREFECT_LOGGING_LEVEL``) and its directory's ``prefect.toml``/``.env`` were
    adopted. A cold command imports Prefect only after this point."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    from tasks import run_logging

    refresh_global_settings_context()
    # Whole, as at Prefect's import: levels, a logging.yml of this directory's settings, and
    # console handlers that see this command's terminal (rich picks colours when built).
    setup_logging(incremental=False)
    run_logging.install()  # on loggers, which outlive the rebuild: a no-op unless missing


def _check_images_job(args: argparse.Namespace) -> None:
    """Refuse, before Prefect starts, an image job that would write into its input (the flow
    checks again, with the run's S3 endpoint and every pair, in plan-images/preflight)."""
    from flows.upscale_video import default_work_dir
    from vsrflow import safety

    source, output = args.input, args.output
    if "://" in source:
        key = source[len("s3://") :].partition("/")[2]
        suffix = PurePosixPath(key).suffix.lower()
        folder = not key or key.endswith("/") or suffix not in IMAGE_SUFFIXES
    else:
        folder = Path(source).is_dir()
    if folder:
        work_dir = args.work_dir or default_work_dir(os.path.join(output, "x"))
        safety.check_images_job(source, output, work_dir, folder=True)
        return
    if PurePosixPath(output).suffix.lower() not in IMAGE_SUFFIXES:
        join = f"{output.rstrip('/')}/" if "://" in output else os.path.join(output, "")
        output = join + PurePosixPath(source).name
    work_dir = args.work_dir or default_work_dir(output)
    safety.check_images_job(source, output, work_dir, folder=False)


def _run_upscale(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        return _upscale(args, stack)


def _upscale(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    for key, value in PREFECT_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if args.prefect_imported:
        _adopt_prefect_settings()
    settings = _settings(args)
    _check_prefect_api()
    if _is_image_job(args.input):
        _check_images_job(args)
        _prepare_prefect(args.verbose, args.server, stack)
        from flows.upscale_images import upscale_images

        images = upscale_images(
            args.input,
            args.output,
            settings,
            credentials_block=args.credentials_block or "",
            **_placement(args),
        )
        summary = as_json(images)
        failed = images.failed
        summary["status"] = "partial" if failed else "complete"
        summary["failed"] = [{"source": e.source, "reason": e.reason} for e in failed]
        print(json.dumps(summary, indent=2))
        if failed:
            names = ", ".join(PurePosixPath(e.source).name for e in failed)
            print(
                f"vsrflow: partial: {len(failed)} of {len(images.images)} images failed and "
                f'were not published ({names}); the others were ("failed" in the summary '
                f"and in {images.manifest})",
                file=sys.stderr,
            )
            return EXIT_PARTIAL
        return 0

    from flows.upscale_video import default_work_dir
    from vsrflow import safety

    # Fail fast, before Prefect starts, with one line for a run the flow would refuse.
    work_dir = args.work_dir or default_work_dir(args.output)
    safety.check_video_job(args.input, args.output, work_dir)
    if _runs_batches_here(args.profile):
        from tasks.upscale import preload_model
        from vsrflow.job import UpscaleJob

        preload_model(UpscaleJob.from_settings(settings))
    _prepare_prefect(args.verbose, args.server, stack)
    from flows.upscale_video import upscale_video
    from vsrflow.media.assemble import check_output_compatible
    from vsrflow.media.probe import probe
    from vsrflow.report import artifact_key

    if "://" not in args.input and _server_starts_with_the_run(args.server):
        # Prefect's temporary server starts with the flow run (8-14 s): refuse first.
        check_output_compatible(
            probe(args.input),
            args.output,
            settings.encoder.codec,
            alpha=settings.encoder.alpha,
            square_pixels=settings.size.square_pixels,
        )
    # A unique run name lets the progress watcher find this run's progress artifact.
    run_name = f"{artifact_key(args.output)}-{uuid.uuid4().hex[:8]}"
    done = threading.Event()
    watcher = None
    if not args.no_progress:
        from prefect.client.orchestration import get_client

        # Start Prefect's temporary server (if no PREFECT_API_URL) here, before two threads
        # could race to start one each.
        with get_client(sync_client=True) as client:
            client.api_healthcheck()
        watcher = threading.Thread(  # in this context: the run's Prefect settings
            target=contextvars.copy_context().run,
            args=(_watch_progress, run_name, work_dir, args.output, done),
            daemon=True,
        )
        watcher.start()
    started = time.perf_counter()
    try:
        result = upscale_video.with_options(flow_run_name=run_name)(
            args.input,
            args.output,
            settings,
            credentials_block=args.credentials_block or "",
            keep_chunks=args.keep_chunks,
            **_placement(args),
        )
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
    summary = as_json(result)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary, indent=2))
    return 0


def _list_face_detectors() -> None:
    from vsrflow.errors import ModelError
    from vsrflow.faces.registry import ENV_MODEL_PATH, list_detectors, resolve_detector_weights

    print(f"\nface detectors (--face-detector NAME; no download: put them in a 'face' folder"
          f" of {ENV_MODEL_PATH}):")  # fmt: skip
    for detector in list_detectors():
        try:
            resolve_detector_weights(detector.name)
            found = "found"
        except ModelError:
            found = "-"
        print(f"{detector.name:28} {found:7} {detector.description}")


def _run_models(args: argparse.Namespace) -> int:
    from vsrflow.models import default_cache_dir, fetch_weights, list_specs

    if args.models_command == "list":
        cache = default_cache_dir()
        for spec in list_specs():
            cached = "cached" if (cache / spec.filename).is_file() else "-"
            print(f"{spec.name:28} x{spec.scale}  {spec.content:8} {cached:7} {spec.description}")
        print("\nface restorers (--face-enhance --face-model NAME):")
        for spec in list_specs("face"):
            cached = "cached" if (cache / spec.filename).is_file() else "-"
            print(f"{spec.name:28} x{spec.scale}  {spec.content:8} {cached:7} {spec.description}")
        _list_face_detectors()
        return 0
    for name in args.names:
        weights = fetch_weights(name)
        print(f"{name}: {weights.path} (sha256 {weights.sha256})")
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    from vsrflow.media.probe import probe

    print(json.dumps(probe(args.input).summary(), indent=2))
    return 0


def _run_server(args: argparse.Namespace) -> int:
    """``vsrflow server status|stop``: the background server and the warm runners of this
    PREFECT_HOME."""
    from prefect.settings import PREFECT_HOME

    from vsrflow import background_server, warm_runner

    home = Path(PREFECT_HOME.value())
    runners_env = {**os.environ, "PREFECT_HOME": str(home)}
    if args.server_command == "stop":
        stopped = background_server.stop(home)
        print(f"stopped the server at {stopped.api_url}" if stopped else "no server was running")
        runners = warm_runner.stop_all(runners_env)
        if runners:
            print(f"stopped {len(runners)} warm runner(s)")
        return 0
    runners = warm_runner.running(runners_env)
    state = background_server.read_state(home)
    if state is None:
        print(json.dumps({"running": False, "prefect_home": str(home), "warm_runners": runners}))
        return 0
    summary = {"running": True, "healthy": background_server.healthy(state.api_url)}
    details = {**summary, "prefect_home": str(home), **state.__dict__, "warm_runners": runners}
    print(json.dumps(details, indent=2))
    return 0


def main(argv: Sequence[str] | None = None, *, prefect_imported: bool = False) -> int:
    """Run one command; its exit status. ``prefect_imported``: Prefect was imported before
    this command's environment was in place (a warm runner's child), so ``upscale`` re-reads
    its settings first."""
    args = _build_parser().parse_args(argv)
    args.prefect_imported = prefect_imported
    handlers = {
        "upscale": _run_upscale,
        "models": _run_models,
        "probe": _run_probe,
        "server": _run_server,
    }
    try:
        return handlers[args.command](args)
    except Exception as exc:
        # ParameterTypeError: a flow parameter failed validation (prefect is imported lazily).
        known = isinstance(exc, VsrflowError | ValueError | FileNotFoundError)
        if not known and type(exc).__name__ != "ParameterTypeError":
            raise
        print(f"vsrflow: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def run() -> NoReturn:
    """The ``vsrflow`` console script: :func:`main`, then exit without tearing Python down.

    Once the summary is printed, CPython's finalization (freeing the modules of torch,
    Prefect, Dask and pydantic one by one, and the C++ destructors behind them) took another
    0.6-1.3 s of the user's wall time for nothing. The exit hooks still run first, in the
    interpreter's order: threading's (Prefect's log and event workers drain there), then
    atexit's (Dask clusters, Prefect's temporary server, logging). An uncaught exception
    (a bug) exits the normal way, with its traceback."""
    code = main()
    run_exit_hooks()
    os._exit(code)


def run_exit_hooks() -> None:
    """What Python's finalization does that matters, without the rest: flush, threading's
    exit hooks, then atexit's. Before ``os._exit`` (here and in a warm runner's child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    run()
