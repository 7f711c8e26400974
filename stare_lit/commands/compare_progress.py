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
from typing import NamedTuple

import pandas as pd

__all__ = ["Progress", "ProgressWatcher", "clock", "read_progress"]


def clock(seconds: float) -> str:
    """A duration as m:ss (h:mm:ss from an hour on): 75 -> '1:15'."""
    seconds = max(0, int(round(seconds)))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress(NamedTuple):
    """Where a run is: its last logged step, mean entropy and reward over its last steps, and when the
    logger wrote that step (the file's modification time, in seconds since the epoch)."""

    step: int
    entropy: float
    reward: float
    at: float


def read_progress(metrics_csv: Path, window: int = 10) -> Progress | None:
    """Where a run is from its metrics.csv (entropy and reward: means over the last ``window`` steps), or
    None while the file is not there, empty, or being rewritten by the logger."""
    try:
        at = metrics_csv.stat().st_mtime
        df = pd.read_csv(metrics_csv, usecols=lambda c: c in ("step", "train/entropy", "train/reward"))
        train = df.dropna(subset=["train/entropy"])
        if metrics_csv.stat().st_mtime != at:  # written while being read: its time is not its last step's
            return None
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return None
    if train.empty:
        return None
    recent = train.tail(window)
    return Progress(int(train["step"].iloc[-1]), float(recent["train/entropy"].mean()),
                    float(recent["train/reward"].mean()), at)


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
        self.first: dict[str, Progress] = {}  # each running run's first point seen: the ETA's start
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

    def start(self, name: str, log: Path, resume: Path | None = None) -> None:
        self.started[name] = time.monotonic()
        self.first.pop(name, None)
        self.say(f"{name}: resumed from {resume} ({log})" if resume else f"{name}: started ({log})")

    def done(self, name: str, wall: float, earlier: bool = False) -> None:
        self.finished[name] = wall
        self.say(f"{name}: done earlier, not repeated" if earlier else f"{name}: done in {clock(wall)}")

    def stopped(self, name: str, checkpoint: Path | None) -> None:
        """A run stopped by a signal: no longer running, to be resumed (or started again) by the next compare."""
        self.started.pop(name, None)
        self.say(f"{name}: stopped; it resumes from {checkpoint}" if checkpoint else
                 f"{name}: stopped before its first step ended; it starts again next time")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for line in self.report():
                self.say(line)

    def report(self) -> list[str]:
        """One line per running run, then one for the whole comparison.

        Time left comes from the runs' speed since the first step this comparison saw them log (the
        first flush of metrics.csv, after the start-up of loading and building): "estimating…" until
        a run has logged again. The whole comparison's: the mean speed over the runs that have one,
        times the steps left (a queued run's own steps left, when it was stopped earlier), over the
        runs at once.
        """
        lines, rates, left = [], [], 0
        running = [n for n in list(self.started) if n not in self.finished]  # list: runs start meanwhile
        for name in running:
            progress = read_progress(self.runs[name])
            if progress is None:
                lines.append(f"{name:<{self.width}}  starting")
                left += self.max_steps
                continue
            first = self.first.setdefault(name, progress)
            done = progress.step + 1
            left += self.max_steps - done
            if progress.step > first.step:
                rate = (progress.at - first.at) / (progress.step - first.step)  # seconds per step
                rates.append(rate)
                eta = f"~{clock(rate * (self.max_steps - done))} left"
            else:
                eta = "time left: estimating…"
            lines.append(f"{name:<{self.width}}  step {done:>4}/{self.max_steps}  entropy {progress.entropy:.3f}  "
                         f"reward {progress.reward:.2f}  {eta}")
        queued = [n for n in self.runs if n not in self.started and n not in self.finished]
        for name in queued:
            earlier = read_progress(self.runs[name])  # a run stopped before resumes where it stopped
            left += self.max_steps - (earlier.step + 1 if earlier else 0)
        total = f"{len(running)} running, {len(queued)} queued, {len(self.finished)} of {len(self.runs)} done"
        if left:
            parallel = max(1, min(self.jobs, len(running) + len(queued)))
            total += (f"; all done in ~{clock(sum(rates) / len(rates) * left / parallel)}" if rates
                      else "; all done in: estimating…")
        return lines + [total] if running else []
