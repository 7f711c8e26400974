"""policy_loss / aggregate against hand-computed clipped surrogates (ε_low 0.2, ε_high 0.28)."""

import math

import pytest
import torch

from stare_lit.ops.loss import aggregate, policy_loss

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _random_batch(seed=0, B=4, T=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float32) * 3
    logprobs = (old + torch.randn(B, T, generator=g) * 0.4).requires_grad_(True)  # ratios spread across the clip
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous()  # one Â per completion
    lengths = torch.tensor([7, 3, 1, 5])
    mask = torch.arange(T) < lengths[:, None]
    ref = old + torch.randn(B, T, generator=g) * 0.1
    return logprobs, old, adv, mask, ref


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_unit_weights_equal_no_weights_bit_for_bit(agg, dual_clip):
    logprobs, old, adv, mask, ref = _random_batch()
    kwargs = dict(dual_clip=dual_clip, agg=agg, ref_logprobs=ref, beta=0.05)
    loss0, stats0 = policy_loss(logprobs, old, adv, mask, weights=None, **kwargs)
    (g0,) = torch.autograd.grad(loss0, logprobs)
    loss1, stats1 = policy_loss(logprobs, old, adv, mask, weights=torch.ones_like(adv), **kwargs)
    (g1,) = torch.autograd.grad(loss1, logprobs)
    assert torch.equal(loss0, loss1)
    assert torch.equal(g0, g1)
    assert stats0.keys() == stats1.keys()
    assert all(torch.equal(stats0[k], stats1[k]) for k in stats0)


def _hand_case():
    # one row, four tokens, log π_old = 0 so ρ = exp(log π_θ)
    ratio = torch.tensor([[1.1, 1.5, 0.5, 10.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    logprobs = ratio.log().requires_grad_(True)
    return logprobs, torch.zeros_like(ratio), adv, torch.ones_like(ratio, dtype=torch.bool)


def test_clipped_surrogate_by_hand():
    logprobs, old, adv, mask = _hand_case()
    # t0: ρ=1.1 inside [0.8, 1.28], Â=+1           -> ℓ = -1.1
    # t1: ρ=1.5 > 1.28, Â=+1: -min(1.5, 1.28)      -> ℓ = -1.28  (clipped)
    # t2: ρ=0.5 < 0.8,  Â=-1: -min(-0.5, -0.8)     -> ℓ = +0.8   (clipped)
    # t3: ρ=10,        Â=-1: -min(-10, -1.28) = 10; dual clip c=3: min(10, -3·(-1)) = 3
    loss, stats = policy_loss(logprobs, old, adv, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx((-1.1 - 1.28 + 0.8 + 3.0) / 4)  # 1.42 / 4 = 0.355
    # clip_frac: clipped branch strictly larger than the unclipped one at t1, t2 -> 2/4
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    assert stats["dual_clip_frac"].item() == pytest.approx(0.25)  # t3 only
    assert stats["ratio_mean"].item() == pytest.approx((1.1 + 1.5 + 0.5 + 10.0) / 4)
    # gradient: only t0 is unclipped; dℓ/dlogπ = -Â·ρ = -1.1, token-mean divides by 4 -> -0.275
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, torch.tensor([[-0.275, 0.0, 0.0, 0.0]], dtype=torch.float64))

    # without dual clip t3 keeps ℓ = 10 and its gradient -Â·ρ/4 = 10/4 = 2.5
    loss, stats = policy_loss(logprobs, old, adv, mask, dual_clip=None)
    assert loss.item() == pytest.approx((-1.1 - 1.28 + 0.8 + 10.0) / 4)  # 8.42 / 4 = 2.105
    assert "dual_clip_frac" not in stats
    (grad,) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grad, torch.tensor([[-0.275, 0.0, 0.0, 2.5]], dtype=torch.float64))


def test_clip_only_binds_in_the_direction_of_the_advantage():
    # ρ above 1+ε_high with Â<0 and below 1-ε_low with Â>0 are NOT clipped
    ratio = torch.tensor([[1.5, 0.5]], dtype=torch.float64)
    logprobs = ratio.log().requires_grad_(True)
    adv = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    loss, stats = policy_loss(logprobs, torch.zeros_like(ratio), adv, torch.ones_like(ratio), dual_clip=3.0)
    # t0: -min(-1.5, -1.28) = 1.5 (< dual bound 3);  t1: -min(1.0, 1.6) = -1.0
    assert loss.item() == pytest.approx((1.5 - 1.0) / 2)
    assert stats["clip_frac"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, logprobs)
    # dℓ/dlogπ = -Â·ρ / 2: t0 = 1.5/2 = 0.75, t1 = -2·0.5/2 = -0.5
    torch.testing.assert_close(grad, torch.tensor([[0.75, -0.5]], dtype=torch.float64))


def test_asymmetric_clip_bounds():
    # clip_low=0.1, clip_high=0.5: ρ=1.4 with Â=+1 is inside (ℓ=-1.4), ρ=0.85 with Â=-1 clipped to 0.9
    ratio = torch.tensor([[1.4, 0.85]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    loss, stats = policy_loss(ratio.log(), torch.zeros_like(ratio), adv, torch.ones_like(ratio),
                              clip_low=0.1, clip_high=0.5)
    assert loss.item() == pytest.approx((-1.4 + 0.9) / 2)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def _two_rows():
    # ρ = 1 everywhere (log π_θ = log π_old) so ℓ = -Â; padded positions carry junk that must not leak
    adv = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    lp = torch.full((2, 4), -0.5)
    return lp, lp.clone(), adv, mask


def test_aggregations_by_hand():
    lp, old, adv, mask = _two_rows()
    # ℓ row 0 = [-1, -2, -3], row 1 = [-4]
    loss, _ = policy_loss(lp, old, adv, mask, agg="token-mean")
    assert loss.item() == pytest.approx(-(1 + 2 + 3 + 4) / 4)  # -2.5
    loss, _ = policy_loss(lp, old, adv, mask, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-6 / 3 + -4 / 1) / 2)  # (-2 - 4) / 2 = -3
    loss, _ = policy_loss(lp, old, adv, mask, agg="seq-mean-token-sum-norm")
    assert loss.item() == pytest.approx((-6 / 4 + -4 / 4) / 2)  # norm = T = 4: (-1.5 - 1) / 2 = -1.25
    loss, _ = policy_loss(lp, old, adv, mask, agg="seq-mean-token-sum-norm", norm=2.0)
    assert loss.item() == pytest.approx((-6 / 2 + -4 / 2) / 2)  # (-3 - 2) / 2 = -2.5
    with pytest.raises(ValueError, match="agg"):
        aggregate(adv, mask, "sum")


def test_aggregate_empty_mask_is_zero_not_nan():
    per_token = torch.ones(2, 3)
    for agg in AGGS:
        assert aggregate(per_token, torch.zeros(2, 3), agg).item() == 0.0


def test_k3_kl_by_hand():
    # Â = 0 so the surrogate is 0; d = log π_ref - log π_θ = [ln 2, -ln 2, 0]
    # k3 = e^d - d - 1 = [2 - ln2 - 1, 0.5 + ln2 - 1, 0] = [0.30685282, 0.19314718, 0]; sum = 0.5
    lp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = lp + torch.tensor([[math.log(2), -math.log(2), 0.0]])
    adv = torch.zeros(1, 3)
    loss, stats = policy_loss(lp, lp.clone(), adv, torch.ones(1, 3), ref_logprobs=ref, beta=0.1)
    assert stats["kl"].item() == pytest.approx(0.5 / 3)
    assert loss.item() == pytest.approx(0.1 * 0.5 / 3)  # β · mean k3 = 0.01666667
    # β = 0: no KL term and no KL stat
    loss, stats = policy_loss(lp, lp.clone(), adv, torch.ones(1, 3), ref_logprobs=ref, beta=0.0)
    assert loss.item() == 0.0 and "kl" not in stats
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp.clone(), adv, torch.ones(1, 3), beta=0.1)


def test_weights_scale_pg_loss_but_not_kl():
    # ρ = 1: ℓ = -Â = [-1, 1, -2]; ω = [2, 3, 1] -> ωℓ = [-2, 3, -2], sum -1
    # k3 as above: [1 - ln2, ln2 - 0.5, 0], sum 0.5, β = 0.1, not multiplied by ω
    # token-mean: (-1 + 0.1 · 0.5) / 3 = -0.95 / 3 = -0.31666667
    lp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = lp + torch.tensor([[math.log(2), -math.log(2), 0.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    w = torch.tensor([[2.0, 3.0, 1.0]])
    loss, stats = policy_loss(lp, lp.clone(), adv, torch.ones(1, 3), weights=w, ref_logprobs=ref, beta=0.1)
    assert loss.item() == pytest.approx(-0.95 / 3)
    assert stats["kl"].item() == pytest.approx(0.5 / 3)
    # with Â = 0 any weights leave the loss at β · mean k3
    loss, _ = policy_loss(lp, lp.clone(), torch.zeros(1, 3), torch.ones(1, 3), weights=w * 7, ref_logprobs=ref,
                          beta=0.1)
    assert loss.item() == pytest.approx(0.1 * 0.5 / 3)


def test_weights_scale_gradient_and_are_detached():
    # ρ = 1, Â = 1: dℓ/dlogπ = -1 per token; with ω = [2, 0.5] and token-mean: [-2/2, -0.5/2]
    lp = torch.zeros(1, 2, requires_grad=True)
    w = torch.tensor([[2.0, 0.5]], requires_grad=True)
    loss, _ = policy_loss(lp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), weights=w)
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, -0.25]]))
    assert w.grad is None  # ω is a constant of the loss


def test_on_policy_ratio_is_one_but_gradient_flows():
    # μ = 1: log π_θ == log π_old in value; gradient of token-mean -Â·ρ is -Â/N
    lp = torch.tensor([[-0.3, -2.0, -0.7]], requires_grad=True)
    adv = torch.tensor([[0.5, 0.5, -1.5]])
    loss, stats = policy_loss(lp, lp.detach().clone(), adv, torch.ones(1, 3), dual_clip=10.0)
    assert loss.item() == pytest.approx(-(0.5 + 0.5 - 1.5) / 3)
    assert stats["clip_frac"].item() == 0.0 and stats["ratio_mean"].item() == 1.0
    loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.5 / 3, -0.5 / 3, 1.5 / 3]]))


def test_log_ratio_clamped_to_20():
    # log π_θ - log π_old = 50 is clamped to 20 before exp: ρ = e^20, finite
    lp = torch.tensor([[50.0]], dtype=torch.float64)
    loss, stats = policy_loss(lp, torch.zeros_like(lp), torch.tensor([[-1.0]], dtype=torch.float64),
                              torch.ones_like(lp))
    assert loss.item() == pytest.approx(math.exp(20))  # -min(-e^20, -1.28) = e^20, no dual clip
    assert stats["approx_kl_old"].item() == pytest.approx(-20.0)
