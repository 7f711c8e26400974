"""Same weights, same sampled completions: stare-lit's GRPO loss equals TRL's GRPOTrainer loss.

TRL is in the test extra (``pip install -e ".[test]"``), so this runs wherever the tests do. The matching
settings are ``benchmarks.vs_trl.LOSS_PAIRS``; the check itself is ``benchmarks.vs_trl.compare_losses``
(TRL's own scoring path and ``_compute_loss`` on our completions, off-policy so clipping is active).
"""

from __future__ import annotations

import pytest

from benchmarks.vs_trl import LOSS_PAIRS, compare_losses

pytestmark = pytest.mark.slow  # TRL's GRPOTrainer next to ours


def test_trl_and_stare_lit_give_the_same_advantages_loss_and_gradients(tiny_model_dir):
    results = compare_losses(tiny_model_dir, prompts=2, group_size=4, max_new_tokens=8, seed=0)
    assert [r["setting"] for r in results] == [name for name, _, _ in LOSS_PAIRS]
    for r in results:
        assert r["mask_equal"], r["setting"]
        assert r["loss_trl"] != 0.0, r  # toy_reward's groups are mixed: live advantages, a real loss to compare
        assert r["adv_max_abs_diff"] < 1e-6, r
        assert r["loss_abs_diff"] < 1e-6, r
        assert r["grad_rel_diff"] < 1e-5, r
    assert max(r["clip_frac"] for r in results) > 0  # the ratios were off 1: clipping was exercised
