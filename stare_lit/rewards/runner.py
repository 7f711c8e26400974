"""Scoring: run the rewards (stare_lit.rewards) on a batch, then combine them into one reward per completion.

Design choices:

- ``score_completions`` sums the weighted rewards that are not ``None``; a completion that no
  reward can judge gets NaN, so the caller can leave it out of the advantages and count it.
- A reward that raises, or returns something that is not one number (or ``None``) per completion,
  stops training with a ``RewardError`` naming the reward, the first bad completion and its prompt,
  rather than training on a silently wrong signal. ``model.scoring.on_error: none`` instead scores
  such completions as ``None`` and counts them.
- ``model.scoring.timeout`` runs the rewards in worker processes (stare_lit.rewards.worker), each
  scoring one completion at a time, so a verifier that hangs (math-verify can, on pathological input,
  in C where no thread can stop it) is killed and that completion scored ``model.scoring.timeout_score``;
  the worker is replaced.
- Scoring runs at the speed of the cores: ``model.scoring.workers`` completions at once (``null``: the
  cores this rank may use, ``os.sched_getaffinity`` divided among the ranks on its node). With a
  timeout, that many worker processes share the batch; in-process, a reward that declares
  ``Reward.concurrent`` (its time goes to a subprocess, e.g. CodeTestReward's sandbox) is scored on
  that many threads, one completion per call, while the others (pure Python, holding the GIL: threads
  would gain nothing) get one call on the whole batch on the calling thread. Every completion is scored
  alone, so the results, their order, the errors counted and the warnings are the same for any pool
  size. Under DDP/FSDP each rank scores its own completions (its rollout) with its own pool.

``RewardRunner`` does all of this for the LightningModule; ``score_completions`` is its one-call
form::

    model:
      scoring:
        on_error: fail      # or none
        timeout: 10         # seconds per completion; null runs the rewards in-process
        timeout_score: 0.0  # what a timed-out completion scores; null leaves it unscored
        workers: null       # completions scored at once: null = this rank's cores, 1 = one at a time
"""

import math
import numbers
import os
import pickle
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch

from stare_lit.errors import ConfigError, check, qualified, short
from stare_lit.rewards.base import ErrorScore, Reward, RewardError
from stare_lit.rewards.worker import Outcome, Worker, answered


class RewardWarning(UserWarning):
    """Some completions could not be scored (``on_error: none``) or timed out; training goes on."""


@dataclass
class Scoring:
    """How rewards are run: what a reward error does, a time limit per completion, and how many at once.

    Args:
        on_error: What a reward that raises on a completion, returns a value that is not a finite
            number (or ``None``), or returns the wrong number of values does: ``fail`` stops
            training with a ``RewardError`` naming the completion and its prompt (fail fast);
            ``none`` scores the affected completions as ``None`` (unscorable), counts them and warns.
        timeout: Seconds a reward may take per completion, or ``None`` for no limit. When set, the
            rewards run in worker processes, each scoring one completion at a time, so that one that
            hangs (even inside C code) can be killed: it scores ``timeout_score`` and its worker is
            replaced (seconds: it imports torch again) at the next batch, or at once if no other is
            left. ``None`` runs them in-process.
        timeout_score: What a timed-out completion scores: 0.0 treats it as a wrong answer (as
            verl and open-r1 do for math-verify time-outs); ``None`` leaves it unscored.
        workers: Completions scored at once, on this rank: worker processes when ``timeout`` is
            set; otherwise threads, for the rewards that declare ``Reward.concurrent`` (the others
            get one call on the whole batch). ``None`` is this rank's share of the cores: the CPUs it
            may run on (``os.sched_getaffinity``) divided by the ranks on its node (``LOCAL_WORLD_SIZE``,
            else ``WORLD_SIZE``). 1 scores one completion at a time. A number above the cores is
            taken as given: for a reward that waits on a remote service.
    """

    on_error: Literal["fail", "none"] = "fail"
    timeout: Optional[float] = None
    timeout_score: Optional[float] = 0.0
    workers: Optional[int] = None

    def __post_init__(self) -> None:
        check(
            self.on_error in ("fail", "none"),
            f"model.scoring.on_error={self.on_error!r}; use fail (stop on a reward error) or none"
            " (score such completions as None).",
        )
        check(
            self.timeout is None or (_is_number(self.timeout) and math.isfinite(self.timeout) and self.timeout > 0),
            f"model.scoring.timeout={self.timeout!r}; use a number of seconds > 0, or null to run rewards"
            " in-process without a time limit.",
        )
        check(
            self.timeout_score is None or (_is_number(self.timeout_score) and math.isfinite(self.timeout_score)),
            f"model.scoring.timeout_score={self.timeout_score!r}; use a finite number (0.0 scores a time-out"
            " as a wrong answer), or null to leave timed-out completions unscored.",
        )
        check(
            self.workers is None or (isinstance(self.workers, int) and not isinstance(self.workers, bool)
                                     and self.workers >= 1),
            f"model.scoring.workers={self.workers!r}; use a whole number >= 1 of completions to score at once"
            " (1: one at a time), or null for one per core this rank may use.",
        )


@dataclass
class ScoredBatch:
    """The rewards of one batch of N completions.

    Attributes:
        total: (N,) float32, the weighted sum of the rewards that apply to each completion; NaN
            where none does.
        per_reward: name -> (N,) float32, NaN where that reward returned (or was given) ``None``.
        errors: name -> completions that reward could not score and that became ``None``
            (``on_error: none``), and those it gave an ``ErrorScore`` (its check went wrong; the value
            is used, under either ``on_error``).
        timeouts: name -> completions on which that reward timed out.
    """

    total: torch.Tensor
    per_reward: dict[str, torch.Tensor]
    errors: dict[str, int]
    timeouts: dict[str, int]


class RewardRunner:
    """Runs the rewards on each batch and combines them into one reward per completion.

    A class, not a function, because with ``scoring.timeout`` set it owns worker processes that
    are started once (on first use, all at once) and reused: starting one takes seconds. Close it
    (or use it as a context manager) when done; a runner that is garbage-collected or left at exit
    stops its workers too.

    Rewards in a worker are copies, pickled once when it starts: state they keep (e.g. a cache
    of parsed gold answers) lives on in that worker across calls, until a time-out replaces it;
    with several workers each has its own copy.

    Args:
        rewards: The rewards to run.
        weights: One weight per reward; ``None`` weighs each by 1.0.
        scoring: Error handling and time limit; ``None`` is ``Scoring()`` (fail fast, in-process).
    """

    def __init__(
        self, rewards: Sequence[Reward], weights: Optional[Sequence[float]] = None, scoring: Optional[Scoring] = None
    ) -> None:
        check(len(rewards) > 0, "model.rewards is empty; give at least one reward.")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        check(
            len(weights) == len(rewards),
            f"model.reward_weights has {len(weights)} values for {len(rewards)} rewards in model.rewards;"
            " give one weight per reward, or leave it unset to weigh each by 1.0.",
        )
        check(all(math.isfinite(w) for w in weights), f"model.reward_weights={weights} must all be finite numbers.")
        self.rewards = list(rewards)
        self.weights = weights
        self.scoring = scoring if scoring is not None else Scoring()
        self.names: list[str] = []  # unique, so metrics don't overwrite each other
        for reward in self.rewards:
            self.names.append(_unique(reward.name, dict.fromkeys(self.names)))
        self._workers: list[Worker] = []

    def __call__(
        self, prompts: list[str], completions: list[str], columns: dict[str, list], group_size: int = 1
    ) -> ScoredBatch:
        """Score a batch with every reward and combine the scores.

        Example: rewards ``a`` and ``b`` with weights ``[1, 0.5]`` scoring two completions as
        ``a=[1, None]``, ``b=[1, 0]`` give ``total=[1.5, 0.0]``; had ``b`` been ``None`` for the
        second too, its total would be NaN.

        Args:
            prompts: The prompt of each completion (repeated for each completion of a prompt).
            completions: The generated texts, N of them.
            columns: The dataset's other columns, each aligned with ``completions``.
            group_size: Completions per prompt, consecutive; only used to name the prompt of a
                failing completion (completion i belongs to prompt i // group_size).

        Raises:
            RewardError: A reward failed on a completion and ``on_error`` is ``fail``.
            ConfigError: A reward found a bad setting (e.g. a missing answer column).
        """
        batch = _Batch(prompts, completions, columns, group_size)
        per_reward: dict[str, torch.Tensor] = {}
        errors: dict[str, int] = {}
        timeouts: dict[str, int] = {}
        for index, (name, reward) in enumerate(zip(self.names, self.rewards)):
            values, errors[name], timeouts[name] = self._score(index, name, reward, batch)
            per_reward[name] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)
        return ScoredBatch(_combine(per_reward, self.weights), per_reward, errors, timeouts)

    @property
    def pool(self) -> int:
        """Completions this rank scores at once (``scoring.workers``; ``None``: its share of the cores)."""
        if self.scoring.workers is not None:
            return self.scoring.workers
        return pool_size(len(os.sched_getaffinity(0)), _ranks_on_this_node())

    def close(self) -> None:
        """Stop the worker processes, if any run; a later call starts new ones."""
        for worker in self._workers:
            worker.close()
        self._workers = []

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # A process handle does not pickle (ddp_spawn, deepcopy): the copy starts its own workers.
        return {**self.__dict__, "_workers": []}

    # ------------------------------------------------------------------ one reward
    def _score(self, index: int, name: str, reward: Reward, batch: "_Batch") -> tuple[list, int, int]:
        """One reward's values on the batch, with the completions it failed on and timed out on counted."""
        if self.scoring.timeout is None:
            outcomes = self._in_process(name, reward, batch)
        else:
            outcomes = self._in_worker(index, batch)
        try:
            with closing(outcomes):  # on an error, stop the worker mid-batch (and no stale results)
                values, failed, flagged, timed_out = self._collect(name, outcomes, batch)
        except _WholeBatch as problem:
            message = f"reward '{name}' {problem}"
            if self.scoring.on_error == "fail":
                raise RewardError(f"{message}; fix the reward, or set model.scoring.on_error: none to score"
                                  f" such a batch as None for it") from None
            warnings.warn(f"{message}; all {len(batch)} completions count as None for it"
                          " (model.scoring.on_error: none)", RewardWarning, stacklevel=3)
            return [None] * len(batch), len(batch), 0
        self._warn(name, batch, failed, flagged, timed_out)
        return values, len(failed) + len(flagged), len(timed_out)

    def _collect(
        self, name: str, outcomes: Iterator[tuple[int, Outcome]], batch: "_Batch"
    ) -> tuple[list, list[tuple[int, str]], list[tuple[int, str]], list[int]]:
        """Apply ``on_error`` and ``timeout_score`` to the outcomes; raise on the first failure under ``fail``."""
        values: list[Optional[float]] = [None] * len(batch)
        failed: list[tuple[int, str]] = []
        flagged: list[tuple[int, str]] = []
        timed_out: list[int] = []
        for i, (kind, detail) in outcomes:
            if kind == "ok":
                values[i] = detail
            elif kind == "error_score":  # the reward's check failed on it: its value stands, counted as an error
                values[i] = detail
                flagged.append((i, "gave an error score"))
            elif kind == "timeout":
                values[i] = self.scoring.timeout_score
                timed_out.append(i)
            elif kind == "config":
                raise ConfigError(detail)
            elif self.scoring.on_error == "fail":
                error = RewardError(f"reward '{name}' {detail} on {batch.where(i)}; fix the reward, or set"
                                    " model.scoring.on_error: none to score such completions as None")
                error.user_traceback = getattr(detail, "traceback", "")
                error.owner = f"the reward {qualified(self.rewards[self.names.index(name)])}"
                raise error
            else:
                failed.append((i, detail))
        return values, failed, flagged, timed_out

    def _warn(self, name: str, batch: "_Batch", failed: list[tuple[int, str]], flagged: list[tuple[int, str]],
              timed_out: list[int]) -> None:
        """One warning per kind per reward per batch: the count and the first completion."""
        n = len(batch)
        if flagged:
            warnings.warn(f"reward '{name}' gave {len(flagged)} of {n} completions an error score (its check went"
                          f" wrong on them; counted in reward/{name}_errors); first: {batch.where(flagged[0][0])}",
                          RewardWarning, stacklevel=4)
        if failed:
            i, detail = failed[0]
            warnings.warn(f"reward '{name}' could not score {len(failed)} of {n} completions, which count as"
                          f" None (model.scoring.on_error: none); first: it {detail} on {batch.where(i)}",
                          RewardWarning, stacklevel=4)
        if timed_out:
            warnings.warn(f"reward '{name}' took longer than model.scoring.timeout={self.scoring.timeout} s on"
                          f" {len(timed_out)} of {n} completions, which score model.scoring.timeout_score="
                          f"{self.scoring.timeout_score}; first: {batch.where(timed_out[0])}",
                          RewardWarning, stacklevel=4)

    # ------------------------------------------------------------------ in-process
    def _in_process(self, name: str, reward: Reward, batch: "_Batch") -> Iterator[tuple[int, Outcome]]:
        """One call on the whole batch (fast); if it raises, one call per completion to find which fail.

        A ``concurrent`` reward is called on each completion alone instead, on ``pool`` threads.
        """
        if reward.concurrent:
            yield from self._on_threads(reward, batch)
            return
        try:
            returned = reward(batch.prompts, batch.completions, **batch.columns)
        except ConfigError:
            raise  # a bad setting, reported as one line by the CLI
        except Exception as error:
            yield from self._one_at_a_time(name, reward, batch, error)
            return
        try:
            values = _as_list(returned, len(batch))
        except _BadShape as problem:
            raise _WholeBatch(f"{problem} (from one call on the whole batch, so which completion is missing"
                              " or extra cannot be known)") from None
        for i, value in enumerate(values):
            yield i, _judge(value)

    def _one_at_a_time(
        self, name: str, reward: Reward, batch: "_Batch", error: Exception
    ) -> Iterator[tuple[int, Outcome]]:
        """Outcomes of scoring each completion alone, after the batch call raised ``error``.

        Lazy, so under ``fail`` it stops at the first completion that fails alone.
        """
        failures = 0
        for i in range(len(batch)):
            outcome = _score_one(reward, *batch.row(i))
            failures += outcome[0] == "failed"
            yield i, outcome
        if failures:
            return
        message = (f"reward '{name}' raised {type(error).__name__}: {short(str(error))} on the batch of"
                   f" {len(batch)} completions but on none of them alone, so no completion can be named")
        if self.scoring.on_error == "fail":
            raise RewardError(f"{message}; fix the reward, or set model.scoring.on_error: none to use its"
                              " one-at-a-time scores") from error
        warnings.warn(f"{message}; its one-at-a-time scores are used (model.scoring.on_error: none)",
                      RewardWarning, stacklevel=5)

    def _on_threads(self, reward: Reward, batch: "_Batch") -> Iterator[tuple[int, Outcome]]:
        """Each completion scored alone, up to ``pool`` at once on threads; the outcomes in order.

        A failure under ``fail`` stops the generator: completions not yet started are cancelled, and
        those running are waited for (each is bounded by the reward's own limit, e.g. the sandbox's).
        """
        size = min(self.pool, len(batch))
        if size <= 1:
            for i in range(len(batch)):
                yield i, _score_one(reward, *batch.row(i))
            return
        with ThreadPoolExecutor(size, thread_name_prefix="stare-lit-scoring") as threads:
            futures = [threads.submit(_score_one, reward, *batch.row(i)) for i in range(len(batch))]
            try:
                for i, future in enumerate(futures):
                    yield i, future.result()
            finally:
                for future in futures:
                    future.cancel()

    # ------------------------------------------------------------------ worker processes
    def _in_worker(self, index: int, batch: "_Batch") -> Iterator[tuple[int, Outcome]]:
        """Outcomes from ``pool`` workers, in order; each completion scored alone within ``scoring.timeout``.

        An idle worker gets the next completion; the time-out runs from when it was sent. A completion
        that times out (or kills its worker) costs that worker: it is stopped, and the others score the
        rest of the batch (a new one starts if none is left). If the caller stops early (an error), the
        busy workers are stopped too, so that no results of this batch are left to be read as the next one's.
        """
        self._start_workers(min(self.pool, len(batch)))
        waiting = list(range(len(batch)))[::-1]  # a stack: pop() hands out the lowest
        busy: dict[Worker, tuple[int, float]] = {}  # worker -> (its completion, deadline)
        done: dict[int, Outcome] = {}
        finished = False
        try:
            for i in range(len(batch)):
                while i not in done:
                    for worker in [w for w in self._workers if w not in busy][: len(waiting)]:
                        j = waiting.pop()
                        worker.send(("score", index, *batch.row(j)))
                        busy[worker] = (j, time.monotonic() + self.scoring.timeout)
                    if not busy:  # every worker was lost, and completions are left
                        self._start_workers(1)
                        continue
                    self._gather(busy, done)
                yield i, done.pop(i)
            finished = True
        finally:
            if not finished:
                for worker in busy:
                    worker.kill()
                self._workers = [w for w in self._workers if w.alive]

    def _gather(self, busy: dict[Worker, tuple[int, float]], done: dict[int, Outcome]) -> None:
        """Wait for an answer until the first deadline; move what came, and what timed out, from ``busy`` to ``done``."""
        first = min(deadline for _, deadline in busy.values())
        for worker in answered(list(busy), max(0.0, first - time.monotonic())):
            j, _ = busy.pop(worker)
            done[j] = worker.receive(0.0)  # an answer, or its death (the worker is then stopped)
        now = time.monotonic()
        for worker, (j, deadline) in list(busy.items()):
            if deadline <= now:
                worker.kill()
                del busy[worker]
                done[j] = ("timeout", None)
        self._workers = [w for w in self._workers if w.alive]

    def _start_workers(self, count: int) -> None:
        """Have ``count`` live workers: start the missing ones all at once, then wait for each."""
        self._workers = [w for w in self._workers if w.alive]
        if len(self._workers) >= count:
            return
        rewards = self._pickled_rewards()
        new = [Worker(rewards, _score_one) for _ in range(count - len(self._workers))]
        try:
            for worker in new:
                worker.wait_until_ready()
        except BaseException:
            for worker in new:
                worker.kill()
            raise
        self._workers += new

    def _pickled_rewards(self) -> bytes:
        """The rewards, pickled for the worker; a reward that cannot be pickled is a setting to change."""
        for name, reward in zip(self.names, self.rewards):
            try:
                pickle.dumps(reward)
            except Exception as error:
                raise ConfigError(
                    f"model.scoring.timeout is set, so the rewards run in a worker process, but reward '{name}'"
                    f" cannot be pickled to get there ({type(error).__name__}: {short(str(error))}); make it a"
                    " class defined at the top level of an importable module, or set model.scoring.timeout: null"
                    " to run rewards in-process."
                ) from None
        return pickle.dumps(self.rewards)


def pool_size(cores: int, ranks_on_node: int) -> int:
    """Completions a rank scores at once by default: its share of the cores it may use, at least 1.

    Example: 16 cores shared by 4 ranks on a node give each a pool of 4; 2 cores and 4 ranks give 1.
    """
    return max(1, cores // max(1, ranks_on_node))


def _ranks_on_this_node() -> int:
    """``LOCAL_WORLD_SIZE`` (torchrun), else ``WORLD_SIZE`` (Lightning's launcher sets it; on several nodes it
    over-counts, so the pool is smaller than it could be: set ``model.scoring.workers``), else 1."""
    for key in ("LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def score_completions(
    rewards: Sequence[Reward],
    weights: Optional[Sequence[float]],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run every reward in-process on a batch and combine them into one reward per completion.

    ``RewardRunner`` in one call, failing fast (``Scoring()``); see ``RewardRunner.__call__``.

    Returns:
        ``total``, (N,) float32: the weighted sum of the rewards that apply to each completion, NaN
        where none does; and ``per_reward``: name -> (N,) float32, NaN where that reward returned
        ``None``. Repeated names get a suffix (``_1``, ``_2``, ...).

    Raises:
        RewardError: A reward raised or returned a bad value.
    """
    with RewardRunner(rewards, weights) as runner:
        scored = runner(prompts, completions, columns)
    return scored.total, scored.per_reward


def none_fraction(per_reward: dict[str, torch.Tensor]) -> dict[str, float]:
    """The share of completions each reward returned ``None`` for (NaN in ``per_reward``)."""
    return {name: values.isnan().float().mean().item() for name, values in per_reward.items()}


def _combine(per_reward: dict[str, torch.Tensor], weights: list[float]) -> torch.Tensor:
    """(N,) weighted sum of the rewards that apply (``None`` is absent, not 0); NaN where none applies."""
    scores = torch.stack(list(per_reward.values()))  # (R, N)
    weighted = scores * torch.tensor(weights, dtype=torch.float32)[:, None]  # (R, N)
    total = torch.nansum(weighted, dim=0)  # (N,)
    total[scores.isnan().all(dim=0)] = math.nan  # no reward applies: the caller leaves it out
    return total


class _Batch:
    """The inputs of one scoring call, with the slicing and naming the runner needs."""

    def __init__(self, prompts: list[str], completions: list[str], columns: dict[str, list], group_size: int) -> None:
        n = len(completions)
        for key, column in {"prompts": prompts, **columns}.items():
            if len(column) != n:
                raise ValueError(f"column '{key}' has {len(column)} values for {n} completions; they must align.")
        if group_size < 1:
            raise ValueError(f"group_size={group_size}; it must be >= 1")
        self.prompts, self.completions, self.columns, self.group_size = prompts, completions, columns, group_size

    def __len__(self) -> int:
        return len(self.completions)

    def row(self, i: int) -> tuple[list[str], list[str], dict[str, list]]:
        """Completion ``i`` as a batch of one."""
        return [self.prompts[i]], [self.completions[i]], {key: [column[i]] for key, column in self.columns.items()}

    def tail(self, start: int) -> tuple[list[str], list[str], dict[str, list]]:
        """Completions ``start``... as a batch."""
        columns = {key: list(column[start:]) for key, column in self.columns.items()}
        return list(self.prompts[start:]), list(self.completions[start:]), columns

    def where(self, i: int) -> str:
        """Completion ``i`` and its prompt, as a user can find them: index in the batch and an excerpt."""
        return f"completion {i} (prompt {i // self.group_size} of the batch: {_excerpt(str(self.prompts[i]))})"


class _BadShape(Exception):
    """A reward returned something that is not a list of one value per completion.

    Args:
        got: What it returned instead, e.g. ``3 values`` or ``float``.
    """

    def __init__(self, message: str, got: str) -> None:
        super().__init__(message)
        self.got = got


class _WholeBatch(Exception):
    """A batch call went wrong in a way that no single completion can be blamed for."""


def _as_list(returned: Any, n: int) -> list:
    """``returned`` as a list of ``n`` values; ``_BadShape`` says what it was instead."""
    try:
        values = list(returned)
    except TypeError:
        got = type(returned).__name__
        raise _BadShape(f"returned {got}; expected a list of {n} values", got) from None
    if len(values) != n:
        raise _BadShape(f"returned {len(values)} values; expected {n}, one per completion", f"{len(values)} values")
    return values


def _judge(value: Any) -> Outcome:
    """A value a reward returned for one completion: a finite number or ``None`` is ok, anything else failed;
    an ``ErrorScore`` is used and counted."""
    if value is None:
        return ("ok", None)
    if isinstance(value, ErrorScore) and math.isfinite(value):
        return ("error_score", float(value))
    if _is_number(value) and math.isfinite(value):
        return ("ok", float(value))
    return ("failed", f"returned {short(repr(value))}, not a finite number or None,")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)


def _score_one(reward: Reward, prompts: list[str], completions: list[str], columns: dict[str, list]) -> Outcome:
    """Score a batch of one completion; never raises, so a worker can send back whatever happened."""
    try:
        returned = reward(prompts, completions, **columns)
    except ConfigError as error:
        return ("config", str(error))
    except Exception as error:
        failure = _Failure(f"raised {type(error).__name__}: {short(str(error))}")
        failure.traceback = traceback.format_exc()  # kept for the user (stare_lit.blame)
        return ("failed", failure)
    try:
        (value,) = _as_list(returned, 1)
    except _BadShape as problem:
        return ("failed", f"returned {problem.got} when called on it alone, not a list of one value,")
    return _judge(value)


class _Failure(str):
    """Why a reward failed on a completion, as text, with the traceback of its exception (a str, so that
    the worker sends it back as it is)."""

    traceback = ""


def _excerpt(text: str, limit: int = 80) -> str:
    """``repr(text)`` in at most ``limit`` characters: its start and end when it is longer.

    Both ends, because prompts often share a long instruction at one end and differ at the other.
    """
    if len(repr(text)) <= limit:
        return repr(text)
    keep = limit
    while keep > 0:
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        shown = repr(head + " ... " + tail)
        if len(shown) <= limit:
            return shown
        keep -= 1
    return repr(text[:0])


def _unique(name: str, taken: dict[str, Any]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if it is already taken, so metrics don't overwrite each other."""
    unique, k = name, 0
    while unique in taken:
        k += 1
        unique = f"{name}_{k}"
    return unique


