"""STARE token weights and controller against hand-worked selections (methods.md, STARE §1-6)."""

import math

import pytest
import torch

from stare_lit.errors import ConfigError
from stare_lit.schemes.base import GRPO, TokenBatch
from stare_lit.schemes.stare import STARE, stare_selection, stare_token_weights


def _case():
    """2 rows × 5 tokens; row 0 has Â = +1, row 1 has Â = -1; the last token of each row is masked.

    surprisal s = -logprobs:
      row 0 (T+): [0.1, 2.0, 0.5, 1.5 | 9.0 masked]
      row 1 (T−): [3.0, 0.2, 5.0, 0.05 | 8.0 masked]
    |T+| = |T−| = 4; with P = 0.3: k = int(0.3 · 4 + 0.999999) = int(2.199999) = 2 = ceil(1.2)
      L+ = row 0 tokens {1 (s=2.0), 3 (s=1.5)} — the masked s=9.0 is not a candidate, and the
           higher-surprisal T− tokens of row 1 never enter L+
      L− = row 1 tokens {2 (s=5.0), 0 (s=3.0)}
    """
    logprobs = -torch.tensor([[0.1, 2.0, 0.5, 1.5, 9.0], [3.0, 0.2, 5.0, 0.05, 8.0]])
    adv = torch.tensor([[1.0] * 5, [-1.0] * 5])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    return logprobs, adv, mask


def test_o1_by_hand():
    logprobs, adv, mask = _case()
    w = stare_token_weights(logprobs, adv, mask, top_ratio=0.3, w=1.1, m=0.9, variant="O1")
    expected = torch.tensor([[1.0, 1.1, 1.0, 1.1, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(w, expected)
    assert w.dtype == torch.float32


def test_c2_selects_in_t_minus_too():
    logprobs, adv, mask = _case()
    w = stare_token_weights(logprobs, adv, mask, top_ratio=0.3, w=1.1, m=0.9, variant="C2")
    expected = torch.tensor([[1.0, 1.1, 1.0, 1.1, 1.0], [0.9, 1.0, 0.9, 1.0, 1.0]])
    assert torch.equal(w, expected)
    l_pos, l_neg, t_pos, t_neg = stare_selection(logprobs, adv, mask, 0.3, negative=True)
    assert l_pos.tolist() == [[False, True, False, True, False], [False] * 5]
    assert l_neg.tolist() == [[False] * 5, [True, False, True, False, False]]
    assert t_pos.tolist() == [[True, True, True, True, False], [False] * 5]
    assert t_neg.tolist() == [[False] * 5, [True, True, True, True, False]]


def test_selection_spans_rows_of_the_micro_batch():
    # T+ pooled over both rows: s = [0.5, 4.0, 1.0] and [3.0, 0.1, 2.0], |T+| = 6
    # P = 0.5: k = int(3 + 0.999999) = 3 -> s = 4.0 (row 0), 3.0 and 2.0 (row 1)
    logprobs = -torch.tensor([[0.5, 4.0, 1.0], [3.0, 0.1, 2.0]])
    adv = torch.tensor([[0.7] * 3, [0.2] * 3])
    w = stare_token_weights(logprobs, adv, torch.ones(2, 3), top_ratio=0.5, w=2.0)
    assert w.tolist() == [[1.0, 2.0, 1.0], [2.0, 1.0, 2.0]]


def test_k_rounding_matches_official_code():
    # k = int(P·n + 0.999999): a float product just above an integer does not round up
    # P = 0.07, n = 100: 0.07 · 100 = 7.000000000000001 -> int(7.999999000000001) = 7 (math.ceil would give 8)
    assert 0.07 * 100 > 7 and math.ceil(0.07 * 100) == 8
    s100 = -torch.arange(1.0, 101.0).view(1, 100)  # s = 1..100
    w = stare_token_weights(s100, torch.ones(1, 100), torch.ones(1, 100), top_ratio=0.07, w=2.0)
    assert w.tolist() == [[1.0] * 93 + [2.0] * 7]  # s = 94..100
    logprobs = -torch.arange(1.0, 11.0).view(1, 10)  # s = 1..10
    # P = 0.3, n = 10: 3.0 -> k = int(3.999999) = 3 (an exact product is not bumped up)
    w = stare_token_weights(logprobs, torch.ones(1, 10), torch.ones(1, 10), top_ratio=0.3, w=2.0)
    assert w.tolist() == [[1.0] * 7 + [2.0] * 3]  # s = 8, 9, 10
    # tiny P still picks at least one token: k = max(1, int(0.01·10 + 0.999999)) = 1
    w = stare_token_weights(logprobs, torch.ones(1, 10), torch.ones(1, 10), top_ratio=0.01, w=2.0)
    assert w.tolist() == [[1.0] * 9 + [2.0]]
    # P = 0.25, n = 10: 2.5 -> k = int(3.499999) = 3 = ceil(2.5)
    w = stare_token_weights(logprobs, torch.ones(1, 10), torch.ones(1, 10), top_ratio=0.25, w=2.0)
    assert w.tolist() == [[1.0] * 7 + [2.0] * 3]


def test_zero_advantage_tokens_never_reweighted():
    # row 1 has Â = 0 and the highest surprisal; P = 1, C2: every T+ and T− token is reweighted, row 1 is not
    logprobs = -torch.tensor([[0.1, 0.2], [50.0, 60.0], [0.3, 0.4]])
    adv = torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    w = stare_token_weights(logprobs, adv, torch.ones(3, 2), top_ratio=1.0, w=1.1, m=0.9, variant="C2")
    torch.testing.assert_close(w, torch.tensor([[1.1, 1.1], [1.0, 1.0], [0.9, 0.9]]))


def test_gate_off_gives_all_ones():
    logprobs, adv, mask = _case()
    w = stare_token_weights(logprobs, adv, mask, top_ratio=0.3, variant="C2", gate_on=False)
    assert torch.equal(w, torch.ones(2, 5))


def test_top_ratio_zero_and_one():
    logprobs, adv, mask = _case()
    w = stare_token_weights(logprobs, adv, mask, top_ratio=0.0, variant="C2")
    assert torch.equal(w, torch.ones(2, 5))
    # P = 1: every T+ token (masked one excluded) gets W; O1 leaves T− alone
    w = stare_token_weights(logprobs, adv, mask, top_ratio=1.0, w=1.1)
    assert torch.equal(w, torch.tensor([[1.1, 1.1, 1.1, 1.1, 1.0], [1.0] * 5]))


def test_empty_candidate_sets_and_detached_output():
    logprobs = torch.zeros(2, 3, requires_grad=True)
    w = stare_token_weights(logprobs, torch.zeros(2, 3), torch.ones(2, 3), top_ratio=0.5, variant="C2")
    assert torch.equal(w, torch.ones(2, 3)) and not w.requires_grad
    w = stare_token_weights(-torch.rand(2, 3).requires_grad_(True), torch.ones(2, 3), torch.ones(2, 3))
    assert not w.requires_grad


def _tokens(logprobs, adv, mask):
    return TokenBatch(logprobs=logprobs, old_logprobs=logprobs.detach(), advantages=adv, mask=mask.bool())


def test_stare_scheme_weights_and_metrics_by_hand():
    logprobs, adv, mask = _case()
    s = STARE(target_entropy=0.3, top_ratio=0.3, w=1.1, m=0.9, variant="C2")
    s.update(0.25)  # 0.25 < 0.3 -> gate on
    w = s.weights(_tokens(logprobs, adv, mask))
    assert torch.equal(w, torch.tensor([[1.0, 1.1, 1.0, 1.1, 1.0], [0.9, 1.0, 0.9, 1.0, 1.0]]))
    stats = s.metrics()
    for key in ("gate_on", "controller_entropy", "target_entropy", "top_ratio", "positive_candidate_ratio",
                "negative_candidate_ratio", "positive_reweight_ratio", "negative_reweight_ratio", "mean_weight",
                "w", "m"):
        assert key in stats, key
    # 8 valid tokens: |T+| = |T−| = 4, |L+| = |L−| = 2
    # mean ω over valid = (2·1.1 + 2·1 + 2·0.9 + 2·1) / 8 = 8 / 8 = 1.0
    assert stats["gate_on"] == 1.0
    assert stats["controller_entropy"] == pytest.approx(0.25)
    assert stats["target_entropy"] == pytest.approx(0.3)
    assert stats["top_ratio"] == pytest.approx(0.3)
    assert stats["positive_candidate_ratio"] == pytest.approx(4 / 8)
    assert stats["negative_candidate_ratio"] == pytest.approx(4 / 8)
    assert stats["positive_reweight_ratio"] == pytest.approx(2 / 8)
    assert stats["negative_reweight_ratio"] == pytest.approx(2 / 8)
    assert stats["mean_weight"] == pytest.approx(1.0)
    assert stats["w"] == pytest.approx(1.1) and stats["m"] == pytest.approx(0.9)

    o1 = STARE(top_ratio=0.3, w=1.1)
    o1.update(0.1)
    o1.weights(_tokens(logprobs, adv, mask))
    # O1: (2·1.1 + 6·1) / 8 = 8.2 / 8 = 1.025; no L−
    assert o1.metrics()["mean_weight"] == pytest.approx(1.025)
    assert o1.metrics()["negative_reweight_ratio"] == 0.0


def test_stare_gate_closed_is_plain_grpo():
    logprobs, adv, mask = _case()
    s = STARE(target_entropy=0.3, top_ratio=0.3, variant="C2")
    s.update(0.5)  # 0.5 >= 0.3 -> gate off
    assert torch.equal(s.weights(_tokens(logprobs, adv, mask)), torch.ones(2, 5))
    assert s.metrics()["gate_on"] == 0.0 and s.metrics()["mean_weight"] == 1.0
    assert GRPO().weights(_tokens(logprobs, adv, mask)) is None


def test_update_gate_opens_iff_entropy_below_target():
    s = STARE(target_entropy=0.3)
    s.update(0.29)
    assert s.gate_on and s.entropy == pytest.approx(0.29)
    s.update(0.3)  # equal to the target: not below -> off
    assert not s.gate_on
    s.update(0.31)
    assert not s.gate_on
    s.update(0.1)
    assert s.gate_on
    for bad in (float("nan"), float("inf"), float("-inf")):  # ignored: state unchanged
        s.update(bad)
        assert s.gate_on and s.entropy == pytest.approx(0.1)


def test_adaptive_w_m_move_by_alpha_and_clip():
    s = STARE(target_entropy=0.3, w=1.1, m=0.9, adaptive=True, alpha=0.01)
    s.update(0.1)  # below target: sgn(0.3 - 0.1) = +1 -> W 1.11, M 0.89
    assert (s.w, s.m) == (pytest.approx(1.11), pytest.approx(0.89))
    s.update(0.5)  # above: -1 -> back to 1.10, 0.90
    s.update(0.5)  # -> 1.09, 0.91
    assert (s.w, s.m) == (pytest.approx(1.09), pytest.approx(0.91))
    s.update(float("nan"))  # skipped
    assert (s.w, s.m) == (pytest.approx(1.09), pytest.approx(0.91))
    s.update(0.3)  # sgn(0) = 0: no move
    assert (s.w, s.m) == (pytest.approx(1.09), pytest.approx(0.91))
    # upper clip: W 1.49 + 0.05 -> min(1.54, w_max 1.5) = 1.5; M 0.52 - 0.05 -> max(0.47, m_min 0.5) = 0.5
    s = STARE(w=1.49, m=0.52, adaptive=True, alpha=0.05, w_max=1.5, m_min=0.5)
    s.update(0.0)
    assert (s.w, s.m) == (1.5, 0.5)
    # lower clip: W 1.02 - 0.05 -> max(0.97, 1) = 1; M 0.98 + 0.05 -> min(1.03, 1) = 1
    s = STARE(w=1.02, m=0.98, adaptive=True, alpha=0.05)
    s.update(1.0)
    assert (s.w, s.m) == (1.0, 1.0)
    # adaptive off: W and M never move
    s = STARE(w=1.1, m=0.9, adaptive=False, alpha=0.05)
    s.update(0.0)
    assert (s.w, s.m) == (1.1, 0.9)


def test_state_dict_round_trip():
    logprobs, adv, mask = _case()
    a = STARE(target_entropy=0.3, top_ratio=0.3, w=1.1, m=0.9, variant="C2", adaptive=True, alpha=0.02)
    for h in (0.1, 0.2, 0.25):
        a.update(h)  # W 1.16, M 0.84, gate on, entropy 0.25
    b = STARE(target_entropy=0.3, top_ratio=0.3, w=1.1, m=0.9, variant="C2", adaptive=True, alpha=0.02)
    b.update(0.9)  # different state before loading
    b.load_state_dict(a.state_dict())
    assert (b.w, b.m, b.gate_on, b.entropy) == (a.w, a.m, a.gate_on, a.entropy)
    assert (b.w, b.m) == (pytest.approx(1.16), pytest.approx(0.84))
    assert torch.equal(a.weights(_tokens(logprobs, adv, mask)), b.weights(_tokens(logprobs, adv, mask)))
    # a fresh scheme (entropy not yet seen = NaN) round-trips too
    c, d = STARE(), STARE()
    d.load_state_dict(c.state_dict())
    assert math.isnan(d.entropy) and d.gate_on


@pytest.mark.parametrize(("kwargs", "setting"), [
    (dict(top_ratio=-0.1), "top_ratio"),
    (dict(top_ratio=1.5), "top_ratio"),
    (dict(top_ratio=float("nan")), "top_ratio"),
    (dict(w=0.0), r"\.w must"),
    (dict(w=-1.0), r"\.w must"),
    (dict(m=0.0), r"\.m must"),
    (dict(m=-0.5), r"\.m must"),
    (dict(variant="C3"), "variant"),
    (dict(variant="o1"), "variant"),
    (dict(target_entropy=0.0), "target_entropy"),
    (dict(alpha=-0.01), "alpha"),
])
def test_bad_settings_raise_config_error_naming_the_setting(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        STARE(**kwargs)


def test_stare_step_scope_selects_over_the_whole_step_batch():
    """scope="step": the top-P set is ranked once over all micro-batches and sliced per micro-batch.

    Step batch: 2 rows × 3 tokens, all Â > 0, surprisal (−old logprobs) [[1, 2, 3], [4, 5, 6]].
    P = 0.34 → k = int(0.34·6 + 0.999999) = 3: tokens with surprisal 4, 5, 6 (all in row 1).
    Micro-batch scope on row 0 alone would instead pick its own top token (surprisal 3).
    """
    old = -torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    adv = torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    step = STARE(top_ratio=0.34, w=2.0, scope="step")
    step.prepare(TokenBatch(logprobs=old, old_logprobs=old, advantages=adv, mask=mask))
    row0 = TokenBatch(logprobs=old[:1], old_logprobs=old[:1], advantages=adv[:1], mask=mask[:1], rows=slice(0, 1))
    row1 = TokenBatch(logprobs=old[1:], old_logprobs=old[1:], advantages=adv[1:], mask=mask[1:], rows=slice(1, 2))
    assert step.weights(row0).tolist() == [[1.0, 1.0, 1.0]]
    assert step.weights(row1).tolist() == [[2.0, 2.0, 2.0]]
    micro = STARE(top_ratio=0.34, w=2.0)  # k = int(0.34·3 + 0.999999) = 2 within row 0
    assert micro.weights(row0).tolist() == [[1.0, 2.0, 2.0]]


# ---- end to end, on a live step (tests/live.py): the scope matters where micro-batches split the step

def _stare(scope: str) -> STARE:
    return STARE(target_entropy=100.0, top_ratio=0.3, w=2.0, m=0.5, variant="C2", scope=scope)  # gate open


def _k(n: int, top_ratio: float = 0.3) -> int:
    return 0 if n == 0 else min(max(1, int(n * top_ratio + 0.999999)), n)


def test_step_and_micro_batch_scope_agree_on_one_micro_batch(tiny_policy):
    """μ = 2 (an explicit old pass), one micro-batch: at the first update π_θ = π_old, so ranking the step by
    π_old (step) and the micro-batch by π_θ (micro_batch) pick the same sets: same ω, loss and update."""
    from stare_lit.train.update import UpdateSettings
    from tests.live import assert_live, assert_same_update, live_module, step_once

    mu2 = UpdateSettings(updates_per_batch=2)
    step = step_once(live_module(tiny_policy, scheme=_stare("step"), update=mu2))
    micro = step_once(live_module(tiny_policy, scheme=_stare("micro_batch"), update=mu2))
    grpo = step_once(live_module(tiny_policy, update=mu2))
    out = step.outputs
    assert_live(out.rewards, out.advantages, out.mask)
    mask = out.mask
    w = out.weights[mask]
    t_pos, t_neg = mask & (out.advantages > 0), mask & (out.advantages < 0)
    assert (w == 2.0).sum() == _k(int(t_pos.sum())) and (w == 0.5).sum() == _k(int(t_neg.sum())) > 0
    assert torch.equal(out.weights, micro.outputs.weights)
    assert step.stats["loss"] == pytest.approx(micro.stats["loss"], rel=1e-6)
    assert_same_update(step, micro)
    assert step.stats["loss"] != pytest.approx(grpo.stats["loss"], rel=1e-3)  # the weights changed the loss


def test_step_and_micro_batch_scope_differ_across_micro_batches(tiny_policy):
    """4 micro-batches of one group: step scope picks k = ⌈P·|T+|⌉ of the whole step, micro-batch scope
    ⌈P·|T+ of the micro-batch|⌉ in each — different sets, different losses."""
    from stare_lit.train.update import UpdateSettings
    from tests.live import assert_live, live_module, step_once

    step = step_once(live_module(tiny_policy, scheme=_stare("step"), update=UpdateSettings(micro_batch_size=4)))
    micro = step_once(live_module(tiny_policy, scheme=_stare("micro_batch"), update=UpdateSettings(micro_batch_size=4)))
    out = step.outputs
    assert_live(out.rewards, out.advantages, out.mask)
    assert torch.equal(out.rewards, micro.outputs.rewards)  # the same rollout
    t_pos = out.mask & (out.advantages > 0)
    assert int((out.weights[out.mask] == 2.0).sum()) == _k(int(t_pos.sum()))
    per_micro = sum(_k(int(t_pos[i:i + 4].sum())) for i in range(0, len(t_pos), 4))
    assert int((micro.outputs.weights[out.mask] == 2.0).sum()) == per_micro
    assert not torch.equal(out.weights, micro.outputs.weights)
    assert step.stats["grad_norm"] > 0 and step.stats["loss"] != pytest.approx(micro.stats["loss"], rel=1e-4)
