"""Rollout: G sampled completions per prompt with Hugging Face ``generate``.

Rows come out prompt-major — rows g*G .. g*G+G−1 are the samples of prompt g — which is the layout
``group_advantages`` expects. Generation runs under no_grad in eval mode with the KV cache.

Under FSDP2 (``Policy.shard``) generation runs on full parameters: :func:`full_parameters` turns
off reshard-after-forward for the rollout, so each layer is all-gathered once (at the first decoded
token) and stays gathered until the rollout ends, then every layer is resharded. Otherwise FSDP
would all-gather every layer again at every decoded token — max_new_tokens all-gathers of the whole
model per rollout instead of one. The cost is memory: during the rollout every rank holds the whole
model's parameters unsharded (params × 2 bytes in bf16 with ``fsdp_mixed_precision``, × 4 in fp32)
next to its shard of parameters and optimizer state and the KV cache — a model whose full weights do
not fit on one device cannot be rolled out this way (that needs tensor parallelism or an inference
engine). The gathered values are bit-identical to the unsharded model's.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stare_lit.errors import check

@dataclass
class Sampling:
    """How completions are sampled.

    Args:
        temperature: softmax temperature; log-probs and entropy in the loss use the same one.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        max_new_tokens: completion length cap; longer completions are cut and counted as clipped.
        stop: extra stop strings (besides the tokenizer's EOS).
        max_prompt_length: prompts longer than this many tokens are cut from the left (None = no cut).
        seed: base seed of the sampling. Every rollout samples from its own stream, seeded by (seed,
            rollout number, rank), so a run is reproducible, a resumed run samples exactly what the
            uninterrupted one did, and schemes compared at one seed share their sampling noise.
            None: the run's seed (``seed_everything``).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    max_prompt_length: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check(self.temperature > 0 and math.isfinite(self.temperature),
              f"model.sampling.temperature must be > 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"model.sampling.top_p must be in (0, 1], got {self.top_p}")
        check(self.max_new_tokens >= 1, f"model.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.top_k >= 0, f"model.sampling.top_k must be >= 0 (0 = off), got {self.top_k}")
        check(self.max_prompt_length is None or self.max_prompt_length >= 1,
              f"model.sampling.max_prompt_length must be >= 1 (tokens) or null for no cut, got {self.max_prompt_length}")
        check(all(isinstance(s, str) and s != "" for s in self.stop),
              f"model.sampling.stop: every stop string must be non-empty text, got {self.stop!r}")


@dataclass
class Rollout:
    """One batch of sampled completions. N = prompts × G rows."""

    input_ids: Tensor  # (N, P+T) prompt (left-padded) + completion (right-padded)
    attention_mask: Tensor  # (N, P+T) 1 on real prompt tokens and on completion tokens
    completion_mask: Tensor  # (N, T) bool, True up to and including the first EOS
    prompt_length: int  # P
    completions: list[str]  # decoded completion texts, EOS and padding stripped
    truncated: Tensor  # (N,) bool, no EOS within max_new_tokens

    @property
    def completion_ids(self) -> Tensor:
        return self.input_ids[:, self.prompt_length:]  # (N, T)

    @property
    def position_ids(self) -> Tensor:
        # Left padding shifts every prompt; positions count real tokens only, as generate() does.
        return (self.attention_mask.cumsum(-1) - 1).clamp_min(0)  # (N, P+T)


def completion_mask(completion_ids: Tensor, eos_id: int | list[int], pad_id: int | None = None) -> tuple[Tensor, Tensor]:
    """(mask, truncated) of a batch of completions.

    completion_ids: (N, T). ``mask`` is True up to and including the first EOS; a padding token
    (what ``generate`` writes after a stop string, or after EOS) also ends the completion but is
    not part of it. ``truncated`` marks rows that never ended within T tokens.
    """
    eos_ids = torch.as_tensor(eos_id if isinstance(eos_id, list) else [eos_id], device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos_ids)  # (N, T)
    is_pad = (completion_ids == pad_id) & ~is_eos if pad_id is not None else torch.zeros_like(is_eos)
    ends = (is_eos | is_pad).int()
    ended_before = ends.cumsum(-1) - ends  # an end marker strictly before t
    return (ended_before == 0) & ~is_pad, ends.sum(-1) == 0


def format_prompts(tokenizer, prompts: list[str], chat_template: bool, system_prompt: str | None) -> list[str]:
    if not chat_template:
        return prompts
    check(getattr(tokenizer, "chat_template", None) is not None,
          "model.prompt_format.chat_template is true but the tokenizer has no chat template; set it to false")
    out = []
    for p in prompts:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": p}]
        out.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return out


@contextmanager
def full_parameters(model):
    """Keep an FSDP2-sharded ``model``'s parameters gathered inside the block; a no-op otherwise.

    Yields whether ``model`` is sharded. On exit every FSDP module is resharded and gets back FSDP2's
    default reshard-after-forward (True for inner modules, False for the root, whose parameters
    backward needs right away).
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield bool(sharded)
    finally:
        for module in sharded:
            module.set_reshard_after_forward(module is not model, recurse=False)
            module.reshard()  # not recursive


class RolloutEngine:
    """How a rollout is sampled: G completions per prompt (already formatted text) → :class:`Rollout`.

    An engine samples on torch's global RNG (the module seeds it per rollout, see stare_lit.rollout.streams),
    runs under no_grad with the model in eval mode, and rolls an FSDP2-sharded model out on full
    parameters (:func:`full_parameters`). Chosen in YAML as ``model.rollout: {class_path: ...}``.
    """

    def __call__(self, model, tokenizer, prompts: list[str], group_size: int, sampling: Sampling,
                 greedy: bool = False) -> Rollout:
        raise NotImplementedError


def encode_prompts(tokenizer, prompts: list[str], sampling: Sampling, device) -> dict[str, Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` (B, P), cut to ``max_prompt_length`` from the left."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    truncation=sampling.max_prompt_length is not None, max_length=sampling.max_prompt_length)
    return {k: v.to(device) for k, v in enc.items()}


def to_rollout(tokenizer, enc: dict[str, Tensor], out: Tensor, group_size: int) -> Rollout:
    """The Rollout of ``out`` (N, P+T): the prompts ``enc`` repeated G times, then the completions,
    each padded with the pad token after it ended."""
    P = enc["input_ids"].shape[1]
    completion = out[:, P:]  # (N, T)
    mask, truncated = completion_mask(completion, tokenizer.eos_token_id, tokenizer.pad_token_id)
    prompt_attn = enc["attention_mask"].repeat_interleave(group_size, dim=0)  # (N, P)
    texts = tokenizer.batch_decode(completion.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollout(input_ids=out, attention_mask=torch.cat([prompt_attn, mask.long()], dim=1),
                   completion_mask=mask, prompt_length=P, completions=texts, truncated=truncated)
