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

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from stare_lit.errors import ConfigError, check


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
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            try:  # a string is a regular expression over module names (as peft reads it)
                re.compile(self.target_modules)
            except re.error as e:
                raise ConfigError(f"model.policy.lora.target_modules: {self.target_modules!r} is not a regular "
                                  f"expression ({e}); give a list of module names, e.g. [q_proj, v_proj]") from None

    def apply(self, model: torch.nn.Module):
        """Wrap ``model`` in a PEFT model with fresh adapters; its own weights are frozen."""
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("model.policy.lora needs the peft package: pip install peft") from None
        self.check_targets(model)
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=self.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    def check_targets(self, model: torch.nn.Module) -> None:
        """Every entry of ``target_modules`` names at least one module of ``model``, and only layers LoRA can
        adapt. peft matches as here — a list entry equals a module's name or its last dotted parts, a string is
        a regular expression over the whole name — but silently skips a list entry that matches nothing, and
        fails with a traceback when no entry matches or a match is not a layer it can wrap."""
        if self.target_modules == "all-linear":
            return
        layers = adaptable_layers(model)
        offer = f"the layers LoRA can adapt here are {', '.join(sorted({n.rsplit('.', 1)[-1] for n in layers}))}"
        regex = isinstance(self.target_modules, str)
        for target in [self.target_modules] if regex else self.target_modules:
            matched = [name for name, _ in model.named_modules() if name and _matches(target, name, regex)]
            if not matched:
                example = max(sorted(layers), key=len, default="")
                how = (f"; a string is a regular expression over whole names such as {example}, a list names "
                       "modules: [q_proj, v_proj]") if regex else ""
                raise ConfigError(f"model.policy.lora.target_modules: {target!r} matches no module of "
                                  f"{type(model).__name__}; {offer} (or target_modules: all-linear){how}")
            other = next((name for name in matched if name not in layers), None)
            if other is not None:
                raise ConfigError(f"model.policy.lora.target_modules: {target!r} matches {other}, a "
                                  f"{type(model.get_submodule(other)).__name__}, which LoRA cannot adapt; name its "
                                  f"linear layers instead: {offer}")


def adaptable_layers(model: torch.nn.Module) -> set[str]:
    """Names of the modules peft's LoRA can wrap (its list: Linear, Embedding, Conv1d/2d/3d, transformers'
    Conv1D, MultiheadAttention)."""
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.MultiheadAttention, Conv1D)
    return {name for name, module in model.named_modules() if name and isinstance(module, kinds)}


def _matches(target: str, name: str, regex: bool) -> bool:
    if regex:
        return re.fullmatch(target, name) is not None
    return name == target or name.endswith("." + target)


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
