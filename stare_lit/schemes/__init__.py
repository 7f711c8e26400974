"""Token-weighting schemes: how each completion token's share of the policy gradient is set.

Chosen in YAML by class_path (``model.scheme: {class_path: stare_lit.schemes.STARE}``). The base
class and GRPO (ω ≡ 1) are in ``base``; STARE, STEER, ERPO and the baselines users compare against
each have a file. Schemes use ``stare_lit.ops``; anything that changes gradients lives here and is
checkpointed with the module.
"""

from stare_lit.schemes.base import TokenBatch, TokenWeighting, GRPO, Compose
from stare_lit.schemes.stare import STARE, above_entropy_selection, stare_selection, stare_token_weights
from stare_lit.schemes.steer import STEER, steer_omega, steer_token_weights
from stare_lit.schemes.erpo import ERPO
from stare_lit.schemes.baselines import HighEntropyTokens, ClipCov, KLCov, EntropyAdvantage, EntropyBonus

__all__ = ["TokenBatch", "TokenWeighting", "GRPO", "Compose", "STARE", "above_entropy_selection", "stare_selection", "stare_token_weights", "STEER", "steer_omega", "steer_token_weights", "ERPO", "HighEntropyTokens", "ClipCov", "KLCov", "EntropyAdvantage", "EntropyBonus"]
