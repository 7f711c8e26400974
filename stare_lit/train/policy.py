"""Where the policy comes from: a Hugging Face causal LM by name or local path, or a config.

``Policy`` is a plain dataclass so that it reads as nested YAML::

    model:
      policy:
        name_or_path: Qwen/Qwen2.5-Math-1.5B      # or a local directory
        dtype: bfloat16

or, for tests and from-scratch runs, a config with random weights::

      policy:
        config: {class_path: transformers.Qwen2Config, init_args: {hidden_size: 64, ...}}
        tokenizer: path/to/tokenizer

Under Lightning's ``ModelParallelStrategy`` the module calls :meth:`Policy.shard` on the built model
(FSDP2: each decoder layer, then the root, over the data-parallel mesh).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from stare_lit.errors import ConfigError, check
from stare_lit.train.lora import LoRA

#: What transformers' ``attn_implementation`` accepts, besides a Hub kernel's ``org/name``.
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")

#: A tokenizer directory holds at least one of these (fast, slow, sentencepiece, BPE or WordPiece tokenizers).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    """The policy model and its tokenizer.

    Args:
        name_or_path: a Hugging Face model name or a local directory (weights + tokenizer).
        config: build the model from this config with random weights instead (no download).
        tokenizer: tokenizer name or directory; defaults to ``name_or_path``.
        dtype: parameter dtype of the policy (float32, bfloat16, float16).
        trust_remote_code: allow code shipped with the model to run (off unless you set it).
        revision: model revision (branch, tag or commit) on the hub.
        gradient_checkpointing: recompute activations in backward to save memory.
        attn_implementation: e.g. "sdpa", "flash_attention_2"; None lets transformers choose.
        fsdp_mixed_precision: only when sharded (ModelParallelStrategy): all-gather and compute in
            bfloat16 while the sharded parameters, the optimizer state and the gradient reduction stay
            in ``dtype`` (keep dtype float32 for fp32 master weights). Off: everything in ``dtype``.
        lora: train LoRA adapters on the frozen model instead of all its weights (stare_lit.train.LoRA);
            the frozen base is then also the reference model for β > 0.
    """

    name_or_path: str | None = None
    config: PretrainedConfig | None = None
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    fsdp_mixed_precision: bool = False
    lora: LoRA | None = None

    def __post_init__(self) -> None:
        check((self.name_or_path is None) != (self.config is None),
              "model.policy: set exactly one of name_or_path (a model name or local directory) or config "
              "(build from a config with random weights)")
        check(self.name_or_path is not None or self.tokenizer is not None,
              "model.policy.tokenizer: a policy built from a config needs a tokenizer name or directory")
        if self.name_or_path is not None:
            check_model_source(self.name_or_path, "model.policy.name_or_path", tokenizer=self.tokenizer is None)
        if self.tokenizer is not None:
            check_model_source(self.tokenizer, "model.policy.tokenizer", model=False)
        check(self.attn_implementation is None or self.attn_implementation in ATTENTION or "/" in self.attn_implementation,
              f"model.policy.attn_implementation: {self.attn_implementation!r} is not one of {', '.join(ATTENTION)} "
              "(or a Hub kernel 'org/name'); pick one, or null to let transformers choose")
        if self.lora is not None:  # a target that is not in the model: one line now, not minutes later
            skeleton = self.skeleton()
            if skeleton is not None:
                self.lora.check_targets(skeleton)

    def skeleton(self) -> PreTrainedModel | None:
        """The model's modules on the meta device (no weights, no memory), when its config is at hand without
        a download or remote code; else None, and what needs the modules waits for the real model."""
        if self.trust_remote_code:
            return None
        try:
            config = self.config or AutoConfig.from_pretrained(self.name_or_path, revision=self.revision,
                                                               local_files_only=True)
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(config)
        except Exception:  # noqa: BLE001 - not on this machine yet, or not buildable bare: the build checks it
            return None

    def load_tokenizer(self):
        source = self.tokenizer or self.name_or_path
        try:
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code, revision=self.revision)
        except OSError as e:  # no such model on the hub, no network, or not in the cache when offline
            key = "tokenizer" if self.tokenizer else "name_or_path"
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"model.policy.{key}: no tokenizer could be loaded from '{source}' ({reason}); give a "
                              "local directory, or a Hugging Face model name this machine can reach") from None
        tok.padding_side = "left"  # batched generation appends to the right end of every row
        if tok.pad_token is None:
            check(tok.eos_token is not None,
                  f"model.policy.tokenizer: '{source}' has neither a pad nor an eos token; use a tokenizer with one")
            tok.pad_token = tok.eos_token
        return tok

    def build_model(self) -> PreTrainedModel:
        kwargs = {"dtype": DTYPES[self.dtype], "trust_remote_code": self.trust_remote_code}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.config is not None:
            model = AutoModelForCausalLM.from_config(self.config, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(self.name_or_path, revision=self.revision, **kwargs)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable()  # before LoRA: peft then makes the frozen embeddings' output require grad
        return self.lora.apply(model) if self.lora is not None else model

    def shard(self, model: PreTrainedModel, mesh) -> PreTrainedModel:
        """FSDP2 in place: ``fully_shard`` every decoder layer, then the root, over ``mesh`` (1-D).

        One all-gather per layer in forward and backward, so only a layer or two (plus the root's
        embeddings, final norm and head) are ever unsharded at once; parameters become DTensors
        sharded on dim 0. The rollout gathers everything instead (``stare_lit.rollout.base.full_parameters``).
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if self.fsdp_mixed_precision else MixedPrecisionPolicy())
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        return model


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The model's repeated blocks, innermost first: classes named in ``_no_split_modules``, else
    ``model.model.layers``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in reversed(list(model.modules())) if type(m).__name__ in names and m is not model]
    if not layers and hasattr(getattr(model, "model", None), "layers"):
        layers = list(model.model.layers)
    check(len(layers) > 0, f"model.policy: cannot find the decoder layers of {type(model).__name__} to shard "
                           "(no _no_split_modules, no model.layers)")
    return layers


def check_model_source(value: str, key: str, model: bool = True, tokenizer: bool = True) -> None:
    """A local path (not a hub id) is a directory holding a model's config.json and/or a tokenizer's files, as
    ``save_pretrained`` writes them; else one line naming ``key``, before transformers' traceback."""
    if not _looks_local(value):
        return
    path = Path(value).expanduser()
    check(path.exists(), f"{key}: '{value}' does not exist; give an existing directory or a Hugging Face model name "
                         "(for the offline default run `stare-lit warmstart` first)")
    check(path.is_dir(), f"{key}: '{value}' is a file; give the directory that save_pretrained wrote")
    lacking = [*(["config.json"] if model and not (path / "config.json").is_file() else []),
               *([f"tokenizer file ({', '.join(TOKENIZER_FILES)})"] if tokenizer and
                 not any((path / name).is_file() for name in TOKENIZER_FILES) else [])]
    check(not lacking, f"{key}: '{value}' holds no {' and no '.join(lacking)}, so it is not a Hugging Face "
                       f"{'model' if model else 'tokenizer'} directory; give the directory that save_pretrained wrote")


def _looks_local(value: str) -> bool:
    """A path-like string (./x, /x, ~/x, x/y/z, or an existing file) rather than a hub id 'org/name'."""
    return value.startswith((".", "/", "~")) or value.count("/") >= 2 or os.path.exists(value)
