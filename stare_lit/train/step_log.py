"""Step metrics without stale values.

Lightning writes, at every step, the last value of each key logged with ``on_step=True`` earlier in
the epoch — also at the steps that did not log it. A key logged only some of the time (the loss on a
skipped step, a forecast that exists only once enough steps are in) would show an old value as if it
were new. :class:`StepKeys` remembers every key logged so far and gives the missing ones NaN.
"""

from __future__ import annotations

import math

class StepKeys:
    """The keys logged so far; ``fill`` adds the ones a step lacks, as NaN."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def fill(self, metrics: dict[str, float]) -> dict[str, float]:
        self.keys |= metrics.keys()
        return {key: float(metrics.get(key, math.nan)) for key in sorted(self.keys)}
