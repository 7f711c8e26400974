"""FastRollout's eager decode writes the KV cache with a slice copy (issue 19): the same values as the
``index_copy_`` it replaced, so the same tokens and the same loss at a fixed seed.

The reference below is the decode step as it was, writing the cache with ``index_copy_``.
"""

from __future__ import annotations

import pytest
import torch

from stare_lit.data.tasks.arithmetic import ArithmeticReward
from stare_lit.module import GRPOModule
from stare_lit.ops.advantages import group_advantages
from stare_lit.rollout import fast
from stare_lit.rollout.base import Sampling

G = 4
REWARDS = torch.tensor([1., 0., 0., 1., 1., 1., 0., 1., 0., 1., 0., 0., 1., 0., 0., 1.])


def index_copy_step(self, tokens, positions, index, upto):
    """_Decoder._step before issue 19: the cache written with index_copy_ (the reference)."""
    b = tokens.shape[0]
    mask = self.valid[:b, None, None, :upto]
    x = self.embed(tokens)
    cos, sin = self.rotary(x, positions)
    for i, layer in enumerate(self.layers):
        q, k, v = self._qkv(layer, x, cos, sin)
        kc, vc = self.k[i][:b], self.v[i][:b]
        kc.index_copy_(2, index, k)
        vc.index_copy_(2, index, v)
        x = self._finish(layer, x, q, kc[:, :, :upto], vc[:, :, :upto], mask)
    return self.head(self.norm(x[:, -1])).float()


def learn_once(policy):
    torch.manual_seed(0)
    module = GRPOModule(policy=policy, rewards=[ArithmeticReward()], group_size=G,
                        sampling=Sampling(max_new_tokens=12, temperature=1.0),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))
    module.configure_model()
    with torch.no_grad():  # large weights (std ~0.3): tokens depend on the attention, so a wrong cache shows
        for p in module.model.parameters():
            if p.dim() > 1:
                p.mul_(15)
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    rollout = module.experience.sample(module.model, ["1+2=", "31+4=", "5+1=", "2+22="], G, seed=3)  # seeded stream
    _, stats = module.learn(rollout, group_advantages(REWARDS, G))
    return rollout.completion_ids, stats["loss"]


@pytest.mark.slow
def test_slice_copy_gives_the_index_copy_tokens_and_loss(tiny_policy, monkeypatch):
    ids, loss = learn_once(tiny_policy)
    monkeypatch.setattr(fast._Decoder, "_step", index_copy_step)
    ref_ids, ref_loss = learn_once(tiny_policy)
    assert torch.equal(ids, ref_ids)
    assert ids.shape[1] > 2 and len({tuple(r) for r in ids.tolist()}) > 1  # a real, varied rollout
    assert loss == ref_loss
