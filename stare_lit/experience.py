"""Making experience: prompts → a scored batch (the rollout and its rewards).

    prompts (P)  --prompt format (chat template)-->  texts
                 --rollout engine, G samples each, on the rollout's own random stream-->  Rollout (N = P·G rows)
                 --reward runner-->  rewards: total (N,), one (N,) per reward, errors, timeouts

Training, validation and ``stare-lit evaluate`` all sample and score through an :class:`Experience`, so
an evaluation scores exactly what training would, and "correct" (:func:`judge`) means the same in both.

Every rollout samples from its own stream (``stare_lit.rollout.streams``): training rollout n of rank r
from ``stream_seed(seed, TRAIN, n, r)``, validation and evaluation from streams of their own, so what
a rollout samples depends only on (seed, stream, counter) — not on what drew from the global RNG
before it. ``rollouts`` counts the training rollouts; the module checkpoints it with the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from stare_lit.data.rows import check_prompts
from stare_lit.errors import check
from stare_lit.rewards.runner import RewardRunner, ScoredBatch
from stare_lit.rollout.base import Rollout, RolloutEngine, Sampling, format_prompts
from stare_lit.rollout.fast import FastRollout
from stare_lit.rollout.streams import EVALUATION, TRAIN, VALIDATION, seeded, stream_seed


@dataclass(frozen=True)
class PromptFormat:
    """How a prompt becomes the policy's input text (``model.prompt_format`` in YAML).

    Args:
        chat_template: wrap prompts with the tokenizer's chat template.
        system_prompt: system message when chat_template is on.
    """

    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        check(self.system_prompt is None or self.chat_template,
              "model.prompt_format.system_prompt is set but model.prompt_format.chat_template is false, so it "
              "would never be used; set model.prompt_format.chat_template: true or remove the system prompt")


@dataclass(frozen=True)
class ValidationSettings:
    """What validation samples and what counts as correct (``model.validation`` in YAML).

    Args:
        samples: k, samples per held-out prompt: validation logs mean@k, unbiased pass@j for every
            j = 1 … k, and distinct correct completions per prompt.
        temperature: sampling temperature in validation (0 = greedy, needs samples 1).
        accuracy_reward: index of the reward that defines "correct" (value >= 1, :func:`judge`).
    """

    samples: int = 4
    temperature: float = 1.0
    accuracy_reward: int = 0

    def __post_init__(self) -> None:
        check(self.samples >= 1, f"model.validation.samples must be >= 1, got {self.samples}")
        number = isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
        check(number and math.isfinite(self.temperature) and self.temperature >= 0,
              f"model.validation.temperature must be >= 0 (0 = greedy), got {self.temperature}")
        check(self.temperature > 0 or self.samples == 1,
              "model.validation.temperature 0 (greedy) needs model.validation.samples 1")


def judge(scored: ScoredBatch, accuracy_reward: int) -> tuple[Tensor, Tensor]:
    """Which completions are correct: (correct, judged), (N,) bool each.

    A completion is correct when reward ``accuracy_reward`` (an index into the rewards) gave it a value
    >= 1, and judged when that reward could score it (not NaN); an unjudged completion is not correct.
    """
    values = list(scored.per_reward.values())[accuracy_reward]  # (N,), NaN = unscorable
    return values >= 1.0, ~torch.isnan(values)


class Experience:
    """Prompts → a scored batch: formats the prompts, samples G completions of each, scores them.

    Args:
        tokenizer: the policy's tokenizer.
        rewards: the reward runner (the total reward is the weighted sum of its rewards).
        sampling: how completions are sampled (default: Sampling()).
        engine: the rollout engine that samples (default: stare_lit.rollout.FastRollout).
        prompt_format: chat template and system prompt.
        seed: base seed of the rollout streams; None: ``sampling.seed``, else the run's seed
            (``torch.initial_seed()``) when it is first needed.
    """

    def __init__(self, tokenizer, rewards: RewardRunner, sampling: Sampling | None = None,
                 engine: RolloutEngine | None = None, prompt_format: PromptFormat = PromptFormat(),
                 seed: int | None = None) -> None:
        self.prompt_format = prompt_format
        check(not self.prompt_format.chat_template or getattr(tokenizer, "chat_template", None) is not None,
              "model.prompt_format.chat_template is true but the tokenizer has no chat template; set it to false")
        self.tokenizer, self.rewards = tokenizer, rewards
        self.sampling = sampling or Sampling()
        self.engine = engine if engine is not None else FastRollout()
        self._seed = seed
        self.rollouts = 0  # training rollouts so far: the counter of the training stream

    @property
    def seed(self) -> int:
        """Base seed of the rollout streams (fixed at its first use; a checkpoint restores it)."""
        if self._seed is None:
            self._seed = self.sampling.seed if self.sampling.seed is not None else torch.initial_seed()
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = value

    def training_seed(self, rank: int) -> int:
        """The stream of the next training rollout on ``rank``; counts the rollout."""
        seed = stream_seed(self.seed, TRAIN, self.rollouts, rank)
        self.rollouts += 1
        return seed

    def validation_seed(self, step: int, batch_idx: int, rank: int) -> int:
        """Validation batch ``batch_idx`` after optimizer step ``step``: the training stream is left alone."""
        return stream_seed(self.seed, VALIDATION, step, batch_idx, rank)

    def evaluation_seed(self, batch_idx: int) -> int:
        """``stare-lit evaluate``'s batch ``batch_idx``."""
        return stream_seed(self.seed, EVALUATION, batch_idx)

    def sample(self, model, prompts: list[str], group_size: int, seed: int | None = None, greedy: bool = False,
               sampling: Sampling | None = None) -> Rollout:
        """``group_size`` completions of each prompt, rows prompt-major; from the stream ``seed`` if given
        (on the model's device), else from the global RNG. ``sampling`` replaces the configured one."""
        check_prompts(prompts)
        texts = format_prompts(self.tokenizer, prompts, self.prompt_format.chat_template,
                               self.prompt_format.system_prompt)
        sampling = sampling or self.sampling
        if seed is None:
            return self.engine(model, self.tokenizer, texts, group_size, sampling, greedy=greedy)
        with seeded(seed, next(model.parameters()).device):
            return self.engine(model, self.tokenizer, texts, group_size, sampling, greedy=greedy)

    def score(self, batch: dict[str, list], rollout: Rollout, group_size: int) -> ScoredBatch:
        """Rewards of the rollout (``total`` (N,) on the rollout's device); the batch's columns are
        repeated G times to align with the completions."""
        repeat = lambda values: [v for v in values for _ in range(group_size)]  # noqa: E731
        columns = {k: repeat(v) for k, v in batch.items() if k != "prompt"}
        columns["completion_length"] = rollout.completion_mask.sum(-1).tolist()  # in tokens, EOS included
        scored = self.rewards(repeat(batch["prompt"]), rollout.completions, columns, group_size)
        return replace(scored, total=scored.total.to(rollout.input_ids.device))

    def close(self) -> None:
        """Stop the reward runner's worker process, if ``scoring.timeout`` started one."""
        self.rewards.close()
