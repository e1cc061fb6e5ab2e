"""Content hashes of local files, memoised so big files are hashed once per process.

Used for source identity (batch cache keys) and for verifying model weights.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_CHUNK = 1 << 20

_hash_memo: dict[tuple[str, int, int, int], str] = {}
_hash_lock = threading.Lock()


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, memoised on (real path, inode, mtime, size).

    Resolving the same 67 MB model for every batch of a job would otherwise rehash it
    each time; any rewrite of the file changes mtime or size and invalidates the entry.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)
    with _hash_lock:
        cached = _hash_memo.get(key)
    if cached is not None:
        return cached
    digest = _sha256_of_file(path)
    with _hash_lock:
        _hash_memo[key] = digest
    return digest


def clear_hash_memo() -> None:
    """Forget every memoised hash (tests; or after editing files in place)."""
    with _hash_lock:
        _hash_memo.clear()
