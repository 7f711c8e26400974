"""step_metrics: the share of training groups whose samples are all wrong, by hand."""

import pytest
import torch

from stare_lit.rewards.runner import ScoredBatch
from stare_lit.rollout.base import Rollout
from stare_lit.train.step_log import step_metrics


def test_all_wrong_groups_is_the_share_of_prompts_with_no_correct_sample():
    # P = 3 prompts × G = 2: prompt 0 has one correct sample, prompts 1 and 2 none → 2/3 of the groups
    correct = torch.tensor([[True, False], [False, False], [False, False]])  # (P, G)
    N, T = 6, 3
    rollout = Rollout(input_ids=torch.ones(N, 2 + T, dtype=torch.long), attention_mask=torch.ones(N, 2 + T),
                      completion_mask=torch.ones(N, T, dtype=torch.bool), prompt_length=2,
                      completions=["x"] * N, truncated=torch.zeros(N, dtype=torch.bool))
    total = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.0, 0.0])  # a partial credit of 0.5 is not correct
    scored = ScoredBatch(total=total, per_reward={"acc": total}, errors={}, timeouts={})
    flat = torch.tensor([False, True, True])
    metrics = step_metrics(rollout, rollout.completion_mask, scored, flat, correct, torch.zeros(N, T),
                           torch.zeros(N, T), {}, (1.0, 1.0, 1.0))
    assert metrics["train/all_wrong_groups"] == pytest.approx(2 / 3)
    assert metrics["train/frac_zero_std"] == pytest.approx(2 / 3) and metrics["train/reward"] == pytest.approx(2.5 / 6)
