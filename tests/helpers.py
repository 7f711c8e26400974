"""Small plug-ins the tests pick by class_path, as a user would pick their own."""

from lightning.pytorch import LightningDataModule

from stare_lit.rewards.base import Reward


class RaisingReward(Reward):
    """A reward function with a bug: it always raises."""

    def __call__(self, prompts, completions, **columns):
        raise RuntimeError("bug in user reward")


class ScriptedReward(Reward):
    """Scores a completion by its length, unless its text asks for a failure (for RewardRunner tests).

    Markers in a completion: ``RAISE`` raises, ``HANG`` sleeps for an hour (a hung verifier), ``DIE``
    exits the process (a crash in C code), ``STR`` returns the string "1.0", ``NAN`` returns NaN,
    ``SHORT`` is left out of the returned list (a wrong length), ``NONE`` returns None, and
    ``CALLS`` returns how many times this instance has been called (state kept across calls).
    Defined here, not in a test file, so that a spawned worker process can import it.
    """

    def __init__(self, name=None):
        super().__init__(name)
        self.calls = 0

    def __call__(self, prompts, completions, **columns):
        self.calls += 1
        values = []
        for completion in completions:
            if "RAISE" in completion:
                raise ValueError("boom")
            if "HANG" in completion:
                import time

                time.sleep(3600)
            if "DIE" in completion:
                import os

                os._exit(3)
            if "SHORT" in completion:
                continue
            values.append(self._value(completion))
        return values

    def _value(self, completion):
        if "STR" in completion:
            return "1.0"
        if "NAN" in completion:
            return float("nan")
        if "NONE" in completion:
            return None
        if "CALLS" in completion:
            return float(self.calls)
        return float(len(completion))


class ConcurrentScriptedReward(ScriptedReward):
    """ScriptedReward declared ``concurrent``: the runner scores it one completion at a time on threads."""

    concurrent = True


class BatchOnlyFailure(Reward):
    """Raises on any batch of more than one completion, never on one alone."""

    def __call__(self, prompts, completions, **columns):
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        return [1.0]


class UnloadableReward(Reward):
    """Pickles in the parent but cannot be unpickled: as a reward defined in the script being run."""

    def __reduce__(self):
        return (_refuse_to_load, ())

    def __call__(self, prompts, completions, **columns):
        return [0.0] * len(completions)


def _refuse_to_load():
    raise ModuleNotFoundError("No module named 'my_training_script'")


class FirstCorrect(Reward):
    """Marks the first ``c`` of every prompt's ``n`` samples correct, ``c`` read from the row's column.

    Rows reach a reward prompt-major (sample i of prompt g is row g*n + i), so the correctness of
    every sample is known in advance: evaluation tests compare pass@k against hand-computed values.
    """

    def __init__(self, n: int, name=None):
        super().__init__(name)
        self.n = n

    def __call__(self, prompts, completions, **columns):
        return [1.0 if i % self.n < c else 0.0 for i, c in enumerate(columns["c"])]



class RowsDataModule(LightningDataModule):
    """A DataModule (picked by class_path) whose validation split is ``rows``, in order.

    Args:
        rows: prompt rows, each a dict with a "prompt" and any other columns.
        batch_size: prompts per validation batch.
    """

    def __init__(self, rows: list[dict], batch_size: int = 2):
        super().__init__()
        self.rows, self.batch_size = rows, batch_size

    def val_dataloader(self):
        from stare_lit.data.datamodule import val_loader

        return val_loader(self.rows, self.batch_size)


class DigitShare(Reward):
    """A graded reward a random tiny model earns (the share of '1's it writes), so every step learns."""

    def __call__(self, prompts, completions, **columns):
        return [text.count("1") / max(len(text), 1) for text in completions]



from stare_lit.schemes.base import GRPO  # noqa: E402 - torch only, no Lightning


class RaisingScheme(GRPO):
    """A token-weighting scheme with a bug: its weights raise."""

    def weights(self, tokens):
        raise ZeroDivisionError("bug in user scheme")


class MixedReward(Reward):
    """1 when the completion's character codes sum to an odd number, else 0; 0 for every completion of a
    prompt that holds a '9'.

    A random tiny policy writes an odd sum about half the time, so most groups are mixed and their
    advantages are not 0 (end-to-end tests then compare live gradients); a prompt with a '9' gives a
    flat group by construction (what dynamic sampling and row skipping act on).
    """

    def __call__(self, prompts, completions, **columns):
        return [0.0 if "9" in p else float(sum(map(ord, c)) % 2) for p, c in zip(prompts, completions)]
