"""STEER, ERPO and the baselines (80/20, Clip-Cov, KL-Cov, entropy advantage, entropy bonus, Compose)
against hand-worked values (methods.md: STEER, ERPO, "Baselines a user compares against").

Every expected number is worked out in the comment next to it; nothing is recomputed with the code
under test.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from stare_lit.schemes.baselines import (
    ClipCov,
    EntropyAdvantage,
    EntropyBonus,
    HighEntropyTokens,
    KLCov,
    token_covariance,
)
from stare_lit.schemes.erpo import (
    ERPO,
    erpo_bucket_normalise,
    erpo_entropy_gate,
    erpo_token_advantages,
    relative_buckets,
)
from stare_lit.errors import ConfigError
from stare_lit.ops.loss import policy_loss
from stare_lit.schemes.base import GRPO, Compose, TokenBatch, TokenWeighting
from stare_lit.schemes.stare import STARE
from stare_lit.schemes.steer import STEER, steer_omega, steer_token_weights

LN2 = math.log(2.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def batch(logprobs, advantages, mask, old_logprobs=None, **kw) -> TokenBatch:
    logprobs = torch.as_tensor(logprobs, dtype=torch.float32)
    old = logprobs.detach() if old_logprobs is None else torch.as_tensor(old_logprobs, dtype=torch.float32)
    return TokenBatch(logprobs=logprobs, old_logprobs=old, advantages=torch.as_tensor(advantages, dtype=torch.float32),
                      mask=torch.as_tensor(mask).bool(), **kw)


# --------------------------------------------------------------------------------------------- STEER

def steer_case(adv, d, mask=None):
    """x = π_θ = 0.5 and π_old = 0.5 everywhere; H = ln 2 + d, so
    Ω = (Â/0.5)·0.5·0.5·(ln 0.5 + ln 2 + d) = 0.5·Â·d."""
    adv = torch.tensor(adv, dtype=torch.float32)
    lp = torch.full_like(adv, math.log(0.5))
    h = LN2 + torch.tensor(d, dtype=torch.float32)
    mask = torch.ones_like(adv, dtype=torch.bool) if mask is None else torch.tensor(mask).bool()
    return lp, lp.clone(), h, adv, mask


# row 0: Â = +1, d = [0, 0.1, 0.4]    -> Ω = [0, 0.05, 0.2]
# row 1: Â = −1, d = [0.2, −0.2, 0.1] -> Ω = [−0.1, 0.1, −0.05] -> |Ω| = [0.1, 0.1, 0.05]
# min|Ω| = 0, max|Ω| = 0.2
BASE = ([[1.0] * 3, [-1.0] * 3], [[0.0, 0.1, 0.4], [0.2, -0.2, 0.1]])


def test_steer_omega_by_hand():
    omega = steer_omega(*steer_case(*BASE)[:4])
    assert_close(omega, torch.tensor([[0.0, 0.05, 0.2], [-0.1, 0.1, -0.05]]), atol=1e-6, rtol=0)


def test_steer_omega_divides_by_pi_old_and_clamps():
    # π_old = 0.25, x = 0.5, H = ln2 + 0.2: Ω = (1/0.25)·0.25·0.2 = 0.2 (twice the π_old = 0.5 value)
    lp = torch.tensor([[math.log(0.5)]])
    assert_close(steer_omega(lp, torch.tensor([[math.log(0.25)]]), torch.tensor([[LN2 + 0.2]]), torch.ones(1, 1)),
                 torch.tensor([[0.2]]), atol=1e-6, rtol=0)
    # log π_θ = log π_old = −inf: x and π_old clamp to 1e-8, H = 0.5
    # Ω = (1/1e-8)·1e-8·(1 − 1e-8)·(ln 1e-8 + 0.5) = −18.420681 + 0.5 = −17.920681
    ninf = torch.tensor([[-math.inf]])
    assert_close(steer_omega(ninf, ninf, torch.tensor([[0.5]]), torch.ones(1, 1)),
                 torch.tensor([[-17.920681]]), rtol=1e-5, atol=0)


def test_steer_linear_by_hand():
    # [w_min, w_max] = [0.8, 1.2]: ω = 1.2 − (|Ω| − 0)·0.4/0.2 = 1.2 − 2|Ω|
    # row 0: |Ω| = [0, 0.05, 0.2] -> [1.2, 1.1, 0.8];  row 1: |Ω| = [0.1, 0.1, 0.05] -> [1.0, 1.0, 1.1]
    w = steer_token_weights(*steer_case(*BASE), mapping="linear", w_min=0.8, w_max=1.2)
    assert_close(w, torch.tensor([[1.2, 1.1, 0.8], [1.0, 1.0, 1.1]]), atol=1e-5, rtol=0)
    assert w.dtype == torch.float32


def test_steer_exp_by_hand():
    # λ_min = 0.8, max|Ω| = 0.2 >= 0.02: k = −ln 0.8 / 0.2, ω = exp(−k|Ω|) = 0.8^(|Ω|/0.2)
    # row 0: [0.8^0, 0.8^0.25, 0.8^1] ; row 1: [0.8^0.5, 0.8^0.5, 0.8^0.25]
    w = steer_token_weights(*steer_case(*BASE), mapping="exp", w_min=0.8)
    expected = torch.tensor([[1.0, 0.8**0.25, 0.8], [0.8**0.5, 0.8**0.5, 0.8**0.25]])
    assert_close(w, expected, atol=1e-5, rtol=0)


def test_steer_all_equal_omega():
    # Â = 1, d = 0.2 everywhere -> |Ω| = 0.1 everywhere (max = min)
    case = steer_case([[1.0] * 3] * 2, [[0.2] * 3] * 2)
    # linear: all-equal -> (w_min + w_max)/2: (0.8 + 1.2)/2 = 1.0 ; (0.8 + 1.0)/2 = 0.9
    assert_close(steer_token_weights(*case, mapping="linear", w_min=0.8, w_max=1.2), torch.full((2, 3), 1.0))
    assert_close(steer_token_weights(*case, mapping="linear", w_min=0.8, w_max=1.0), torch.full((2, 3), 0.9))
    # exp: k = −ln 0.8 / max(0.1, 0.02) -> ω = exp(ln 0.8 · 0.1/0.1) = 0.8 for every token
    assert_close(steer_token_weights(*case, mapping="exp", w_min=0.8), torch.full((2, 3), 0.8), atol=1e-6, rtol=0)
    # all |Ω| = 0 (Â = 0: a group whose rewards are equal): linear midpoint 1.0; exp: exp(−k·0) = 1
    zero = steer_case([[0.0] * 3] * 2, [[0.2] * 3] * 2)
    assert torch.equal(steer_token_weights(*zero, mapping="linear", w_min=0.8, w_max=1.2), torch.full((2, 3), 1.0))
    assert torch.equal(steer_token_weights(*zero, mapping="exp", w_min=0.8), torch.ones(2, 3))


def test_steer_exp_floor_002():
    # Â = 1, d = [0, 0.01, 0.02] -> |Ω| = [0, 0.005, 0.01]; max 0.01 < 0.02 -> k = −ln 0.8 / 0.02
    # ω = 0.8^(|Ω|/0.02) = [1, 0.8^0.25, 0.8^0.5]  (without the floor the last would be 0.8)
    w = steer_token_weights(*steer_case([[1.0] * 3], [[0.0, 0.01, 0.02]]), mapping="exp", w_min=0.8)
    assert_close(w, torch.tensor([[1.0, 0.8**0.25, 0.8**0.5]]), atol=1e-5, rtol=0)
    # all equal below the floor: |Ω| = 0.01 everywhere -> 0.8^(0.01/0.02) = 0.8^0.5 = 0.894427
    w = steer_token_weights(*steer_case([[1.0] * 2], [[0.02] * 2]), mapping="exp", w_min=0.8)
    assert_close(w, torch.full((1, 2), 0.8**0.5), atol=1e-5, rtol=0)


def test_steer_non_finite_omega_is_zero():
    # BASE with row 0 token 2 Â = NaN (was the max, |Ω| = 0.2) and row 1 token 0 Â = +inf (was 0.1):
    # both Ω -> 0. Valid |Ω| = [0, 0.05, 0 | 0, 0.1, 0.05]: min 0, max 0.1
    adv = [[1.0, 1.0, math.nan], [math.inf, -1.0, -1.0]]
    case = steer_case(adv, BASE[1])
    assert_close(steer_omega(*case[:4]), torch.tensor([[0.0, 0.05, 0.0], [0.0, 0.1, -0.05]]), atol=1e-6, rtol=0)
    # linear [0.8, 1.2]: ω = 1.2 − |Ω|·0.4/0.1 = 1.2 − 4|Ω| -> [1.2, 1.0, 1.2 | 1.2, 0.8, 1.0]
    w = steer_token_weights(*case, mapping="linear", w_min=0.8, w_max=1.2)
    assert_close(w, torch.tensor([[1.2, 1.0, 1.2], [1.2, 0.8, 1.0]]), atol=1e-5, rtol=0)
    # exp: max 0.1: ω = 0.8^(|Ω|/0.1) -> [1, 0.8^0.5, 1 | 1, 0.8, 0.8^0.5]
    w = steer_token_weights(*case, mapping="exp", w_min=0.8)
    assert_close(w, torch.tensor([[1.0, 0.8**0.5, 1.0], [1.0, 0.8, 0.8**0.5]]), atol=1e-5, rtol=0)
    # non-finite entropy or π_old: Ω -> 0 as well (weight of |Ω| = 0, here exp -> 1)
    lp, old, h, a, m = steer_case([[1.0, 1.0, 1.0]], [[0.4, 0.4, 0.1]])
    h[0, 0], old[0, 1] = math.inf, math.nan
    # Ω = [0 (inf), 0 (NaN), 0.05]; max 0.05 -> ω = [1, 1, 0.8^1]
    assert_close(steer_token_weights(lp, old, h, a, m, mapping="exp"), torch.tensor([[1.0, 1.0, 0.8]]),
                 atol=1e-5, rtol=0)


def test_steer_masked_tokens_do_not_move_min_max():
    # Â = 1, d = [0.1, 0.2, 0.4, 0, 100] -> |Ω| = [0.05, 0.1, 0.2, 0 (masked), 50 (masked)]
    case = steer_case([[1.0] * 5], [[0.1, 0.2, 0.4, 0.0, 100.0]], mask=[[1, 1, 1, 0, 0]])
    # linear over valid min 0.05, max 0.2: ω = 1.2 − (|Ω| − 0.05)·0.4/0.15
    #   0.05 -> 1.2 ; 0.1 -> 1.2 − 0.05·0.4/0.15 = 1.2 − 0.133333 = 1.066667 ; 0.2 -> 0.8 ; masked -> 1
    w = steer_token_weights(*case, mapping="linear", w_min=0.8, w_max=1.2)
    assert_close(w, torch.tensor([[1.2, 1.2 - 0.4 / 3, 0.8, 1.0, 1.0]]), atol=1e-5, rtol=0)
    # exp over valid max 0.2: 0.8^(|Ω|/0.2) = [0.8^0.25, 0.8^0.5, 0.8]; masked -> 1
    w = steer_token_weights(*case, mapping="exp", w_min=0.8)
    assert_close(w, torch.tensor([[0.8**0.25, 0.8**0.5, 0.8, 1.0, 1.0]]), atol=1e-5, rtol=0)


def test_steer_scheme_uses_old_entropy_and_is_detached():
    lp, old, h, adv, mask = steer_case(*BASE)
    lp.requires_grad_(True)
    tokens = TokenBatch(logprobs=lp, old_logprobs=old, advantages=adv, mask=mask,
                        entropy=torch.full_like(h, 50.0, requires_grad=True), old_entropy=h)
    w = STEER(mapping="linear", w_min=0.8, w_max=1.2).weights(tokens)
    assert_close(w, torch.tensor([[1.2, 1.1, 0.8], [1.0, 1.0, 1.1]]), atol=1e-5, rtol=0)  # as test_steer_linear_by_hand
    assert not w.requires_grad
    s = STEER(mapping="exp", w_min=0.8)
    s.weights(tokens)
    # exp weights as test_steer_exp_by_hand: min 0.8, 5 of 6 tokens < 1
    assert s.metrics()["min_weight"] == pytest.approx(0.8, abs=1e-5)
    assert s.metrics()["damped_ratio"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------------------------------------- ERPO

def test_erpo_gate_by_hand():
    # G = 2. Group 0 (rows 0, 1), valid entropies {1, 3, 3, 1} (the masked 100s are left out):
    #   μ = 2, population σ = sqrt((1+1+1+1)/4) = 1 -> z = [−1, +1 | +1, −1]
    #   γ = 5, δ = 0.5: W = σ(5z + 0.5) = σ(−4.5) or σ(5.5); masked tokens -> 0
    # Group 1 (rows 2, 3): all 7 -> σ = 0, z = 0 -> W = σ(0.5)
    h = torch.tensor([[1.0, 3.0, 100.0], [3.0, 1.0, 100.0], [7.0, 7.0, 7.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]).bool()
    lo, hi, mid = sigmoid(-4.5), sigmoid(5.5), sigmoid(0.5)  # 0.010987, 0.995930, 0.622459
    expected = torch.tensor([[lo, hi, 0.0], [hi, lo, 0.0], [mid] * 3, [mid] * 3])
    assert_close(erpo_entropy_gate(h, mask, group_size=2, gamma=5.0, delta=0.5), expected, atol=1e-6, rtol=0)


def test_relative_buckets_by_hand():
    # K = 4, bucket = ⌊4t/|o|⌋ clamped to 3:
    #   |o| = 5: t = 0..5 -> 0/5, 4/5, 8/5, 12/5, 16/5, 20/5 -> [0, 0, 1, 2, 3, 4→3]
    #   |o| = 3: 0, 4/3, 8/3, 12/3, 16/3, 20/3 -> [0, 1, 2, 4→3, 5→3, 6→3]
    #   |o| = 6: 0, 4/6, 8/6, 12/6, 16/6, 20/6 -> [0, 0, 1, 2, 2, 3]  (t/|o| = 4/6 ∈ [2/4, 3/4) -> 3rd window)
    mask = torch.tensor([[1] * 5 + [0], [1] * 3 + [0] * 3, [1] * 6]).bool()
    assert relative_buckets(mask, 4).tolist() == [[0, 0, 1, 2, 3, 3], [0, 1, 2, 3, 3, 3], [0, 0, 1, 2, 2, 3]]
    assert relative_buckets(mask, 1).tolist() == [[0] * 6] * 3


def test_erpo_bucket_normalise_pools_over_the_group():
    # G = 2, K = 2. Row 0 |o| = 4 -> buckets [0, 0, 1, 1]; row 1 |o| = 2 -> buckets [0, 1] (+2 masked)
    # bucket 0: {0, 0 (row 0), 3 (row 1)}: μ = 1, σ² = (1 + 1 + 4)/3 = 2 -> s̃ = (s − 1)/√2
    #   -> row 0: −1/√2, −1/√2 ; row 1: 2/√2 = √2
    # bucket 1: {4, 8 (row 0), 6 (row 1)}: μ = 6, σ² = (4 + 4 + 0)/3 = 8/3 -> s̃ = (s − 6)/√(8/3)
    #   -> row 0: −2/1.632993 = −1.224745, +1.224745 ; row 1: 0
    # δ = 0.25 added; masked -> 0. (Per-sequence stats would have given row 0 bucket 0 a 0, not −1/√2.)
    # Group 1 (rows 2, 3): all 2.0 -> σ = 0 -> s̃ = 0 + δ = 0.25
    s = torch.tensor([[0.0, 0.0, 4.0, 8.0], [3.0, 6.0, 100.0, 100.0], [2.0] * 4, [2.0] * 4])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1] * 4, [1] * 4]).bool()
    r2, r83 = math.sqrt(2.0), math.sqrt(8 / 3)
    expected = torch.tensor([[-1 / r2 + 0.25, -1 / r2 + 0.25, -2 / r83 + 0.25, 2 / r83 + 0.25],
                             [2 / r2 + 0.25, 0.0 + 0.25, 0.0, 0.0],
                             [0.25] * 4, [0.25] * 4])
    assert_close(erpo_bucket_normalise(s, mask, group_size=2, num_buckets=2, delta=0.25), expected, atol=1e-5, rtol=0)


def test_erpo_synthesis_by_hand():
    # Â_t = Â + η·W·sgn(Â)·s̃, η = 0.2
    #   row 0, Â = +2: 2 + 0.2·0.5·(+1)·1 = 2.1 ; 2 + 0.2·1·(+1)·(−2) = 1.6
    #   row 1, Â = −1: −1 + 0.2·0.5·(−1)·1 = −1.1 ; −1 + 0.2·1·(−1)·(−2) = −0.6  (term flips sign with Â)
    #   row 2, Â = 0: sgn 0 -> stays exactly 0
    adv = torch.tensor([[2.0, 2.0], [-1.0, -1.0], [0.0, 0.0]])
    gate = torch.tensor([[0.5, 1.0], [0.5, 1.0], [1.0, 1.0]])
    norm = torch.tensor([[1.0, -2.0], [1.0, -2.0], [3.0, 3.0]])
    out = erpo_token_advantages(adv, gate, norm, eta=0.2)
    assert_close(out, torch.tensor([[2.1, 1.6], [-1.1, -0.6], [0.0, 0.0]]))
    assert torch.equal(out[2], torch.zeros(2))


def test_erpo_scheme_end_to_end_by_hand():
    # G = 2, K = 1, β = 0.1, γ = 5, δ = 0, η = 0.2.
    # Group 0 (rows 0, 1): old entropy [1, 3] in both rows -> μ 2, σ 1, z = [−1, +1] -> W = [σ(−5), σ(5)]
    #   progress 0.1·(log π_θ − log π_ref) = 0.1·[0, 20] = [0, 2] in both rows -> μ 1, σ 1 -> s̃ = [−1, +1]
    #   row 0 Â = +1: 1 + 0.2·[σ(−5)·(−1), σ(5)·(+1)] ; row 1 Â = −1: −1 + 0.2·(−1)·[−σ(−5), σ(5)]
    # Group 1 (rows 2, 3): Â = 0 -> stays 0 whatever the entropy and progress
    lo, hi = sigmoid(-5.0), sigmoid(5.0)  # 0.0066929, 0.9933071
    lp = torch.tensor([[-1.0, -1.0]] * 2 + [[-0.5, -3.0]] * 2, requires_grad=True)
    ref = torch.tensor([[-1.0, -21.0]] * 2 + [[-1.0, -1.0]] * 2)
    tokens = TokenBatch(logprobs=lp, old_logprobs=lp.detach(),
                        advantages=torch.tensor([[1.0] * 2, [-1.0] * 2, [0.0] * 2, [0.0] * 2]),
                        mask=torch.ones(4, 2, dtype=torch.bool), entropy=torch.full((4, 2), 9.0),
                        old_entropy=torch.tensor([[1.0, 3.0]] * 2 + [[0.2, 4.0]] * 2), ref_logprobs=ref, group_size=2)
    s = ERPO(gamma=5.0, delta=0.0, beta=0.1, num_buckets=1, eta=0.2)
    out = s.advantages(tokens)
    expected = torch.tensor([[1 - 0.2 * lo, 1 + 0.2 * hi], [-1 + 0.2 * lo, -1 - 0.2 * hi], [0.0, 0.0], [0.0, 0.0]])
    assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.equal(out[2:], torch.zeros(2, 2)) and not out.requires_grad
    assert s.needs_reference and s.needs_whole_groups
    with pytest.raises(ConfigError, match="ERPO needs log π_ref"):
        s.advantages(TokenBatch(logprobs=lp, old_logprobs=lp.detach(), advantages=tokens.advantages,
                                mask=tokens.mask, old_entropy=tokens.old_entropy, group_size=2))


# ----------------------------------------------------------------------------------- Clip-Cov, KL-Cov

def cov_case(old_logprobs=None):
    """2 rows × 6 tokens, the last masked; row 0 Â = +1, row 1 Â = −1 -> mean Â = 0.
    log π row 0 [−1, −2, −3, −4, −5 | −1.5], row 1 [−7.5, −5.5, −9, −3, 0 | −1.5]
    mean log π over the 10 valid = (−15 − 25)/10 = −4
    Cov = (log π + 4)·Â: row 0 [3, 2, 1, 0, −1], row 1 [3.5, 1.5, 5, −1, −4]
    """
    lp = [[-1.0, -2.0, -3.0, -4.0, -5.0, -1.5], [-7.5, -5.5, -9.0, -3.0, 0.0, -1.5]]
    return batch(lp, [[1.0] * 6, [-1.0] * 6], [[1] * 5 + [0]] * 2, old_logprobs=old_logprobs)


COV = [[3.0, 2.0, 1.0, 0.0, -1.0], [3.5, 1.5, 5.0, -1.0, -4.0]]
# candidates of (1, 5), strict: row 0 t0 (3), t1 (2); row 1 t0 (3.5), t1 (1.5) = 4 tokens
# (row 0 t2 = 1 and row 1 t2 = 5 sit on the bounds and are out; the masked tokens never count)
CANDIDATES = {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_token_covariance_by_hand():
    t = cov_case()
    cov = token_covariance(t.logprobs, t.advantages, t.mask)
    assert_close(cov[:, :5], torch.tensor(COV))


def zeroed(w: torch.Tensor) -> set:
    return {tuple(i) for i in (w == 0).nonzero().tolist()}


def test_clip_cov_count_and_candidates():
    # N = 10 valid tokens. ratio 0.25: int(2.5) = 2 tokens zeroed, drawn among the 4 candidates
    for seed in range(20):
        s = ClipCov(ratio=0.25, cov_low=1.0, cov_high=5.0, seed=seed)
        w = s.weights(cov_case())
        picked = zeroed(w)
        assert len(picked) == 2 and picked <= CANDIDATES
        assert set(w.unique().tolist()) == {0.0, 1.0} and w.dtype == torch.float32
        assert s.metrics() == {"clipped_ratio": 0.2, "candidate_ratio": 0.4}  # 2/10, 4/10
    # ratio 0.5: int(5) = 5, limited to the 4 candidates -> all of them
    assert zeroed(ClipCov(ratio=0.5).weights(cov_case())) == CANDIDATES
    # ratio 0.05: int(0.5) = 0 -> nothing zeroed
    assert torch.equal(ClipCov(ratio=0.05).weights(cov_case()), torch.ones(2, 6))
    # bounds (0, 6) admit the 1 and 5 tokens too: 6 candidates, ratio 1 -> int(10) limited to 6
    assert zeroed(ClipCov(ratio=1.0, cov_low=0.0, cov_high=6.0).weights(cov_case())) == CANDIDATES | {(0, 2), (1, 2)}


def test_clip_cov_seeded_and_resumable():
    # the same seed picks the same tokens; a reloaded generator picks what the original picks next
    a, b = ClipCov(ratio=0.1, seed=3), ClipCov(ratio=0.1, seed=3)  # int(0.1·10) = 1 token per call
    picks_a = [zeroed(a.weights(cov_case())) for _ in range(6)]
    assert picks_a == [zeroed(b.weights(cov_case())) for _ in range(6)]
    # over 6 draws of 1 in 4 with a fixed seed the picks are not all one token (the draw advances)
    assert len({frozenset(p) for p in picks_a}) > 1
    state = a.state_dict()
    expected_next = [zeroed(a.weights(cov_case())) for _ in range(3)]
    c = ClipCov(ratio=0.1, seed=999)
    c.load_state_dict(state)
    assert [zeroed(c.weights(cov_case())) for _ in range(3)] == expected_next


def test_kl_cov_top_k_by_hand():
    # valid Cov sorted: 5 (r1 t2), 3.5 (r1 t0), 3 (r0 t0), 2, 1.5, 1, 0, −1, −1, −4
    # ratio 0.2: k = int(0.2·10 + 0.999999) = 2 -> {r1 t2, r1 t0}
    s = KLCov(ratio=0.2, coef=0.25)
    w = s.weights(cov_case())
    assert zeroed(w) == {(1, 2), (1, 0)}
    assert torch.equal(s.selected(cov_case()), torch.tensor([[False] * 6, [True, False, True, False, False, False]]))
    assert s.metrics()["penalised_ratio"] == pytest.approx(0.2)
    # ratio 0.25: 2.5 -> k = int(3.499999) = 3 (the project's rounding, as STARE and 80/20) -> adds r0 t0 (Cov 3)
    assert zeroed(KLCov(ratio=0.25).weights(cov_case())) == {(1, 2), (1, 0), (0, 0)}


def test_kl_cov_picks_exactly_k_on_ties():
    # row 0 Â = +1, log π [0, 0, 0, −2, −3]; row 1 Â = −1, log π all −1 -> mean log π = (−5 − 5)/10 = −1
    # Cov row 0 = (log π + 1)·1 = [1, 1, 1, −1, −2]; row 1 = −(−1 + 1) = 0. Three tokens tie at the top.
    # ratio 0.1: k = int(1 + 0.999999) = 1 -> one of the three, not all three ("top k·N tokens")
    lp = [[0.0, 0.0, 0.0, -2.0, -3.0], [-1.0] * 5]
    t = batch(lp, [[1.0] * 5, [-1.0] * 5], [[1] * 5] * 2)
    for ratio, k in ((0.1, 1), (0.2, 2)):  # 0.2: k = int(2 + 0.999999) = 2
        chosen = KLCov(ratio=ratio).selected(t)
        assert chosen.sum().item() == k and chosen[0, :3].sum().item() == k
    # all Â equal (a group with equal rewards): Cov ≡ 0 -> still k = 1 token, not all 10
    flat = batch(lp, torch.zeros(2, 5), [[1] * 5] * 2)
    assert KLCov(ratio=0.1).selected(flat).sum().item() == 1
    assert (KLCov(ratio=0.1).weights(flat) == 0).sum().item() == 1


def test_kl_cov_extra_loss_and_gradient():
    # log ρ = log π_θ − log π_old: +ln 2 at r1 t2 (ρ = 2), −ln 2 at r1 t0 (ρ = 0.5), 0 elsewhere; β = 0.25
    t0 = cov_case()
    old = t0.logprobs.clone()
    old[1, 2] -= LN2
    old[1, 0] += LN2
    lp = t0.logprobs.clone().requires_grad_(True)
    tokens = TokenBatch(logprobs=lp, old_logprobs=old, advantages=t0.advantages, mask=t0.mask)
    s = KLCov(ratio=0.2, coef=0.25)
    w = s.weights(tokens)
    extra = s.extra_loss(tokens)
    # chosen (Â = −1): −Â·ρ + β|log ρ|
    #   r1 t2: −(−1)·2 + 0.25·ln 2 = 2 + 0.173287 ; r1 t0: −(−1)·0.5 + 0.25·ln 2 = 0.5 + 0.173287 ; else 0
    expected = torch.zeros(2, 6)
    expected[1, 2], expected[1, 0] = 2 + 0.25 * LN2, 0.5 + 0.25 * LN2
    assert_close(extra.detach(), expected, atol=1e-5, rtol=0)
    assert torch.equal(w, (expected == 0).float())  # ω = 0 exactly where the penalty sits
    # d/d log π_θ: −Â·ρ + β·sgn(log ρ): r1 t2: 1·2 + 0.25 = 2.25 ; r1 t0: 1·0.5 − 0.25 = 0.25 ; else 0
    extra.sum().backward()
    grad = torch.zeros(2, 6)
    grad[1, 2], grad[1, 0] = 2.25, 0.25
    assert_close(lp.grad, grad, atol=1e-5, rtol=0)


def test_kl_cov_through_policy_loss():
    # μ = 1 (ρ ≡ 1, log ρ = 0): ℓ = −Â; KL-Cov with ratio 0.2 swaps r1 t2 and r1 t0 for −Â·1 + β·0 = 1
    # per-token after ω and extra: row 0 [−1]·5; row 1 [1 (ω 0, extra 1), 1, 1 (ω 0, extra 1), 1, 1]
    # token-mean over 10: (−5 + 5)/10 = 0 ; gradient d/d log π on every token = −Â/10 (the chosen too)
    t0 = cov_case()
    lp = t0.logprobs.clone().requires_grad_(True)
    tokens = TokenBatch(logprobs=lp, old_logprobs=t0.logprobs, advantages=t0.advantages, mask=t0.mask)
    s = KLCov(ratio=0.2, coef=1.0)
    loss, _ = policy_loss(lp, tokens.old_logprobs, tokens.advantages, tokens.mask, weights=s.weights(tokens),
                          extra=s.extra_loss(tokens))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert_close(lp.grad, torch.tensor([[-0.1] * 5 + [0.0], [0.1] * 5 + [0.0]]))


# ------------------------------------------------------------------------ 80/20, entropy adv., bonus

def entropy_case():
    """old entropy row 0 [0.1, 2.0, 0.5, 9.0 masked], row 1 [1.5, 0.3, 3.0, 0.7]; π_θ entropy is junk
    (the schemes read π_old's). Valid sorted: 3.0 (r1 t2), 2.0 (r0 t1), 1.5 (r1 t0), 0.7 (r1 t3), 0.5, 0.3, 0.1."""
    return batch(torch.zeros(2, 4), torch.ones(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]],
                 old_entropy=torch.tensor([[0.1, 2.0, 0.5, 9.0], [1.5, 0.3, 3.0, 0.7]]),
                 entropy=torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_high_entropy_tokens_by_hand():
    t = entropy_case()
    # n = 7. ρ = 0.2: k = int(1.4 + 0.999999) = 2 -> {3.0, 2.0}
    assert HighEntropyTokens(0.2).mask(t).tolist() == [[False, True, False, False], [False, False, True, False]]
    # ρ = 0.5: k = int(3.5 + 0.999999) = 4 -> {3.0, 2.0, 1.5, 0.7}
    assert HighEntropyTokens(0.5).mask(t).tolist() == [[False, True, False, False], [True, False, True, True]]
    # ρ = 1/7 -> 1.0 (float 0.1428…·7 = 1.0) -> k = int(1.999999) = 1 -> {3.0}
    assert HighEntropyTokens(1 / 7).mask(t).tolist() == [[False] * 4, [False, False, True, False]]
    # ρ = 1: every valid token; the masked 9.0 never comes back
    s = HighEntropyTokens(1.0)
    assert s.mask(t).tolist() == [[True, True, True, False], [True] * 4]
    assert s.metrics()["kept_ratio"] == 1.0


def test_entropy_advantage_by_hand():
    # α = 0.5, κ = 2: Â' = Â + min(0.5·H, |Â|/2)
    #   Â = 1,  H = 0.4: min(0.2, 0.5) = 0.2 -> 1.2     Â = 1,  H = 3: min(1.5, 0.5) = 0.5 -> 1.5
    #   Â = −1, H = 0.4: min(0.2, 0.5) = 0.2 -> −0.8    Â = −1, H = 3: min(1.5, 0.5) = 0.5 -> −0.5 (no flip)
    #   Â = 0,  H = 2: min(1.0, 0) = 0 -> 0            Â = −4, H = 0.4: min(0.2, 2) = 0.2 -> −3.8
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0, -4.0]])
    h = torch.tensor([[0.4, 3.0, 0.4, 3.0, 2.0, 0.4]], requires_grad=True)
    tokens = TokenBatch(logprobs=torch.zeros(1, 6), old_logprobs=torch.zeros(1, 6), advantages=adv,
                        mask=torch.ones(1, 6, dtype=torch.bool), entropy=h)
    out = EntropyAdvantage(alpha=0.5, kappa=2.0).advantages(tokens)
    assert_close(out, torch.tensor([[1.2, 1.5, -0.8, -0.5, 0.0, -3.8]]))
    assert out[0, 4].item() == 0.0 and not out.requires_grad  # H is detached
    # a huge entropy never flips a negative advantage: −1 + min(0.5·1e6, 1/2) = −0.5 < 0
    big = TokenBatch(logprobs=torch.zeros(1, 1), old_logprobs=torch.zeros(1, 1), advantages=torch.tensor([[-1.0]]),
                     mask=torch.ones(1, 1, dtype=torch.bool), old_entropy=torch.tensor([[1e6]]))
    assert EntropyAdvantage(alpha=0.5, kappa=2.0).advantages(big).item() == -0.5


def test_entropy_advantage_prefers_old_entropy():
    # old entropy row 0 t0 = 0.1 (π_θ's is 5.0): Â' = 1 + min(0.5·0.1, 1/2) = 1.05
    assert EntropyAdvantage(0.5, 2.0).advantages(entropy_case())[0, 0].item() == pytest.approx(1.05)


def test_entropy_bonus_extra_and_gradient():
    # coef 0.01: extra = −0.01·H = [−0.005, −0.01, −0.02]; d extra/dH = −0.01
    h = torch.tensor([[0.5, 1.0, 2.0]], requires_grad=True)
    tokens = TokenBatch(logprobs=torch.zeros(1, 3), old_logprobs=torch.zeros(1, 3), advantages=torch.zeros(1, 3),
                        mask=torch.tensor([[True, True, False]]), entropy=h)
    extra = EntropyBonus(coef=0.01).extra_loss(tokens)
    assert_close(extra.detach(), torch.tensor([[-0.005, -0.01, -0.02]]))
    # through policy_loss (Â = 0 so ℓ = 0), token-mean over 2 valid: (−0.005 − 0.01)/2 = −0.0075
    # d loss / dH = −0.01/2 = −0.005 on the valid tokens, 0 on the masked one
    loss, _ = policy_loss(tokens.logprobs, tokens.old_logprobs, tokens.advantages, tokens.mask, extra=extra)
    assert loss.item() == pytest.approx(-0.0075)
    loss.backward()
    assert_close(h.grad, torch.tensor([[-0.005, -0.005, 0.0]]))
    with pytest.raises(ConfigError, match="EntropyBonus needs the entropy"):
        EntropyBonus().extra_loss(TokenBatch(logprobs=h, old_logprobs=h, advantages=h, mask=tokens.mask))


# ------------------------------------------------------------------------------------ policy_loss extra

def test_policy_loss_adds_extra_before_aggregation():
    # ρ ≡ 1 (log π = log π_old): ℓ = −Â = [−1, 2 | −0.5, masked]; ω = [2, 1 | 1, 1] -> ωℓ = [−2, 2 | −0.5]
    # extra = [0.3, −0.6 | 0.9, 100 (masked)]: ωℓ + e = [−1.7, 1.4 | 0.4]  (e is not multiplied by ω)
    # token-mean: (−1.7 + 1.4 + 0.4)/3 = 0.1/3 ; seq-mean-token-mean: mean((−1.7 + 1.4)/2, 0.4/1) = 0.125
    lp = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, -2.0], [0.5, 7.0]])
    mask = torch.tensor([[1, 1], [1, 0]]).bool()
    weights = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    extra = torch.tensor([[0.3, -0.6], [0.9, 100.0]], requires_grad=True)
    loss, _ = policy_loss(lp, lp, adv, mask, weights=weights, extra=extra)
    assert loss.item() == pytest.approx(0.1 / 3)
    loss.backward()
    assert_close(extra.grad, torch.tensor([[1 / 3, 1 / 3], [1 / 3, 0.0]]))  # ∂/∂e = M/ΣM
    loss, _ = policy_loss(lp, lp, adv, mask, weights=weights, extra=extra.detach(), agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(0.125)
    # extra = None and extra = 0 give the same loss, bit for bit
    a, _ = policy_loss(lp, lp, adv, mask, weights=weights)
    b, _ = policy_loss(lp, lp, adv, mask, weights=weights, extra=torch.zeros(2, 2))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------- Compose

class ConstWeight(TokenWeighting):
    def __init__(self, value: float) -> None:
        self.value = value

    def weights(self, tokens):
        return torch.full_like(tokens.advantages, self.value)


class Double(TokenWeighting):
    def advantages(self, tokens):
        return 2 * tokens.advantages


def test_compose_weights_multiply_and_advantages_chain():
    t = batch(torch.zeros(1, 2), [[1.0, -1.0]], [[1, 1]], old_entropy=torch.tensor([[0.4, 0.4]]))
    # ω: 2 · (GRPO: None) · 0.25 = 0.5 ; all None -> None
    assert torch.equal(Compose([ConstWeight(2.0), GRPO(), ConstWeight(0.25)]).weights(t), torch.full((1, 2), 0.5))
    assert Compose([GRPO(), Double()]).weights(t) is None
    # EntropyAdvantage (α 0.5, κ 2) then ×2: 2·(Â + min(0.2, |Â|/2)) = [2·1.2, 2·(−0.8)] = [2.4, −1.6]
    assert_close(Compose([EntropyAdvantage(0.5, 2.0), Double()]).advantages(t), torch.tensor([[2.4, -1.6]]))
    # ×2 then EntropyAdvantage: 2Â + min(0.2, 2|Â|/2) = [2.2, −1.8]
    assert_close(Compose([Double(), EntropyAdvantage(0.5, 2.0)]).advantages(t), torch.tensor([[2.2, -1.8]]))


def test_compose_masks_chain_and_extra_losses_sum():
    t = entropy_case()
    # 80/20 at 0.5 keeps {3.0, 2.0, 1.5, 0.7} (4 tokens); a second 0.5 on those: k = int(2 + 0.999999) = 2 -> {3.0, 2.0}
    kept = Compose([HighEntropyTokens(0.5), HighEntropyTokens(0.5)]).mask(t)
    assert kept.tolist() == [[False, True, False, False], [False, False, True, False]]
    h = torch.tensor([[1.0, 2.0]], requires_grad=True)
    tb = TokenBatch(logprobs=torch.zeros(1, 2), old_logprobs=torch.zeros(1, 2), advantages=torch.zeros(1, 2),
                    mask=torch.ones(1, 2, dtype=torch.bool), entropy=h)
    # −0.1·H − 0.3·H = −0.4·H = [−0.4, −0.8]
    assert_close(Compose([EntropyBonus(0.1), GRPO(), EntropyBonus(0.3)]).extra_loss(tb).detach(),
                 torch.tensor([[-0.4, -0.8]]))
    assert Compose([GRPO()]).extra_loss(tb) is None


def test_compose_state_dict_round_trip():
    def make(seed):
        return Compose([STARE(w=1.1, adaptive=True, alpha=0.05), ClipCov(ratio=0.1, seed=seed)])

    a = make(1)
    a.update(0.1)  # below 0.3: gate on, W 1.1 + 0.05 = 1.15
    for _ in range(2):
        a.weights(cov_case())
    state = a.state_dict()
    assert set(state) == {"0", "1"} and state["0"]["w"] == pytest.approx(1.15)
    expected_next = [zeroed(a.schemes[1].weights(cov_case())) for _ in range(3)]
    b = make(12345)
    b.load_state_dict(state)
    assert b.schemes[0].w == pytest.approx(1.15) and b.schemes[0].gate_on
    assert [zeroed(b.schemes[1].weights(cov_case())) for _ in range(3)] == expected_next
    assert Compose([GRPO(), ERPO()]).needs_reference and Compose([ERPO()]).needs_whole_groups
    assert not Compose([GRPO(), STEER()]).needs_reference


# ------------------------------------------------------------------------------------------ bad settings

@pytest.mark.parametrize("make, setting", [
    (lambda: STEER(mapping="sqrt"), "mapping"),
    (lambda: STEER(w_min=0.0), "w_min"),
    (lambda: STEER(w_min=1.5, w_max=2.0), "w_min"),
    (lambda: STEER(w_min=math.nan), "w_min"),
    (lambda: STEER(w_min=0.8, w_max=0.5), "w_max"),
    (lambda: ERPO(gamma=-1.0), "gamma"),
    (lambda: ERPO(beta=0.0), "beta"),
    (lambda: ERPO(num_buckets=0), "num_buckets"),
    (lambda: ERPO(eta=-0.1), "eta"),
    (lambda: ClipCov(ratio=-0.1), "ratio"),
    (lambda: ClipCov(ratio=1.5), "ratio"),
    (lambda: ClipCov(ratio=math.nan), "ratio"),
    (lambda: ClipCov(cov_low=5.0, cov_high=1.0), "cov_low"),
    (lambda: KLCov(ratio=0.0), "ratio"),
    (lambda: KLCov(ratio=2.0), "ratio"),
    (lambda: KLCov(coef=-1.0), "coef"),
    (lambda: HighEntropyTokens(top_ratio=0.0), "top_ratio"),
    (lambda: HighEntropyTokens(top_ratio=1.5), "top_ratio"),
    (lambda: EntropyAdvantage(alpha=0.0), "alpha"),
    (lambda: EntropyAdvantage(kappa=1.0), "kappa"),
    (lambda: EntropyBonus(coef=-1e-3), "coef"),
    (lambda: Compose([]), "schemes"),
])
def test_bad_settings_raise_config_error_naming_the_setting(make, setting):
    with pytest.raises(ConfigError, match=rf"model\.scheme\.init_args.*{setting}"):
        make()
