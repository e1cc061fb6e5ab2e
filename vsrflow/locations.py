"""Locations: one interface over local paths and ``s3://`` URIs for the job's files.

Sources, chunks, outputs and manifests each live at a *location*: a local path or an S3 URI.
Media code only ever reads through FFmpeg, which reads a local path or an http(s) URL with
range requests, so an S3 source is read through a presigned GET URL: a worker fetches only the
bytes of its own batch (from the keyframe before it), never the whole source. Writes go to a
local scratch file first and are then moved (local) or uploaded (S3) into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsrflow import storage
from vsrflow.hashing import file_sha256
from vsrflow.scratch import owner_tag, sweep
from vsrflow.storage import S3Config

#: Where local scratch files (chunks before upload, outputs before publish) are written.
SCRATCH_ENV = "VSRFLOW_SCRATCH_DIR"


@dataclass(frozen=True)
class Locations:
    """Resolves locations; ``s3`` is the store config (``None``: from the environment)."""

    s3: S3Config | None = None

    def _config(self) -> S3Config:
        return self.s3 if self.s3 is not None else S3Config.from_env()

    @staticmethod
    def is_remote(location: str) -> bool:
        return storage.is_s3_uri(location)

    def join(self, base: str, *parts: str) -> str:
        if self.is_remote(base):
            return storage.join_uri(base, *parts)
        return str(Path(base).joinpath(*parts))

    def readable(self, location: str) -> str:
        """A path or URL FFmpeg can open (presigned GET for S3; a bearer secret: never log it)."""
        if self.is_remote(location):
            return storage.presigned_get(location, self._config())
        return location

    def exists(self, location: str) -> bool:
        """True if a non-empty file or an object is there."""
        if self.is_remote(location):
            return storage.exists(location, self._config())
        path = Path(location)
        return path.is_file() and path.stat().st_size > 0

    def size(self, location: str) -> int:
        if self.is_remote(location):
            return storage.head(location, self._config()).size
        return Path(location).stat().st_size

    def identity(self, location: str) -> str:
        """What identifies the content for caching: the sha256 of a local file; for an object,
        its ETag and size (hashing a remote source would mean downloading it whole)."""
        if self.is_remote(location):
            info = storage.head(location, self._config())
            return "s3-etag:" + hashlib.sha256(f"{info.etag}|{info.size}".encode()).hexdigest()
        return "sha256:" + file_sha256(Path(location))

    def store(self, local: Path, location: str) -> None:
        """Move a finished local file to ``location`` (rename, or upload then delete)."""
        if self.is_remote(location):
            storage.upload_file(local, location, self._config())
            local.unlink(missing_ok=True)
            return
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)

    def publish(
        self,
        local: Path,
        location: str,
        verify: Callable[[str], Any],
        *,
        exclusive: bool = False,
    ) -> None:
        """Publish a finished local file atomically after ``verify(readable_copy)`` passes.

        S3: upload to a temporary key, verify the object as stored, server-side copy to the
        final key, delete the temporary one. Local: verify, then rename into place.
        ``exclusive``: the caller holds the output's lease, so temporary objects a killed
        publish of this key left are removed whatever their age.
        """
        if self.is_remote(location):
            storage.publish_file(
                local, location, self._config(), verify=verify, exclusive=exclusive
            )
            return
        verify(str(local))
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)

    def write_json(self, location: str, document: Any) -> None:
        if self.is_remote(location):
            storage.put_json(location, document, self._config())
            return
        with self.scratch_for(location) as tmp:
            tmp.write_text(json.dumps(document, indent=2, sort_keys=True, default=str))
            self.store(tmp, location)

    def read_json(self, location: str) -> Any:
        if self.is_remote(location):
            return storage.get_json(location, self._config())
        return json.loads(Path(location).read_text(encoding="utf-8"))

    def remove(self, location: str) -> None:
        if self.is_remote(location):
            storage.delete(location, self._config())
        else:
            Path(location).unlink(missing_ok=True)

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A local path for ``name`` in a private temporary directory (``$VSRFLOW_SCRATCH_DIR``
        or the system temp dir), removed afterwards with whatever is left in it.

        The directory's name carries this process's owner tag, and the first use of a root in
        a process removes what killed runs left there (:mod:`vsrflow.scratch`)."""
        root = os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()
        sweep(root)
        directory = Path(tempfile.mkdtemp(prefix=owner_tag(), dir=root))
        try:
            yield directory / name
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def scratch_for(self, location: str) -> AbstractContextManager[Path]:
        """Scratch space for producing ``location``: beside it when local (so the final rename
        stays on one filesystem and is atomic), in the scratch dir when remote."""
        if self.is_remote(location):
            return self.scratch(Path(storage.parse_s3_uri(location)[1]).name)
        return _beside(Path(location))


#: Characters of the target's name kept in the name of its scratch directory (NAME_MAX is 255).
_NAME_IN_SCRATCH = 120


@contextmanager
def _beside(target: Path) -> Iterator[Path]:
    """A hidden, owner-tagged directory beside ``target`` (``.<name>.vsrflow-scratch-...``);
    stale ones a killed run left in that directory are removed first (once per process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent)
    prefix = f".{target.name[:_NAME_IN_SCRATCH]}.{owner_tag()}"
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        yield directory / target.name
    finally:
        shutil.rmtree(directory, ignore_errors=True)
