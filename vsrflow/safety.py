"""Checks made before any compute: a run never overwrites its own input, and can write where
it has to.

Publishing renames a finished file over the output (or copies an object over its key), so a
run whose output *is* its input would replace the source with its own upscaled copy: gone
once the run succeeds. Every spelling of "the same file" is caught:

* local: the same path, relative or absolute, with ``..`` or ``.``, through a symbolic link
  (``realpath``), or another name for the same inode (a hard link: ``samefile``);
* S3: the same endpoint, bucket and key (two endpoints holding the same bucket/key are
  different objects; ``./`` and ``../`` segments are collapsed as an S3-compatible server
  may do, so ``s3://b/x/../a.mp4`` is ``s3://b/a.mp4``);
* image folders: an output folder equal to or inside the input folder (its outputs would
  land among the sources; a later run would take them for sources).

The files a run writes beside its output (``<output>.manifest.json``, the comparison PNG)
are checked against the source too. Writability is checked by creating (and removing) a
probe file in the output's directory and the work dir, or in the nearest folder above them
that exists: permission bits alone say nothing for root, ACLs, read-only mounts or quotas.
A work dir or output folder that is a file, or a video output that is a directory, is
refused by name. Every refusal is an :class:`UnsafeOutputError` or
:class:`NotWritableError` (``ValueError`` subclasses: permanent, never retried).
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from vsrflow import storage
from vsrflow.errors import VsrflowError
from vsrflow.storage import S3Config

#: What a video run writes beside its output (besides the output itself).
VIDEO_SIDE_FILES = (".manifest.json", ".compare.png")


class UnsafeOutputError(VsrflowError, ValueError):
    """The output is, or would overwrite, the input (or sits inside the input folder)."""


class NotWritableError(VsrflowError, ValueError):
    """The output location or the work dir cannot be written (a file in the way, read-only)."""


# --------------------------------------------------------------------------------------------
# Identity


def _endpoint_identity(endpoint: str | None) -> str:
    """``scheme://host:port/path`` normalised (case, default ports, trailing '/');
    ``aws`` for AWS itself (no endpoint: bucket names are global there)."""
    if not endpoint:
        return "aws"
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    scheme = (parts.scheme or "https").lower()
    host = (parts.hostname or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _normal_key(key: str) -> str:
    """The key with ``.``/``..`` segments collapsed and repeated slashes merged, keeping a
    trailing '/' (a prefix); ``..`` above the bucket stays at the top."""
    if not key:
        return ""
    normal = posixpath.normpath("/" + key).lstrip("/")
    if normal == ".":
        normal = ""
    return normal + "/" if key.endswith("/") and normal else normal


def location_identity(location: str | os.PathLike[str], s3: S3Config | None = None) -> str:
    """One string per place: ``file://<realpath>`` for a local path (symbolic links and
    ``..`` resolved, even when the file does not exist yet), ``s3://<endpoint>/<bucket>/<key>``
    for an object or prefix (the endpoint of ``s3``, else the environment's). Two locations
    with the same identity are the same place; hard links are only caught by
    :func:`same_location` (they share an inode, not a path)."""
    text = os.fspath(location)
    if storage.is_s3_uri(text):
        bucket, key = storage.parse_s3_uri(text, require_key=False)
        config = s3 if s3 is not None else S3Config.from_env()
        return f"s3://{_endpoint_identity(config.endpoint_url)}/{bucket}/{_normal_key(key)}"
    return "file://" + os.path.realpath(os.path.expanduser(text))


def same_location(a: str, b: str, s3: S3Config | None = None) -> bool:
    """Whether ``a`` and ``b`` name the same file or object (see the module docstring)."""
    if storage.is_s3_uri(a) != storage.is_s3_uri(b):
        return False
    if location_identity(a, s3) == location_identity(b, s3):
        return True
    if storage.is_s3_uri(a):
        return False
    try:
        return os.path.samefile(a, b)  # hard links: one inode, two names
    except OSError:
        return False  # one of them does not exist: then realpath decided


def _how_same(a: str, b: str) -> str:
    """`` (a symbolic link to it)`` and the like, for a message about same files."""
    if storage.is_s3_uri(a) or a == b:
        return ""
    if os.path.islink(a) or os.path.islink(b):
        return " (through a symbolic link)"
    if os.path.realpath(a) == os.path.realpath(b):
        return " (another spelling of the same path)"
    return " (a hard link: one file, two names)"


def _inside(child: str, parent: str) -> bool:
    """Whether identity ``child`` equals ``parent`` or lies below it."""
    child, parent = child.rstrip("/"), parent.rstrip("/")
    return child == parent or child.startswith(parent + "/")


# --------------------------------------------------------------------------------------------
# Input versus output


def check_not_overwriting_input(
    source: str,
    output: str,
    s3: S3Config | None = None,
    *,
    side_suffixes: Iterable[str] = (),
) -> None:
    """Refuse an ``output`` that is the ``source`` itself (any spelling, see the module
    docstring), or whose side files (``output + suffix``: manifest, comparison) would be."""
    for suffix in ("", *side_suffixes):
        target = output + suffix
        if same_location(source, target, s3):
            what = f"output {target}" if not suffix else f"{target} (written beside the output)"
            raise UnsafeOutputError(
                f"{what} is the input {source} itself{_how_same(source, target)}: publishing "
                "would replace the source. Choose another output path"
            )


def check_folder_not_inside_input(
    source_folder: str, output_folder: str, s3: S3Config | None = None
) -> None:
    """Refuse an image output folder equal to or inside the input folder (local or S3)."""
    if storage.is_s3_uri(source_folder) != storage.is_s3_uri(output_folder):
        return
    source_id = location_identity(source_folder, s3)
    output_id = location_identity(output_folder, s3)
    if _inside(output_id, source_id):
        where = "is" if output_id.rstrip("/") == source_id.rstrip("/") else "is inside"
        raise UnsafeOutputError(
            f"output folder {output_folder} {where} the input folder {source_folder}: the "
            "upscaled images would land among (or replace) the sources. Choose a folder "
            "outside it"
        )


# --------------------------------------------------------------------------------------------
# Writability (local paths; S3 permissions show on the first request with a clear error)


def _nearest_existing(path: Path) -> Path:
    """``path`` or the closest folder above it that exists (``path`` may not exist yet)."""
    current = path
    while not os.path.lexists(current):
        if current.parent == current:
            break
        current = current.parent
    return current


def _check_writable_dir(path: Path, label: str) -> None:
    """``path`` (absolute; it may not exist yet) can be created and written: the closest
    existing folder on it is a folder and accepts a new file. ``label`` starts messages."""
    existing = _nearest_existing(path)
    if not existing.is_dir():
        if existing == path:
            raise NotWritableError(f"{label}: {path} is a file, not a folder")
        raise NotWritableError(f"{label}: {existing} is a file, so {path} cannot be created")
    try:
        fd, name = tempfile.mkstemp(prefix=".vsrflow-write-probe-", dir=existing)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NotWritableError(
            f"{label}: cannot create files in {existing} ({reason}). Choose a writable "
            "location or fix its permissions"
        ) from None
    os.close(fd)
    os.unlink(name)


def check_directory_writable(location: str, purpose: str) -> None:
    """Refuse a local folder that cannot be created or written: something on its path is a
    file, or the folder (or the closest one above it that exists) refuses a new file.
    ``purpose`` names it in the message ("work dir", "output folder")."""
    if storage.is_s3_uri(location):
        return
    path = Path(os.path.abspath(os.path.expanduser(location)))
    _check_writable_dir(path, f"{purpose} {location}")


def check_output_file_writable(output: str, purpose: str = "output") -> None:
    """Refuse a file output that is an existing directory, or whose folder cannot be
    written (publishing renames a finished file into that folder)."""
    if storage.is_s3_uri(output):
        return
    path = Path(os.path.abspath(os.path.expanduser(output)))
    if path.is_dir():
        raise NotWritableError(
            f"{purpose} {output} is an existing folder: give the path of a file (inside it, "
            "or beside it)"
        )
    _check_writable_dir(path.parent, f"{purpose} {output}")


# --------------------------------------------------------------------------------------------
# Whole jobs


def check_video_job(source: str, output: str, work_dir: str, s3: S3Config | None = None) -> None:
    """Everything a video run needs before any compute: the output (and its side files) is
    not the source, is not a folder, its folder and the work dir can be written."""
    check_not_overwriting_input(source, output, s3, side_suffixes=VIDEO_SIDE_FILES)
    check_output_file_writable(output)
    check_directory_writable(work_dir, "work dir")


def check_image_pairs(pairs: Iterable[tuple[str, str]], s3: S3Config | None = None) -> None:
    """No (source, output) pair of an image job names one file twice (hard links too)."""
    for source, output in pairs:
        check_not_overwriting_input(source, output, s3)


def check_images_job(
    source: str, output: str, work_dir: str, *, folder: bool, s3: S3Config | None = None
) -> None:
    """An image job before any compute: a folder's output folder is not inside the input
    folder and is a folder; a single image's output is not the image; the output location
    and the work dir can be written. ``output`` is the output file or folder."""
    if folder:
        check_folder_not_inside_input(source, output, s3)
        check_directory_writable(output, "output folder")
    else:
        check_not_overwriting_input(source, output, s3)
        check_output_file_writable(output)
    check_directory_writable(work_dir, "work dir")
