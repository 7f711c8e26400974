"""The log-prob pass's chunk follows the vocabulary (issue 19): a chunk's logits hold at most 2**23 floats.

Why: at a fixed 1,024 positions the pass's peak was 0.31× the naive pass's at V = 151,936
(benchmarks/README.md); 55 positions there meet the ≤ 0.15× goal. Up to an 8k vocabulary (every
project config) the chunk stays 1,024, so nothing the project runs changes: checked with ``==``.
"""

from __future__ import annotations

import pytest
import torch

import stare_lit.train.update as module_code
from stare_lit.data.tasks.arithmetic import ArithmeticReward
from stare_lit.module import GRPOModule
from stare_lit.ops.advantages import group_advantages
from stare_lit.ops.logprobs import chunk_for_vocab
from stare_lit.rollout.base import Sampling
from stare_lit.train.update import UpdateSettings

G = 4
REWARDS = torch.tensor([1., 0., 0., 1., 1., 1., 0., 1., 0., 1., 0., 0., 1., 0., 0., 1.])


@pytest.mark.parametrize("vocab, positions", [(16, 1024), (8192, 1024), (8193, 1023), (32000, 262),
                                              (151936, 55), (2**24, 1)])
def test_chunk_holds_at_most_2_pow_23_logits(vocab, positions):
    assert chunk_for_vocab(vocab) == positions  # 2**23 // V by hand, capped at 1024, at least 1


def module_of(policy, **kwargs) -> GRPOModule:
    torch.manual_seed(0)
    module = GRPOModule(policy=policy, rewards=[ArithmeticReward()], group_size=G,
                        sampling=Sampling(max_new_tokens=8, temperature=0.9),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), **kwargs)
    module.configure_model()
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    return module


def learn_once(policy, **kwargs) -> tuple[float, dict]:
    module = module_of(policy, **kwargs)
    rollout = module.experience.sample(module.model, ["1+2=", "3+4=", "5+1=", "2+2="], G, seed=7)
    _, stats = module.learn(rollout, group_advantages(REWARDS, G))
    return stats["loss"], {n: p.detach().clone() for n, p in module.model.named_parameters()}


def test_default_changes_nothing_at_the_projects_vocabulary(tiny_policy):
    loss_default, weights_default = learn_once(tiny_policy)  # logprob_chunk_size=None: follows V = 16
    # the earlier default
    loss_fixed, weights_fixed = learn_once(tiny_policy, update=UpdateSettings(logprob_chunk_size=1024))
    assert loss_default == loss_fixed
    assert all(torch.equal(weights_default[n], weights_fixed[n]) for n in weights_default)


@pytest.mark.slow
def test_module_passes_the_vocabulary_chunk_unless_one_is_set(tiny_policy, monkeypatch):
    seen = []
    real = module_code.model_logprobs_and_entropy

    def spy(model, ids, temperature, chunk, **kwargs):
        seen.append(chunk)
        return real(model, ids, temperature, chunk, **kwargs)

    monkeypatch.setattr(module_code, "model_logprobs_and_entropy", spy)
    for setting, expected in [(None, 55), (7, 7)]:
        module = module_of(tiny_policy, update=UpdateSettings(logprob_chunk_size=setting))
        rollout = module.experience.sample(module.model, ["1+2="], G, seed=0)
        module.model.config.vocab_size = 151936  # the chunk is read from the config: a Qwen-size vocabulary
        module.updater.token_logprobs(module.model, rollout, slice(None))
        assert seen[-1] == expected
