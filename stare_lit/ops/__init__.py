"""Pure tensor math, no Lightning inside: group advantages, per-token log-probs and entropy, the
clipped loss, first-order entropy dynamics, world-level reductions and sample metrics (pass@k).

Imports nothing of stare_lit but ``stare_lit.errors``.
"""

from stare_lit.ops.advantages import AdvantageScale, group_advantages, equal_groups
from stare_lit.ops.logprobs import token_logprobs_and_entropy, head_logprobs_and_entropy, model_logprobs_and_entropy
from stare_lit.ops.loss import Aggregation, aggregate, policy_loss
from stare_lit.ops.entropy_dynamics import predicted_entropy_change, quadrant_masks, softmax_entropy_gradient
from stare_lit.ops.distributed import all_reduce_sum, gather_valid, is_distributed, masked_mean
from stare_lit.ops.metrics import all_wrong_share, pass_at_k, pass_at_k_levels, sample_accuracy

__all__ = ["AdvantageScale", "group_advantages", "equal_groups", "token_logprobs_and_entropy", "head_logprobs_and_entropy", "model_logprobs_and_entropy", "Aggregation", "aggregate", "policy_loss", "predicted_entropy_change", "quadrant_masks", "softmax_entropy_gradient", "all_reduce_sum", "gather_valid", "is_distributed", "masked_mean", "pass_at_k", "pass_at_k_levels", "sample_accuracy", "all_wrong_share"]
