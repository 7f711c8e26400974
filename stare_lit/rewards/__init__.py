"""Verifiable rewards: the reward classes (base, code) and the runner that scores a batch (errors, time
limits; worker: the process that bounds a reward's time). CodeTestReward runs programs in stare_lit.sandbox; formats: the shapes of datasets' tests.
"""

from stare_lit.rewards.base import Reward, ErrorScore, RewardError, MathAnswerReward, ExactMatchReward, FormatReward
from stare_lit.rewards.base import OverlongPenalty
from stare_lit.rewards.code import CodeTestReward
from stare_lit.rewards.formats import AssertTests, CallTests, CodeTests, HumanEvalTests, MBPPTests, StdioTests
from stare_lit.rewards.runner import RewardRunner, Scoring

__all__ = ["Reward", "ErrorScore", "RewardError", "MathAnswerReward", "ExactMatchReward", "FormatReward", "OverlongPenalty", "CodeTestReward", "CodeTests", "AssertTests", "StdioTests", "CallTests", "HumanEvalTests", "MBPPTests", "RewardRunner", "Scoring"]
