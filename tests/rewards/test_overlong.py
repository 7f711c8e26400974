"""DAPO's soft overlong penalty against hand-worked values (methods.md, "DAPO extras"):
r = min(−(|y| − (L_max − L_c))/L_c, 0)."""

import pytest

from stare_lit.errors import ConfigError
from stare_lit.rewards.base import OverlongPenalty


def score(reward, lengths):
    return reward(["q"] * len(lengths), ["c"] * len(lengths), completion_length=lengths)


def test_three_regimes_by_hand():
    # L_max = 100, L_c = 20 -> the band starts at 100 − 20 = 80
    r = OverlongPenalty(max_length=100, cache_length=20)
    # short, |y| <= 80:        min(−(0 − 80)/20, 0) = min(4, 0) = 0 ; min(−(80 − 80)/20, 0) = 0
    # in the band, 80 < |y| <= 100: −(85 − 80)/20 = −0.25 ; −(90 − 80)/20 = −0.5 ; −(99 − 80)/20 = −0.95
    # at L_max:                −(100 − 80)/20 = −1
    out = score(r, [0, 50, 80, 85, 90, 99, 100])
    assert out == pytest.approx([0.0, 0.0, 0.0, -0.25, -0.5, -0.95, -1.0])
    assert all(isinstance(v, float) for v in out)
    # past L_max the formula keeps falling (as verl's DAPO reward; the module's lengths never exceed
    # max_new_tokens): −(120 − 80)/20 = −2
    assert score(r, [120]) == pytest.approx([-2.0])


def test_whole_length_is_the_band():
    # L_c = L_max = 10: band starts at 0 -> −|y|/10: 0 -> 0, 5 -> −0.5, 10 -> −1
    assert score(OverlongPenalty(max_length=10, cache_length=10), [0, 5, 10]) == pytest.approx([0.0, -0.5, -1.0])
    # L_c = 1: a step at L_max: 9 -> min(−(9 − 9)/1, 0) = 0, 10 -> −1
    assert score(OverlongPenalty(max_length=10, cache_length=1), [8, 9, 10]) == pytest.approx([0.0, 0.0, -1.0])


@pytest.mark.parametrize("max_length, cache_length", [(100, 0), (100, -5), (100, 101), (0, 0)])
def test_bad_settings(max_length, cache_length):
    with pytest.raises(ConfigError, match="cache_length"):
        OverlongPenalty(max_length=max_length, cache_length=cache_length)


def test_needs_the_length_column_and_a_name():
    with pytest.raises(ConfigError, match="completion_length"):
        OverlongPenalty(100, 20)(["q"], ["c"])
    with pytest.raises(ConfigError, match="name"):
        OverlongPenalty(100, 20, name="  ")
    assert OverlongPenalty(100, 20).name == "overlong_penalty"
