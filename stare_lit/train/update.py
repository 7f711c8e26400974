"""The update engine: from a scored rollout and its advantages to μ optimizer steps.

    [old pass: log π_old, entropy of π_old, no grad]     only when μ > 1 or micro-batching
    [reference pass: log π_ref, no grad]                  only when β > 0 or the scheme asks
    scheme.update(token-mean entropy of π_old)            STARE's gate, once per step
    μ times: for each micro-batch: log π_θ, entropy -> the scheme's Â, mask, ω -> clipped loss -> backward
             then clip the global gradient norm, optimizer step, LR scheduler step

With μ = 1 and one micro-batch, π_old is π_θ itself: the update's forward doubles as the old pass (its
detached log-probs are log π_old and ρ ≡ 1 in value), saving a forward.

Which rows are forwarded. A row moves the weights only through its loss tokens' gradient. With β = 0, a
row whose advantage is 0 under a scheme that declares such rows inert
(``TokenWeighting.zero_advantage_inert``) has a zero gradient, and so has a row without loss tokens
(dropped or unscorable); the update skips their forward and backward and hands the scheme and the loss
their π_old values instead (exact: the clipped surrogate of Â = 0 is 0 whatever π_θ is). Rows that are
forwarded are cut to the columns they use: prompt columns that are padding in every one of them,
completion columns after the longest of them.

A NaN or ±inf in log-probs, entropy, advantages, loss or gradient norm raises
``stare_lit.train.faults.NonFiniteStep`` on every rank (the module skips the step). The engine knows
nothing of Lightning: the module hands it the model, the optimizer, the scheduler and its backward.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from stare_lit.errors import check
from stare_lit.ops.distributed import all_reduce_sum, is_distributed, masked_mean
from stare_lit.ops.logprobs import chunk_for_vocab, model_logprobs_and_entropy
from stare_lit.ops.loss import LossSettings, policy_loss
from stare_lit.rollout.base import Rollout, Sampling
from stare_lit.schemes.base import TokenBatch, TokenWeighting
from stare_lit.train.checks import finite
from stare_lit.train.faults import NonFiniteStep, require_finite
from stare_lit.train.lora import reference_model


@dataclass(frozen=True)
class UpdateSettings:
    """How the update runs (``model.update`` in YAML).

    Args:
        updates_per_batch: μ, optimizer steps per rollout batch (1 = on-policy).
        micro_batch_size: completions per forward/backward (gradient accumulation); None = all.
        grad_clip: max global gradient norm (> 0), or None for no clipping.
        logprob_chunk_size: token positions of the log-prob/entropy pass computed at once; None: follow the
            vocabulary (stare_lit.ops.logprobs.chunk_for_vocab: 1024 up to an 8k vocabulary, 55 at 151,936).
        skip_inert_rows: with β = 0 and a scheme that declares zero-advantage rows inert
            (``TokenWeighting.zero_advantage_inert``), the update does not forward or backward the rows
            whose gradient is zero (Â = 0, or no loss token); the loss and gradient are unchanged.
        max_nonfinite_steps: a step whose log-probs, entropy, advantages, loss or gradients hold a NaN
            or ±inf is skipped (no optimizer step; counted in train/nonfinite_steps, with a warning);
            after this many in a row the run saves the last good state and stops with an error.
    """

    updates_per_batch: int = 1
    micro_batch_size: int | None = None
    grad_clip: float | None = 1.0
    logprob_chunk_size: int | None = None
    skip_inert_rows: bool = True
    max_nonfinite_steps: int = 3

    def __post_init__(self) -> None:
        check(self.updates_per_batch >= 1, f"model.update.updates_per_batch must be >= 1, got {self.updates_per_batch}")
        check(self.micro_batch_size is None or self.micro_batch_size >= 1,
              "model.update.micro_batch_size must be >= 1 or null")
        # A negative grad_clip would make clip_grad_norm_ flip every gradient: the run would climb the loss.
        check(self.grad_clip is None or (finite(self.grad_clip) and self.grad_clip > 0),
              "model.update.grad_clip must be > 0 (the max global gradient norm, e.g. 1.0) or null for no "
              f"clipping, got {self.grad_clip}")
        check(self.logprob_chunk_size is None or self.logprob_chunk_size >= 1,
              "model.update.logprob_chunk_size must be >= 1 (positions per log-prob pass) or null (follow the "
              f"vocabulary), got {self.logprob_chunk_size}")
        check(self.max_nonfinite_steps >= 1,
              f"model.update.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclass
class Tokens:
    """Per-token tensors of one rollout batch, all (N, T) unless noted."""

    old_logprobs: Tensor
    entropy: Tensor  # of π_old
    advantages: Tensor
    mask: Tensor  # bool
    ref_logprobs: Tensor | None = None
    weights: Tensor | None = None  # ω of the first update


@dataclass
class Optimisation:
    """What the update steps, handed in by the LightningModule (manual optimisation)."""

    optimizer: Any  # Lightning's wrapper of the torch optimizer
    scheduler: Any | None  # stepped once per optimizer step
    backward: Callable[[Tensor], None]  # LightningModule.manual_backward: the precision and strategy hooks


class UpdateEngine:
    """μ clipped-surrogate optimizer steps on one rollout batch, with the scheme's weights.

    Args:
        settings: μ, micro-batches, clipping, the log-prob chunk, row skipping.
        scheme: the token-weighting scheme (asked for Â, mask, ω and an extra loss per micro-batch).
        loss: the clipped surrogate's settings.
        sampling: the rollouts' sampling (its temperature scales the log-probs; max_new_tokens is
            the seq-mean-token-sum-norm normaliser).
        group_size: G, completions per prompt.
    """

    def __init__(self, settings: UpdateSettings, scheme: TokenWeighting, loss: LossSettings, sampling: Sampling,
                 group_size: int) -> None:
        self.settings, self.scheme, self.loss_settings = settings, scheme, loss
        self.sampling, self.group_size = sampling, group_size

    @property
    def needs_reference(self) -> bool:
        return self.loss_settings.beta > 0 or self.scheme.needs_reference

    def learn(self, model, reference, rollout: Rollout, advantages: Tensor, steps: Optimisation) -> tuple[Tokens, dict]:
        """Old pass (when needed), the scheme's once-per-step update, then μ optimizer steps.

        ``reference``: the frozen reference model, or None (none needed, or LoRA: the policy with its
        adapters off). Returns the batch's tokens and the first update's stats.
        """
        mask = rollout.completion_mask
        require_finite("advantages", advantages, mask=mask.any(-1))
        # μ = 1 and one micro-batch: the update's forward doubles as the old pass (a reference model
        # only adds its own forward, in update()).
        need_old_pass = self.settings.updates_per_batch > 1 or len(self.micro_batches(len(advantages))) > 1
        tokens = None
        if need_old_pass:
            tokens = self.old_pass(model, reference, rollout, advantages)
            self.scheme.update(masked_mean(tokens.entropy, mask).item())
        if all_reduce_sum(mask.sum().float()).item() > 0:  # world-level: every rank runs the same collectives
            return self.update(model, reference, rollout, tokens, advantages, steps)
        # every group dropped: nothing to learn from
        tokens = tokens or self.old_pass(model, reference, rollout, advantages)
        return replace(tokens, weights=torch.ones_like(tokens.old_logprobs)), {"skipped_update": 1.0}

    # ---------------------------------------------------------------- passes without grad
    @torch.no_grad()
    def old_pass(self, model, reference, rollout: Rollout, advantages: Tensor) -> Tokens:
        """log π_old, entropy of π_old and (β > 0) log π_ref for every completion, without grad."""
        logps, ents = self.rows_pass(model, rollout)  # (N, T) each
        mask = rollout.completion_mask
        require_finite("log-probs or entropy of π_old", logps, ents, mask=mask)
        return Tokens(old_logprobs=logps, entropy=ents,
                      advantages=advantages[:, None].expand_as(mask).float(), mask=mask,
                      ref_logprobs=self.reference_pass(model, reference, rollout))

    @torch.no_grad()
    def reference_pass(self, model, reference, rollout: Rollout) -> Tensor | None:
        """log π_ref of every completion token (N, T), or None without a reference model."""
        if not self.needs_reference:
            return None
        with reference_model(model) if reference is None else nullcontext(reference) as ref_model:
            ref = self.rows_pass(ref_model, rollout)[0]
        require_finite("log-probs of the reference model", ref, mask=rollout.completion_mask)
        return ref

    def rows_pass(self, model, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """log π and entropy (N, T) of every row without grad, in micro-batches of rows sorted by length."""
        N, T = rollout.completion_ids.shape
        lp = torch.zeros(N, T, dtype=torch.float32, device=rollout.input_ids.device)  # not the default dtype: bf16 under bf16-true
        ent = torch.zeros_like(lp)
        for idx in length_sorted_chunks(rollout.attention_mask.sum(-1), self.settings.micro_batch_size):
            lp[idx], ent[idx] = self.token_logprobs(model, rollout, idx)
        return lp, ent

    def token_logprobs(self, model, rollout: Rollout, rows: slice | Tensor) -> tuple[Tensor, Tensor]:
        """log π(completion tokens) and entropy for the selected rows: (n, T) each, float32 (0 past the
        longest of their completions). The LM head runs inside the chunked pass: no (n, T, V) logits."""
        inputs, ids = row_inputs(rollout, rows)  # padding the selected rows all share is cut
        chunk = self.settings.logprob_chunk_size or chunk_for_vocab(model.config.vocab_size)
        lp, ent = model_logprobs_and_entropy(model, ids, self.sampling.temperature, chunk,
                                             use_cache=False, **inputs)
        T = rollout.completion_ids.shape[1]
        return pad_columns(lp.float(), T), pad_columns(ent.float(), T)

    # ---------------------------------------------------------------- the μ updates
    def update(self, model, reference, rollout: Rollout, tokens: Tokens | None, advantages: Tensor,
               steps: Optimisation) -> tuple[Tokens, dict]:
        """μ optimizer steps on one rollout batch.

        Returns the batch's tokens — with the advantages, mask and weights the first update's loss
        used, so callbacks see what the scheme did — and the first update's stats. Rows with a zero
        gradient (``skip_inert_rows``) are not forwarded with grad: the loss sees their π_old values.
        """
        mask = rollout.completion_mask
        fused_old_pass = tokens is None  # μ = 1 and one micro-batch: π_old = π_θ
        world = dist.get_world_size() if is_distributed() else 1
        n_tokens = all_reduce_sum(mask.sum().float()).item()  # world-level normalisers
        n_rows = all_reduce_sum(torch.tensor(float(mask.shape[0]), device=mask.device)).item()
        skip = inert_rows(advantages, mask, self.settings.skip_inert_rows and self.loss_settings.beta == 0
                          and self.scheme.zero_advantage_inert)  # (N,)
        seen, logged = None, {}
        ref_logprobs = self.reference_pass(model, reference, rollout) if fused_old_pass else None
        skipped_old = self.skipped_rows_old(model, rollout, skip) if fused_old_pass else None
        for step in range(self.settings.updates_per_batch):
            used, loss_total, backwards = [], 0.0, 0
            if not fused_old_pass:
                self.scheme.prepare(self.token_batch(tokens, slice(None), tokens.old_logprobs, tokens.entropy))
            for rows in self.micro_batches(mask.shape[0]):
                old = skipped_old if fused_old_pass else (tokens.old_logprobs, tokens.entropy)
                logprobs, entropy = self.micro_logprobs(model, rollout, rows, skip, old)
                require_finite("log-probs or entropy", logprobs, entropy, mask=mask[rows])
                if fused_old_pass:
                    tokens = Tokens(old_logprobs=logprobs.detach(), entropy=entropy.detach(),
                                    advantages=advantages[:, None].expand_as(mask).float(), mask=mask,
                                    ref_logprobs=ref_logprobs)
                    self.scheme.update(masked_mean(tokens.entropy, mask).item())
                loss, loss_stats, batch, weights = self.micro_loss(tokens, rows, logprobs, entropy)
                require_finite("loss", loss)
                # Each micro-batch's loss is a mean over its own tokens (or rows); rescale so the sum
                # over micro-batches and the gradient average over ranks give the world-level mean.
                share = (mask[rows].sum().item() / n_tokens if self.loss_settings.agg == "token-mean"
                         else batch.mask.shape[0] / n_rows)
                if loss.requires_grad:  # False when every row of the micro-batch was skipped, on every rank
                    steps.backward(loss * share * world)
                    backwards += 1
                loss_total += loss.detach().item() * share * world
                used.append((batch.advantages.detach(), batch.mask, weights))
            if backwards == 0:  # every row skipped: the zero gradient the full pass would have left
                for p in model.parameters():
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
            grad_norm = self.clip_and_step(model, steps.optimizer)
            if steps.scheduler is not None:
                steps.scheduler.step()
            if step == 0:
                seen = [torch.cat(parts) for parts in zip(*used)]
                logged = {**{k: v.item() for k, v in loss_stats.items()}, "grad_norm": grad_norm,
                          "loss": all_reduce_sum(torch.tensor(loss_total)).item() / world,  # the world's loss
                          "rows_skipped": skip.float().mean().item(),
                          # forwarded and backwarded with grad (prompt + completion, no padding), × μ
                          "trained_tokens": float(rollout.attention_mask[~skip].sum().item()
                                                  * self.settings.updates_per_batch)}
        return replace(tokens, advantages=seen[0], mask=seen[1], weights=seen[2]), logged

    def micro_batches(self, n: int) -> list[slice]:
        size = self.settings.micro_batch_size or n
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def token_batch(self, tokens: Tokens, rows: slice, logprobs: Tensor, entropy: Tensor) -> TokenBatch:
        """The scheme's view of rows ``rows`` of the step batch, with π_θ's log-probs and entropy."""
        return TokenBatch(logprobs=logprobs, old_logprobs=tokens.old_logprobs[rows],
                          advantages=tokens.advantages[rows], mask=tokens.mask[rows], entropy=entropy,
                          old_entropy=tokens.entropy[rows], group_size=self.group_size, rows=rows,
                          ref_logprobs=None if tokens.ref_logprobs is None else tokens.ref_logprobs[rows])

    def micro_loss(self, tokens: Tokens, rows: slice, logprobs: Tensor, entropy: Tensor):
        """The scheme's view of one micro-batch, then the clipped loss. Returns (loss, stats, batch, ω)."""
        s = self.loss_settings
        batch = self.token_batch(tokens, rows, logprobs, entropy)
        ref = batch.ref_logprobs
        batch = replace(batch, advantages=self.scheme.advantages(batch))
        batch = replace(batch, mask=self.scheme.mask(batch))
        weights = self.scheme.weights(batch)
        loss, stats = policy_loss(
            logprobs, batch.old_logprobs, batch.advantages, batch.mask, weights=weights, clip_low=s.clip_low,
            clip_high=s.clip_high, dual_clip=s.dual_clip, agg=s.agg, ref_logprobs=ref, beta=s.beta,
            norm=float(self.sampling.max_new_tokens), extra=self.scheme.extra_loss(batch))
        return loss, stats, batch, torch.ones_like(logprobs).detach() if weights is None else weights

    def clip_and_step(self, model, optimizer) -> float:
        """Clip the global gradient norm, then step — unless a gradient is NaN/±inf (then NonFiniteStep)."""
        params = [p for p in model.parameters() if p.grad is not None]
        clip = self.settings.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # the same on every rank
        if not torch.isfinite(norm):
            raise NonFiniteStep("gradients")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # ---------------------------------------------------------------- rows that are skipped
    @torch.no_grad()
    def skipped_rows_old(self, model, rollout: Rollout, skip: Tensor) -> tuple[Tensor, Tensor]:
        """log π_old and entropy (N, T) of the skipped rows (0 on the others), for the fused pass (μ = 1,
        one micro-batch): the loss, the scheme's gate and the callbacks see every row."""
        lp = torch.zeros(rollout.completion_mask.shape, dtype=torch.float32, device=skip.device)
        ent = torch.zeros_like(lp)
        idx = skip.nonzero().squeeze(-1)
        fwd = forwarded(idx, fallback=idx.new_zeros(1))  # a fallback row's values are not kept
        if len(fwd):
            lp_fwd, ent_fwd = self.token_logprobs(model, rollout, fwd)
            if len(idx):
                lp[idx], ent[idx] = lp_fwd, ent_fwd
        return lp, ent

    def micro_logprobs(self, model, rollout: Rollout, rows: slice, skip: Tensor,
                       old: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """log π_θ and entropy (n, T) of one micro-batch: forwarded with grad for the rows that are not
        skipped, π_old's values ``old`` ((N, T) each, constants) for the others."""
        local = torch.arange(rows.start, rows.stop, device=skip.device)
        active = forwarded(local[~skip[rows]], fallback=local[:1])
        if len(active) == len(local):
            return self.token_logprobs(model, rollout, rows)
        base_lp, base_ent = old[0][rows], old[1][rows]
        if len(active) == 0:
            return base_lp, base_ent
        lp, ent = self.token_logprobs(model, rollout, active)
        return merge_rows(base_lp, active - rows.start, lp), merge_rows(base_ent, active - rows.start, ent)


# ---------------------------------------------------------------- row helpers (pure)
def inert_rows(advantages: Tensor, mask: Tensor, zero_advantage_inert: bool) -> Tensor:
    """(N,) bool: rows whose gradient is 0 — no loss token, or Â = 0 — when the scheme and β allow it.

    Args:
        advantages: (N,) sequence advantages.
        mask: (N, T) bool loss tokens.
        zero_advantage_inert: β = 0 and the scheme declares zero-advantage rows inert; else no row is.
    """
    if not zero_advantage_inert:
        return torch.zeros_like(advantages, dtype=torch.bool)
    return (advantages == 0) | ~mask.any(-1)


def row_inputs(rollout: Rollout, rows: slice | Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs of ``rows`` (a slice or (n,) indices) cut to the columns they use, and their
    completion ids (n, T') with T' <= T. Position ids come from the full attention mask, so the cut
    changes no position; cut columns are padding every kept row masks out (left) or comes before (right)."""
    P = rollout.prompt_length
    attention = rollout.attention_mask[rows]  # (n, P+T)
    used = attention.any(0)  # (P+T,)
    first = int(used[:P].float().argmax()) if used[:P].any() else P  # first prompt column any row uses
    last = P + int(used[P:].nonzero().max()) + 1 if used[P:].any() else P + 1  # keep >= 1 completion column
    cols = slice(first, last)
    inputs = {"input_ids": rollout.input_ids[rows][:, cols], "attention_mask": attention[:, cols],
              "position_ids": rollout.position_ids[rows][:, cols]}
    return inputs, rollout.input_ids[rows][:, P:last]


def pad_columns(x: Tensor, T: int) -> Tensor:
    """(n, T') → (n, T) with zeros after column T' (positions past every row's completion)."""
    return x if x.shape[1] == T else torch.nn.functional.pad(x, (0, T - x.shape[1]))


def merge_rows(base: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``base`` (n, T) with rows ``idx`` (k,) replaced by ``values`` (k, T), out of place: the gradient
    flows to ``values`` only. ``values`` take ``base``'s dtype: π_old's values are float32, a bf16-true
    model's forward is not."""
    return base.index_put((idx,), values.to(base.dtype))


def length_sorted_chunks(lengths: Tensor, size: int | None) -> list[Tensor]:
    """Row indices in chunks of ``size`` (None: one chunk), rows sorted by length so that each chunk
    pads to about its own rows' length. For passes whose rows are independent (no_grad log-probs)."""
    order = torch.argsort(lengths, stable=True)
    size = size or max(len(order), 1)
    return [order[i:i + size] for i in range(0, len(order), size)]


def forwarded(rows: Tensor, fallback: Tensor) -> Tensor:
    """``rows`` (k,) indices, or ``fallback`` when this rank has none and another rank has some:
    FSDP's collectives need every rank to run the same forwards. Every rank must call it."""
    if not is_distributed():
        return rows
    anyone = all_reduce_sum(torch.tensor(float(len(rows) > 0), device=rows.device)).item() > 0
    return fallback if anyone and len(rows) == 0 else rows
