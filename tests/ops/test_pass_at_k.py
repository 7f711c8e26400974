"""Unbiased pass@k (stare_lit.ops.pass_at_k) against hand-computed values."""

from math import comb

import pytest

from stare_lit.ops.metrics import pass_at_k, pass_at_k_levels


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 0.25),            # pass@1 = c/n
    (4, 1, 2, 0.5),             # 1 − C(3,2)/C(4,2) = 1 − 3/6
    (4, 2, 2, 1 - 1 / 6),       # 1 − C(2,2)/C(4,2)
    (4, 0, 4, 0.0),             # nothing correct
    (4, 1, 4, 1.0),             # every 4-subset holds the correct one
    (16, 3, 4, 1 - comb(13, 4) / comb(16, 4)),
    (5, 2, 3, 1 - 1 / 10),      # 1 − C(3,3)/C(5,3)
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_1_is_the_mean_and_not_max_over_k():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    # max over the first k samples would give 1 for [1, 0, 0, 0] at k=4 but 0 for [0, 0, 0, 1] at k=2;
    # the estimator depends only on (n, c).
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="got n=4, c=5, k=1"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="got n=4, c=1, k=5"):
        pass_at_k(4, 1, 5)


def test_levels():
    assert pass_at_k_levels(16) == [1, 2, 4, 8, 16]
    assert pass_at_k_levels(12) == [1, 2, 4, 8, 12]
    assert pass_at_k_levels(1) == [1]


def test_sample_accuracy_by_hand():
    from stare_lit.ops.metrics import sample_accuracy

    correct = [[True, False, True, True], [False, False, False, True]]
    texts = [["a", "b", "a", "c"], ["x", "y", "z", "w"]]
    out = sample_accuracy(correct, texts)
    assert out["mean@4"] == pytest.approx(4 / 8)
    assert out["pass@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert out["pass@2"] == pytest.approx((1.0 + 0.5) / 2)  # c=3: 1 − C(1,2)/C(4,2) = 1; c=1: 0.5
    assert out["pass@3"] == pytest.approx((1.0 + 0.75) / 2)  # every k: c=1: 1 − C(3,3)/C(4,3) = 3/4
    assert out["pass@4"] == pytest.approx(1.0)
    assert [k for k in out if k.startswith("pass@")] == ["pass@1", "pass@2", "pass@3", "pass@4"]
    assert out["distinct_correct"] == pytest.approx((2 + 1) / 2)  # {a, c} and {w}
    short = sample_accuracy(correct, texts, levels=[1, 4])  # evaluate's table: k = 1, 2, 4, …, n
    assert [k for k in short if k.startswith("pass@")] == ["pass@1", "pass@4"] and short["pass@4"] == out["pass@4"]
    with pytest.raises(ValueError, match="the same number of samples"):
        sample_accuracy([[True], [True, False]])


def test_never_solved_by_hand():
    from stare_lit.ops.metrics import sample_accuracy

    correct = [[False, False, False], [False, True, False], [False, False, False], [True, True, True]]
    out = sample_accuracy(correct)
    assert out["never_solved"] == pytest.approx(2 / 4)  # prompts 0 and 2 have no correct sample in 3
    assert out["never_solved"] == pytest.approx(1 - out["pass@3"])
    assert sample_accuracy([[True, False]])["never_solved"] == 0.0


def test_all_wrong_share_by_hand():
    import torch

    from stare_lit.ops.metrics import all_wrong_share

    correct = torch.tensor([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=torch.bool)  # (P=4, G=2)
    assert all_wrong_share(correct).item() == pytest.approx(0.5)
    assert all_wrong_share(torch.ones(3, 8, dtype=torch.bool)).item() == 0.0
    assert all_wrong_share(torch.zeros(3, 8, dtype=torch.bool)).item() == 1.0
