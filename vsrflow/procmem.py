"""This process's resident memory, as the kernel counts it for this program.

Not ``getrusage().ru_maxrss``: Linux carries that peak across fork+exec, so a process started
by a large one (a benchmark holding torch, a notebook, a Prefect worker) reports at least its
parent's size whatever it does itself: the CLI's flow process read 776 MB started from the
bench, 178 MB started from a shell, for the same run. ``/proc/self/status`` counts this
program's own address space. A job forked by the warm runner starts with the runner's pages
in its RSS; it reports its peak beyond them.
"""

from __future__ import annotations

import ctypes
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


#: Resident MB this process had when it was forked (no exec) from a warm process: pages it
#: shares with that parent (0 for a program started the usual way).
_resident_at_fork_mb = 0.0


def note_forked() -> None:
    """Call first thing in a child forked from a large warm process (the warm runner's jobs):
    the kernel counts the parent's resident pages the child was forked with (its anonymous
    memory: the imported objects) in its RSS and starts its peak there, so a job would report
    the runner's ~780 MB of imports as its own. File-backed pages (library code) it faults in
    again later still count: the figure is a slight overestimate, never the runner's size."""
    global _resident_at_fork_mb
    resident = proc_status_mb("VmRSS")
    _resident_at_fork_mb = resident if resident == resident else 0.0  # NaN: no /proc


def peak_rss_mb() -> float:
    """Peak resident memory of this program (MB): ``VmHWM``, else ``ru_maxrss`` (no /proc),
    less what it shared with a warm parent when forked (:func:`note_forked`)."""
    peak = proc_status_mb("VmHWM")
    if peak != peak:  # NaN
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return round(max(peak - _resident_at_fork_mb, 0.0), 1)


#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Allocations at least this large get their own mapping, unmapped again when freed
#: (glibc's initial threshold, which it otherwise raises on the first such free).
LARGE_ALLOCATION_BYTES = 128 * 1024


def return_large_frees() -> bool:
    """Keep large allocations in their own mappings so that freeing them returns the memory.

    glibc raises its mmap threshold (up to 32 MB) the first time a large mapped block is freed;
    from then on blocks of that size come from the heap, and once freed they stay resident in
    holes the next allocation rarely fits. An orchestrating process opens the same long
    source several times (probing, remuxing, the final check) and FFmpeg's sample index of
    each open is one such block (~90 bytes a frame): the residue grew with the film's length.
    Fixing the threshold (what ``MALLOC_MMAP_THRESHOLD_`` does at start) keeps it flat. Only
    for orchestration: a worker allocating frame buffers all the time would pay a mapping per
    frame. The setting holds for the rest of the process: the flow calls it once, in the
    process that runs it (the CLI's, a warm runner's forked job, a deployment's run).
    Returns whether the allocator took the setting (False off glibc)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES))
    except (OSError, AttributeError):  # no C library symbols here, or not glibc
        return False
