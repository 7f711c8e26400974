"""What a training run stands on: policy loading and LoRA, up-front setting checks, the update's row
selection, step-metric bookkeeping, atomic checkpoints, the FSDP2 strategy and preemption.
"""

from stare_lit.train.checkpoint import AtomicCheckpointIO
from stare_lit.train.strategy import AtomicModelParallelStrategy
from stare_lit.train.policy import Policy
from stare_lit.train.lora import LoRA
from stare_lit.train.step_log import StepKeys

__all__ = ["AtomicCheckpointIO", "AtomicModelParallelStrategy", "Policy", "LoRA", "StepKeys"]
