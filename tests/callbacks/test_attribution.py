"""The entropy attribution: the first-order prediction against finite differences, its world reduction, the monitor.

- ``stare_lit.ops.entropy_dynamics``: on a small softmax, a gradient step on the sampled token's logit
  z_a += eta * A * w changes H by eta * A * w * pi(a) * (s - H) to first order (exactly the derivative),
  in all four quadrants; the full softmax gradient adds the position-wide baseline term of methods.md.
- ``callbacks.stats.step_stats``: token-weighted over ranks (two simulated ranks = the pooled batch),
  relative-position buckets.
- ``EntropyMonitor``: the scheme's reweighting term, histograms for loggers that take them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger

import callbacks.stats as stats_module
from callbacks import EntropyMonitor
from callbacks.stats import relative_position_buckets, step_stats
from stare_lit.ops.entropy_dynamics import (
    QUADRANTS,
    predicted_entropy_change,
    quadrant_masks,
    softmax_entropy_gradient,
)
from stare_lit.train.step_log import StepOutput
from tests.callbacks.scripted import fit, hand_outputs, scripted_outputs

# --------------------------------------------------------------------------------------------
# the first-order prediction on a small softmax


def entropy(z: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(z, -1)
    return -(log_p.exp() * log_p).sum(-1)


def token_stats(z: torch.Tensor, a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, s_a) of softmax(z), shaped (1, 1) like one token of a (B, T) batch."""
    return entropy(z).view(1, 1), -torch.log_softmax(z, -1)[a].view(1, 1)


LOGITS = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.2, -2.5], dtype=torch.float64)  # V = 6
# argmax token (pi 0.48, s < H) and a rare one (pi 0.006, s > H), with either sign of A
CASES = [  # (token, A, w, quadrant, sign of dH)
    (0, +1.0, 1.0, "pos_adv_low_surprisal", -1),
    (5, +1.0, 1.3, "pos_adv_high_surprisal", +1),
    (0, -0.7, 1.0, "neg_adv_low_surprisal", +1),
    (5, -0.7, 0.9, "neg_adv_high_surprisal", -1),
]


@pytest.mark.parametrize("token, adv, weight, quadrant, sign", CASES, ids=[c[3] for c in CASES])
def test_predicted_change_matches_finite_difference_of_a_logit_step(token, adv, weight, quadrant, sign):
    eta = 1e-5
    h, s = token_stats(LOGITS, token)
    pred = predicted_entropy_change(h, s, torch.tensor([[adv]]), torch.tensor([[weight]]))  # (1, 1), per unit eta
    stepped = LOGITS.clone()
    stepped[token] += eta * adv * weight  # a gradient step on the sampled token's logit only
    realised = (entropy(stepped) - entropy(LOGITS)).item()
    assert realised == pytest.approx(eta * pred.item(), rel=1e-3)  # first order: error O(eta)
    assert math.copysign(1, realised) == sign
    masks = quadrant_masks(h, s, torch.tensor([[adv]]), torch.ones(1, 1, dtype=torch.bool))  # (4, 1, 1)
    assert [q for q, m in zip(QUADRANTS, masks) if m.item()] == [quadrant]


def test_logit_derivative_is_exact_and_full_gradient_adds_the_baseline_term():
    z = LOGITS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(entropy(z), z)  # dH/dz_k
    exact = softmax_entropy_gradient(LOGITS)  # (V,) pi_k (s_k - H)
    torch.testing.assert_close(exact, grad.float(), rtol=1e-6, atol=1e-7)
    assert exact.sum().item() == pytest.approx(0.0, abs=1e-6)
    p = torch.softmax(LOGITS, -1)
    for a in range(len(LOGITS)):  # a pure step on z_a: the prediction with A = w = 1 is the derivative itself
        h, s = token_stats(LOGITS, a)
        pred = predicted_entropy_change(h, s, torch.ones(1, 1)).item()
        assert pred == pytest.approx(grad[a].item(), rel=1e-5, abs=1e-7)

    # The full softmax policy gradient moves every logit: z += eta * A * (e_a - pi) (= grad of log pi_a).
    # Its entropy change is the z_a term plus the position-wide baseline -eta * A * sum_k pi_k^2 (s_k - H).
    eta, adv, a = 1e-5, 1.0, 0
    baseline = -(p * grad).sum().item()  # -sum_k pi_k * pi_k (s_k - H)
    h, s = token_stats(LOGITS, a)
    pred = predicted_entropy_change(h, s, torch.tensor([[adv]])).item()
    direction = -p.clone()
    direction[a] += 1.0
    realised = (entropy(LOGITS + eta * adv * direction) - entropy(LOGITS)).item()
    assert realised == pytest.approx(eta * adv * (pred + baseline), rel=1e-3)
    assert abs(realised - eta * adv * pred) > 0.1 * abs(realised)  # the baseline term is not negligible here
    # On-policy with a constant advantage the two cancel in expectation (E_a[grad log pi_a] = 0).
    expected_pred = sum(p[b].item() * predicted_entropy_change(*token_stats(LOGITS, b), torch.ones(1, 1)).item()
                        for b in range(len(LOGITS)))
    assert expected_pred + baseline == pytest.approx(0.0, abs=1e-6)


def test_predicted_change_masks_out_padding_even_if_not_finite():
    h = torch.tensor([[1.0, float("nan")]])
    s = torch.tensor([[0.5, float("inf")]])
    out = predicted_entropy_change(h, s, torch.tensor([[1.0, 5.0]]), torch.tensor([[2.0, 2.0]]),
                                   torch.tensor([[True, False]]))
    assert out.shape == (1, 2) and out.dtype == torch.float32
    assert out[0, 0].item() == pytest.approx(2.0 * math.exp(-0.5) * (0.5 - 1.0))  # docstring example x 2
    assert out[0, 1].item() == 0.0


# --------------------------------------------------------------------------------------------
# world reduction and positions


def test_relative_position_buckets():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert relative_position_buckets(mask, 4).tolist() == [[1, 3, -1, -1], [0, 1, 2, 3], [-1, -1, -1, -1]]
    assert relative_position_buckets(mask, 1).tolist() == [[0, 0, -1, -1], [0, 0, 0, 0], [-1, -1, -1, -1]]


def random_outputs(rows: int, length: int, seed: int) -> StepOutput:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (rows, length)
    return StepOutput(
        loss=torch.tensor(0.0),
        entropy=torch.rand(rows, length, generator=g),
        surprisal=torch.rand(rows, length, generator=g) * 2,
        advantages=torch.randn(rows, 1, generator=g).round(decimals=1).expand(rows, length).clone(),
        weights=1 + 0.5 * (torch.rand(rows, length, generator=g) > 0.8).float(),
        mask=mask,
        rewards=torch.tensor([1.0, float("nan")] * (rows // 2) + [0.0] * (rows % 2)),
    )


def test_step_stats_are_token_weighted_over_ranks(monkeypatch):
    """Two ranks with very different token counts give exactly the statistics of the pooled batch."""
    rank0, rank1 = random_outputs(3, 20, seed=1), random_outputs(5, 4, seed=2)  # long vs short completions
    pad = lambda x: torch.nn.functional.pad(x, (0, 16))  # noqa: E731  rank 1 padded to T = 20
    tokens = ("entropy", "surprisal", "advantages", "weights", "mask", "rewards")
    pooled = StepOutput(loss=rank0.loss, **{k: torch.cat([getattr(rank0, k), pad(getattr(rank1, k))
                                                          if getattr(rank1, k).dim() == 2 else getattr(rank1, k)])
                                            for k in tokens})
    settings = dict(position_buckets=3, forking_entropy=0.5, rewards=True)

    local: dict[int, torch.Tensor] = {}

    def capture(rank):
        def reduce(x):
            local[rank] = x.clone()
            return x
        return reduce

    for rank, out in ((0, rank0), (1, rank1)):
        monkeypatch.setattr(stats_module, "all_reduce_sum", capture(rank))
        step_stats(out, **settings)
    monkeypatch.setattr(stats_module, "all_reduce_sum", lambda x: local[0] + local[1])  # what all_reduce gives
    world = [step_stats(out, **settings) for out in (rank0, rank1)]
    monkeypatch.undo()
    expected = step_stats(pooled, **settings)
    assert world[0] == world[1]  # every rank gets the same numbers
    assert world[0].keys() == expected.keys()
    for key, value in expected.items():
        assert world[0][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # and it is not the mean of the per-rank means
    per_rank = [step_stats(out, **settings)["entropy_mean"] for out in (rank0, rank1)]
    assert abs(sum(per_rank) / 2 - expected["entropy_mean"]) > 1e-3
    assert expected["token_count"] == rank0.mask.sum().item() + rank1.mask.sum().item()
    finite = pooled.rewards[torch.isfinite(pooled.rewards)]
    assert expected["reward_mean"] == pytest.approx(finite.mean().item())


def test_reweight_term_is_what_the_weights_add():
    out = hand_outputs()
    out.weights = torch.tensor([[1.0, 1.5, 7.0], [2.0, 1.0, 1.0]])  # padding's 7.0 must not count
    got = step_stats(out)
    # token 2 (A=+1, H=2, s=3) gets w=1.5, token 3 (A=+1, H=0.5, s=2) gets w=2: extra 0.5 e^-3 + 1 * 1.5 e^-2
    assert got["entropy_change_pred_reweight"] == pytest.approx((0.5 * math.exp(-3) + 1.5 * math.exp(-2)) / 5)
    assert got["entropy_change_pred_pos_adv_high_surprisal"] == pytest.approx(
        (1.5 * math.exp(-3) + 2 * 1.5 * math.exp(-2)) / 5)
    empty = replace(out, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert step_stats(empty) == {}


def test_which_tokens_were_reweighted_and_what_that_alone_predicts():
    """hand_outputs' valid tokens (H, s, A): (1, 0.5, +1) (2, 3, +1) (0.5, 2, +1) (1.5, 1, 0) (3, 3, −2).

    Weights 1.5 on tokens 1 (s < H) and 2 (s > H), 0.5 on token 5 (s = H: not above), 7 on the padding:
    3 of 5 valid tokens reweighted, 1 of those 3 above its entropy. The reweighting alone predicts
    sum A·(w − 1)·π(a)·(s − H) / 5 = (1·0.5·e^−0.5·(−0.5) + 1·0.5·e^−3·1 + (−2)·(−0.5)·e^−3·0) / 5."""
    out = hand_outputs()
    out.weights = torch.tensor([[1.5, 1.5, 7.0], [1.0, 1.0, 0.5]])
    got = EntropyMonitor(quantiles=(0.5,), position_buckets=0, forking_entropy=None).compute(out)
    assert got["reweighted_share"] == pytest.approx(3 / 5)
    assert got["reweighted_above_entropy_share"] == pytest.approx(1 / 3)
    expected = (-0.25 * math.exp(-0.5) + 0.5 * math.exp(-3)) / 5
    assert got["entropy_change_pred_reweight"] == pytest.approx(expected)
    # moving only the token above its entropy: every reweighted token is above, and the prediction is > 0
    out.weights = torch.tensor([[1.0, 1.5, 1.0], [1.0, 1.0, 1.0]])
    got = step_stats(out)
    assert (got["reweighted_share"], got["reweighted_above_entropy_share"]) == (pytest.approx(0.2), 1.0)
    assert got["entropy_change_pred_reweight"] == pytest.approx(0.5 * math.exp(-3) / 5) and expected < 0
    # nothing reweighted (GRPO, or STARE's gate closed): share 0, the share above H undefined
    got = step_stats(hand_outputs())
    assert got["reweighted_share"] == 0.0 and math.isnan(got["reweighted_above_entropy_share"])
    assert got["entropy_change_pred_reweight"] == 0.0


# --------------------------------------------------------------------------------------------
# histograms


class HistogramLogger(Logger):
    """A minimal logger whose experiment takes histograms, as TensorBoard's SummaryWriter does."""

    def __init__(self) -> None:
        super().__init__()
        self.histograms: list[tuple[str, torch.Tensor, int]] = []
        self._experiment = SimpleNamespace(
            add_histogram=lambda tag, values, global_step: self.histograms.append((tag, values, global_step)))

    name = "hist"
    version = 0

    @property
    def experiment(self):
        return self._experiment

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_histograms_go_to_loggers_that_take_them(tmp_path):
    hist = HistogramLogger()
    monitor = EntropyMonitor(histogram_every_n_steps=2)
    fit(tmp_path, [hand_outputs()] * 2 + [scripted_outputs(0.25)] * 2, [monitor], logger=[CSVLogger(tmp_path), hist])
    tags = [(tag, step) for tag, _, step in hist.histograms]
    assert tags == [("entropy_monitor/token_entropy", 1), ("entropy_monitor/token_surprisal", 1),
                    ("entropy_monitor/token_entropy", 3), ("entropy_monitor/token_surprisal", 3)]
    assert sorted(hist.histograms[0][1].tolist()) == [0.5, 1.0, 1.5, 2.0, 3.0]  # valid tokens only
    assert sorted(hist.histograms[1][1].tolist()) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert hist.histograms[2][1].tolist() == [0.25] * 5
    assert (tmp_path / "lightning_logs").exists()  # the CSV logger ran alongside, untouched

