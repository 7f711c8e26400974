"""What a training run stands on: policy loading and LoRA, up-front setting checks, the update engine
(old and reference passes, μ micro-batched updates, clipping), non-finite steps, the step's output and
metrics, atomic checkpoints, the FSDP2 strategy and preemption.
"""

from stare_lit.train.checkpoint import AtomicCheckpointIO
from stare_lit.train.strategy import AtomicModelParallelStrategy
from stare_lit.train.policy import Policy
from stare_lit.train.lora import LoRA
from stare_lit.train.step_log import StepKeys, StepOutput

__all__ = ["AtomicCheckpointIO", "AtomicModelParallelStrategy", "Policy", "LoRA", "StepKeys", "StepOutput"]
