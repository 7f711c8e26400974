"""What ``stare-lit compare`` prints while its runs train: which runs, their step, entropy now, time left.

Each run is a ``stare-lit fit`` subprocess whose console goes to its log.txt; the comparison reads each
running run's metrics.csv (the CSV logger flushes it every few steps) every ``every`` seconds and
prints one line per running run and one for the whole comparison, so a user never sits through
minutes of silence. It only reads files: nothing here touches a run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd

__all__ = ["ProgressWatcher", "clock", "read_progress"]


def clock(seconds: float) -> str:
    """A duration as m:ss (h:mm:ss from an hour on): 75 -> '1:15'."""
    seconds = max(0, int(round(seconds)))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def read_progress(metrics_csv: Path, window: int = 10) -> tuple[int, float, float] | None:
    """(last logged step, mean entropy and mean reward over its last ``window`` steps), or None while the
    file is not there, empty, or being rewritten by the logger."""
    try:
        df = pd.read_csv(metrics_csv, usecols=lambda c: c in ("step", "train/entropy", "train/reward"))
        train = df.dropna(subset=["train/entropy"])
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return None
    if train.empty:
        return None
    recent = train.tail(window)
    return int(train["step"].iloc[-1]), float(recent["train/entropy"].mean()), float(recent["train/reward"].mean())


class ProgressWatcher:
    """Prints the comparison's progress every ``every`` seconds while used as a context manager.

    Args:
        runs: name of each run (e.g. "grpo seed 0") → its metrics.csv.
        max_steps: optimizer steps per run.
        jobs: runs at once.
        every: seconds between reports.
        echo: where lines go (print by default; tests collect them).
    """

    def __init__(self, runs: dict[str, Path], max_steps: int, jobs: int, every: float = 15.0, echo=print) -> None:
        self.runs, self.max_steps, self.jobs, self.every, self.echo = runs, max_steps, jobs, every, echo
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lock = threading.Lock()
        self.width = max((len(name) for name in runs), default=0)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def say(self, text: str) -> None:
        with self._lock:
            self.echo(f"[{clock(time.monotonic() - self.t0):>7}] {text}", flush=True)

    def start(self, name: str, log: Path) -> None:
        self.started[name] = time.monotonic()
        self.say(f"{name}: started ({log})")

    def done(self, name: str, wall: float, earlier: bool = False) -> None:
        self.finished[name] = wall
        self.say(f"{name}: done earlier, not repeated" if earlier else f"{name}: done in {clock(wall)}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for line in self.report():
                self.say(line)

    def report(self) -> list[str]:
        """One line per running run that has logged a step, then one for the whole comparison."""
        now, lines, rates, left = time.monotonic(), [], [], 0
        running = [n for n in self.started if n not in self.finished]
        for name in running:
            progress = read_progress(self.runs[name])
            if progress is None:
                lines.append(f"{name:<{self.width}}  starting")
                left += self.max_steps
                continue
            step, entropy, reward = progress
            done = step + 1
            rate = (now - self.started[name]) / done  # seconds per step, start-up included
            rates.append(rate)
            left += self.max_steps - done
            lines.append(f"{name:<{self.width}}  step {done:>4}/{self.max_steps}  entropy {entropy:.3f}  "
                         f"reward {reward:.2f}  ~{clock(rate * (self.max_steps - done))} left")
        queued = len(self.runs) - len(self.started)
        left += queued * self.max_steps
        total = f"{len(running)} running, {queued} queued, {len(self.finished)} of {len(self.runs)} done"
        if rates and left:
            parallel = max(1, min(self.jobs, len(running) + queued))
            total += f"; all done in ~{clock(sum(rates) / len(rates) * left / parallel)}"
        return lines + [total] if running else []
