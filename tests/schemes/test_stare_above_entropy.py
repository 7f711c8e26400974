"""STARE by the position's own entropy (selection: above_entropy), stare-lit's extension, by hand.

s = −log π_old(a) of the sampled token, H = entropy of π_old at its position; a token of T+ is a
candidate iff s − H > margin; at most k = int(P·|T+| + 0.999999) of them, largest s − H first.
Values are chosen exactly representable in float32 so that s − H is exact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from stare_lit.errors import ConfigError
from stare_lit.schemes.base import TokenBatch
from stare_lit.schemes.stare import STARE, above_entropy_selection, capped_k, stare_selection, stare_token_weights
from tests.schemes.selection_world_script import ROWS, selections, world_batch

SCRIPT = Path(__file__).with_name("selection_world_script.py")


def select(s, h, adv, mask=None, top_ratio=0.5, negative=False, margin=0.0):
    s, h = torch.tensor(s), torch.tensor(h)
    adv = torch.tensor(adv).expand_as(s) if torch.tensor(adv).dim() < 2 else torch.tensor(adv)
    mask = torch.ones_like(s, dtype=torch.bool) if mask is None else torch.tensor(mask, dtype=torch.bool)
    return above_entropy_selection(-s, h, adv, mask, top_ratio, negative, margin)


def test_docstring_example_and_the_cap():
    # s − H = 0.25, −0.25, 1.5, 0 → eligible: tokens 0 and 2; P = 0.5 of |T+| = 4 → k = 2: both
    s, h = [[1.25, 0.75, 2.0, 0.125]], [[1.0, 1.0, 0.5, 0.125]]
    l_pos, l_neg, t_pos, t_neg = select(s, h, [[1.0]])
    assert l_pos.tolist() == [[True, False, True, False]]
    assert not l_neg.any() and t_pos.all() and not t_neg.any()
    # P = 0.25 → k = int(1 + 0.999999) = 1: only the largest excess (token 2, 1.5 nats)
    assert select(s, h, [[1.0]], top_ratio=0.25)[0].tolist() == [[False, False, True, False]]
    # P = 0 → nothing; P = 1 → every eligible token, never the ineligible ones
    assert not select(s, h, [[1.0]], top_ratio=0.0)[0].any()
    assert select(s, h, [[1.0]], top_ratio=1.0)[0].tolist() == [[True, False, True, False]]


def test_s_equal_to_h_is_not_selected_at_margin_zero():
    l_pos = select([[0.5, 0.75]], [[0.5, 0.5]], [[1.0]], top_ratio=1.0)[0]
    assert l_pos.tolist() == [[False, True]]  # s − H = 0 exactly leaves H unchanged: not selected


def test_margin_is_strict_and_in_nats():
    # s − H = 0.25, 0.5, 0.125; margin 0.25 → only 0.5 (0.25 is not > 0.25)
    l_pos = select([[1.25, 1.5, 1.125]], [[1.0, 1.0, 1.0]], [[1.0]], top_ratio=1.0, margin=0.25)[0]
    assert l_pos.tolist() == [[False, True, False]]


def test_ties_at_the_cap_go_to_the_earlier_position():
    # rows: T+ = all 6 tokens; s − H: row 0 [0.5, −1, 0.25], row 1 [0.5, 0.5, −1]; P = 0.3 → k = int(1.8 + 0.999999) = 2
    # the three 0.5s tie: row 0 token 0 and row 1 token 0 (earlier in row-major order) win
    s = [[1.0, 0.0, 0.75], [1.0, 1.0, 0.0]]
    h = [[0.5, 1.0, 0.5], [0.5, 0.5, 1.0]]
    l_pos = select(s, h, [[1.0], [1.0]], top_ratio=0.3)[0]
    assert l_pos.tolist() == [[True, False, False], [True, False, False]]


def test_cap_is_a_share_of_t_plus_not_of_the_eligible_tokens():
    # 10 tokens of T+, 3 above their entropy (s − H = 0.5, 0.25, 1.0); P = 0.2 → k = int(2 + 0.999999) = 2
    s = [[1.5, 0.0, 1.25, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]]
    h = [[1.0] * 10]
    assert capped_k(10, 0.2) == 2 and capped_k(10, 0.1) == 1 and capped_k(3, 0.1) == 1 and capped_k(0, 0.5) == 0
    assert select(s, h, [[1.0]], top_ratio=0.2)[0].nonzero()[:, 1].tolist() == [0, 5]
    assert select(s, h, [[1.0]], top_ratio=0.1)[0].nonzero()[:, 1].tolist() == [5]


def test_empty_t_plus_and_a_micro_batch_all_below_entropy():
    s, h = [[2.0, 0.25], [3.0, 0.5]], [[1.0, 1.0], [1.0, 1.0]]
    l_pos, l_neg, t_pos, t_neg = select(s, h, [[-1.0], [0.0]], top_ratio=1.0, negative=True)
    assert not t_pos.any() and not l_pos.any()  # no T+: nothing, and no error
    assert l_neg.tolist() == [[True, False], [False, False]]  # Â = 0 row never selected
    below = select([[0.25, 0.5], [0.0, 0.75]], [[1.0, 1.0], [0.5, 1.0]], [[1.0], [-1.0]], top_ratio=1.0, negative=True)
    assert not below[0].any() and not below[1].any()  # every token sits below its entropy: none, whatever P


def test_c2_selects_inside_t_minus_with_its_own_cap_and_masked_tokens_never():
    # row 0 Â>0: s − H = [1, 0.5, 2 (masked)], |T+| = 2, P = 0.5: k+ = int(1 + 0.999999) = 1
    # row 1 Â<0: s − H = [0.25, 0.75, 0.5], |T−| = 3: k− = int(1.5 + 0.999999) = 2 → 0.75 and 0.5
    s = [[2.0, 1.5, 3.0], [1.25, 1.75, 1.5]]
    h = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    mask = [[1, 1, 0], [1, 1, 1]]
    l_pos, l_neg, t_pos, t_neg = select(s, h, [[1.0], [-1.0]], mask=mask, top_ratio=0.5, negative=True)
    assert l_pos.tolist() == [[True, False, False], [False] * 3]
    assert l_neg.tolist() == [[False] * 3, [False, True, True]]
    assert t_pos.sum() == 2 and t_neg.sum() == 3
    assert not select(s, h, [[1.0], [-1.0]], mask=mask, top_ratio=0.5, negative=False)[1].any()


def test_it_differs_from_the_papers_rule_at_a_fork():
    """A fork: H = 1.0; the likelier branch has s = 0.75 < H, the rarer one s = 1.5 > H; a sure token s = 0.

    The paper's top-P by surprisal (P = 0.5, k = 2 of 4) takes s = 1.5 and s = 0.75, the second lowers H
    when upweighted; above_entropy takes only s = 1.5."""
    s, h = [[0.75, 0.0, 1.5, 0.0]], [[1.0, 0.0, 1.0, 0.25]]
    paper = stare_selection(-torch.tensor(s), torch.ones(1, 4), torch.ones(1, 4), 0.5, negative=False)[0]
    assert paper.tolist() == [[True, False, True, False]]
    assert select(s, h, [[1.0]])[0].tolist() == [[False, False, True, False]]


def tokens(s, h, adv, old_s=None, rows=None):
    lp, old = -torch.tensor(s), -torch.tensor(old_s if old_s is not None else s)
    adv = torch.tensor(adv).expand_as(lp).clone()
    return TokenBatch(logprobs=lp, old_logprobs=old, advantages=adv, mask=torch.ones_like(lp, dtype=torch.bool),
                      old_entropy=torch.tensor(h), rows=rows)


def test_scheme_weights_use_pi_old_and_keep_gate_w_m():
    # π_old: s − H = [0.5, −0.5 | 0.25, −0.25]; π_θ's log-probs (different) must not matter
    batch = tokens([[1.5, 0.5], [1.25, 0.75]], [[1.0, 1.0], [1.0, 1.0]], [[1.0], [-1.0]],
                   old_s=[[1.5, 0.5], [1.25, 0.75]])
    batch.logprobs = -torch.tensor([[0.0, 9.0], [0.0, 9.0]])  # π_θ would pick token 1 of each row
    c2 = STARE(target_entropy=10.0, top_ratio=1.0, w=1.5, m=0.5, variant="C2", selection="above_entropy")
    assert c2.weights(batch).tolist() == [[1.5, 1.0], [0.5, 1.0]]
    metrics = c2.metrics()
    assert metrics["positive_reweight_ratio"] == metrics["negative_reweight_ratio"] == 0.25
    assert metrics["positive_candidate_ratio"] == 0.5
    o1 = STARE(target_entropy=10.0, top_ratio=1.0, w=1.5, selection="above_entropy")
    assert o1.weights(batch).tolist() == [[1.5, 1.0], [1.0, 1.0]]
    closed = STARE(target_entropy=0.1, top_ratio=1.0, w=1.5, selection="above_entropy")
    closed.update(0.5)  # entropy above target: gate off, ω ≡ 1
    assert closed.weights(batch).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="needs TokenBatch.old_entropy"):
        o1.weights(TokenBatch(logprobs=batch.logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                              mask=batch.mask))


def test_step_scope_ranks_over_the_whole_step_batch():
    """Step batch: all Â > 0, H = 0, s = [[1, 2, 3], [4, 5, 6]]; P = 0.34 → k = int(2.04 + 0.999999) = 3: row 1.

    Micro-batch scope on row 0 alone picks its own top 2 (k = int(1.02 + 0.999999) = 2): s = 2, 3."""
    s, h = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0] * 3] * 2
    whole = tokens(s, h, [[1.0], [1.0]])
    row0, row1 = (tokens([s[i]], [h[i]], [[1.0]], rows=slice(i, i + 1)) for i in (0, 1))
    step = STARE(target_entropy=10.0, top_ratio=0.34, w=2.0, scope="step", selection="above_entropy")
    step.prepare(whole)
    assert step.weights(row0).tolist() == [[1.0, 1.0, 1.0]]
    assert step.weights(row1).tolist() == [[2.0, 2.0, 2.0]]
    micro = STARE(target_entropy=10.0, top_ratio=0.34, w=2.0, selection="above_entropy")
    assert micro.weights(row0).tolist() == [[1.0, 2.0, 2.0]]


def test_default_is_the_papers_rule_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(6, 9, generator=g) * 3
    adv = torch.randn(6, 1, generator=g).expand(6, 9).clone()
    batch = TokenBatch(logprobs=lp, old_logprobs=lp - 0.1, advantages=adv, mask=torch.ones(6, 9, dtype=torch.bool),
                       old_entropy=torch.full((6, 9), 5.0))  # every token below H: above_entropy would pick none
    for variant in ("O1", "C2"):
        paper = STARE(target_entropy=10.0, top_ratio=0.3, w=1.3, m=0.7, variant=variant)
        expected = stare_token_weights(lp, adv, batch.mask, 0.3, 1.3, 0.7, variant)
        assert paper.selection == "top_surprisal" and torch.equal(paper.weights(batch), expected)
        assert (expected != 1).any()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(selection="entropy"), r"model\.scheme\.init_args\.selection must be 'top_surprisal'"),
    (dict(selection="above_entropy", margin=-0.1), r"model\.scheme\.init_args\.margin must be a finite number"),
    (dict(selection="above_entropy", margin=float("nan")), r"model\.scheme\.init_args\.margin must be a finite"),
    (dict(margin=0.1), r"model\.scheme\.init_args\.margin applies to selection: above_entropy only"),
])
def test_bad_selection_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        STARE(**kwargs)


# ---------------------------------------------------------------- several processes

def one_process_reference() -> dict[str, list]:
    return selections(world_batch())


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
@pytest.mark.parametrize("world", [2, 3])
def test_world_level_selection_equals_one_process_on_the_pooled_batch(tmp_path, world):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--world", str(world), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    expected = one_process_reference()
    for key, value in expected.items():
        pooled = [None] * ROWS
        for rank in ranks:
            for row, mask in zip(rank["rows"], rank[key]):
                pooled[row] = mask
        assert pooled == value, key
    # the world's cap and ranking matter here: rank 1 alone would select tokens the world does not
    local = selections({k: v[1::world] for k, v in world_batch().items()})["above_pos_0.0"]
    assert local != ranks[1]["above_pos_0.0"]
    assert any(any(row) for row in expected["above_pos_0.0"]) and any(any(row) for row in expected["above_neg_0.3"])
