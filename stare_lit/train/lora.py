"""LoRA adapters on the policy (the ``peft`` package), configured under ``model.policy.lora``::

    model:
      policy:
        name_or_path: Qwen/Qwen2.5-Math-1.5B
        lora: {rank: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}

The base weights are frozen; only the adapters train, and only they are handed to the optimizer
(``GRPOModule.configure_optimizers`` takes the parameters that require grad). For β > 0 the frozen
base is the reference model: ``reference_model`` switches the adapters off for the reference pass
instead of keeping a second copy of the model. Checkpoints hold the whole PEFT model (base and
adapters), so resume and ``stare-lit export`` need nothing but the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from stare_lit.errors import check


@dataclass
class LoRA:
    """Low-rank adapters: ΔW = (alpha / rank) · B A on each target module, B initialised to 0.

    Args:
        rank: r, the adapters' inner dimension.
        alpha: scale numerator; the update is scaled by alpha / rank.
        dropout: dropout on the adapters' input (training only).
        target_modules: module names to adapt (e.g. [q_proj, v_proj]), or "all-linear" for every
            linear layer but the output head.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        check(self.rank >= 1, f"model.policy.lora.rank must be >= 1, got {self.rank}")
        check(self.alpha > 0, f"model.policy.lora.alpha must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, f"model.policy.lora.dropout must be in [0, 1), got {self.dropout}")
        check(bool(self.target_modules), "model.policy.lora.target_modules: name at least one module, or all-linear")

    def apply(self, model: torch.nn.Module):
        """Wrap ``model`` in a PEFT model with fresh adapters; its own weights are frozen."""
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("model.policy.lora needs the peft package: pip install peft") from None
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, config)


def has_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def reference_model(model: torch.nn.Module):
    """The frozen base of a PEFT ``model``: adapters off and eval mode (no dropout) inside the block."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)
