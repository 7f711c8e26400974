"""How ``stare-lit compare`` starts, stops and resumes its runs, each a ``stare-lit fit`` subprocess.

Stop: on SIGTERM or SIGINT, :class:`Runs` sends SIGTERM to every run it started and starts no more.
Each run finishes its step, saves ``last.ckpt`` and exits 143 (``stare_lit.train.preemption``);
compare waits for all of them, so none is left running without a parent. SIGTERM for both signals:
the runs share compare's process group, so a Ctrl-C at a terminal reaches them as well, and a
second SIGINT would make a run quit without saving, while a SIGTERM after a SIGINT changes nothing.
(A second Ctrl-C still quits every run at once, unsaved, as it does a ``fit``.)

Resume: the same compare run again keeps a finished run (its ``wall_time_s.txt``), resumes a stopped
one from its ``last.ckpt`` with ``--ckpt_path`` and starts the others. A resumed ``fit`` logs to the
same CSV version ("run"), and Lightning's CSVLogger deletes that version's metrics.csv when it
starts; so the earlier part is first set aside as ``metrics.part<i>.csv`` and, once the run has
finished, :func:`stitch` puts the parts back in front of the new file: metrics.csv then holds the
whole run, one row per logged step, as an uninterrupted run's does.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from stare_lit.commands.compare_progress import ProgressWatcher

SIGNALS = (signal.SIGTERM, signal.SIGINT)
FLUSH_EVERY_STEPS = 10  # the runs' CSV logger writes metrics.csv this often, for the progress lines
STOPPED_WALL = "wall_time_stopped_s.txt"  # seconds a run trained before it was stopped (all stops together)


class Runs:
    """The runs' processes. While :meth:`handling_signals` is in force, SIGTERM or SIGINT stops them all."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal that stopped the comparison
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()  # a run is either started and in the set, or not started after a stop

    def _handler(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"compare: {signal.Signals(signum).name}: each running run saves last.ckpt at the end of its "
                  "step and stops; no new run starts", file=sys.stderr, flush=True)
        with self._lock:
            for process in self._processes:
                process.send_signal(signal.SIGTERM)

    @contextmanager
    def handling_signals(self):
        """The handlers in place (set from the main thread) while the runs run; the earlier ones put back after."""
        previous = {signum: signal.signal(signum, self._handler) for signum in SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self, cmd: list[str], log, env: dict[str, str], started=lambda: None) -> int | None:
        """Run ``cmd`` to its end (calling ``started`` once it has); its exit status, or None when the comparison
        was stopped before it started."""
        with self._lock:
            if self.signum is not None:
                return None
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            self._processes.add(process)
        started()
        try:
            return process.wait()
        finally:
            with self._lock:
                self._processes.discard(process)


def fit_arguments(base: str, scheme: str, seed: int, max_steps: int, out: Path, extra: list[str]) -> list[str]:
    """The ``stare-lit fit`` settings of one scheme × seed, writing to ``out``."""
    return ["--config", base, "--config", scheme, "--seed_everything", str(seed), "--trainer.max_steps", str(max_steps),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.logger.init_args.version", "run", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.flush_logs_every_n_steps", str(FLUSH_EVERY_STEPS), *extra]


def run_name(scheme: str, seed: int) -> str:
    """A run as the console and the tables name it: the overlay's file name and the seed."""
    return f"{Path(scheme).stem} seed {seed}"


def last_checkpoint(out: Path) -> Path | None:
    """The newest ``last.ckpt`` under a run's folder (where its ModelCheckpoint or a stop saved it), if any."""
    found = [path for path in out.rglob("last.ckpt") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def parts(metrics_csv: Path) -> list[Path]:
    """The parts of a resumed run's metrics set aside so far, in the order they were logged."""
    return sorted(metrics_csv.parent.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part")))


def set_aside(metrics_csv: Path) -> None:
    """Move a stopped run's metrics.csv to the next ``metrics.part<i>.csv``, before a resumed fit deletes it."""
    if metrics_csv.exists():
        metrics_csv.rename(metrics_csv.with_name(f"metrics.part{len(parts(metrics_csv)) + 1}.csv"))


def stitch(metrics_csv: Path) -> None:
    """Put the parts set aside in front of a finished run's metrics.csv and remove them.

    Each part keeps the steps before the first training step of what came after it: a run resumed
    from a checkpoint older than its last logged step (a ``last.ckpt`` of a periodic save, the run
    killed later) logs those steps again, and the later rows are the ones the finished run stands on.
    """
    earlier = parts(metrics_csv)
    if earlier and not metrics_csv.exists():  # resumed from a checkpoint of its last step: nothing more logged
        earlier.pop().rename(metrics_csv)
    if not earlier:
        return
    whole = pd.read_csv(metrics_csv)
    for part in reversed(earlier):
        rows = pd.read_csv(part)
        trained = whole.loc[whole["train/reward"].notna(), "step"] if "train/reward" in whole else whole["step"]
        first = trained.min() if len(trained) else math.inf
        whole = pd.concat([rows[rows["step"] < first], whole], ignore_index=True)
    whole.to_csv(metrics_csv.with_suffix(".tmp"), index=False)
    os.replace(metrics_csv.with_suffix(".tmp"), metrics_csv)
    for part in earlier:
        part.unlink()


def run_one(base: str, scheme: str, seed: int, max_steps: int, out: Path, extra: list[str], threads: int,
            runs: Runs, watch: ProgressWatcher) -> float | None:
    """Train one scheme × seed unless already done, resuming from its last.ckpt if it was stopped; returns
    its wall time in seconds (all its parts), or None if the comparison was stopped before it ended."""
    done, name, metrics = out / "wall_time_s.txt", run_name(scheme, seed), out / "run" / "metrics.csv"
    if done.exists():
        watch.done(name, float(done.read_text()), earlier=True)
        return float(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    resume = last_checkpoint(out)
    if resume is not None:
        set_aside(metrics)  # before the watcher reads the file for this run's points
    else:  # nothing to resume from: the run starts again at step 0, and what it logged or took before is void
        for stale in [*parts(metrics), metrics, out / STOPPED_WALL]:
            stale.unlink(missing_ok=True)
    args = fit_arguments(base, scheme, seed, max_steps, out, extra) + (["--ckpt_path", str(resume)] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(out / "log.txt", "a") as log:  # a resumed run's console follows its earlier part's
        code = runs.run([sys.executable, "-m", "stare_lit.commands.cli", "fit", *args], log, env,
                        started=lambda: watch.start(name, out / "log.txt", resume))
    if code is None:
        return None
    stopped = out / STOPPED_WALL
    wall = time.perf_counter() - start + (float(stopped.read_text()) if stopped.exists() else 0.0)
    if code != 0 and runs.signum is not None:
        stopped.write_text(f"{wall:.1f}")
        watch.stopped(name, last_checkpoint(out))
        return None
    if code != 0:
        raise RuntimeError(f"compare: {scheme} seed {seed} failed (exit {code}); see {out / 'log.txt'}")
    stitch(metrics)
    done.write_text(f"{wall:.1f}")
    stopped.unlink(missing_ok=True)
    watch.done(name, wall)
    return wall
