"""Verifiable rewards: the reward classes, the runner that scores a batch (errors, time limits, a
worker process), and the sandbox that runs model-written code.
"""

from stare_lit.rewards.base import Reward, MathAnswerReward, ExactMatchReward, FormatReward, OverlongPenalty
from stare_lit.rewards.code import CodeTestReward
from stare_lit.rewards.runner import RewardError, RewardRunner, Scoring
from stare_lit.rewards.sandbox import Sandbox

__all__ = ["Reward", "MathAnswerReward", "ExactMatchReward", "FormatReward", "OverlongPenalty", "CodeTestReward", "RewardError", "RewardRunner", "Scoring", "Sandbox"]
