"""Prompt data: the DataModule for any Hugging Face dataset or local file, the resumable loader, the
checks that drop unusable rows, and the built-in tasks (each: prompts, verifier, warm-start data).
"""

from stare_lit.data.datamodule import PromptDataModule
from stare_lit.data.loader import PromptLoader
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule, ArithmeticReward
from stare_lit.data.tasks.partial_sums import PartialSumsDataModule, PartialSumsReward
from stare_lit.data.tasks.code import CodeTasks
from stare_lit.data.tasks.countdown import CountdownAnswerReward, CountdownDataModule, CountdownReward

__all__ = ["PromptDataModule", "PromptLoader", "ArithmeticDataModule", "ArithmeticReward", "PartialSumsDataModule", "PartialSumsReward", "CodeTasks",
           "CountdownDataModule", "CountdownReward", "CountdownAnswerReward"]
