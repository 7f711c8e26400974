"""The reward worker: a spawned process that holds the rewards and scores completions one at a time, so that
one that hangs (even inside C code, where no thread can stop it) can be killed (``model.scoring.timeout``).

stare_lit.rewards.runner decides what each outcome means (``on_error``, ``timeout_score``), how many workers
score a batch at once (``model.scoring.workers``) and when to start new ones; this file only keeps a process:
start it, send it work, read what it scored, wait for an answer no longer than the time-out, and stop it (on a
time-out, when it is garbage-collected, at exit).
"""

import atexit
import multiprocessing
import os
import pickle
import signal
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional

from stare_lit.errors import ConfigError, short
from stare_lit.rewards.base import Reward, RewardError

# What scoring one completion came to, as sent by the worker: ("ok", float | None), ("error_score",
# float), ("failed", why), ("config", ConfigError message), or ("timeout", None).
Outcome = tuple[str, Any]
ScoreOne = Callable[[Reward, list[str], list[str], dict[str, list]], Outcome]

_STARTUP_TIMEOUT_S = 300.0  # a worker imports torch and the rewards' modules before it is ready


class Worker:
    """A spawned process that holds the rewards and scores completions one at a time on request.

    Spawned, never forked: the parent holds torch's threads and maybe CUDA, which a fork would
    copy in an unusable state. Not daemonic, so a reward may start processes of its own; the
    exit hook below stops it instead. The constructor only starts it, so that several start at
    once; ``wait_until_ready`` before the first ``send``.

    Args:
        rewards: The rewards, pickled.
        score_one: What the worker calls on each completion, ``score_one(reward, prompts, completions,
            columns)`` on a batch of one; it must never raise, and be importable by name (it is sent to a
            spawned process).
    """

    def __init__(self, rewards: bytes, score_one: ScoreOne) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_worker_main, args=(child_conn, rewards, score_one), name="stare-lit-rewards", daemon=False
        )
        try:
            self._process.start()
        except BaseException:
            self._conn.close()
            raise
        finally:
            child_conn.close()  # the worker has its copy; closing ours makes its death read as EOF here
        # Stops the process when this object is garbage-collected; idempotent.
        self._stop = weakref.finalize(self, _stop_process, self._process, self._conn, os.getpid())
        _WORKERS.add(self)
        _register_exit_hook()

    @property
    def alive(self) -> bool:
        """Not stopped here, and not dead of its own accord (e.g. killed by the OOM killer while idle)."""
        return self._stop.alive and self._process.is_alive()

    def send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError as error:  # it died between two batches
            self.kill()
            raise RewardError(f"the reward worker process (model.scoring.timeout is set) died (exit code"
                              f" {self._process.exitcode}) before it could score a batch; set"
                              " model.scoring.timeout: null to run rewards in-process.") from error

    def receive(self, timeout: Optional[float]) -> Outcome:
        """The next completion's outcome; on a time-out or the worker's death, the worker is stopped."""
        if not self._conn.poll(timeout):
            self.kill()
            return ("timeout", None)
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self.kill()
            return ("failed", f"killed its worker process (exit code {self._process.exitcode})")

    def close(self) -> None:
        """Ask the worker to exit; kill it if it is busy."""
        if not self.alive:
            return
        try:
            self._conn.send(None)
            self._process.join(timeout=1.0)
        except (OSError, ValueError):
            pass
        self.kill()

    def kill(self) -> None:
        self._stop()

    def wait_until_ready(self) -> None:
        """Wait for the worker to load the rewards; its start-up does not count against the time-out."""
        problem = None
        if not self._conn.poll(_STARTUP_TIMEOUT_S):
            problem = f"did not start within {_STARTUP_TIMEOUT_S:.0f} s"
        else:
            try:
                kind, detail = self._conn.recv()
            except (EOFError, OSError):
                self._process.join(timeout=5.0)
                kind, detail = "died", f"exit code {self._process.exitcode}"
            if kind == "load_failed":
                self.kill()
                raise ConfigError(
                    f"model.scoring.timeout is set, so the rewards run in a worker process, but it could not load"
                    f" them ({detail}); define them in a module the worker can import (not the script you run),"
                    " or set model.scoring.timeout: null to run rewards in-process."
                )
            if kind != "ready":
                problem = (f"died while starting ({detail}; its traceback is above); a script that trains must do"
                           " so under `if __name__ == \"__main__\":`, as a spawned process imports it again")
        if problem is not None:
            self.kill()
            raise RewardError(f"the reward worker process (model.scoring.timeout is set) {problem}; set"
                              " model.scoring.timeout: null to run rewards in-process.")


def answered(workers: list[Worker], timeout: float) -> list[Worker]:
    """Those of ``workers`` that have an answer waiting (or died) within ``timeout`` seconds; ``[]`` if none."""
    by_connection = {worker._conn: worker for worker in workers}
    return [by_connection[connection] for connection in wait(list(by_connection), timeout)]


_WORKERS: "weakref.WeakSet[Worker]" = weakref.WeakSet()


def _register_exit_hook() -> None:
    """(Re-)register the exit hook after multiprocessing's own, so that it runs first (atexit is LIFO).

    multiprocessing joins its non-daemonic children at exit: a worker still waiting for work
    would block the exit forever. Stopping the workers first makes that join return at once.
    """
    atexit.unregister(_stop_all_workers)
    atexit.register(_stop_all_workers)


def _stop_all_workers() -> None:
    for worker in list(_WORKERS):
        worker.kill()


def _stop_process(process: multiprocessing.process.BaseProcess, conn: Connection, owner: int) -> None:
    """Kill and reap the worker (no zombie), unless this is a forked copy of its parent, which may not."""
    if os.getpid() != owner:
        return
    if process.is_alive():
        process.kill()
    process.join()
    conn.close()


def _worker_main(conn: Connection, rewards: bytes, score_one: ScoreOne) -> None:
    """The worker's loop, on its main thread (so math-verify's ``signal.alarm`` time limits still work).

    Messages in: ``("score", reward_index, prompts, completions, columns)``, or ``None`` to exit.
    Out: ``("ready", None)`` or ``("load_failed", why)`` once; then one outcome per completion.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    try:
        loaded = pickle.loads(rewards)
    except Exception as error:
        conn.send(("load_failed", f"{type(error).__name__}: {short(str(error))}"))
        return
    conn.send(("ready", None))
    try:
        while (message := conn.recv()) is not None:
            _, index, prompts, completions, columns = message
            reward = loaded[index]
            for i in range(len(completions)):
                row = {key: [column[i]] for key, column in columns.items()}
                conn.send(score_one(reward, [prompts[i]], [completions[i]], row))
    except (EOFError, OSError):
        pass  # the parent is gone
