"""Where a training run's wall time goes: seconds per phase, summed over the run (and across resumes), so that
the phases add up to the run's `time_s`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# start-up: Ray, the algorithm, MLflow, a restore; init: entropy-aware initialization; sampling and learning: RLlib's
# own timers of each iteration; evaluation: the held-out episodes; logging: MLflow calls and checkpoints; other: the
# rest (RLlib's weight and filter sync and result bookkeeping, the training loop).
PHASES = ("startup", "init", "sampling", "learning", "evaluation", "logging", "other")


class PhaseClock:
    """Accumulates seconds per phase; `other` is whatever the rest leave of the elapsed time."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals = {phase: float((totals or {}).get(phase, 0.0)) for phase in PHASES}

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] += seconds

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def close_at(self, elapsed: float) -> dict[str, float]:
        """Set `other` so the phases add up to ``elapsed`` seconds; return them as metrics (`time_<phase>_s`)."""
        self.totals["other"] = max(0.0, elapsed - sum(v for k, v in self.totals.items() if k != "other"))
        return {f"time_{phase}_s": seconds for phase, seconds in self.totals.items()}
