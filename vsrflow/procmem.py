"""This process's resident memory, as the kernel counts it for this program.

Not ``getrusage().ru_maxrss``: Linux carries that peak across fork+exec, so a process started
by a large one (a benchmark holding torch, a notebook, a Prefect worker) reports at least its
parent's size whatever it does itself: the CLI's flow process read 776 MB started from the
bench, 178 MB started from a shell, for the same run. ``/proc/self/status`` counts this
program's own address space.
"""

from __future__ import annotations

import resource


def proc_status_mb(name: str, pid: int | None = None) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process (or ``pid``) in
    MB; NaN where /proc does not say."""
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this program (MB): ``VmHWM``, else ``ru_maxrss`` (no /proc)."""
    peak = proc_status_mb("VmHWM")
    if peak == peak:  # not NaN
        return round(peak, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
