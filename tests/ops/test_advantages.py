"""group_advantages against hand-computed values (rows g*G .. g*G+G-1 are one prompt's group)."""

import math

import pytest
import torch

from stare_lit.ops.advantages import equal_groups, group_advantages
from stare_lit.errors import ConfigError


def test_group_scale_g2_by_hand():
    # group 0: r = [1, 0], mean 0.5, centred [0.5, -0.5],
    #          unbiased std = sqrt((0.25 + 0.25) / (2 - 1)) = sqrt(0.5) = 0.70710678
    #          Â = ±0.5 / (0.70710678 + eps)
    # group 1: r = [2, 2], all equal -> 0
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="group", eps=1e-6)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # 0.70710578...
    torch.testing.assert_close(adv, torch.tensor([a, -a, 0.0, 0.0]))
    # eps = 0: exactly ±1/sqrt(2)
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="group", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.70710678, -0.70710678, 0.0, 0.0]))


def test_group_scale_g4_by_hand():
    # group 0: r = [1, 0, 0, 0], mean 0.25, centred [0.75, -0.25, -0.25, -0.25]
    #          var = (0.5625 + 3 * 0.0625) / 3 = 0.75 / 3 = 0.25, std = 0.5
    #          Â = [1.5, -0.5, -0.5, -0.5]
    # group 1: r = [3, 1, 2, 2], mean 2, centred [1, -1, 0, 0]
    #          var = (1 + 1) / 3 = 2/3, std = 0.81649658, Â = ±1 / 0.81649658 = ±1.22474487
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, scale="group", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 1.22474487, -1.22474487, 0.0, 0.0]))
    adv_eps = group_advantages(r, group_size=4, scale="group", eps=0.1)
    # with eps = 0.1: group 0 divides by 0.6, group 1 by 0.91649658
    torch.testing.assert_close(adv_eps, torch.tensor(
        [0.75 / 0.6, -0.25 / 0.6, -0.25 / 0.6, -0.25 / 0.6, 1 / 0.91649658, -1 / 0.91649658, 0.0, 0.0]))


def test_scale_none_is_centred_rewards():
    # Dr. GRPO: Â = r - mean_g r, no division
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0]), group_size=4, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0]))
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="none")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_scale_batch_by_hand():
    # group means, then one std of all the batch's raw rewards (unbiased, as TRL's "batch")
    # G=2: r [1, 0, 2, 2], mean 1.25, sum sq dev 0.0625 + 1.5625 + 0.5625 + 0.5625 = 2.75,
    #      var 2.75 / 3, std = 0.95742711; centred [0.5, -0.5, 0, 0] -> ±0.52223297
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale="batch", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([0.52223297, -0.52223297, 0.0, 0.0]))
    # G=4: r mean 9/8, sum sq dev 0.015625 + 3 * 1.265625 + 3.515625 + 0.015625 + 2 * 0.765625 = 8.875,
    #      var 8.875 / 7, std = 1.12599163; centred [0.75, -0.25, -0.25, -0.25, 1, -1, 0, 0]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0]), group_size=4, scale="batch",
                           eps=1e-6)
    s = 1.12599163 + 1e-6
    torch.testing.assert_close(adv, torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 1 / s, -1 / s, 0.0, 0.0]))


@pytest.mark.parametrize("scale", ["group", "none", "batch"])
def test_all_equal_group_is_exactly_zero(scale):
    # 0.1 is not representable: the fp32 mean of seven 0.1s may differ from 0.1 by rounding,
    # the result must still be exactly +0.0 (no noise, no -0.0)
    r = torch.tensor([0.1] * 7 + [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    adv = group_advantages(r, group_size=7, scale=scale)
    assert torch.equal(adv[:7], torch.zeros(7))
    assert not torch.signbit(adv[:7]).any()
    assert (adv[7:] != 0).all()
    assert equal_groups(r, 7).tolist() == [True, False]


def test_nan_rewards_left_out_of_statistics_and_get_zero():
    # group 0: r = [1, nan, 0, 0] -> valid [1, 0, 0], mean 1/3, centred [2/3, -, -1/3, -1/3]
    #          var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3, std = 0.57735027
    #          Â = [2/3 / 0.57735, 0, -1/3 / 0.57735, ...] = [1.15470054, 0, -0.57735027, -0.57735027]
    # group 1: one valid reward -> no comparison possible -> all 0
    # group 2: no valid reward -> all 0 (and no NaN)
    nan = float("nan")
    r = torch.tensor([1.0, nan, 0.0, 0.0, nan, nan, nan, 2.0, nan, nan, nan, nan])
    adv = group_advantages(r, group_size=4, scale="group", eps=0.0)
    expected = torch.tensor([1.15470054, 0.0, -0.57735027, -0.57735027] + [0.0] * 8)
    torch.testing.assert_close(adv, expected)
    assert not torch.isnan(adv).any()
    adv_none = group_advantages(r, group_size=4, scale="none")
    torch.testing.assert_close(adv_none, torch.tensor([2 / 3, 0.0, -1 / 3, -1 / 3] + [0.0] * 8))
    # batch: std of the valid raw rewards [1, 0, 0, 2]: mean 0.75, sum sq dev 2.75, var 2.75 / 3,
    #        std = 0.95742711
    adv_batch = group_advantages(r, group_size=4, scale="batch", eps=0.0)
    torch.testing.assert_close(adv_batch, torch.tensor(
        [(2 / 3) / 0.95742711, 0.0, (-1 / 3) / 0.95742711, (-1 / 3) / 0.95742711] + [0.0] * 8))


def test_returns_float32_and_ignores_input_dtype():
    adv = group_advantages(torch.tensor([1, 0, 1, 1]), group_size=2, eps=0.0)  # int rewards
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([0.70710678, -0.70710678, 0.0, 0.0]))
    adv64 = group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), group_size=2)
    assert adv64.dtype == torch.float32


@pytest.mark.parametrize("group_size", [1, 0, -2])
def test_group_size_below_two_raises(group_size):
    with pytest.raises(ConfigError, match="group_size"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), group_size=group_size)


def test_rewards_not_divisible_by_group_size_raises():
    with pytest.raises(ConfigError, match="groups of 2"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]), group_size=2)
    with pytest.raises(ConfigError, match="4 rewards do not split into groups of 3"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), group_size=3)
