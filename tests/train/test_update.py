"""Rows with a zero gradient are not forwarded with grad (skip_inert_rows): same loss, same gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stare_lit.ops.advantages import group_advantages
from stare_lit.schemes.baselines import EntropyAdvantage, EntropyBonus, HighEntropyTokens, KLCov
from stare_lit.module import GRPOModule
from stare_lit.rollout.base import Sampling
from stare_lit.train.update import UpdateSettings, inert_rows, length_sorted_chunks, merge_rows, row_inputs
from stare_lit.data.tasks.arithmetic import ArithmeticReward
from stare_lit.schemes.base import GRPO, Compose
from stare_lit.schemes.stare import STARE
from stare_lit.schemes.steer import STEER
from tests.live import assert_live

G = 4
# 4 prompts × G: group 1 flat (Â = 0), row 13 unscorable, the rest mixed
REWARDS = torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 1., 0., 0., 1., float("nan"), 0., 0.])


def run(policy, skip: bool, scheme, **kwargs):
    """module.learn on a fixed rollout; returns (logged loss, per-step gradients, tokens, stats, forwards).

    Plain SGD: the parameters after a step are p − lr·g, so they compare as tightly as the gradients
    (Adam's first step, lr·g/|g|, would blow a rounding difference in a near-zero gradient up to ±lr)."""
    torch.manual_seed(0)
    module = GRPOModule(policy=policy, rewards=[ArithmeticReward()], group_size=G, scheme=scheme,
                        sampling=Sampling(max_new_tokens=8, temperature=0.9),
                        update=UpdateSettings(skip_inert_rows=skip, **kwargs.pop("update", {})),
                        optimizer=lambda params: torch.optim.SGD(params, lr=0.1), **kwargs)
    module.configure_model()
    optimizer = module.configure_optimizers()
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    grads, rows_forwarded = [], []

    def step(model, opt):
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters()})
        opt.step()
        opt.zero_grad(set_to_none=True)
        grads[-1] = {**grads[-1], **{f"after_step/{n}": p.detach().clone() for n, p in module.model.named_parameters()}}
        return 0.0

    module.updater.clip_and_step = step
    forward = module.updater.token_logprobs
    module.updater.token_logprobs = lambda model, rollout, rows: (rows_forwarded.append(rows),
                                                                  forward(model, rollout, rows))[1]
    rollout = module.experience.sample(module.model, ["1+2=", "3+4=", "5+1=", "2+2="], G, seed=7)
    keep = ~torch.isnan(REWARDS)
    rollout = replace(rollout, completion_mask=rollout.completion_mask & keep[:, None])
    tokens, stats = module.learn(rollout, group_advantages(REWARDS, G))
    return stats["loss"], grads, tokens, stats, rows_forwarded


def skipped_rows(tokens) -> torch.Tensor:
    """The flat group, the unscorable row and any row without a loss token (an empty completion)."""
    return (group_advantages(REWARDS, G) == 0) | ~tokens.mask.any(-1)


SCHEMES = {
    "grpo": GRPO, "stare": lambda: STARE(target_entropy=100.0, top_ratio=0.3, w=1.5),
    "stare-c2-step": lambda: STARE(target_entropy=100.0, top_ratio=0.3, variant="C2", scope="step"),
    "stare-above": lambda: STARE(target_entropy=100.0, top_ratio=0.3, w=1.5, selection="above_entropy"),
    "stare-above-c2-step": lambda: STARE(target_entropy=100.0, top_ratio=0.3, variant="C2", m=0.5, scope="step",
                                         selection="above_entropy"),
    "steer": lambda: STEER(mapping="linear", w_max=1.2), "80/20": lambda: HighEntropyTokens(0.5),
    "entropy-advantage": EntropyAdvantage, "compose": lambda: Compose([EntropyAdvantage(), STARE(target_entropy=100.0)]),
}
SETTINGS = {"fused": {}, "micro-batches": {"update": {"micro_batch_size": 4}},
            "mu=2": {"update": {"updates_per_batch": 2}}}


CASES = [(name, "fused") for name in SCHEMES] + [(name, setting) for name in ("stare", "stare-c2-step", "stare-above", "stare-above-c2-step", "80/20")
                                                  for setting in ("micro-batches", "mu=2")]


@pytest.mark.slow
@pytest.mark.parametrize("name,setting", CASES)
def test_skipping_leaves_loss_and_gradients_unchanged(tiny_policy, name, setting):
    kwargs = SETTINGS[setting]
    loss_all, grads_all, tokens_all, stats_all, _ = run(tiny_policy, False, SCHEMES[name](), **kwargs)
    loss, grads, tokens, stats, _ = run(tiny_policy, True, SCHEMES[name](), **kwargs)
    assert_live(REWARDS, tokens_all.advantages, tokens_all.mask, G)
    assert loss != 0 and all(sum(g[n].square().sum() for n in g if "after_step" not in n) > 1e-12 for g in grads_all)
    assert stats["rows_skipped"] == skipped_rows(tokens_all).float().mean().item() >= 5 / 16
    assert loss == loss_all
    # The first update's ratio statistics: a skipped row enters with π_old's log-probs (ρ = 1), as the
    # forwarded row does at the first update (its π_θ is π_old up to float rounding).
    for key in ("ratio_mean", "approx_kl_old", "clip_frac"):
        assert stats[key] == pytest.approx(stats_all[key], abs=1e-5), key
    assert len(grads) == len(grads_all)
    for g, g_all in zip(grads, grads_all):  # the gradients of each update, and the parameters after it
        for n in g_all:
            torch.testing.assert_close(g[n], g_all[n], rtol=1e-4, atol=1e-6, msg=n)
    # the callbacks see every row: π_old's values, the scheme's advantages, mask and weights
    torch.testing.assert_close(tokens.old_logprobs * tokens.mask, tokens_all.old_logprobs * tokens_all.mask)
    torch.testing.assert_close(tokens.entropy * tokens.mask, tokens_all.entropy * tokens_all.mask)
    assert torch.equal(tokens.mask, tokens_all.mask)
    torch.testing.assert_close(tokens.advantages, tokens_all.advantages)
    torch.testing.assert_close(tokens.weights, tokens_all.weights)
    if name.startswith("stare-above"):  # the rule selected tokens here, so the check above says something
        assert (tokens_all.weights != 1).any()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [EntropyBonus, KLCov])
def test_schemes_that_touch_zero_advantage_rows_skip_nothing(tiny_policy, scheme):
    _, _, _, stats, forwarded = run(tiny_policy, True, scheme())
    assert stats["rows_skipped"] == 0.0
    assert all(isinstance(rows, slice) for rows in forwarded)  # whole micro-batches, as before


def test_kl_to_a_reference_skips_nothing(tiny_policy):
    from stare_lit.module import LossSettings

    _, _, _, stats, _ = run(tiny_policy, True, GRPO(), loss=LossSettings(beta=0.1))
    assert stats["rows_skipped"] == 0.0


def test_skipped_rows_get_only_a_no_grad_forward(tiny_policy):
    """μ = 1, fused: one no-grad forward of the skipped rows, one forward with grad of the others."""
    _, _, tokens, _, forwarded = run(tiny_policy, True, GRPO())
    skipped = skipped_rows(tokens).nonzero().squeeze(-1).tolist()
    assert [sorted(r.tolist()) for r in forwarded] == [skipped, sorted(set(range(16)) - set(skipped))]


def test_every_row_skipped_still_steps_the_optimizer_as_with_a_zero_gradient(tiny_policy, monkeypatch):
    monkeypatch.setattr("tests.train.test_update.REWARDS", torch.ones(16))
    loss_all, grads_all, _, _, _ = run(tiny_policy, False, GRPO(), update={"micro_batch_size": 8})
    loss, grads, _, stats, forwarded = run(tiny_policy, True, GRPO(), update={"micro_batch_size": 8})
    assert stats["rows_skipped"] == 1.0 and loss == loss_all == 0.0
    assert all(torch.equal(grads[0][n], grads_all[0][n]) for n in grads_all[0])  # zeros, not None
    assert all(not isinstance(rows, slice) for rows in forwarded)  # only the no-grad old pass


def test_inert_rows_and_row_helpers():
    adv = torch.tensor([0.0, 1.0, -0.5, 2.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]]).bool()
    assert inert_rows(adv, mask, True).tolist() == [True, False, False, True]
    assert inert_rows(adv, mask, False).tolist() == [False] * 4
    base = torch.zeros(3, 2)
    values = torch.ones(1, 2, requires_grad=True)
    merged = merge_rows(base, torch.tensor([1]), values)
    assert merged.tolist() == [[0, 0], [1, 1], [0, 0]]
    merged.sum().backward()
    assert values.grad.tolist() == [[1, 1]]
    chunks = length_sorted_chunks(torch.tensor([5, 2, 9, 1]), 2)
    assert [c.tolist() for c in chunks] == [[3, 1], [0, 2]]


def test_row_inputs_cut_shared_padding():
    from stare_lit.rollout.base import Rollout

    # P = 3, T = 3: row 0 has a 1-token prompt and 1-token completion, row 1 a 2-token prompt and 2 tokens
    ids = torch.tensor([[0, 0, 5, 6, 0, 0], [0, 7, 8, 9, 4, 0]])
    attention = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])
    rollout = Rollout(input_ids=ids, attention_mask=attention, completion_mask=attention[:, 3:].bool(),
                      prompt_length=3, completions=["", ""], truncated=torch.zeros(2, dtype=torch.bool))
    inputs, completion = row_inputs(rollout, slice(None))
    assert inputs["input_ids"].tolist() == [[0, 5, 6, 0], [7, 8, 9, 4]]
    assert inputs["position_ids"].tolist() == [[0, 0, 1, 1], [0, 1, 2, 3]]
    assert completion.tolist() == [[6, 0], [9, 4]]
    inputs, completion = row_inputs(rollout, torch.tensor([0]))
    assert inputs["input_ids"].tolist() == [[5, 6]] and completion.tolist() == [[6]]


def test_trained_tokens_count_only_the_rows_forwarded_with_grad(tiny_policy):
    """train/trained_tokens_per_s (and MFU) count the tokens that were trained on, not the skipped rows'."""
    _, _, tokens, on, _ = run(tiny_policy, True, GRPO())
    _, _, _, off, _ = run(tiny_policy, False, GRPO())
    skipped = skipped_rows(tokens)
    assert 0 < skipped.sum() < len(skipped)
    assert 0 < on["trained_tokens"] < off["trained_tokens"]
    # the skipped rows' completion tokens alone account for at least part of the difference
    assert off["trained_tokens"] - on["trained_tokens"] >= tokens.mask[skipped].sum().item()


def test_merge_rows_takes_the_base_dtype_and_keeps_the_gradient():
    """bf16-true: the forwarded rows come back in bf16 while π_old's values are float32."""
    from stare_lit.train.update import merge_rows

    base = torch.zeros(3, 2)
    values = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16, requires_grad=True)
    merged = merge_rows(base, torch.tensor([1]), values)
    assert merged.dtype == torch.float32 and merged[1].tolist() == [1.5, -2.0] and merged[0].tolist() == [0.0, 0.0]
    merged.sum().backward()
    assert values.grad.tolist() == [[1.0, 1.0]]
