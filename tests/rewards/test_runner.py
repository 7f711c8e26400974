"""RewardRunner: totals, on_error fail/none, and per-completion time-outs in a worker process.

The worker tests share one spawned worker (module-scoped fixture): starting one imports torch and
math-verify, seconds on a small machine, and every time-out or crash costs another start.
"""

import gc
import math
import os
import pickle
import threading
import time
import warnings

import pytest
import torch

from stare_lit.errors import ConfigError
from stare_lit.rewards.base import MathAnswerReward, Reward, RewardError
from stare_lit.rewards.runner import RewardRunner, RewardWarning, Scoring, pool_size, score_completions
from tests.helpers import BatchOnlyFailure, ConcurrentScriptedReward, ScriptedReward, UnloadableReward

FIX = "model.scoring.on_error: none"


def in_process(*rewards, weights=None, on_error="fail"):
    return RewardRunner(list(rewards), weights, Scoring(on_error=on_error))


def nan_list(tensor):
    """Tensor values as a list with NaN as None, so lists compare with ==."""
    return [None if math.isnan(v) else v for v in tensor.tolist()]


def reaped(pid):
    """True once the process is gone and waited for (a zombie still answers signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"on_error": "skip"}, "model.scoring.on_error"),
        ({"timeout": 0}, "model.scoring.timeout"),
        ({"timeout": float("inf")}, "model.scoring.timeout"),
        ({"timeout_score": float("nan")}, "model.scoring.timeout_score"),
        ({"workers": 0}, "model.scoring.workers"),
        ({"workers": 2.5}, "model.scoring.workers"),
        ({"workers": True}, "model.scoring.workers"),
    ],
)
def test_scoring_checks_its_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        Scoring(**kwargs)


def test_runner_checks_weights():
    with pytest.raises(ConfigError, match=r"model\.reward_weights has 2 values for 1 rewards"):
        RewardRunner([ScriptedReward()], [1.0, 2.0])
    with pytest.raises(ConfigError, match=r"model\.rewards is empty"):
        RewardRunner([])


def test_unpicklable_reward_with_timeout_is_a_setting_error():
    class Local(Reward):  # a class inside a function does not pickle
        def __call__(self, prompts, completions, **columns):
            return [1.0] * len(completions)

    with RewardRunner([Local()], scoring=Scoring(timeout=1.0)) as runner:
        with pytest.raises(ConfigError, match=r"reward 'local' cannot be pickled.*model\.scoring\.timeout: null"):
            runner([""], ["x"], {})


# ---------------------------------------------------------------------- in-process
def test_in_process_totals_by_hand():
    runner = in_process(ScriptedReward(), ScriptedReward(), weights=[1.0, 0.5])
    scored = runner(["p"] * 3, ["ab", "NONE", "abcd"], {})
    # scripted = len: [2, None, 4] twice -> total [2 + 1, NaN (no reward applies), 4 + 2]
    assert list(scored.per_reward) == ["scripted_reward", "scripted_reward_1"]
    assert nan_list(scored.per_reward["scripted_reward"]) == [2.0, None, 4.0]
    assert nan_list(scored.total) == [3.0, None, 6.0]
    assert scored.total.dtype == scored.per_reward["scripted_reward"].dtype == torch.float32
    assert scored.errors == {"scripted_reward": 0, "scripted_reward_1": 0}
    assert scored.timeouts == {"scripted_reward": 0, "scripted_reward_1": 0}


def test_score_completions_is_the_runner_in_one_call():
    total, per_reward = score_completions([ScriptedReward(name="s")], [2.0], ["p", "p"], ["a", "NONE"], {})
    assert nan_list(total) == [2.0, None] and list(per_reward) == ["s"]


def test_in_process_raise_fails_naming_completion_and_prompt():
    prompts = ["12+7=", "12+7=", "3*3=", "3*3="]  # group_size 2: completion 2 is prompt 1's
    expected = (r"reward 'scripted_reward' raised ValueError: boom on completion 2 \(prompt 1 of the batch: '3\*3='\);"
                rf" fix the reward, or set {FIX}")
    with pytest.raises(RewardError, match=expected):
        in_process(ScriptedReward())(prompts, ["a", "b", "RAISE", "c"], {}, group_size=2)


def test_in_process_raise_with_on_error_none_scores_that_completion_none():
    runner = in_process(ScriptedReward(), on_error="none")
    with pytest.warns(RewardWarning, match=r"could not score 1 of 4 completions.*completion 2 \(prompt 1"):
        scored = runner(["p0", "p0", "p1", "p1"], ["a", "bb", "RAISE", "dddd"], {}, group_size=2)
    assert nan_list(scored.per_reward["scripted_reward"]) == [1.0, 2.0, None, 4.0]  # the others, one at a time
    assert scored.errors == {"scripted_reward": 1}


def test_batch_failure_no_single_completion_explains():
    with pytest.raises(RewardError, match="on the batch of 2 completions but on none of them alone"):
        in_process(BatchOnlyFailure())(["p", "p"], ["a", "b"], {})
    with pytest.warns(RewardWarning, match="one-at-a-time scores are used"):
        scored = in_process(BatchOnlyFailure(), on_error="none")(["p", "p"], ["a", "b"], {})
    assert scored.total.tolist() == [1.0, 1.0] and scored.errors == {"batch_only_failure": 0}


def test_in_process_wrong_length():
    with pytest.raises(RewardError, match="returned 1 values; expected 2.*which completion is missing or extra cannot"
                                          " be known"):
        in_process(ScriptedReward())(["p", "p"], ["a", "SHORT"], {})
    with pytest.warns(RewardWarning, match="all 2 completions count as None"):
        scored = in_process(ScriptedReward(), on_error="none")(["p", "p"], ["a", "SHORT"], {})
    assert nan_list(scored.total) == [None, None] and scored.errors == {"scripted_reward": 2}


@pytest.mark.parametrize("marker, shown", [("STR", "'1.0'"), ("NAN", "nan")])
def test_in_process_non_number(marker, shown):
    expected = rf"returned {shown}, not a finite number or None, on completion 1 \(prompt 0 of the batch: 'q'\)"
    with pytest.raises(RewardError, match=expected):
        in_process(ScriptedReward())(["q", "q"], ["a", marker], {}, group_size=2)
    with pytest.warns(RewardWarning, match="could not score 1 of 2"):
        scored = in_process(ScriptedReward(), on_error="none")(["q", "q"], ["a", marker], {}, group_size=2)
    assert nan_list(scored.total) == [1.0, None] and scored.errors == {"scripted_reward": 1}


def test_long_prompts_are_shown_by_both_ends():
    prompt = "Solve the following problem; put the answer in a box. " * 5 + "What is 12+7?"
    with pytest.raises(RewardError, match="of the batch: ") as caught:
        in_process(ScriptedReward())([prompt], ["RAISE"], {})
    excerpt = str(caught.value).split("of the batch: ")[1].split("); fix")[0]
    assert len(excerpt) <= 80 and excerpt.startswith("'Solve the") and excerpt.endswith("12+7?'")


def test_config_errors_pass_through():
    with pytest.raises(ConfigError, match="answer_column='solution'"):
        in_process(MathAnswerReward(answer_column="solution"))(["p"], ["c"], {"answer": ["1"]})


# ---------------------------------------------------------------------- the pool: size, threads
def test_pool_size_is_this_ranks_share_of_the_cores():
    assert pool_size(16, 4) == 4 and pool_size(16, 1) == 16
    assert pool_size(2, 4) == 1 and pool_size(3, 2) == 1  # at least one, never a fraction


def test_pool_follows_the_setting_or_the_ranks_on_the_node(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runner = in_process(ScriptedReward())
    assert runner.pool == cores
    monkeypatch.setenv("WORLD_SIZE", "2")  # Lightning's launcher, one node
    assert runner.pool == max(1, cores // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # torchrun: the ranks on this node, ahead of the world's
    assert runner.pool == cores
    runner.scoring = Scoring(workers=7)  # taken as given, above the cores too
    assert runner.pool == 7


MIXED = ["a", "NONE", "RAISE", "bb", "STR", "SHORT", "NAN", "ccc", "RAISE", "dddd"]


def scored_by(size, on_error="none"):
    runner = RewardRunner([ConcurrentScriptedReward(), ScriptedReward()], [1.0, 0.5],
                          Scoring(on_error=on_error, workers=size))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = runner(["p0", "p0", "p1", "p1", "p2"] * 2, MIXED, {}, group_size=2)
    return scored, [str(w.message) for w in caught]


@pytest.mark.parametrize("size", [2, 3, 16])
def test_threads_give_what_one_at_a_time_gives(size):
    """Values, None, raises, non-numbers, a missing value, in order; errors and warnings alike."""
    serial, serial_warnings = scored_by(1)
    pooled, pooled_warnings = scored_by(size)
    assert nan_list(serial.per_reward["concurrent_scripted_reward"]) == [
        1.0, None, None, 2.0, None, None, None, 3.0, None, 4.0]
    assert serial.errors["concurrent_scripted_reward"] == 5
    assert nan_list(pooled.total) == nan_list(serial.total)
    assert {k: nan_list(v) for k, v in pooled.per_reward.items()} == {k: nan_list(v) for k, v in serial.per_reward.items()}
    assert pooled.errors == serial.errors and pooled.timeouts == serial.timeouts
    assert pooled_warnings == serial_warnings and any("first: it raised ValueError: boom on completion 2" in w
                                                      for w in pooled_warnings)


@pytest.mark.parametrize("size", [1, 3])
def test_threads_fail_on_the_first_bad_completion_in_order(size):
    with pytest.raises(RewardError, match=r"reward 'concurrent_scripted_reward' raised ValueError: boom on"
                                          r" completion 2 \(prompt 1 of the batch: 'p1'\)"):
        scored_by(size, on_error="fail")


class MeetOnThreads(Reward):
    """Each call waits at a barrier for the other: scored one after the other, it would break it."""

    concurrent = True

    def __init__(self, parties):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=30)
        self.threads = set()

    def __call__(self, prompts, completions, **columns):
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()
        return [float(len(c)) for c in completions]


class Recorder(Reward):
    """Not concurrent: records the thread and the batch size of each call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, prompts, completions, **columns):
        self.calls.append((threading.current_thread() is threading.main_thread(), len(completions)))
        return [1.0] * len(completions)


def test_a_concurrent_reward_runs_on_the_pool_and_the_others_on_the_calling_thread():
    meet, recorder = MeetOnThreads(parties=3), Recorder()
    scored = RewardRunner([meet, recorder], scoring=Scoring(workers=3))(["p"] * 3, ["a", "bb", "ccc"], {})
    assert scored.per_reward["meet_on_threads"].tolist() == [1.0, 2.0, 3.0]  # in order
    assert len(meet.threads) == 3 and all(name.startswith("stare-lit-scoring") for name in meet.threads)
    assert recorder.calls == [(True, 3)]  # one call on the whole batch, here


# ---------------------------------------------------------------------- worker process
@pytest.fixture(scope="module")
def worker_runner():
    """Math + scripted rewards in a pool of two workers, on_error none, 2 s per completion.

    Warmed up first: math-verify's first call in a fresh process loads its parsers, which can take
    longer than 2 s on a loaded machine (both workers at once, here).
    """
    runner = RewardRunner([MathAnswerReward(), ScriptedReward()], [1.0, 0.5],
                          Scoring(on_error="none", timeout=60.0, workers=2))
    runner(["p", "p"], [r"\boxed{1}", r"\boxed{2}"], {"answer": ["1", "1"]})  # one completion per worker
    runner.scoring = Scoring(on_error="none", timeout=2.0, timeout_score=0.0, workers=2)
    yield runner
    runner.close()


@pytest.mark.slow
def test_worker_totals_by_hand_match_in_process(worker_runner):
    prompts, completions = ["p"] * 3, [r"\boxed{4}", r"\boxed{5}", "NONE"]
    columns = {"answer": ["4", "4", "4"]}
    scored = worker_runner(prompts, completions, columns)
    # math [1, 0, 0 (no answer)] + 0.5 * len [9, 9, None] -> [5.5, 4.5, 0.0]
    assert scored.total.tolist() == [5.5, 4.5, 0.0]
    assert nan_list(scored.per_reward["scripted_reward"]) == [9.0, 9.0, None]
    reference = RewardRunner(worker_runner.rewards, worker_runner.weights)(prompts, completions, columns)
    assert scored.total.tolist() == reference.total.tolist()
    assert scored.errors == scored.timeouts == {"math_answer_reward": 0, "scripted_reward": 0}


@pytest.mark.slow
def test_worker_keeps_reward_state_across_calls(worker_runner):
    calls_here = worker_runner.rewards[1].calls
    first = worker_runner(["p"], ["CALLS"], {"answer": ["1"]}).per_reward["scripted_reward"].item()
    second = worker_runner(["p"], ["CALLS"], {"answer": ["1"]}).per_reward["scripted_reward"].item()
    assert second == first + 1
    assert worker_runner.rewards[1].calls == calls_here  # the parent's copy is not the one called


@pytest.mark.slow
def test_worker_errors_become_none_and_are_counted(worker_runner):
    completions = ["a", "RAISE", "STR", "SHORT", "bb"]  # in the worker, SHORT is pinned to its completion
    with pytest.warns(RewardWarning, match=r"could not score 3 of 5 completions.*raised ValueError: boom on"
                                           r" completion 1 \(prompt 0 of the batch: 'q0'\)"):
        scored = worker_runner(["q0", "q0", "q1", "q1", "q2"], completions, {"answer": ["1"] * 5}, group_size=2)
    assert nan_list(scored.per_reward["scripted_reward"]) == [1.0, None, None, None, 2.0]
    assert scored.errors == {"math_answer_reward": 0, "scripted_reward": 3}


@pytest.mark.slow
def test_worker_hang_and_crash_are_contained(worker_runner):
    completions = ["a", "HANG", "bb", "DIE", "ccc"]
    start = time.monotonic()
    with pytest.warns(RewardWarning) as caught:
        scored = worker_runner(["p"] * 5, completions, {"answer": ["1"] * 5})
    assert time.monotonic() - start < 60  # not the hour the reward sleeps
    # HANG: timeout_score 0.0; DIE: None (on_error none); the rest scored by a restarted worker
    assert nan_list(scored.per_reward["scripted_reward"]) == [1.0, 0.0, 2.0, None, 3.0]
    assert scored.timeouts == {"math_answer_reward": 0, "scripted_reward": 1}
    assert scored.errors == {"math_answer_reward": 0, "scripted_reward": 1}
    messages = " | ".join(str(w.message) for w in caught)
    assert "model.scoring.timeout=2.0 s on 1 of 5 completions" in messages
    assert "killed its worker process (exit code 3) on completion 3" in messages
    # A later call still works, in the restarted worker.
    assert worker_runner(["p"], ["dddd"], {"answer": ["1"]}).per_reward["scripted_reward"].tolist() == [4.0]


@pytest.mark.slow
def test_worker_timeout_score_none_leaves_it_unscored(worker_runner):
    worker_runner.scoring = Scoring(on_error="none", timeout=2.0, timeout_score=None, workers=2)
    try:
        with pytest.warns(RewardWarning, match="timeout_score=None"):
            scored = worker_runner(["p", "p"], ["HANG", "a"], {"answer": ["1", "1"]})
    finally:
        worker_runner.scoring = Scoring(on_error="none", timeout=2.0, timeout_score=0.0, workers=2)
    assert nan_list(scored.per_reward["scripted_reward"]) == [None, 1.0]
    assert scored.timeouts["scripted_reward"] == 1


@pytest.mark.slow
def test_runner_pickles_without_its_worker(worker_runner):
    worker_runner(["p"], ["a"], {"answer": ["1"]})  # make sure a worker is running
    copy = pickle.loads(pickle.dumps(worker_runner))
    assert copy._workers == [] and copy.names == worker_runner.names


@pytest.mark.slow
def test_worker_fail_mode_names_completion_and_prompt(worker_runner):
    """on_error fail in the workers: the busy worker it aborts is stopped and reaped, the idle one kept."""
    worker_runner.scoring = Scoring(on_error="fail", timeout=5.0, workers=2)
    try:
        worker_runner(["p", "p"], ["a", "b"], {"answer": ["1", "1"]})  # two workers running
        first, second = [worker._process.pid for worker in worker_runner._workers]
        # completion 0 raises in the first worker while the second hangs on completion 1
        with pytest.raises(RewardError, match=rf"reward 'scripted_reward' raised ValueError: boom on completion 0"
                                              rf" \(prompt 0 of the batch: 'a'\); fix the reward, or set {FIX}"):
            worker_runner(["a", "b"], ["RAISE", "HANG"], {"answer": ["1"] * 2})
    finally:
        worker_runner.scoring = Scoring(on_error="none", timeout=2.0, workers=2)
    assert reaped(second) and [worker._process.pid for worker in worker_runner._workers] == [first]
    # no result of the aborted batch is left to be read as this one's
    assert worker_runner(["p", "p"], ["abc", "d"], {"answer": ["1"] * 2}).per_reward["scripted_reward"].tolist() == [
        3.0, 1.0]


@pytest.mark.slow
def test_close_and_garbage_collection_reap_the_worker(worker_runner):
    worker_runner(["p"], ["a"], {"answer": ["1"]})
    pid = worker_runner._workers[0]._process.pid
    worker_runner._workers = []  # dropped without close: the finalizer must stop it
    gc.collect()
    assert reaped(pid)
    worker_runner(["p", "p"], ["a", "b"], {"answer": ["1", "1"]})
    pids = [worker._process.pid for worker in worker_runner._workers]
    worker_runner.close()
    assert len(pids) == 2 and all(reaped(pid) for pid in pids) and worker_runner._workers == []


@pytest.mark.slow
def test_worker_pools_of_any_size_give_the_same_scores():
    """Values, None, raises, a hang killed at the time-out, a crash: the same for 1, 2 and 3 workers."""
    completions = ["a", "NONE", "HANG", "RAISE", "bb", "DIE", "STR", "ccc"]
    results = []
    for size in (1, 2, 3):
        with RewardRunner([ScriptedReward()], scoring=Scoring(on_error="none", timeout=2.0, workers=size)) as runner:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scored = runner(["p"] * 8, completions, {})
            results.append((nan_list(scored.total), scored.errors, scored.timeouts, [str(w.message) for w in caught]))
    assert results[0][:3] == ([1.0, None, 0.0, None, 2.0, None, None, 3.0], {"scripted_reward": 3},
                              {"scripted_reward": 1})
    assert results[1] == results[0] and results[2] == results[0]


@pytest.mark.slow
def test_reward_the_worker_cannot_load_is_a_setting_error():
    with RewardRunner([UnloadableReward()], scoring=Scoring(timeout=1.0)) as runner:
        with pytest.raises(ConfigError, match=r"could not load them \(ModuleNotFoundError: .*my_training_script"):
            runner(["p"], ["a"], {})
