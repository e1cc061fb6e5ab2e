"""Per-frame timestamps held as 8-byte machine integers.

A film's every pts lives in the orchestrating process from probing to the final check of the
assembled file. As a tuple of Python ints that is ~44 bytes a frame (7.6 MB for a 2-hour film
at 24 fps, plus the list it was built from), so the flow process grew with the film's length.
:class:`Timestamps` keeps them in one ``array('q')`` (8 bytes a frame): an immutable,
hashable, picklable sequence of ints that compares equal to a tuple of the same values and
prints as a summary, not 172,800 numbers.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

#: ``array`` typecode of a signed 64-bit integer (FFmpeg's pts are int64).
_INT64 = "q"


class Timestamps(Sequence[int]):
    """An immutable sequence of int64 timestamps (pts in a stream's time base)."""

    __slots__ = ("_values",)

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._values = array(_INT64, values)

    @classmethod
    def sorted_from(cls, values: array) -> Timestamps:
        """``values`` (an ``array('q')`` gathered in decode order, taken over: not to be used
        after) in presentation order, sorted in place without turning them into Python ints."""
        if len(values):
            view = np.frombuffer(values, dtype=np.int64)
            view.sort()
            del view  # the array cannot be resized while numpy holds its buffer
        return cls._wrapping(values)

    @classmethod
    def _wrapping(cls, values: array) -> Timestamps:
        """``values`` themselves (no copy; the caller gives them up)."""
        result = cls()
        result._values = values
        return result

    def __len__(self) -> int:
        return len(self._values)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Timestamps: ...

    def __getitem__(self, index: int | slice) -> int | Timestamps:
        if isinstance(index, slice):
            return Timestamps._wrapping(self._values[index])  # the slice is already a copy
        return self._values[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def index(self, value: Any, start: int = 0, stop: int = sys.maxsize) -> int:
        return self._values.index(value, start, stop)

    def count(self, value: Any) -> int:
        return self._values.count(value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Timestamps):
            return self._values == other._values
        if isinstance(other, (tuple, list)):
            return len(other) == len(self._values) and all(
                a == b for a, b in zip(self._values, other, strict=True)
            )
        return NotImplemented

    def __hash__(self) -> int:
        # Equal to the tuple of the same values, so hashed as it is (nothing hashes a film's
        # pts on a hot path; a dict keyed by both kinds must still find either).
        return hash(tuple(self._values))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Timestamps, (self._values,))

    def __repr__(self) -> str:
        if len(self._values) <= 6:
            return f"Timestamps({list(self._values)})"
        head = ", ".join(str(v) for v in self._values[:3])
        return f"Timestamps([{head}, ..., {self._values[-1]}], {len(self._values)} frames)"


def int64_array() -> array:
    """An empty growable int64 array to gather timestamps into while demuxing."""
    return array(_INT64)
