"""Verifiable rewards: the reward classes (base, code) and the runner that scores a batch (errors, time
limits, a worker process). CodeTestReward runs programs in stare_lit.sandbox.
"""

from stare_lit.rewards.base import Reward, ErrorScore, MathAnswerReward, ExactMatchReward, FormatReward, OverlongPenalty
from stare_lit.rewards.code import CodeTestReward
from stare_lit.rewards.runner import RewardError, RewardRunner, Scoring

__all__ = ["Reward", "ErrorScore", "RewardError", "MathAnswerReward", "ExactMatchReward", "FormatReward", "OverlongPenalty", "CodeTestReward", "RewardRunner", "Scoring"]
