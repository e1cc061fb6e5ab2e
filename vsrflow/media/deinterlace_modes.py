"""The ``--deinterlace`` choices, apart from the filters that carry them out.

Settings validation needs the names only; keeping them here lets it (and the control flows,
which validate settings but never decode) run without importing PyAV and numpy.
"""

from __future__ import annotations

#: FFmpeg deinterlacing filters offered by name.
DEINTERLACERS = ("bwdif", "yadif", "w3fdif", "estdif")
#: auto, off, a deinterlacer, or inverse telecine.
MODES = ("auto", "off", *DEINTERLACERS, "ivtc")
