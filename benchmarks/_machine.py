"""What the benchmarks share about the machine: pin to one core and one thread, and name the CPU."""

import contextlib
import os
import platform


def pin_to_one_core() -> None:
    """One core, one thread; call before numpy (or torch) starts a thread pool."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if hasattr(os, "sched_setaffinity"):
        # A container may forbid pinning; unpinned, the figures are noisier but still measured side by side.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
